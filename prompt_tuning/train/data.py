"""seqio datasets -> per-process numpy batches -> global jax.Arrays sharded on 'data'.

Each process reads its own shard of the examples (seqio `ShardInfo`) and
batches `batch_size // process_count` of them; the global batch is the
concatenation in process order.  The stream is a pure function of
(task, seed, shard, step): resuming at step N skips N batches, so a resumed run
sees exactly the batches the uninterrupted run would have.

Length buckets (`DatasetConfig.length_buckets`, e.g. {'inputs': (64, 128, 256, 512)}): each batch is cut to
the smallest listed length that keeps every real token of its rows (`trim_to_buckets`; all processes agree
on it), so a batch of short examples costs a short step.  The batches hold the same examples as without
buckets, and only padding is dropped, so losses, scores and decodes do not change and resume stays exact.
`group_by_length` (off by default; it changes the stream, and is part of the run's identity) sorts the
examples of each window of that many batches by length before batching and then shuffles the batches.

Packing (`pack`, off by default; it changes which examples share a step, and is part of the run's identity):
seqio packs several examples into each row, every one with its own prompt slot (the model's
`feature_converter(pack=True)`), so a row costs its real tokens rather than the longest example's.  Each
example's logits are those of its unpacked row.  A per-task mixture packs each task on its own, so a row
holds one task's examples and keeps one `prompt_index`.  Evaluation never packs (it scores each example).

Prompt banks (`DatasetConfig.prompt_rows`): 'per_task' gives every task of a mixture its own bank row
(`prompt_index`, the task's place in the mixture); an int N trains an ensemble of N prompts, every example
going to every row, so each row sees exactly the stream of a single run (batches hold batch_size * N rows).
"""
import dataclasses
import logging
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Union

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from prompt_tuning import partitioning
from prompt_tuning.errors import UserError

PER_TASK = "per_task"
PROMPT_INDEX = "prompt_index"
# model.feature_converter: (prompt_index=None, pack=False) -> the model's seqio converter, adding that bank row.
ConverterFactory = Callable[..., seqio.FeatureConverter]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which data, as t5x's `utils.DatasetConfig`."""

    mixture_or_task_name: str = gin.REQUIRED
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED
    split: str = "train"
    batch_size: int = 32                     # global, over all processes: examples (packed rows with pack), not bank rows
    shuffle: bool = True
    seed: Optional[int] = 0
    use_cached: bool = False
    prompt_rows: Optional[Union[str, int]] = None   # None, 'per_task' or an ensemble size (see above)
    # {model length group ('inputs', 'targets'; see BaseModel.LENGTH_GROUPS): lengths}; None: the full lengths.
    length_buckets: Optional[Mapping[str, Sequence[int]]] = None
    group_by_length: int = 0                  # > 0: sort each window of this many batches by length (see above)
    pack: bool = False                        # several examples per row, each with its own prompt (see above)


def prompt_row_names(cfg: DatasetConfig) -> Optional[List[str]]:
    """What each bank row is: the mixture's tasks in its order, '<task>/prompt_<i>' for an ensemble, or None."""
    if cfg.prompt_rows is None:
        return None
    if cfg.prompt_rows == PER_TASK:
        return [task.name for task in seqio.get_subtasks(seqio.get_mixture_or_task(cfg.mixture_or_task_name))]
    if isinstance(cfg.prompt_rows, int) and cfg.prompt_rows > 0:
        return [f"{cfg.mixture_or_task_name}/prompt_{i}" for i in range(cfg.prompt_rows)]
    raise UserError(f"prompt_rows={cfg.prompt_rows!r}: use None, {PER_TASK!r} or an ensemble size >= 1")


def rows_per_example(cfg: DatasetConfig) -> int:
    """Batch rows each example takes: N for an ensemble of N prompts, else 1."""
    return cfg.prompt_rows if isinstance(cfg.prompt_rows, int) else 1


def check_batch_size(cfg: DatasetConfig, mesh: Mesh) -> None:
    """The batch's rows must split evenly over the mesh's data-parallel devices (and the processes)."""
    rows, data_size = cfg.batch_size * rows_per_example(cfg), mesh.shape["data"]
    if cfg.batch_size < 1 or rows % data_size:
        prompts = f" x {rows_per_example(cfg)} prompts" if rows_per_example(cfg) > 1 else ""
        raise UserError(f"BATCH_SIZE={cfg.batch_size}{prompts} is not divisible by the {data_size} data-parallel "
                        f"devices ({mesh.size} devices / MODEL_PARALLEL_SIZE={mesh.shape['model']})")
    local_batch_size(cfg.batch_size)


