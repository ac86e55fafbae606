"""Decoder-only model with a prompt: prompt outside the loss, prompt in the cache, decode == teacher forcing."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.prompts import initializers
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.decoder_only import DecoderOnly

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_decoder_layers=2)
P, T = 3, 6
TOKENS = np.array([[0, 5, 6, 7, 8, 9], [0, 9, 8, 7, 6, 5]], np.int32)   # decoder inputs (shifted targets)
TARGETS = np.concatenate([TOKENS[:, 1:], np.ones((2, 1), np.int32)], axis=1)
PREFIX = 3  # prefix-LM: the first 3 positions are the input


@pytest.fixture(scope="module")
def model():
    module = DecoderOnly(CONFIG, input_processor_factory=functools.partial(
        prompts.PromptProcessor, length=P, initializer=initializers.uniform()))
    params = nn.unbox(module.init(jax.random.PRNGKey(0), TOKENS, TARGETS))["params"]
    return module, params


def test_prompt_param_and_logits_exclude_prompt_positions(model):
    module, params = model
    assert params["decoder"]["prompt"]["prompt"].shape == (P, CONFIG.emb_dim)
    logits = module.apply({"params": params}, TOKENS, TARGETS)
    assert logits.shape == (2, T, CONFIG.vocab_size)
    other = dict(params, decoder=dict(params["decoder"], prompt={"prompt": params["decoder"]["prompt"]["prompt"] + 1}))
    assert np.abs(module.apply({"params": other}, TOKENS, TARGETS) - logits).max() > 1e-3


def decode_all(module, params, first, causal_attention=None):
    """Prefill the prompt + `first` tokens, then feed the rest of TOKENS one by one."""
    _, cache = module.apply({"params": params}, jnp.ones((2, T), jnp.int32), decode=True, mutable=["cache"])
    assert cache["cache"]["decoder"]["layers_0"]["self_attention"]["cached_key"].shape[1] == P + T
    step = jax.jit(lambda c, t: module.apply({"params": params, **c}, t, decode=True, mutable=["cache"]))
    prefill = jax.jit(lambda c, t, f: module.apply({"params": params, **c}, t, decoder_causal_attention=f,
                                                   decode=True, prefill=True, mutable=["cache"]))
    logits, cache = prefill(cache, TOKENS[:, :first], causal_attention)
    out = [logits]
    for i in range(first, T):
        logits, cache = step(cache, TOKENS[:, i:i + 1])
        out.append(logits)
    assert int(cache["cache"]["decoder"]["cache_index"]) == P + T
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("first", [1, 4])
def test_causal_decoding_with_prompt_in_cache_equals_teacher_forcing(model, first):
    module, params = model
    forced = module.apply({"params": params}, TOKENS)
    np.testing.assert_allclose(decode_all(module, params, first), forced, atol=1e-5)


def test_prefix_lm_decoding_equals_teacher_forcing(model):
    module, params = model
    flags = np.zeros_like(TOKENS)
    flags[:, :PREFIX] = 1
    forced = module.apply({"params": params}, TOKENS, decoder_causal_attention=flags)
    causal = module.apply({"params": params}, TOKENS)
    assert np.abs(forced - causal).max() > 1e-4, "prefix-LM attention must differ from causal"
    decoded = decode_all(module, params, PREFIX, causal_attention=flags[:, :PREFIX])
    np.testing.assert_allclose(decoded, forced, atol=1e-5)


def test_gradient_reaches_prompt(model):
    module, params = model

    def loss(prompt):
        p = dict(params, decoder=dict(params["decoder"], prompt={"prompt": prompt}))
        logits = module.apply({"params": p}, TOKENS, TARGETS)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), TARGETS[..., None], -1).mean()
    grad = jax.jit(jax.grad(loss))(params["decoder"]["prompt"]["prompt"])
    assert np.abs(grad).min(axis=1).max() > 0


def test_attach_prompt_to_decoder_only(model):
    module, params = model
    bare = DecoderOnly(CONFIG)
    frozen = {"decoder": {k: v for k, v in params["decoder"].items() if k != "prompt"}}
    attached, new = prompts.attach_prompt(bare, frozen, params["decoder"]["prompt"]["prompt"])
    np.testing.assert_array_equal(attached.apply({"params": new}, TOKENS, TARGETS),
                                  module.apply({"params": params}, TOKENS, TARGETS))


def test_only_prefix_placement():
    module = DecoderOnly(CONFIG, input_processor_factory=functools.partial(
        prompts.PromptProcessor, length=P, placement="suffix"))
    with pytest.raises(ValueError, match="decoder-only prompts are prefixes"):
        module.init(jax.random.PRNGKey(0), TOKENS)
