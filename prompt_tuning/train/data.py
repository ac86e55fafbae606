"""seqio datasets -> per-process numpy batches -> global jax.Arrays sharded on 'data'.

Each process reads its own shard of the examples (seqio `ShardInfo`) and
batches `batch_size // process_count` of them; the global batch is the
concatenation in process order.  The stream is a pure function of
(task, seed, shard, step): resuming at step N skips N batches, so a resumed run
sees exactly the batches the uninterrupted run would have.
"""
import dataclasses
from typing import Iterator, Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from prompt_tuning import partitioning


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which data, as t5x's `utils.DatasetConfig` (packing is not supported: prompts need whole inputs)."""

    mixture_or_task_name: str = gin.REQUIRED
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED
    split: str = "train"
    batch_size: int = 32                     # global, over all processes
    shuffle: bool = True
    seed: Optional[int] = 0
    use_cached: bool = False


def local_batch_size(global_batch_size: int, num_processes: Optional[int] = None) -> int:
    num_processes = num_processes or jax.process_count()
    if global_batch_size % num_processes:
        raise ValueError(f"BATCH_SIZE={global_batch_size} is not divisible by the {num_processes} processes")
    return global_batch_size // num_processes


def get_dataset(cfg: DatasetConfig, feature_converter: seqio.FeatureConverter, *, start_step: int = 0,
                num_epochs: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """This process's batches of the model's features (`model.feature_converter()`) from `start_step` on
    (repeated forever when num_epochs is None)."""
    if shard_info is None:
        shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    try:
        seqio.get_mixture_or_task(cfg.mixture_or_task_name)
    except ValueError as e:
        raise ValueError(f"MIXTURE_OR_TASK_NAME={cfg.mixture_or_task_name!r} is not a registered seqio task or "
                         "mixture (import its module, e.g. prompt_tuning.tasks)") from e
    ds = seqio.get_dataset(
        cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
        dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed,
        use_cached=cfg.use_cached, shard_info=shard_info, feature_converter=feature_converter)
    batch = local_batch_size(cfg.batch_size, shard_info.num_shards)
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