def report_truncation(cfg: DatasetConfig, max_share: float = 1.0, num_examples: int = 1000) -> dict:
    """How many of each task's first `num_examples` examples TASK_FEATURE_LENGTHS cuts, printed once per task.

    Counts tokens as the model would get them (EOS included).  Raises UserError when a feature's share of cut
    examples exceeds `max_share`.  Returns {task: {feature: (cut, seen)}}.
    """
    report = {}
    for task in check_split(cfg.mixture_or_task_name, cfg.split):
        try:
            ds = task.get_dataset(None, split=cfg.split, shuffle=False, num_epochs=1, use_cached=cfg.use_cached)
        except (ValueError, KeyError, TypeError) as e:   # a preprocessor that needs lengths, an unknown split
            logging.info("truncation report skipped for %s: %s", task.name, e)
            continue
        counts = {k: [0, 0] for k in cfg.task_feature_lengths}
        for ex in ds.take(num_examples).as_numpy_iterator():
            for k, limit in cfg.task_feature_lengths.items():
                if k in ex:
                    counts[k][0] += int(len(ex[k]) > limit)
                    counts[k][1] += 1
        report[task.name] = {k: tuple(v) for k, v in counts.items()}
        parts = [f"{k} cut to {cfg.task_feature_lengths[k]} tokens in {cut} of {seen} ({cut / max(seen, 1):.1%})"
                 for k, (cut, seen) in report[task.name].items()]
        if jax.process_index() == 0:
            print(f"data: {task.name} ({cfg.split}, first {num_examples}): " + ", ".join(parts), flush=True)
        for k, (cut, seen) in report[task.name].items():
            if seen and cut / seen > max_share:
                raise UserError(f"TASK_FEATURE_LENGTHS['{k}']={cfg.task_feature_lengths[k]} cuts {cut} of {seen} "
                                f"examples of {task.name} ({cut / seen:.1%} > max_truncated_share={max_share}): "
                                "raise the length")
    return report


def local_batch_size(global_batch_size: int, num_processes: Optional[int] = None) -> int:
    num_processes = num_processes or jax.process_count()
    if global_batch_size % num_processes:
        raise UserError(f"BATCH_SIZE={global_batch_size} is not divisible by the {num_processes} processes")
    return global_batch_size // num_processes


def _check_name(name: str):
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        raise UserError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or mixture (import its "
                        "module, e.g. prompt_tuning.tasks)") from None


def check_split(name: str, split: str) -> List[seqio.Task]:
    """The tasks of task-or-mixture `name`, each of which must have `split`."""
    tasks = seqio.get_subtasks(_check_name(name))
    for task in tasks:
        if split not in task.splits:
            raise UserError(f"task {task.name} (of MIXTURE_OR_TASK_NAME={name!r}) has no split {split!r}; it has "
                            f"{', '.join(task.splits)}")
    return tasks


