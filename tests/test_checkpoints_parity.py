"""Our Transformer on loaded checkpoints reproduces t5x's and transformers' own outputs."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import shared_path
from prompt_tuning import partitioning
from prompt_tuning.checkpoints import flatten, load_pretrained

EOS = 1


@pytest.fixture(scope="module")
def t5x():
    ref = dict(np.load(shared_path("fixtures", "t5x_t5_1_1_tiny", "reference.npz")))
    return load_pretrained(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0")) + (ref,)


@pytest.fixture(scope="module")
def hf():
    ref = dict(np.load(shared_path("fixtures", "hf_t5_1_1_tiny", "reference.npz")))
    return load_pretrained(shared_path("fixtures", "hf_t5_1_1_tiny")) + (ref,)


@functools.lru_cache(maxsize=None)
def _logits_fn(module):
    """One jitted teacher-forced forward per module config (both fixtures share one)."""
    return jax.jit(lambda params, enc, dec, tgt: module.apply({"params": params}, enc, dec, tgt))


def _logits(module, params, enc, dec, tgt):
    return np.asarray(_logits_fn(module)(params, np.int32(enc), np.int32(dec), np.int32(tgt)))


def _log_likelihood(logits, targets, weights):
    logp = jax.nn.log_softmax(logits, axis=-1)
    token = np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0] * weights
    return token.sum(-1), token


def _greedy(module, params, enc, steps):
    """Step-wise argmax by full re-computation (independent of the decoding cache)."""
    batch = enc.shape[0]
    dec = np.zeros((batch, steps), np.int32)
    out, scores = np.zeros((batch, steps), np.int32), np.zeros(batch, np.float32)
    done = np.zeros(batch, bool)
    for t in range(steps):
        logp = np.asarray(jax.nn.log_softmax(_logits(module, params, enc, dec, np.ones_like(dec))[:, t], -1))
        token = logp.argmax(-1)
        scores += np.where(done, 0.0, logp[np.arange(batch), token])
        out[:, t] = np.where(done, 0, token)
        done |= token == EOS
        if t + 1 < steps:
            dec[:, t + 1] = out[:, t]
    return out, scores


def test_t5x_legacy_logits_scores_greedy(t5x):
    module, params, ref = t5x
    logits = _logits(module, params, ref["encoder_input_tokens"], ref["decoder_input_tokens"],
                     ref["decoder_target_tokens"])
    valid = ref["decoder_loss_weights"] > 0
    assert np.abs(logits - ref["logits"])[valid].max() <= 1e-4
    score, token = _log_likelihood(logits, ref["decoder_target_tokens"], ref["decoder_loss_weights"])
    np.testing.assert_allclose(score, ref["score_batch"], atol=1e-4)
    np.testing.assert_allclose(token, ref["token_log_probs"], atol=1e-4)
    greedy, greedy_scores = _greedy(module, params, ref["encoder_input_tokens"], 6)
    np.testing.assert_array_equal(greedy, ref["greedy_decodes"])
    np.testing.assert_allclose(greedy_scores, ref["greedy_scores"], atol=1e-4)
    encoded = module.apply({"params": params}, np.int32(ref["encoder_input_tokens"]), method=module.encode)
    assert np.abs(np.asarray(encoded) - ref["encoded"]).max() <= 1e-4


def test_t5x_orbax_logits(t5x):
    module, _, ref = t5x
    orbax_module, params = load_pretrained(shared_path("fixtures", "t5x_t5_1_1_tiny", "orbax", "checkpoint_0"))
    assert orbax_module.config == module.config
    logits = _logits(module, params, ref["encoder_input_tokens"], ref["decoder_input_tokens"],
                     ref["decoder_target_tokens"])
    assert np.abs(logits - ref["logits"])[ref["decoder_loss_weights"] > 0].max() <= 1e-4


def test_hf_logits_hidden_state_likelihood_greedy(hf):
    module, params, ref = hf
    labels = ref["labels"]
    weights = (labels != -100).astype(np.float32)
    targets = np.where(labels == -100, 0, labels)
    logits = _logits(module, params, ref["input_ids"], ref["decoder_input_ids"], targets)
    assert np.abs(logits - ref["logits"])[weights > 0].max() <= 1e-4
    score, token = _log_likelihood(logits, targets, weights)
    np.testing.assert_allclose(score, ref["label_log_likelihood"], atol=1e-4)
    np.testing.assert_allclose(token, ref["token_log_probs"], atol=1e-4)
    encoded = np.asarray(module.apply({"params": params}, np.int32(ref["input_ids"]), method=module.encode))
    valid = ref["attention_mask"] > 0  # HF leaves padded encoder positions unmasked as queries
    assert np.abs(encoded - ref["encoder_last_hidden_state"])[valid].max() <= 1e-4
    greedy, greedy_scores = _greedy(module, params, ref["input_ids"], 6)
    np.testing.assert_array_equal(greedy, ref["greedy_sequences"][:, 1:])  # drop HF's decoder-start column
    np.testing.assert_allclose(greedy_scores, ref["greedy_scores"], atol=1e-4)


def test_hf_greedy_through_cached_decoding(hf):
    from prompt_tuning.models import EncoderDecoderModel
    module, params, ref = hf
    tokens, scores = EncoderDecoderModel(module).predict_batch(
        params, {"encoder_input_tokens": np.int32(ref["input_ids"])}, method="greedy", max_decode_len=6)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy_sequences"][:, 1:])
    np.testing.assert_allclose(np.asarray(scores), ref["greedy_scores"], atol=1e-4)


def test_prompt_hook_reproduces_peft_logits():
    from prompt_tuning import pretrained
    ref = dict(np.load(shared_path("fixtures", "hf_t5_1_1_tiny", "peft_reference.npz")))
    model, params = pretrained.load_pretrained(shared_path("fixtures", "hf_t5_1_1_tiny"),
                                               prompt=ref["prompt_embedding"])
    module = model.module
    labels = ref["labels"]
    logits = np.asarray(module.apply({"params": params}, np.int32(ref["input_ids"]),
                                     np.int32(ref["decoder_input_ids"]), np.int32(np.maximum(labels, 0))))
    assert np.abs(logits - ref["logits"])[labels != -100].max() <= 1e-4


def test_original_gfile_checkpoint_builds_its_model():
    module, params = load_pretrained(
        shared_path("original_prompt_tuning", "test_data", "test_t5_1_1_tiny", "checkpoint_3"))
    assert (module.config.emb_dim, module.config.num_heads, module.config.relpos_num_buckets) == (4, 2, 4)
    assert params["token_embedder"]["embedding"].shape == (32128, 4)


def test_sharded_load_places_each_array(t5x):
    module, params, ref = t5x
    mesh = partitioning.make_mesh(4)
    _, sharded = load_pretrained(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0"), mesh=mesh)
    expected = {"token_embedder/embedding": P("model", None),
                "encoder/layers_0/attention/query/kernel": P(None, "model"),
                "encoder/layers_0/attention/out/kernel": P("model", None),
                "decoder/layers_1/mlp/wi_0/kernel": P(None, "model"),
                "decoder/layers_1/mlp/wo/kernel": P("model", None),
                "encoder/relpos_bias/rel_embedding": P("model", None), "decoder/logits_dense/kernel": P(None, "model"),
                "decoder/decoder_norm/scale": P(None)}
    flat, reference = flatten(sharded), flatten(params)
    for key, spec in expected.items():
        array = flat[key]
        assert array.sharding.is_equivalent_to(NamedSharding(mesh, spec), array.ndim), (key, array.sharding)
    for key, array in flat.items():
        assert isinstance(array.sharding, NamedSharding) and array.sharding.mesh.shape == {"data": 2, "model": 4}
        np.testing.assert_array_equal(np.asarray(array), np.asarray(reference[key]), err_msg=key)
    assert {s.data.shape for s in flat["token_embedder/embedding"].addressable_shards} == {(32, 64)}


def test_explicit_config_mismatch_names_key_and_shapes(hf):
    module, _, _ = hf
    path = shared_path("fixtures", "hf_t5_1_1_tiny")
    with pytest.raises(ValueError, match=r"encoder/layers_0/mlp/wi_0/kernel \(from encoder\.block\.0\.layer\.1\."
                                         r"DenseReluDense\.wi_0\.weight\): checkpoint shape \(64, 128\), "
                                         r"model expects \(64, 256\)"):
        load_pretrained(path, config=module.config.replace(mlp_dim=256))
    with pytest.raises(ValueError) as err:
        load_pretrained(path, family="t5_1_1", size="small")  # 8+8 layers of width 512 expected
    message = str(err.value)
    assert "52 mis-shaped: " in message and "; ... 44 more | 138 missing: decoder/layers_2/" in message
    assert "token_embedder/embedding (from shared.weight): checkpoint shape (128, 64), model expects (32128, 512)" \
        not in message  # beyond the first 8 listed; the count says so
    assert len(message) < 3000


def test_dtype_and_prompt():
    from prompt_tuning import pretrained
    prompt = np.random.RandomState(0).randn(3, 64).astype(np.float32)
    model, params = pretrained.load_pretrained(shared_path("fixtures", "hf_t5_1_1_tiny"), dtype="bfloat16",
                                               prompt=prompt)
    assert model.module.config.dtype == "bfloat16"
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], prompt)
    assert params["token_embedder"]["embedding"].dtype == np.float32
    assert model.module.encoder_input_processor_factory.keywords["length"] == 3


def test_scanned_model_loads_unrolled_checkpoint(t5x):
    module, params, ref = t5x
    scanned_module, scanned = load_pretrained(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0"),
                                              config=module.config.replace(scan_layers=True))
    stacked = scanned["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
    assert stacked.shape == (2, 64, 128)
    np.testing.assert_array_equal(stacked[1], params["encoder"]["layers_1"]["mlp"]["wi_0"]["kernel"])
    logits = np.asarray(scanned_module.apply({"params": scanned}, np.int32(ref["encoder_input_tokens"]),
                                             np.int32(ref["decoder_input_tokens"]),
                                             np.int32(ref["decoder_target_tokens"])))
    assert np.abs(logits - ref["logits"])[ref["decoder_loss_weights"] > 0].max() <= 1e-4
    mesh = partitioning.make_mesh(2)
    _, sharded = load_pretrained(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0"),
                                 config=module.config.replace(scan_layers=True), mesh=mesh)
    array = sharded["decoder"]["layers"]["mlp"]["wo"]["kernel"]  # ('layers', 'mlp', 'embed')
    assert array.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "model", None)), 3)
    np.testing.assert_array_equal(np.asarray(array), np.asarray(scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"]))
