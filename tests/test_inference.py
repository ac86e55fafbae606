"""The models' scoring and decoding: t5x parity, cached decoding == teacher forcing, sampling, decoder-only."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding, losses, models, prompts
from prompt_tuning.t5 import decoder_only, layers, network
from prompt_tuning.t5.config import T5Config
from conftest import shared_path

FIXTURE_CONFIG = T5Config(vocab_size=128, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                          num_encoder_layers=2, num_decoder_layers=2, mlp_activations=("gelu", "linear"),
                          float32_attention_logits=False)
TINY = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
                num_decoder_layers=2)
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


# ---------------------------------------------------------------------------------------------------------------
# Parity with t5x's EncoderDecoderModel (shared/fixtures/t5x_t5_1_1_tiny/reference.npz)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5x():
    from prompt_tuning.checkpoints import read_params
    params = read_params(str(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0")))
    ref = dict(np.load(shared_path("fixtures", "t5x_t5_1_1_tiny", "reference.npz")))
    return models.EncoderDecoderModel(network.Transformer(FIXTURE_CONFIG)), params, {k: ref[k] for k in FEATURES}, ref


def test_t5x_score_batch_and_token_log_probs(t5x):
    model, params, batch, ref = t5x
    token_log_probs = np.asarray(model.token_log_probs(params, batch))
    assert np.abs(token_log_probs - ref["token_log_probs"]).max() <= 1e-4
    assert np.abs(np.asarray(model.score_batch(params, batch)) - ref["score_batch"]).max() <= 1e-4


def test_t5x_greedy(t5x):
    model, params, batch, ref = t5x
    tokens, scores = model.predict_batch(params, batch, method="greedy")
    np.testing.assert_array_equal(tokens, ref["greedy_decodes"])
    assert np.abs(np.asarray(scores) - ref["greedy_scores"]).max() <= 1e-4


def test_t5x_beam_search_all_beams(t5x):
    model, params, batch, ref = t5x
    tokens, scores = model.predict_batch(params, batch, method="beam", num_decodes=4, alpha=0.6,
                                         return_all_decodes=True)
    np.testing.assert_array_equal(tokens, ref["beam_all_decodes"])
    assert np.abs(np.asarray(scores) - ref["beam_all_scores"]).max() <= 1e-4  # incl. the -1e7 empty slots
    np.testing.assert_array_equal(tokens[:, -1], ref["beam_decodes"])
    assert np.abs(np.asarray(scores[:, -1]) - ref["beam_scores"]).max() <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Cached decoding on a tiny random model
# ---------------------------------------------------------------------------------------------------------------

def tiny_batch():
    rng = np.random.RandomState(1)
    enc = rng.randint(2, 32, (2, 6)).astype(np.int32)
    enc[0, 4:] = 0
    dec = np.concatenate([np.zeros((2, 1), np.int32), rng.randint(2, 32, (2, 4)).astype(np.int32)], axis=1)
    return dict(encoder_input_tokens=enc, decoder_input_tokens=dec)


def _tiny_model(scan_layers):
    module = network.Transformer(TINY.replace(scan_layers=scan_layers))
    batch = tiny_batch()
    params = nn.unbox(module.init(jax.random.PRNGKey(3), batch["encoder_input_tokens"],
                                  batch["decoder_input_tokens"])["params"])
    return module, params, batch


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model(scan_layers=False)


@pytest.fixture(scope="module")
def tiny_scanned():
    return _tiny_model(scan_layers=True)


@pytest.fixture(params=["unrolled", "scanned"])
def either(request):
    """Both layouts, for the cache tests (scanned caches stack layers on axis 1, batch stays leading)."""
    return request.getfixturevalue("tiny" if request.param == "unrolled" else "tiny_scanned")


@functools.partial(jax.jit, static_argnames=("module", "max_len"))
def _decode_step(module, params, cache, encoded, enc_tokens, token, max_len):
    logits, variables = module.apply({"params": params, "cache": cache}, encoded, enc_tokens, token, decode=True,
                                     max_decode_length=max_len, method=module.decode, mutable=["cache"])
    return logits[:, 0], variables["cache"]


def test_cache_layout(either):
    module, params, batch = either
    cache, _ = models.EncoderDecoderModel(module).decoding_state(params, batch, max_decode_len=5, num_decodes=1)
    leaves = jax.tree_util.tree_leaves_with_path(cache)
    assert any("cached_key" in jax.tree_util.keystr(p) for p, _ in leaves)
    for path, leaf in leaves:
        assert leaf.ndim == 0 or leaf.shape[0] == 2, jax.tree_util.keystr(path)  # batch leading, or a scalar index
    scalars = [jax.tree_util.keystr(p) for p, leaf in leaves if leaf.ndim == 0]
    assert scalars == ["['decoder']['cache_index']"]  # one position counter shared by the layers


def test_standalone_attention_keeps_its_own_cache_index():
    """Used alone (as t5x's layer), the attention counts positions itself; steps equal causal attention."""
    attention = layers.MultiHeadDotProductAttention(num_heads=2, head_dim=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    causal = layers.mask_to_bias(layers.make_causal_mask(5), jnp.float32)
    variables = attention.init(jax.random.PRNGKey(1), x, x, causal, decode=True)
    full = attention.apply({"params": variables["params"]}, x, x, causal)
    cache = variables["cache"]
    assert int(cache["cache_index"]) == 0
    for t in range(5):
        out, mutated = attention.apply({"params": variables["params"], "cache": cache}, x[:, t:t + 1],
                                       x[:, t:t + 1], None, decode=True, mutable=["cache"])
        cache = mutated["cache"]
        np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert int(cache["cache_index"]) == 5


def test_cached_decoding_equals_teacher_forcing(either):
    """Feeding the decoder inputs one token at a time through the cache gives the teacher-forced logits."""
    module, params, batch = either
    enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    # No targets: causal mask only, as in decoding.
    forced = module.apply({"params": params}, enc, dec)
    encoded = module.apply({"params": params}, enc, method=module.encode)
    length = dec.shape[1]
    cache, _ = models.EncoderDecoderModel(module).decoding_state(params, batch, max_decode_len=length, num_decodes=1)
    for t in range(length):
        step_logits, cache = _decode_step(module, params, cache, encoded, enc, dec[:, t:t + 1], length)
        np.testing.assert_allclose(step_logits, forced[:, t], atol=1e-5, rtol=1e-5, err_msg=f"step {t}")


def _rescore(module, params, enc, tokens):
    """Teacher-forced summed log-likelihood of decodes [B, N, T] up to and including the first EOS.

    Decoding masks nothing but the future, and a sampled token may be 0 (pad), so no targets are passed here
    (target-based masking would drop those positions).
    """
    b, n, t = tokens.shape
    flat = np.asarray(tokens).reshape(b * n, t)
    before_eos = np.cumsum(np.cumsum(flat == 1, axis=1), axis=1) <= 1  # up to and including the first EOS
    logits = module.apply({"params": params}, np.repeat(enc, n, axis=0), np.pad(flat, ((0, 0), (1, 0)))[:, :-1])
    scores = losses.token_log_probs(logits, flat, before_eos).sum(-1)
    return np.asarray(scores).reshape(b, n)


def test_sampling_scores_equal_teacher_forced_scores(tiny):
    module, params, batch = tiny
    enc = batch["encoder_input_tokens"]
    model = models.EncoderDecoderModel(module)
    tokens, scores = model.predict_batch(params, batch, method="sample", num_decodes=3, temperature=1.5,
                                         rng=jax.random.PRNGKey(7), return_all_decodes=True)
    assert tokens.shape == (2, 3, 5) and scores.shape == (2, 3)
    assert np.all(np.diff(np.asarray(scores), axis=1) >= 0)  # ascending, best last
    np.testing.assert_allclose(_rescore(module, params, enc, tokens), scores, atol=1e-4)
    again, _ = model.predict_batch(params, batch, method="sample", num_decodes=3, temperature=1.5,
                                   rng=jax.random.PRNGKey(7), return_all_decodes=True)
    np.testing.assert_array_equal(again, tokens)


def test_beam_scores_are_length_normalised_likelihoods(tiny):
    module, params, batch = tiny
    tokens, scores = models.EncoderDecoderModel(module).predict_batch(params, batch, method="beam", num_decodes=3,
                                                                      max_decode_len=4, return_all_decodes=True)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    raw = _rescore(module, params, batch["encoder_input_tokens"], tokens)
    for b in range(2):
        for k in range(3):
            if scores[b, k] <= decoding.NEG_INF / 2:
                continue  # empty finished slot
            ended = np.flatnonzero(tokens[b, k] == 1)
            length = ended[0] + 1 if len(ended) else None
            expected = raw[b, k] / decoding.brevity_penalty(0.6, length) if length else raw[b, k]
            assert abs(expected - scores[b, k]) < 1e-4, (b, k)


def test_greedy_is_argmax_of_teacher_forcing(tiny):
    module, params, batch = tiny
    tokens, scores = models.EncoderDecoderModel(module).predict_batch(params, batch, method="greedy",
                                                                      max_decode_len=4)
    tokens = np.asarray(tokens)
    dec_in = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    forced = np.asarray(module.apply({"params": params}, batch["encoder_input_tokens"], dec_in))
    for b in range(2):
        for t in range(4):
            if t > 0 and tokens[b, t - 1] in (0, 1):
                assert tokens[b, t] == 0  # nothing after EOS
            else:
                assert tokens[b, t] == forced[b, t].argmax()


def test_jitted_once_per_shape(tiny):
    """Keys the model does not read (strings, ids) are dropped before jit: no retrace, no error."""
    module, params, batch = tiny
    model = models.EncoderDecoderModel(module)
    model.predict_batch(params, batch, max_decode_len=3)
    size = models._predict_jit._cache_size()
    model.predict_batch(params, dict(batch, extra=np.array(["ignored"])), max_decode_len=3)
    assert models._predict_jit._cache_size() == size


def test_predict_rejects_unknown_method(tiny):
    module, params, batch = tiny
    with pytest.raises(ValueError, match="unknown method"):
        models.EncoderDecoderModel(module).predict_batch(params, batch, method="nucleus")


# ---------------------------------------------------------------------------------------------------------------
# Decoder-only prefix LM: decoding with the prompt in the cache, rows of different input lengths
# ---------------------------------------------------------------------------------------------------------------

DECODER_ONLY = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_decoder_layers=2)


@pytest.fixture(scope="module")
def prefix_lm():
    """A prompted decoder-only model and a PrefixLM batch whose rows have inputs of 3 and 2 tokens."""
    model = models.DecoderOnlyModel(decoder_only.DecoderOnly(
        DECODER_ONLY, input_processor_factory=functools.partial(prompts.PromptProcessor, length=3)))
    batch = {"decoder_input_tokens": np.array([[0, 5, 6, 1, 9, 1, 0, 0], [0, 7, 1, 9, 1, 0, 0, 0]], np.int32),
             "decoder_target_tokens": np.array([[5, 6, 1, 9, 1, 0, 0, 0], [7, 1, 9, 1, 0, 0, 0, 0]], np.int32),
             "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], np.int32),
             "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]], np.int32)}
    params = nn.unbox(model.init(jax.random.PRNGKey(0), batch)["params"])
    return model, params, batch


def _prefix_lm_rescore(model, params, prefix, tokens):
    """(teacher-forced argmax per position, log-likelihood up to EOS) of `tokens` after `prefix`, row alone."""
    seq = list(prefix) + list(tokens)
    n = len(prefix)
    batch = {"decoder_input_tokens": np.array([seq], np.int32),
             "decoder_target_tokens": np.ones((1, len(seq)), np.int32),
             "decoder_causal_attention": np.array([[1] * n + [0] * len(tokens)], np.int32)}
    log_probs = np.asarray(jax.nn.log_softmax(model.logits(params, batch)[0]))[n - 1:n - 1 + len(tokens)]
    before_eos = np.cumsum(np.cumsum(np.asarray(tokens) == 1)) <= 1
    return log_probs.argmax(-1), float(sum(log_probs[i, t] for i, t in enumerate(tokens) if before_eos[i]))


def test_decoder_only_greedy_equals_each_row_decoded_alone(prefix_lm):
    model, params, batch = prefix_lm
    tokens, scores = model.predict_batch(params, batch, max_decode_len=4)
    assert model.default_decode_len(batch) == 6  # the room after the shortest input part (3 of 8)
    for row in range(2):
        prefix = batch["decoder_input_tokens"][row][:batch["decoder_causal_attention"][row].sum()]
        argmax, score = _prefix_lm_rescore(model, params, prefix, np.asarray(tokens[row]))
        ended = np.cumsum(np.asarray(tokens[row]) == 1) > 0
        np.testing.assert_array_equal(np.asarray(tokens[row])[~ended | (np.cumsum(ended) == 1)],
                                      argmax[~ended | (np.cumsum(ended) == 1)])
        assert abs(score - float(scores[row])) < 1e-4


def test_decoder_only_beam_scores_are_normalised_likelihoods(prefix_lm):
    model, params, batch = prefix_lm
    tokens, scores = model.predict_batch(params, batch, method="beam", num_decodes=2, max_decode_len=4,
                                         return_all_decodes=True)
    for row in range(2):
        prefix = batch["decoder_input_tokens"][row][:batch["decoder_causal_attention"][row].sum()]
        for k in range(2):
            if scores[row, k] <= decoding.NEG_INF / 2:
                continue
            seq = np.asarray(tokens[row, k])
            _, raw = _prefix_lm_rescore(model, params, prefix, seq)
            ended = np.flatnonzero(seq == 1)
            expected = raw / decoding.brevity_penalty(0.6, ended[0] + 1) if len(ended) else raw
            assert abs(expected - float(scores[row, k])) < 1e-4, (row, k)


def test_decoder_only_loss_ignores_the_input_part(prefix_lm):
    model, params, batch = prefix_lm
    sums = model.loss_sums(params, batch)
    assert float(sums["weight"]) == 4.0  # the targets' tokens only
    per_token = np.asarray(model.token_log_probs(params, batch))
    assert np.all(per_token[batch["decoder_loss_weights"] == 0] == 0)
