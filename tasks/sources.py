"""The data source behind every task: TFDS or the official files, chosen by environment variables when
data is read (tasks register at import, before any flag or gin file is parsed).

    PROMPT_TUNING_DATA_SOURCE=files PROMPT_TUNING_DATA_DIR=/data   # the official files under /data
    PROMPT_TUNING_DATA_SOURCE=tfds  PROMPT_TUNING_TFDS_DATA_DIR=/tfds   # TFDS (the default source)

The environment is the one control: our CLIs, t5x's CLIs (which refuse a MIXTURE_OR_TASK_MODULE that defines
gin configurables), scripts and the processes they start all see it.  `set_source` writes it from code.  A
t5x-style `--tfds_data_dir` (seqio.set_tfds_data_dir_override) is honoured too when no TFDS directory is set.
"""
import dataclasses
import functools
import os
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import official_files

KINDS = ("tfds", "files")
SOURCE_ENV, DATA_DIR_ENV, TFDS_DATA_DIR_ENV = ("PROMPT_TUNING_DATA_SOURCE", "PROMPT_TUNING_DATA_DIR",
                                               "PROMPT_TUNING_TFDS_DATA_DIR")


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    kind: str = "tfds"
    data_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None


def source_settings() -> SourceSettings:
    """Which source every task reads now: 'tfds' (glue/*, super_glue/*) or 'files' (official files in data_dir)."""
    settings = SourceSettings(os.environ.get(SOURCE_ENV) or "tfds", os.environ.get(DATA_DIR_ENV) or None,
                              os.environ.get(TFDS_DATA_DIR_ENV) or None)
    if settings.kind not in KINDS:
        raise ValueError(f"{SOURCE_ENV}={settings.kind!r}: use one of {', '.join(KINDS)}")
    if settings.kind == "files" and not settings.data_dir:
        raise ValueError(f"{SOURCE_ENV}=files needs {DATA_DIR_ENV} (the directory of the official files)")
    return settings


def set_source(kind: Optional[str], data_dir: Optional[str] = None, tfds_data_dir: Optional[str] = None) -> None:
    """Sets the environment variables above (this process and those it starts); `set_source(None)` unsets them."""
    for name, value in ((SOURCE_ENV, kind), (DATA_DIR_ENV, data_dir), (TFDS_DATA_DIR_ENV, tfds_data_dir)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    if kind is not None:
        source_settings()  # a bad combination fails here, where it was made


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
