"""PromptCheckpointer: t5x checkpoints that hold only the trained parameters and their optimizer state.

t5x's Checkpointer writes the whole train state every time (3.3 MB for the tiny model, some 44 GB for T5
XXL), although prompt tuning changes a few kilobytes of it.  This subclass drops every frozen parameter
(those `trainable_regex` does not match) from what it saves, marks the directory with `PROMPT_ONLY`, and on
restore takes the frozen parameters from the frozen model's own checkpoint, read by the project's readers
(t5x legacy, t5x Orbax, Hugging Face), so `INITIAL_CHECKPOINT_PATH` may be any of those:

  - restoring a PROMPT_ONLY checkpoint (resuming, t5x.eval, t5x.infer): the trained parameters and optimizer
    state from it, the frozen parameters from `frozen_checkpoint_path`;
  - restoring anything else (the frozen model, `INITIAL_CHECKPOINT_PATH` at the start of training): the
    frozen parameters from it, the trained ones and the optimizer state from t5x's from-scratch state
    (`RestoreCheckpointConfig.fallback_to_scratch = True`), in which the prompt's vocabulary-based initializers
    have already read the real embedding table (`initializers.checkpoint_embedding`).

Only t5x's legacy checkpoint manager takes a Checkpointer class, so the gin files set `use_orbax = False`.
"""
import json
import os
import re
from typing import Any, Mapping, Optional

import gin
import jax
import numpy as np
from flax import traverse_util
from t5x import checkpoints

from prompt_tuning.checkpoints.loader import open_checkpoint

MARKER = "PROMPT_ONLY"  # a JSON file in every checkpoint directory this class writes
DEFAULT_TRAINABLE_REGEX = ".*prompt.*"


def _flat(tree) -> dict:
    # Empty nodes kept: the optimizer state of a frozen subtree is a tree of None/{} that restore must rebuild.
    return traverse_util.flatten_dict(dict(tree), sep="/", keep_empty_nodes=True) if tree else {}


def _param_path(key: str) -> Optional[str]:
    """'target/encoder/prompt/prompt' -> 'encoder/prompt/prompt'; None for keys that are not parameters."""
    return key[len("target/"):] if key.startswith("target/") else None


@gin.configurable(module="t5x_bridge")
class PromptCheckpointer(checkpoints.Checkpointer):
    """t5x's (legacy) Checkpointer that saves only the trained parameters; see the module docstring."""

    def __init__(self, *args, trainable_regex: str = DEFAULT_TRAINABLE_REGEX,
                 frozen_checkpoint_path: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._trainable = re.compile(trainable_regex)
        self._trainable_regex = trainable_regex
        self._frozen_checkpoint_path = frozen_checkpoint_path

    def _is_frozen_param(self, key: str) -> bool:
        path = _param_path(key)
        return path is not None and not self._trainable.fullmatch(path)

    # ------------------------------------------------------------------ save
    def _drop_frozen(self, state_dict, parameter_infos):
        """Save transformation: the state without frozen parameters (their optimizer state is already None)."""
        keep = lambda flat: {k: v for k, v in flat.items() if not self._is_frozen_param(k)}  # noqa: E731
        flat_state, flat_infos = keep(_flat(state_dict)), keep(_flat(parameter_infos))
        if not any(_param_path(k) for k in flat_state):
            raise ValueError(f"PromptCheckpointer: trainable_regex {self._trainable_regex!r} matches no parameter")
        return (traverse_util.unflatten_dict(flat_state, sep="/"),
                traverse_util.unflatten_dict(flat_infos, sep="/"))

    def save(self, train_state, state_transformation_fns=(), **kwargs):
        super().save(train_state, (*state_transformation_fns, self._drop_frozen), **kwargs)
        step = int(checkpoints.get_local_data(train_state.step))
        final_dir = os.path.join(self.checkpoints_dir, f"{checkpoints.get_checkpoint_prefix()}_{step}")
        if jax.process_index() == 0 and os.path.isdir(final_dir):
            with open(os.path.join(final_dir, MARKER), "w") as f:
                json.dump({"trainable_regex": self._trainable_regex,
                           "frozen_checkpoint_path": self._frozen_checkpoint_path}, f)

    # ------------------------------------------------------------------ restore
    def restore(self, step: Optional[int] = None, path: Optional[str] = None, state_transformation_fns=(),
                fallback_state: Optional[Mapping[str, Any]] = None, lazy_parameters: bool = False):
        if path is None:
            step = self.latest_step() if step is None else step
            if not step:
                raise ValueError(f"No checkpoints found in {self.checkpoints_dir}.")
            path, step = self._get_checkpoint_dir(step), None
        ckpt_dir = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.isfile(os.path.join(ckpt_dir, MARKER)):
            frozen_path = self._frozen_checkpoint_path
            if frozen_path is None:
                raise ValueError(f"{ckpt_dir} holds only the prompt; set PromptCheckpointer.frozen_checkpoint_path "
                                 "(the gin files bind it to INITIAL_CHECKPOINT_PATH) to the frozen model")
            frozen = self._frozen_state(frozen_path, fallback_state)
            return super().restore(path=path, state_transformation_fns=state_transformation_fns,
                                   fallback_state=frozen, lazy_parameters=lazy_parameters)
        if fallback_state is None:
            raise ValueError(f"{path} is a frozen model checkpoint: restoring it needs t5x's from-scratch state for "
                             "the prompt; set utils.RestoreCheckpointConfig.fallback_to_scratch = True")
        return self._restore_train_state(self._frozen_state(path, fallback_state))

    def _frozen_state(self, frozen_path: str, base: Optional[Mapping[str, Any]]) -> dict:
        """A full state dict: the frozen parameters read from `frozen_path`, every other entry from `base`
        (t5x's from-scratch state) or, without one, zeros that the prompt checkpoint then overwrites."""
        source = open_checkpoint(frozen_path)
        shapes = _flat(self._train_state.state_dict())
        infos = _flat(self._parameter_infos)
        base = _flat(base) if base is not None else {}
        mesh = getattr(self._partitioner, "mesh", None)
        out, missing = {}, []
        for key, shape in shapes.items():
            if shape is None or shape is traverse_util.empty_node:
                out[key] = shape
                continue
            if not self._is_frozen_param(key):
                out[key] = base[key] if key in base else np.zeros(shape.shape, shape.dtype)
                continue
            name = _param_path(key)
            if name not in source.shapes:
                missing.append(name)
                continue
            if tuple(source.shapes[name]) != tuple(shape.shape):
                raise ValueError(f"{frozen_path}: {name} has shape {tuple(source.shapes[name])}, the model expects "
                                 f"{tuple(shape.shape)}")
            value = np.asarray(source.read(name), shape.dtype)
            axes = getattr(infos.get(key), "axes", None)
            if mesh is not None and axes is not None:
                value = jax.device_put(value, jax.sharding.NamedSharding(mesh, axes))
            out[key] = value
        if missing:
            raise ValueError(f"{frozen_path} lacks {len(missing)} frozen parameters of the model, e.g. "
                             f"{missing[:4]}; is it the model the gin files describe?")
        return traverse_util.unflatten_dict(out, sep="/")
