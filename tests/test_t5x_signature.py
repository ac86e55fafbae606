"""The network takes t5x's call signature (no t5x needed): positions and segment ids, decode, max_decode_length."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.t5.config import get_config
from prompt_tuning.t5.network import Transformer


@pytest.fixture(scope="module")
def tiny():
    config = get_config("t5_1_1", "small", vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                        num_encoder_layers=1, num_decoder_layers=1)
    module = Transformer(config)
    ones = jnp.ones((2, 5), jnp.float32)  # t5x initialises with float32 ones
    variables = module.init(jax.random.PRNGKey(0), ones, ones, ones, encoder_positions=None,
                            decoder_positions=None, encoder_segment_ids=None, decoder_segment_ids=None,
                            decode=False, enable_dropout=False)
    return module, variables


def test_t5x_keywords_accepted_and_cache_initialises_without_max_decode_length(tiny):
    module, variables = tiny
    tokens = jnp.array([[3, 4, 5, 1, 0], [6, 7, 1, 0, 0]])
    logits = module.apply(variables, tokens, tokens, tokens, encoder_segment_ids=None, decoder_positions=None)
    np.testing.assert_array_equal(logits, module.apply(variables, tokens, tokens, tokens))
    # t5x's _compute_kv_cache: decode=True at __call__ without max_decode_length.
    _, cache = module.apply(variables, tokens, tokens, tokens, decode=True, mutable=["cache"])
    assert "cache" in cache


@pytest.mark.parametrize("name", ["encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                                  "decoder_positions"])
def test_packed_inputs_are_refused(tiny, name):
    module, variables = tiny
    tokens = jnp.array([[3, 4, 1, 5, 1]])
    with pytest.raises(ValueError, match=f"packed inputs are not supported.*{name}"):
        module.apply(variables, tokens, tokens, tokens, **{name: jnp.ones_like(tokens)})
