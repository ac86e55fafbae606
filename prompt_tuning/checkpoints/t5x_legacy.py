"""t5x's legacy checkpoint format, read with msgpack + tensorstore only (no t5x, no pickle).

`checkpoint_N/checkpoint` is flax msgpack: {'version': 3, 'optimizer': {'target': params, 'state': ...}}.
Small leaves are inline ndarrays (msgpack ExtType 1); large ones are tensorstore spec dicts whose
kvstore path names an array directory beside the `checkpoint` file.  Specs written on GCS (driver
'gcs' + bucket) or by old t5x (driver 'gfile') are read from the local copy of that directory.
Only the parameters ('target') are read; the optimizer state is not needed.
"""
import os
from typing import Dict, Tuple

import msgpack
import numpy as np
import tensorstore as ts

from prompt_tuning.checkpoints.base import ArraySource, flatten
from prompt_tuning.errors import UserError

_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3  # flax.serialization's msgpack extension codes


def _ext_hook(code, data):
    if code in (_EXT_NDARRAY, _EXT_NPSCALAR):
        shape, dtype, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
    return msgpack.ExtType(code, data)


def _is_spec(node) -> bool:
    return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _local_array_dir(ckpt_dir: str, spec: dict) -> str:
    """The local directory of a spec's array, whatever filesystem wrote the spec."""
    kvstore = spec["kvstore"]
    path = kvstore.get("path", "")
    if spec.get("path"):  # older specs split the path between kvstore and spec
        path = os.path.join(path, spec["path"])
    path = path.rstrip("/")
    if path.startswith("gs://") or kvstore.get("driver") == "gcs" or os.path.isabs(path):
        # Absolute (or bucket) path of the writer: keep what follows the checkpoint directory's name.
        parts = path.split("/")
        name = os.path.basename(os.path.normpath(ckpt_dir))
        path = "/".join(parts[parts.index(name) + 1:]) if name in parts else parts[-1]
    return os.path.join(ckpt_dir, path)


class LegacyT5xSource(ArraySource):
    """Parameters of a legacy t5x checkpoint directory."""

    def __init__(self, path: str):
        ckpt_dir = os.path.dirname(path) if os.path.basename(path) == "checkpoint" else path
        self.path = ckpt_dir
        index_file = os.path.join(ckpt_dir, "checkpoint")
        with open(index_file, "rb") as f:
            state = msgpack.unpackb(f.read(), ext_hook=_ext_hook, raw=False, strict_map_key=False)
        if "optimizer" in state:
            target = state["optimizer"].get("target")
        else:  # a bare {'target': ...} state dict
            target = state.get("target")
        if not isinstance(target, dict):
            raise UserError(f"{index_file}: no 'optimizer/target' parameters (top-level keys {sorted(state)})")
        leaves = flatten(target, is_leaf=_is_spec)
        self._inline: Dict[str, np.ndarray] = {}
        self._stores: Dict[str, ts.TensorStore] = {}
        self.shapes = {}
        for key, leaf in leaves.items():
            if _is_spec(leaf):
                store = self._open(ckpt_dir, key, leaf)
                self._stores[key] = store
                self.shapes[key] = tuple(store.shape)
            else:
                self._inline[key] = np.asarray(leaf)
                self.shapes[key] = self._inline[key].shape

    @staticmethod
    def _open(ckpt_dir: str, key: str, spec: dict) -> ts.TensorStore:
        local = _local_array_dir(ckpt_dir, spec)
        if not os.path.isdir(local):
            raise FileNotFoundError(f"{key}: array directory {local} (from the checkpoint's spec "
                                    f"{spec['kvstore']}) does not exist")
        store = ts.open({"driver": spec.get("driver", "zarr"), "kvstore": {"driver": "file", "path": local}},
                        open=True, read=True).result()
        declared = spec.get("metadata", {}).get("shape")
        if declared is not None and tuple(declared) != tuple(store.shape):
            raise UserError(f"{key}: spec declares shape {tuple(declared)} but {local} holds {tuple(store.shape)}")
        return store

    def read(self, key: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        if key in self._inline:
            return self._inline[key][index]
        return self._stores[key][index].read().result()
