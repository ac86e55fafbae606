"""Placing the model's parameters on the mesh: from scratch, or the frozen checkpoint plus a new prompt."""
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
from flax import traverse_util
from jax.sharding import Mesh

from prompt_tuning import partitioning
from prompt_tuning.errors import UserError
from prompt_tuning.models import BaseModel

PyTree = Any


def logical_specs(model: BaseModel, batch: Mapping[str, Any]) -> PyTree:
    """Logical PartitionSpecs of the model's parameters, found without allocating them."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    return nn.get_partition_spec(abstract)["params"]


def param_shardings(model: BaseModel, batch: Mapping[str, Any], mesh: Mesh, rules=None) -> PyTree:
    """NamedShardings of every parameter from its logical axes: by `rules` when given, else by the
    configured `partitioning.parameter_partitioning_dims` (1-D, or 2-D weight matrices)."""
    if rules is not None:
        return partitioning.logical_to_sharding(logical_specs(model, batch), mesh, rules)
    return partitioning.param_sharding(logical_specs(model, batch), mesh)


def abstract_params(model: BaseModel, batch: Mapping[str, Any], mesh: Mesh, rules=None) -> Tuple[PyTree, PyTree]:
    """(params, shardings) as `init_params` gives them, but as `jax.ShapeDtypeStruct`s carrying their
    shardings: nothing is allocated (compile-only plans of models of any size)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    specs = nn.get_partition_spec(abstract)["params"]
    shardings = (partitioning.logical_to_sharding(specs, mesh, rules) if rules is not None
                 else partitioning.param_sharding(specs, mesh))
    shapes = nn.unbox(abstract["params"])
    params = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                    shapes, shardings)
    return params, shardings


def init_params(model: BaseModel, batch: Mapping[str, Any], mesh: Mesh, rng: jax.Array,
                loaded: Optional[PyTree] = None, rules=None) -> Tuple[PyTree, PyTree]:
    """(params, shardings): `loaded` (the frozen checkpoint) with only the missing parameters initialised.

    `batch`: any batch of the run's shapes (`model.dummy_batch(task_feature_lengths)`).  With `loaded` None
    every parameter is initialised (a random model: tests and smoke runs).  Initialisation runs under jit
    with the output sharded, so no host ever holds the full model twice.
    """
    shardings = param_shardings(model, batch, mesh, rules)
    if loaded is None:
        def init(rng):
            return nn.unbox(model.init(rng, batch)["params"])
        return jax.jit(init, out_shardings=shardings)(rng), shardings

    def complete(loaded, rng):
        return nn.unbox(model.init(rng, batch, params=loaded)["params"])
    loaded_shardings = _matching(shardings, loaded)
    return jax.jit(complete, in_shardings=(loaded_shardings, None), out_shardings=shardings)(loaded, rng), shardings


def _matching(shardings, loaded):
    """Shardings restricted to the paths of `loaded`; a loaded path the model lacks is a clear error."""
    flat_sh = traverse_util.flatten_dict(shardings, sep="/")
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
    unknown = sorted(set(flat_loaded) - set(flat_sh))
    if unknown:
        raise UserError(f"checkpoint parameter {unknown[0]} is not in the model ({len(unknown)} such); "
                         "check the model gin file matches the checkpoint")
    return traverse_util.unflatten_dict({k: flat_sh[k] for k in flat_loaded}, sep="/")
