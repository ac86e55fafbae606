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


def test_t5x_packed_rows_give_each_example_its_own_logits(tiny):
    """Without a soft prompt, t5x's packed rows work (tests/test_packing.py packs with prompts)."""
    module, variables = tiny
    rows = [([3, 4, 1], [8, 1]), ([5, 6, 7, 1], [9, 10, 1])]
    pad = lambda x, n: jnp.array([x + [0] * (n - len(x))])  # noqa: E731
    packed = dict(encoder_segment_ids=pad([1] * 3 + [2] * 4, 8), encoder_positions=pad([0, 1, 2, 0, 1, 2, 3], 8),
                  decoder_segment_ids=pad([1] * 2 + [2] * 3, 6), decoder_positions=pad([0, 1, 0, 1, 2], 6))
    logits = module.apply(variables, pad([3, 4, 1, 5, 6, 7, 1], 8), pad([0, 8, 0, 9, 10], 6),
                          pad([8, 1, 9, 10, 1], 6), **packed)[0]
    start = 0
    for inputs, targets in rows:
        alone = module.apply(variables, pad(inputs, 8), pad([0] + targets[:-1], 6), pad(targets, 6))[0]
        np.testing.assert_allclose(logits[start:start + len(targets)], alone[:len(targets)], atol=1e-5, rtol=0)
        start += len(targets)
    with pytest.raises(ValueError, match="packed inputs need both encoder_segment_ids and decoder_segment_ids"):
        module.apply(variables, pad([3, 4, 1], 8), pad([0, 8], 6), pad([8, 1], 6),
                     encoder_segment_ids=packed["encoder_segment_ids"])
