"""Device mesh and t5x's logical-axis rules: how parameters and batches are placed.

Parameters carry logical axis names (t5x's: 'vocab', 'embed', 'mlp', 'heads',
'joined_kv', 'kv', 'relpos_buckets', plus 'prompt' and 'prompt_embed' for the soft
prompt).  The rules below map them onto a ('data', 'model') mesh; the prompt is
always replicated (it is tiny and every example uses it).

Two gin switches (t5x's names), both leaving every number unchanged:
  parameter_partitioning_dims=2   weight matrices (leaves with an 'mlp', 'joined_kv' or 'vocab' axis) also
                                  split their 'embed' axis over 'data' (FSDP-like); layer norms,
                                  relative-position tables and the prompt stay replicated.
  activation_partitioning_dims    0: no activation constraint (XLA propagates from the parameters);
                                  1: activations' 'batch' on 'data' as laid out in the model
                                  (`nn.with_logical_constraint`); 2: also their 'embed' on 'model'.
"""
import contextlib
import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import gin
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


# Weight matrices: the leaves 2-D parameter sharding splits on 'data' too (along their 'embed' axis).
MATRIX_AXES = ("mlp", "joined_kv", "vocab")
MATRIX_2D_RULES: LogicalRules = tuple(("embed", "data") if name == "embed" else (name, axis)
                                      for name, axis in STANDARD_RULES)
# Activations with activation_partitioning_dims=2: the residual stream's 'embed' on 'model' as well.
ACTIVATION_2D_RULES: LogicalRules = tuple(("embed", "model") if name == "embed" else (name, axis)
                                          for name, axis in STANDARD_RULES)


@gin.configurable
def parameter_partitioning_dims(dims: int = 1) -> int:
    """1: weights split on 'model' only (t5x's default); 2: weight matrices on 'data' too (FSDP-like)."""
    if dims not in (1, 2):
        raise ValueError(f"parameter_partitioning_dims={dims}: use 1 or 2")
    return dims


@gin.configurable
def activation_partitioning_dims(dims: int = 0) -> int:
    """0: no activation sharding constraints; 1: batch on 'data'; 2: batch on 'data' and embed on 'model'."""
    if dims not in (0, 1, 2):
        raise ValueError(f"activation_partitioning_dims={dims}: use 0, 1 or 2")
    return dims


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


def _check_known(logical_specs, rules: LogicalRules) -> None:
    """flax maps an axis name no rule names to 'replicated'; here that is an error, not a silent fallback."""
    known = {name for name, _ in rules}
    for spec in jax.tree_util.tree_leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
        unknown = [a for a in spec if a is not None and a not in known]
        if unknown:
            raise ValueError(f"logical axis {unknown[0]!r} (of a parameter with axes {tuple(spec)}) has no "
                             "partitioning rule; add it to partitioning.STANDARD_RULES")


def logical_to_sharding(logical_specs, mesh: Mesh, rules: LogicalRules = STANDARD_RULES):
    """Map a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    _check_known(logical_specs, rules)
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_rules(spec: PartitionSpec, dims: int) -> LogicalRules:
    """The rules of one parameter: a weight matrix under 2-D sharding gets MATRIX_2D_RULES."""
    if dims == 2 and any(a in MATRIX_AXES for a in spec):
        return MATRIX_2D_RULES
    return STANDARD_RULES


def param_sharding(logical_specs, mesh: Mesh, dims: Optional[int] = None):
    """NamedShardings of a parameter tree's logical specs under `parameter_partitioning_dims` (gin's by
    default).  Every sharded dimension must divide evenly; jit reports one that does not."""
    dims = parameter_partitioning_dims() if dims is None else dims
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    _check_known(logical_specs, STANDARD_RULES)
    return jax.tree_util.tree_map(
        lambda spec: nn.logical_to_mesh_sharding(spec, mesh, param_rules(spec, dims)), logical_specs,
        is_leaf=is_spec)


def activation_rules(dims: Optional[int] = None) -> Optional[LogicalRules]:
    """The rules the model's `nn.with_logical_constraint`s use; None: no constraints."""
    dims = activation_partitioning_dims() if dims is None else dims
    return {0: None, 1: STANDARD_RULES, 2: ACTIVATION_2D_RULES}[dims]


@contextlib.contextmanager
def activation_constraints(mesh: Mesh, dims: Optional[int] = None):
    """Trace a step inside this so the model's logical activation constraints apply on `mesh`.

    flax's constraints are no-ops without logical rules and a current mesh; with dims 0 nothing is set.
    """
    rules = activation_rules(dims)
    if rules is None:
        yield
        return
    # The abstract mesh (not jax.set_mesh): this is entered while jit traces.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def constrained(fn, mesh: Mesh, dims: Optional[int] = None):
    """`fn` traced under `activation_constraints(mesh, dims)` (dims read when this is called)."""
    dims = activation_partitioning_dims() if dims is None else dims

    @functools.wraps(fn)   # jit names the program after `fn` (e.g. jit__step)
    def wrapped(*args, **kwargs):
        with activation_constraints(mesh, dims):
            return fn(*args, **kwargs)
    return wrapped


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along 'data' on their leading axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
