"""t5x checkpoints in the Orbax format (`checkpoint_N/state`, OCDBT), read with orbax-checkpoint.

Only the parameters ('target') are restored (`partial_restore`); the optimizer state is skipped.
Given shardings, orbax reads each device's block straight into place.
"""
import os
from typing import Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning.checkpoints.base import ArraySource, flatten, unflatten
from prompt_tuning.errors import UserError


def orbax_state_dir(path: str) -> Optional[str]:
    """The PyTree item directory of a t5x Orbax checkpoint at `path`, or None if it is not one."""
    path = os.path.abspath(path)  # orbax cannot read a relative path
    for candidate in (os.path.join(path, "state"), path):
        if os.path.isfile(os.path.join(candidate, "_METADATA")):
            return candidate
    return None


class OrbaxT5xSource(ArraySource):
    """Parameters of a t5x Orbax checkpoint (`checkpoint_N` or its `state` directory)."""

    def __init__(self, path: str):
        self.path = orbax_state_dir(path)
        if self.path is None:
            raise FileNotFoundError(f"{path} is not a t5x Orbax checkpoint (no state/_METADATA)")
        self._checkpointer = ocp.PyTreeCheckpointer()
        tree = self._checkpointer.metadata(self.path).item_metadata.tree
        if "target" not in tree:
            raise UserError(f"{self.path}: no 'target' parameters (top-level keys {sorted(tree)})")
        self._meta = flatten(tree["target"])
        self.shapes = {key: tuple(meta.shape) for key, meta in self._meta.items()}

    def read(self, key: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        return self.load(keys=[key])[key][index]

    def load(self, shardings: Optional[Mapping[str, jax.sharding.Sharding]] = None, dtype=np.float32,
             keys=None) -> Dict[str, object]:
        keys = list(self.shapes) if keys is None else keys

        def restore_args(key):
            meta = self._meta[key]
            cast = dtype if dtype is not None and np.issubdtype(meta.dtype, np.floating) else None
            if shardings is None:
                return ocp.RestoreArgs(restore_type=np.ndarray, dtype=cast)
            return ocp.ArrayRestoreArgs(sharding=shardings[key], dtype=cast)

        item = unflatten({k: jax.ShapeDtypeStruct(self.shapes[k], self._meta[k].dtype) for k in keys})
        args = unflatten({k: restore_args(k) for k in keys})
        restored = self._checkpointer.restore(
            self.path, args=ocp.args.PyTreeRestore(item={"target": item}, restore_args={"target": args},
                                                   partial_restore=True))
        return flatten(restored["target"])
