"""Give an already-loaded network a trained prompt: `prompt_tuning.load_pretrained(path, prompt=P)` ends here."""
import functools
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.checkpoint_io import read_prompt, read_prompt_bank
from prompt_tuning.prompts.processor import PromptProcessor


def _hook(module) -> str:
    """The attribute through which the network takes its input processor (each network names its own)."""
    if not hasattr(module, "PROCESSOR_HOOK"):
        raise TypeError(f"{type(module).__name__} has no input-processor hook (PROCESSOR_HOOK)")
    return module.PROCESSOR_HOOK


def _abstract_init(module, bank: bool):
    tokens = jnp.ones((1, 1), jnp.int32)
    args = (tokens, tokens) if _hook(module) == "encoder_input_processor_factory" else (tokens,)
    index = jnp.zeros((1,), jnp.int32) if bank else None
    return nn.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, prompt_index=index))["params"])


def prompt_factory(prompt, placement: str = "prefix"):
    """(processor factory holding `prompt` as its initial value, the value): see `attach_prompt`."""
    lengths = None
    if isinstance(prompt, (list, tuple)):
        value, lengths = read_prompt_bank(prompt)
    else:
        value = read_prompt(prompt)
    bank = value.shape[0] if value.ndim == 3 else None
    if lengths is not None and len(set(lengths)) == 1:
        lengths = None  # equal lengths: a plain bank
    factory = functools.partial(PromptProcessor, length=value.shape[-2], num_prompts=bank, placement=placement,
                                lengths=lengths, initializer=initializers.from_array(value))
    return factory, value


def attach_prompt(module: nn.Module, params, prompt, placement: str = "prefix") -> Tuple[nn.Module, dict]:
    """(prompted module, params with the prompt added); the frozen params are reused as they are.

    The new parameter's path is whatever the model gives its processor (found by abstract init, so
    nothing is computed); with sharded params the prompt is replicated on their mesh.

    `prompt`: one prompt (array or path, see `read_prompt`; a bank [n, length, embed] stays a bank), or a
    list of them, of any lengths: a bank whose rows keep their own lengths (`read_prompt_bank`), selected
    per example by `prompt_index` in the list's order.
    """
    factory, value = prompt_factory(prompt, placement)
    prompted = module.clone(**{_hook(module): factory})
    flat = traverse_util.flatten_dict(nn.unbox(params))
    expected = traverse_util.flatten_dict(_abstract_init(prompted, value.ndim == 3))
    missing = [path for path in expected if path not in flat]
    if len(missing) != 1 or expected[missing[0]].shape != value.shape:
        got = {"/".join(p): expected[p].shape for p in missing}
        raise UserError(f"attach_prompt: expected one new parameter of shape {value.shape}, model adds {got}")
    leaf = jnp.asarray(value)
    sharding = getattr(next(iter(flat.values())), "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        leaf = jax.device_put(leaf, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    flat[missing[0]] = leaf
    return prompted, traverse_util.unflatten_dict(flat)
