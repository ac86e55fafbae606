"""Device mesh and t5x's logical-axis rules: how parameters and batches are placed.

Parameters carry logical axis names (t5x's: 'vocab', 'embed', 'mlp', 'heads',
'joined_kv', 'kv', 'relpos_buckets', plus 'prompt' and 'prompt_embed' for the soft
prompt).  The rules below map them onto a ('data', 'model') mesh; the prompt is
always replicated (it is tiny and every example uses it).
"""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning.errors import UserError

LogicalRules = Sequence[Tuple[str, Optional[str]]]

# t5x's `standard_logical_axis_rules()` for 1-D data + 1-D model parallelism.
STANDARD_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("length", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
    # The soft prompt (and a bank of them) is replicated on every device.
    ("prompt", None),
    ("prompt_embed", None),
    ("prompt_bank", None),
)


def make_mesh(model_parallel_size: int = 1, devices=None) -> Mesh:
    """A ('data', 'model') mesh over all devices of all processes.

    Built with `Mesh` directly: `jax.make_mesh` defaults to Explicit axis types
    in jax 0.10, which the logical-rule machinery does not use.
    """
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) % model_parallel_size:
        raise UserError(
            f"model_parallel_size={model_parallel_size} does not divide the {len(devices)} devices")
    grid = np.asarray(devices).reshape(len(devices) // model_parallel_size, model_parallel_size)
    return Mesh(grid, ("data", "model"))


def logical_to_sharding(logical_specs, mesh: Mesh, rules: LogicalRules = STANDARD_RULES):
    """Map a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along 'data' on their leading axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
