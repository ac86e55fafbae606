"""A run's identity: what makes a run that run, recorded in every checkpoint and compared on resume.

In it: the data stream (task, split, feature lengths, batch size, seeds, shuffling, prompt rows), the loss
settings, what is trained and how (trainable regex, each trainable array's shape, a fingerprint of the
initial prompt, which covers its initializer and seed, and the optimizer's gin bindings), and the frozen
model's content.  Not in it: the mesh, the device count, MODEL_PARALLEL_SIZE, NUM_MICROBATCHES,
MICROBATCH_POSITIONS and LENGTH_BUCKETS, which a run may change between starts without changing its steps.
"""
import dataclasses
import hashlib
import json
from typing import Any, Dict, List

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# Values of each array hashed by `fingerprint`: enough to tell models apart, cheap for XXL.
SAMPLES_PER_ARRAY = 4096
# DatasetConfig fields that change the steps' shapes, not their values.
NOT_IDENTITY = ("length_buckets",)
# The optimizer configurables whose gin bindings are part of the identity.
OPTIMIZER_CONFIGURABLES = tuple(f"prompt_tuning.train.optimizers.{name}" for name in (
    "make_optimizer", "adafactor", "adam", "sgd", "learning_rate_schedule"))


def fingerprint(tree) -> str:
    """sha256 of every array's path, shape, dtype and an evenly strided sample of its values (exact bits).

    The sample is gathered by position in the flattened global array, so it does not depend on the mesh or
    on how the arrays are sharded; a copy of a checkpoint moved elsewhere has the same fingerprint.
    """
    flat = traverse_util.flatten_dict(tree, sep="/")

    def sample(x):
        x = jnp.ravel(x)
        return x[np.linspace(0, x.size - 1, min(x.size, SAMPLES_PER_ARRAY)).astype(np.int64)]
    samples = jax.device_get(jax.jit(lambda t: {k: sample(v) for k, v in t.items()})(flat))
    digest = hashlib.sha256()
    for path in sorted(flat):
        digest.update(f"{path}:{tuple(flat[path].shape)}:{flat[path].dtype};".encode())
        digest.update(np.ascontiguousarray(samples[path]).tobytes())
    return digest.hexdigest()[:16]


def _bindings(name: str) -> Dict[str, str]:
    try:
        return {k: repr(v) for k, v in sorted(gin.get_bindings(name, resolve_references=False).items())}
    except (ValueError, KeyError):  # not registered / never bound
        return {}


def run_identity(trainer, dataset_cfg) -> Dict[str, Any]:
    """The identity of a run of `trainer` (see setup.build_trainer) on `dataset_cfg` (a data.DatasetConfig)."""
    shapes = {k: list(v.shape) for k, v in traverse_util.flatten_dict(trainer.initial_trainable, sep="/").items()}
    identity = {
        "data": {k: v for k, v in dataclasses.asdict(dataset_cfg).items() if k not in NOT_IDENTITY},
        "loss": {"z_loss": trainer.z_loss, "loss_normalizing_factor": str(trainer.loss_normalizing_factor)},
        "trainable_regex": trainer.trainable_regex,
        "trainable_shapes": shapes,
        "initial_trainable": fingerprint(trainer.initial_trainable),
        "optimizer": {name.rsplit(".", 1)[1]: b for name in OPTIMIZER_CONFIGURABLES if (b := _bindings(name))},
        "frozen_dtype": trainer.frozen_dtype,
        "frozen_model": fingerprint(trainer.frozen),
        "seed": trainer.seed,
    }
    return json.loads(json.dumps(identity, default=str))   # as it reads back from the checkpoint's JSON meta


# Identity fields added after runs were first recorded, with the value a run that lacks them had; an older
# checkpoint without the field continues as long as the current run keeps that value.
ADDED_FIELDS = {"data.group_by_length": 0, "data.pack": False}


def differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    """'key: saved -> current' for each leaf that differs (nested keys joined by '.')."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, ADDED_FIELDS.get(prefix + key)), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out
