"""The data source behind every task: TFDS or the official files, chosen by gin when data is read.

gin (either form):
    prompt_tuning.tasks.sources.source_settings.kind = 'files'        # or 'tfds' (default)
    prompt_tuning.tasks.sources.source_settings.data_dir = '/data'     # official files, kind='files'
    prompt_tuning.tasks.sources.source_settings.tfds_data_dir = '/tfds'  # TFDS data dir, kind='tfds'
`set_source(kind, data_dir=..., tfds_data_dir=...)` does the same from code (a CLI flag).  A t5x-style
`--tfds_data_dir` (seqio.set_tfds_data_dir_override) is honoured too when `tfds_data_dir` is unset.
"""
import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from prompt_tuning.tasks import official_files

KINDS = ("tfds", "files")


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    kind: str = "tfds"
    data_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None


_override: Optional[SourceSettings] = None


@gin.configurable
def source_settings(kind: str = "tfds", data_dir: Optional[str] = None,
                    tfds_data_dir: Optional[str] = None) -> SourceSettings:
    """Which source every task reads: 'tfds' (glue/*, super_glue/*) or 'files' (official files in data_dir)."""
    if _override is not None:
        return _override
    return _validated(SourceSettings(kind, data_dir, tfds_data_dir))


def _validated(settings: SourceSettings) -> SourceSettings:
    if settings.kind not in KINDS:
        raise ValueError(f"source kind must be one of {KINDS}, got {settings.kind!r}")
    if settings.kind == "files" and not settings.data_dir:
        raise ValueError("source kind 'files' needs data_dir (gin: source_settings.data_dir)")
    return settings


def set_source(kind: Optional[str], data_dir: Optional[str] = None, tfds_data_dir: Optional[str] = None) -> None:
    """Overrides the gin choice from code; `set_source(None)` restores gin's."""
    global _override
    _override = None if kind is None else _validated(SourceSettings(kind, data_dir, tfds_data_dir))


@functools.lru_cache(maxsize=None)
def _tfds_source(tfds_name: str, splits: Optional[tuple], tfds_data_dir: Optional[str]) -> seqio.TfdsDataSource:
    return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                                splits=dict(splits) if splits else None)


class OfficialFilesSource(seqio.DataSource):
    """One benchmark config read from its official files (see official_files.py)."""

    def __init__(self, benchmark: str, config: str, data_dir: str, splits: Sequence[str]):
        self.benchmark, self.config, self.data_dir = benchmark, config, data_dir
        self.spec = official_files.BENCHMARK_FILES[benchmark][config]
        super().__init__(splits=splits)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [official_files.find_split_file(self.data_dir, self.benchmark, self.config, split)]

    def examples(self, split: str):
        return _read_cached(self.data_dir, self.benchmark, self.config, split)[1]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # one file per split; the Task shuffles
        examples = self.examples(split)
        ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=self.spec.signature)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
        if shard_info:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds

    def num_input_examples(self, split: str) -> int:
        return len(self.examples(split))


@functools.lru_cache(maxsize=64)
def _read_cached(data_dir: str, benchmark: str, config: str, split: str):
    return official_files.read_examples(data_dir, benchmark, config, split)


class BenchmarkSource(seqio.DataSource):
    """Defers to a TFDS or an official-files source according to `source_settings()` at read time."""

    def __init__(self, benchmark: str, config: str, version: str, splits: Sequence[str],
                 tfds_splits: Optional[Mapping[str, str]] = None):
        self.benchmark, self.config, self.version = benchmark, config, version
        self.tfds_name = f"{benchmark}/{config}:{version}"
        self._tfds_splits = tuple(sorted((tfds_splits or {s: s for s in splits}).items()))
        super().__init__(splits=splits)

    def active(self) -> seqio.DataSource:
        settings = source_settings()
        if settings.kind == "files":
            return OfficialFilesSource(self.benchmark, self.config, settings.data_dir, self.splits)
        return _tfds_source(self.tfds_name, self._tfds_splits, settings.tfds_data_dir)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return self.active().supports_arbitrary_sharding

    def list_shards(self, split: str) -> Sequence[str]:
        return self.active().list_shards(split)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        if split not in self.splits:
            raise ValueError(f"{self.tfds_name} has no split {split!r} (splits: {list(self.splits)})")
        return self.active().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)

    def num_input_examples(self, split: str) -> Optional[int]:
        return self.active().num_input_examples(split)

    def __repr__(self):
        return f"BenchmarkSource({self.tfds_name}, splits={list(self.splits)})"