def get_dataset(cfg: DatasetConfig, feature_converter: ConverterFactory, *, start_step: int = 0,
                num_epochs: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """This process's batches of the model's features from `start_step` on (repeated forever when num_epochs
    is None).  feature_converter: `model.feature_converter`."""
    if shard_info is None:
        shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    mixture_or_task = _check_name(cfg.mixture_or_task_name)
    check_split(cfg.mixture_or_task_name, cfg.split)
    lengths = dict(cfg.task_feature_lengths)
    if cfg.prompt_rows == PER_TASK:
        # seqio's mixing, each task's examples converted with its own row.
        tasks = seqio.get_subtasks(mixture_or_task)
        rates = [mixture_or_task.get_rate(t) if isinstance(mixture_or_task, seqio.Mixture) else 1.0 for t in tasks]
        parts = [feature_converter(prompt_index=row, pack=cfg.pack)(
            task.get_dataset(lengths, split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed,
                             use_cached=cfg.use_cached, shard_info=shard_info), lengths)
            for row, task in enumerate(tasks)]
        ds = parts[0] if len(parts) == 1 else tf.data.Dataset.sample_from_datasets(
            parts, weights=[r / sum(rates) for r in rates], seed=cfg.seed, stop_on_empty_dataset=num_epochs is not None)
    else:
        ds = seqio.get_dataset(
            cfg.mixture_or_task_name, task_feature_lengths=lengths, dataset_split=cfg.split, shuffle=cfg.shuffle,
            num_epochs=num_epochs, seed=cfg.seed, use_cached=cfg.use_cached, shard_info=shard_info,
            feature_converter=feature_converter(pack=cfg.pack))
    batch = local_batch_size(cfg.batch_size, shard_info.num_shards)
    if cfg.group_by_length:
        ds = group_by_length(ds, batch, cfg.group_by_length, cfg.seed or 0)
    if rows_per_example(cfg) > 1:  # an ensemble: every example to every row
        n = rows_per_example(cfg)
        ds = ds.flat_map(lambda ex: tf.data.Dataset.range(n).map(
            lambda row: {**ex, PROMPT_INDEX: tf.cast(row, tf.int32)}))
        batch *= n
    ds = ds.batch(batch, drop_remainder=True)
    if start_step:
        ds = ds.skip(start_step)
    return ds.prefetch(tf.data.AUTOTUNE)


def _row_lengths(ex) -> tf.Tensor:
    """Each row's longest token feature (real tokens): the length a batch of such rows is padded to."""
    counts = [tf.math.count_nonzero(v, axis=-1, dtype=tf.int32) for k, v in sorted(ex.items()) if k.endswith("_tokens")]
    return tf.reduce_max(tf.stack(counts), axis=0)


def group_by_length(ds: tf.data.Dataset, batch_size: int, window: int, seed: int) -> tf.data.Dataset:
    """Examples -> the same examples, each window of `window` batches sorted by length into batches whose
    order is then shuffled (seeded by the window's place in the stream, so a resumed run sees the same)."""
    def regroup(index, ex):
        order = tf.argsort(_row_lengths(ex), stable=True)
        ex = {k: tf.gather(v, order) for k, v in ex.items()}
        perm = tf.argsort(tf.random.stateless_uniform([window], seed=tf.stack([tf.cast(seed, tf.int64), index])))
        rows = tf.reshape(perm[:, None] * batch_size + tf.range(batch_size, dtype=perm.dtype)[None, :], [-1])
        return tf.data.Dataset.from_tensor_slices({k: tf.gather(v, rows) for k, v in ex.items()})
    return ds.batch(batch_size * window, drop_remainder=True).enumerate().flat_map(regroup)


def check_length_buckets(buckets: Optional[Mapping[str, Sequence[int]]], groups: Mapping[str, Sequence[str]]):
    """LENGTH_BUCKETS must name the model's length groups and list positive lengths."""
    if not buckets:
        return
    unknown = sorted(set(buckets) - set(groups))
    if unknown:
        raise UserError(f"LENGTH_BUCKETS={dict(buckets)}: unknown {unknown}; this model's length groups are "
                        f"{sorted(groups)}")
    for name, lengths in buckets.items():
        if not lengths or any(int(n) < 1 for n in lengths):
            raise UserError(f"LENGTH_BUCKETS[{name!r}]={list(lengths)}: give one or more positive lengths")


def used_length(x) -> int:
    """Columns up to the last one holding a nonzero value in any row (0 for all padding)."""
    x = np.asarray(x)
    columns = np.flatnonzero(x.reshape(-1, x.shape[-1]).any(axis=0))
    return int(columns[-1]) + 1 if columns.size else 0


def trim_to_buckets(batch: Mapping[str, np.ndarray], groups: Mapping[str, Sequence[str]],
                    buckets: Optional[Mapping[str, Sequence[int]]]) -> Mapping[str, np.ndarray]:
    """Each length group's features cut to the smallest bucket that keeps every nonzero value of the batch
    (the features' own length when no bucket is that long).  With several processes, the longest need of
    any process decides, so every process runs the same program.  groups: `model.LENGTH_GROUPS`."""
    if not buckets:
        return batch
    names = [g for g in sorted(buckets) if any(f in batch for f in groups[g])]
    needed = np.array([max(used_length(batch[f]) for f in groups[g] if f in batch) for g in names], np.int32)
    if jax.process_count() > 1:
        needed = np.asarray(multihost_utils.process_allgather(needed)).max(axis=0)
    out = dict(batch)
    for name, need in zip(names, needed):
        features = [f for f in groups[name] if f in batch]
        full = np.shape(batch[features[0]])[-1]
        length = min([int(n) for n in buckets[name] if need <= int(n) < full] + [full])
        for f in features:
            out[f] = np.asarray(batch[f])[..., :length]
    return out


def numpy_batches(ds: tf.data.Dataset) -> Iterator[Mapping[str, np.ndarray]]:
    return ds.as_numpy_iterator()


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> Mapping[str, jax.Array]:
    """Assembles the processes' local batches into global arrays sharded on 'data'."""
    sharding = partitioning.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
