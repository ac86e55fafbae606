"""What every checkpoint reader provides: the shapes of its arrays, and reads of any slice of them.

Keys are t5x parameter paths joined by '/' (e.g. 'encoder/layers_0/attention/query/kernel').
Reading by slice lets `load` place each array straight into its sharded placement: every device
gets only its own block, and no host ever holds the whole model.
"""
import re
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from prompt_tuning.errors import UserError

Shape = Tuple[int, ...]


class ArraySource:
    """Base class of the format readers: `shapes`, `read(key, index)` and `load(shardings)`."""

    path: str
    shapes: Dict[str, Shape]

    def read(self, key: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        raise NotImplementedError

    def origin(self, key: str) -> str:
        """Where `key` comes from in the checkpoint, for error messages."""
        return key

    def load(self, shardings: Optional[Mapping[str, jax.sharding.Sharding]] = None,
             dtype=np.float32) -> Dict[str, object]:
        """All arrays: numpy (shardings None), or jax.Arrays built block by block in place."""
        out = {}
        for key, shape in self.shapes.items():
            if shardings is None:
                out[key] = _cast(self.read(key), dtype)
                continue
            cache = {}  # devices holding the same block (replicas) share one read

            def block(index, key=key, cache=cache):
                token = tuple((s.start, s.stop, s.step) for s in index)
                if token not in cache:
                    cache[token] = _cast(self.read(key, index), dtype)
                return cache[token]

            out[key] = jax.make_array_from_callback(shape, shardings[key], block)
        return out


class StackedLayers(ArraySource):
    """An unrolled checkpoint (`layers_N`) seen as scanned parameters (`layers`, stacked on axis 0)."""

    def __init__(self, source: ArraySource):
        self.path, self._source = source.path, source
        self._members: Dict[str, Optional[Dict[int, str]]] = {}
        for key in source.shapes:
            match = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(.+)", key)
            if match is None:
                self._members[key] = None
            else:
                self._members.setdefault(f"{match[1]}/layers/{match[3]}", {})[int(match[2])] = key
        self.shapes = {}
        for key, members in self._members.items():
            if members is None:
                self.shapes[key] = source.shapes[key]
                continue
            if set(members) != set(range(len(members))):
                raise UserError(f"{self.path}: cannot stack {key}: present only in layers {sorted(members)}")
            inner = {source.shapes[members[i]] for i in members}
            if len(inner) != 1:
                raise UserError(f"{self.path}: cannot stack {key}: layers have shapes {sorted(inner)}")
            self.shapes[key] = (len(members),) + inner.pop()

    def origin(self, key: str) -> str:
        members = self._members.get(key)
        return self._source.origin(key) if not members else f"{key} (stacked from {self._source.origin(members[0])}...)"

    def read(self, key: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        members = self._members[key]
        if members is None:
            return self._source.read(key, index)
        index = tuple(index) or (slice(None),)
        return np.stack([self._source.read(members[i], index[1:]) for i in range(len(members))[index[0]]])


def _cast(array: np.ndarray, dtype) -> np.ndarray:
    array = np.asarray(array)
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.kind == "V"  # V: ml_dtypes bf16
    if dtype is not None and floating and array.dtype != dtype:
        return array.astype(dtype)
    return array


def flatten(tree: Mapping, prefix: str = "", is_leaf=lambda node: False) -> Dict[str, object]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and not is_leaf(value):
            flat.update(flatten(value, key + "/", is_leaf))
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, object]) -> Dict[str, object]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    tree: Dict[str, object] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def check_shapes(source: ArraySource, expected: Mapping[str, Shape], shown: int = 8) -> None:
    """Raise one error naming missing, unexpected and mis-shaped arrays (nothing is dropped).

    Each kind lists its first `shown` keys and counts the rest, so a wholly wrong config stays readable.
    """
    have = source.shapes
    kinds = {
        "mis-shaped": [f"{source.origin(k)}: checkpoint shape {tuple(have[k])}, model expects {tuple(expected[k])}"
                       for k in sorted(have.keys() & expected.keys()) if tuple(have[k]) != tuple(expected[k])],
        "missing": [f"{k} (model expects shape {tuple(expected[k])})" for k in sorted(expected.keys() - have.keys())],
        "unexpected": [f"{source.origin(k)} (shape {tuple(have[k])}; the model has no such parameter)"
                       for k in sorted(have.keys() - expected.keys())],
    }
    parts = []
    for kind, items in kinds.items():
        if items:
            more = f"; ... {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{len(items)} {kind}: " + "; ".join(items[:shown]) + more)
    if parts:
        raise UserError(f"checkpoint {source.path} does not match the model: " + " | ".join(parts))
