"""Placing the model's parameters on the mesh: from scratch, or the frozen checkpoint plus a new prompt."""
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from prompt_tuning import partitioning

PyTree = Any


def dummy_inputs(task_feature_lengths: Mapping[str, int], batch_size: int = 1):
    """Encoder and decoder token arrays with the run's shapes (init and sharding only look at shapes)."""
    enc = jnp.ones((batch_size, task_feature_lengths["inputs"]), jnp.int32)
    dec = jnp.ones((batch_size, task_feature_lengths["targets"]), jnp.int32)
    return enc, dec, dec


def param_shardings(module: nn.Module, inputs, mesh: Mesh, rules=partitioning.STANDARD_RULES) -> PyTree:
    """NamedShardings of every parameter from its logical axes."""
    specs = partitioning.param_logical_specs(module, *inputs)
    return partitioning.logical_to_sharding(specs, mesh, rules)


def init_params(module: nn.Module, inputs, mesh: Mesh, rng: jax.Array, loaded: Optional[PyTree] = None,
                rules=partitioning.STANDARD_RULES) -> Tuple[PyTree, PyTree]:
    """(params, shardings): `loaded` (the frozen checkpoint) with only the missing parameters initialised.

    With `loaded` None every parameter is initialised (a random model: tests and smoke runs).
    Initialisation runs under jit with the output sharded, so no host ever holds the full model twice.
    """
    shardings = param_shardings(module, inputs, mesh, rules)
    if loaded is None:
        def init(rng):
            return nn.unbox(module.init(rng, *inputs)["params"])
        return jax.jit(init, out_shardings=shardings)(rng), shardings

    def complete(loaded, rng):
        _, variables = module.apply({"params": loaded}, *inputs, rngs={"params": rng}, mutable=["params"])
        return nn.unbox(variables["params"])
    loaded_shardings = _matching(shardings, loaded)
    return jax.jit(complete, in_shardings=(loaded_shardings, None), out_shardings=shardings)(loaded, rng), shardings


def _matching(shardings, loaded):
    """Shardings restricted to the paths of `loaded`; a loaded path the model lacks is a clear error."""
    from flax import traverse_util
    flat_sh = traverse_util.flatten_dict(shardings, sep="/")
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
    unknown = sorted(set(flat_loaded) - set(flat_sh))
    if unknown:
        raise ValueError(f"checkpoint parameter {unknown[0]} is not in the model ({len(unknown)} such); "
                         "check the model gin file matches the checkpoint")
    return traverse_util.unflatten_dict({k: flat_sh[k] for k in flat_loaded}, sep="/")
