"""seqio datasets -> per-process numpy batches -> global jax.Arrays sharded on 'data'.

Each process reads its own shard of the examples (seqio `ShardInfo`) and
batches `batch_size // process_count` of them; the global batch is the
concatenation in process order.  The stream is a pure function of
(task, seed, shard, step): resuming at step N skips N batches, so a resumed run
sees exactly the batches the uninterrupted run would have.

Prompt banks (`DatasetConfig.prompt_rows`): 'per_task' gives every task of a mixture its own bank row
(`prompt_index`, the task's place in the mixture); an int N trains an ensemble of N prompts, every example
going to every row, so each row sees exactly the stream of a single run (batches hold batch_size * N rows).
"""
import dataclasses
from typing import Callable, Iterator, List, Mapping, Optional, Union

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from prompt_tuning import partitioning

PER_TASK = "per_task"
PROMPT_INDEX = "prompt_index"
# model.feature_converter: (prompt_index=None) -> the model's seqio converter, adding that bank row.
ConverterFactory = Callable[..., seqio.FeatureConverter]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which data, as t5x's `utils.DatasetConfig` (packing is not supported: prompts need whole inputs)."""

    mixture_or_task_name: str = gin.REQUIRED
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED
    split: str = "train"
    batch_size: int = 32                     # global, over all processes (examples, not bank rows)
    shuffle: bool = True
    seed: Optional[int] = 0
    use_cached: bool = False
    prompt_rows: Optional[Union[str, int]] = None   # None, 'per_task' or an ensemble size (see above)


def prompt_row_names(cfg: DatasetConfig) -> Optional[List[str]]:
    """What each bank row is: the mixture's tasks in its order, '<task>/prompt_<i>' for an ensemble, or None."""
    if cfg.prompt_rows is None:
        return None
    if cfg.prompt_rows == PER_TASK:
        return [task.name for task in seqio.get_subtasks(seqio.get_mixture_or_task(cfg.mixture_or_task_name))]
    if isinstance(cfg.prompt_rows, int) and cfg.prompt_rows > 0:
        return [f"{cfg.mixture_or_task_name}/prompt_{i}" for i in range(cfg.prompt_rows)]
    raise ValueError(f"prompt_rows={cfg.prompt_rows!r}: use None, {PER_TASK!r} or an ensemble size >= 1")


def local_batch_size(global_batch_size: int, num_processes: Optional[int] = None) -> int:
    num_processes = num_processes or jax.process_count()
    if global_batch_size % num_processes:
        raise ValueError(f"BATCH_SIZE={global_batch_size} is not divisible by the {num_processes} processes")
    return global_batch_size // num_processes


def _check_name(name: str):
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise ValueError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or mixture (import its "
                         "module, e.g. prompt_tuning.tasks)") from e


def get_dataset(cfg: DatasetConfig, feature_converter: ConverterFactory, *, start_step: int = 0,
                num_epochs: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """This process's batches of the model's features from `start_step` on (repeated forever when num_epochs
    is None).  feature_converter: `model.feature_converter`."""
    if shard_info is None:
        shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    mixture_or_task = _check_name(cfg.mixture_or_task_name)
    lengths = dict(cfg.task_feature_lengths)
    prompt_rows = prompt_row_names(cfg)
    if cfg.prompt_rows == PER_TASK:
        # seqio's mixing, each task's examples converted with its own row.
        tasks = seqio.get_subtasks(mixture_or_task)
        rates = [mixture_or_task.get_rate(t) if isinstance(mixture_or_task, seqio.Mixture) else 1.0 for t in tasks]
        parts = [feature_converter(prompt_index=row)(
            task.get_dataset(lengths, split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed,
                             use_cached=cfg.use_cached, shard_info=shard_info), lengths)
            for row, task in enumerate(tasks)]
        ds = parts[0] if len(parts) == 1 else tf.data.Dataset.sample_from_datasets(
            parts, weights=[r / sum(rates) for r in rates], seed=cfg.seed, stop_on_empty_dataset=num_epochs is not None)
    else:
        ds = seqio.get_dataset(
            cfg.mixture_or_task_name, task_feature_lengths=lengths, dataset_split=cfg.split, shuffle=cfg.shuffle,
            num_epochs=num_epochs, seed=cfg.seed, use_cached=cfg.use_cached, shard_info=shard_info,
            feature_converter=feature_converter())
    batch = local_batch_size(cfg.batch_size, shard_info.num_shards)
    if prompt_rows is not None and cfg.prompt_rows != PER_TASK:  # an ensemble: every example to every row
        n = len(prompt_rows)
        ds = ds.flat_map(lambda ex: tf.data.Dataset.range(n).map(
            lambda row: {**ex, PROMPT_INDEX: tf.cast(row, tf.int32)}))
        batch *= n
    ds = ds.batch(batch, drop_remainder=True)
    if start_step:
        ds = ds.skip(start_step)
    return ds.prefetch(tf.data.AUTOTUNE)


def numpy_batches(ds: tf.data.Dataset) -> Iterator[Mapping[str, np.ndarray]]:
    return ds.as_numpy_iterator()


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> Mapping[str, jax.Array]:
    """Assembles the processes' local batches into global arrays sharded on 'data'."""
    sharding = partitioning.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
