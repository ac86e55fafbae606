"""Prompts of different lengths in one bank: a mixed batch's rows equal each prompt alone (every placement,
teacher forcing and cached decoding, encoder-decoder and decoder-only), banks built by load_pretrained from
arrays, .npy, our checkpoints and PEFT adapters, and PEFT's own logits for each adapter's rows."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import models, prompts
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.decoder_only import DecoderOnly
from prompt_tuning.t5.network import Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
                  num_decoder_layers=2)
LENGTHS = (1, 5, 20)
TOL = 1e-5
# Right-padded, EOS-terminated inputs of different lengths; each row names its bank row in INDEX.
ENC = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [5, 6, 1, 0, 0, 0, 0, 0], [9, 8, 7, 6, 5, 4, 3, 1],
                [4, 1, 0, 0, 0, 0, 0, 0], [7, 7, 3, 1, 0, 0, 0, 0], [3, 9, 9, 9, 1, 0, 0, 0]], np.int32)
TGT = np.array([[3, 4, 1, 0], [5, 1, 0, 0], [6, 7, 8, 1], [9, 1, 0, 0], [2, 2, 1, 0], [8, 1, 0, 0]], np.int32)
DEC = np.concatenate([np.zeros((len(TGT), 1), np.int32), TGT[:, :-1]], axis=1)
INDEX = np.array([2, 0, 1, 2, 1, 0], np.int32)


def _rows(width, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.uniform(-0.5, 0.5, (n, width)).astype(np.float32) for n in LENGTHS]


def _with_prompt(params, owner, value):
    return {**params, owner: {**params[owner], "prompt": {"prompt": jnp.asarray(value)}}}


@pytest.fixture(scope="module")
def frozen():
    return nn.unbox(Transformer(CONFIG).init(jax.random.PRNGKey(1), ENC, DEC, TGT))["params"]


def _bank_and_singles(placement):
    factory, bank = prompts.prompt_factory(_rows(CONFIG.emb_dim), placement)
    assert bank.shape == (3, 20, CONFIG.emb_dim) and factory.keywords["lengths"] == LENGTHS
    single = [functools.partial(prompts.PromptProcessor, length=n, placement=placement) for n in LENGTHS]
    return factory, bank, single


@pytest.mark.parametrize("placement", prompts.PLACEMENTS)
def test_mixed_lengths_equal_each_prompt_alone(frozen, placement):
    factory, bank, singles = _bank_and_singles(placement)
    module = Transformer(CONFIG, encoder_input_processor_factory=factory)
    mixed_params = _with_prompt(frozen, "encoder", bank)
    mixed = np.asarray(jax.jit(module.apply)({"params": mixed_params}, ENC, DEC, TGT, prompt_index=INDEX))
    mask = np.asarray(module.apply({"params": mixed_params}, ENC, prompt_index=INDEX, method=module.encoder_mask))
    np.testing.assert_array_equal(mask.sum(1), (ENC > 0).sum(1) + np.take(LENGTHS, INDEX))
    real = TGT > 0  # t5x masks padded target positions fully, so only real ones are comparable
    for k, row in enumerate(_rows(CONFIG.emb_dim)):
        alone_module = Transformer(CONFIG, encoder_input_processor_factory=singles[k])
        alone = np.asarray(alone_module.apply({"params": _with_prompt(frozen, "encoder", row)}, ENC, DEC, TGT))
        rows = (INDEX == k)[:, None] & real
        np.testing.assert_allclose(mixed[rows], alone[rows], atol=TOL, rtol=0)
        assert np.abs(mixed[(INDEX != k)[:, None] & real] - alone[(INDEX != k)[:, None] & real]).max() > 1e-3

        if placement == "prefix_after_bos":
            continue  # its slot layout (padding at the end) is the suffix's; decoding is checked there
        # Cached decoding: the same greedy tokens and scores as the prompt alone.
        batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": DEC}
        tokens, scores = models.EncoderDecoderModel(module).predict_batch(
            mixed_params, {**batch, "prompt_index": INDEX}, max_decode_len=5)
        alone_tokens, alone_scores = models.EncoderDecoderModel(alone_module).predict_batch(
            _with_prompt(frozen, "encoder", row), batch, max_decode_len=5)
        np.testing.assert_array_equal(np.asarray(tokens)[INDEX == k], np.asarray(alone_tokens)[INDEX == k])
        np.testing.assert_allclose(np.asarray(scores)[INDEX == k], np.asarray(alone_scores)[INDEX == k], atol=TOL)


def test_decoder_only_mixed_lengths_teacher_forcing_and_decoding():
    """Prefix-LM rows of a mixed batch: logits and cached (right-aligned, prefilled) decodes as each alone."""
    tokens = np.concatenate([np.zeros((len(ENC), 1), np.int32), ENC[:, :-1]], axis=1)
    targets = ENC
    causal = (np.arange(ENC.shape[1])[None] < 3).astype(np.int32)
    causal = np.repeat(causal, len(ENC), 0)
    factory, bank, singles = _bank_and_singles("prefix")
    module = DecoderOnly(CONFIG, input_processor_factory=factory)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), tokens, targets, causal, prompt_index=INDEX))["params"]
    params = _with_prompt(params, "decoder", bank)
    mixed = np.asarray(module.apply({"params": params}, tokens, targets, causal, prompt_index=INDEX))
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": targets, "decoder_causal_attention": causal}
    out, scores = models.DecoderOnlyModel(module).predict_batch(params, {**batch, "prompt_index": INDEX},
                                                                 max_decode_len=4)
    real = targets > 0
    for k, row in enumerate(_rows(CONFIG.emb_dim)):
        alone_module = DecoderOnly(CONFIG, input_processor_factory=singles[k])
        alone_params = _with_prompt(params, "decoder", row)
        alone = np.asarray(alone_module.apply({"params": alone_params}, tokens, targets, causal))
        rows = (INDEX == k)[:, None] & real
        np.testing.assert_allclose(mixed[rows], alone[rows], atol=TOL, rtol=0)
        alone_out, alone_scores = models.DecoderOnlyModel(alone_module).predict_batch(alone_params, batch,
                                                                                      max_decode_len=4)
        np.testing.assert_array_equal(np.asarray(out)[INDEX == k], np.asarray(alone_out)[INDEX == k])
        np.testing.assert_allclose(np.asarray(scores)[INDEX == k], np.asarray(alone_scores)[INDEX == k], atol=TOL)


def test_bank_from_array_npy_checkpoint_and_peft(frozen, tmp_path):
    import orbax.checkpoint as ocp
    a, b, c = _rows(CONFIG.emb_dim, seed=3)
    np.save(tmp_path / "b.npy", b)
    ocp.PyTreeCheckpointer().save(tmp_path / "ours" / "checkpoint_5" / "state",
                                  {"params": {"encoder": {"prompt": {"prompt": c}}}, "step": 5})
    prompts.save_peft_prompt(str(tmp_path / "peft"), a)
    module, params = prompts.attach_prompt(Transformer(CONFIG), frozen,
                                           [str(tmp_path / "peft"), str(tmp_path / "b.npy"),
                                            str(tmp_path / "ours" / "checkpoint_5"), b])
    bank = np.asarray(params["encoder"]["prompt"]["prompt"])
    assert bank.shape == (4, 20, CONFIG.emb_dim)
    for i, row in enumerate((a, b, c, b)):
        np.testing.assert_array_equal(bank[i, :len(row)], row)
    index = np.array([3, 1, 0, 2, 2, 0], np.int32)
    logits = np.asarray(module.apply({"params": params}, ENC, DEC, TGT, prompt_index=index))
    alone, alone_params = prompts.attach_prompt(Transformer(CONFIG), frozen, b)
    expected = np.asarray(alone.apply({"params": alone_params}, ENC, DEC, TGT))
    real = TGT > 0
    np.testing.assert_allclose(logits[index == 1][real[index == 1]], expected[index == 1][real[index == 1]],
                               atol=TOL)
    np.testing.assert_allclose(logits[index == 3][real[index == 3]], expected[index == 3][real[index == 3]],
                               atol=TOL)
    with pytest.raises(ValueError, match="share their embedding width"):
        prompts.read_prompt_bank([a, np.zeros((2, 7), np.float32)])
    with pytest.raises(ValueError, match="one length per row"):
        prompts.processor_factory(length=4, num_prompts=2, lengths=(1, 2, 3))


def test_peft_adapters_of_different_lengths_match_pefts_own_logits(tmp_path):
    """load_pretrained(HF checkpoint, prompt=[three PEFT adapters of lengths 1, 5, 20]): each row of a mixed
    batch gives the logits PEFT computes with that adapter (the shared fixture's adapter is the 5-token one)."""
    from conftest import shared_path
    model_dir = shared_path("fixtures", "hf_t5_1_1_tiny")
    torch = pytest.importorskip("torch", reason="the torch extra (torch, transformers, peft) is not installed")
    peft = pytest.importorskip("peft", reason="the torch extra (peft) is not installed")
    transformers = pytest.importorskip("transformers", reason="the torch extra (transformers) is not installed")
    from prompt_tuning.pretrained import load_pretrained
    ref = np.load(model_dir / "peft_reference.npz")
    width = ref["prompt_embedding"].shape[1]
    one, _, twenty = _rows(width, seed=5)
    adapters = [str(tmp_path / "one"), str(model_dir / "peft_prompt"), str(tmp_path / "twenty")]
    prompts.save_peft_prompt(adapters[0], one)
    prompts.save_peft_prompt(adapters[2], twenty)
    model, params = load_pretrained(str(model_dir), prompt=adapters)
    ids, attention, dec = ref["input_ids"], ref["attention_mask"], ref["decoder_input_ids"]
    n = len(ids)
    # Every example with every adapter, in one mixed batch.
    index = np.repeat(np.arange(3, dtype=np.int32), n)
    ours = np.asarray(model.module.apply({"params": params}, np.tile(ids, (3, 1)).astype(np.int32),
                                         np.tile(dec, (3, 1)).astype(np.int32), prompt_index=index))
    base = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    for k, adapter in enumerate(adapters):
        peft_model = peft.PeftModel.from_pretrained(base, adapter)
        with torch.no_grad():
            theirs = peft_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(attention),
                                decoder_input_ids=torch.as_tensor(dec)).logits.numpy()
        base = peft_model.unload() if hasattr(peft_model, "unload") else peft_model.get_base_model()
        np.testing.assert_allclose(ours[index == k], theirs, atol=1e-4)
    np.testing.assert_allclose(ours[index == 1], ref["logits"], atol=1e-4)


def test_rows_of_their_own_lengths_step_as_single_prompts():
    """per_array with row_lengths: each row of a [3, 20, D] bank of lengths 1/5/20 takes exactly the Adafactor
    steps (clipping and factored moments included) of its own [length, D] prompt; its padding stays put."""
    import optax

    from prompt_tuning.train import optimizers
    tx = optimizers.adafactor(learning_rate=0.3, min_dim_size_to_factor=4, clipping_threshold=0.5)
    width = 8
    rows = _rows(width, seed=7)
    bank = np.zeros((3, 20, width), np.float32)
    for i, row in enumerate(rows):
        bank[i, :len(row)] = row
    banked = optimizers.per_array(tx, ["p"], {"p": LENGTHS})
    coupled = optimizers.per_array(tx, ["p"])
    params, plain = {"p": jnp.asarray(bank)}, {"p": jnp.asarray(bank)}
    singles = [{"p": jnp.asarray(row)} for row in rows]
    state, plain_state = banked.init(params), coupled.init(plain)
    single_states = [tx.init(s) for s in singles]
    rng = np.random.RandomState(8)
    for _ in range(3):
        grad = rng.randn(*bank.shape).astype(np.float32)
        grad_bank = grad * (np.arange(20)[None, :, None] < np.asarray(LENGTHS)[:, None, None])  # padding: no grad
        updates, state = jax.jit(banked.update)({"p": jnp.asarray(grad_bank)}, state, params)
        params = optax.apply_updates(params, updates)
        updates, plain_state = coupled.update({"p": jnp.asarray(grad_bank)}, plain_state, plain)
        plain = optax.apply_updates(plain, updates)
        for i, n in enumerate(LENGTHS):
            updates, single_states[i] = tx.update({"p": jnp.asarray(grad[i, :n])}, single_states[i], singles[i])
            singles[i] = optax.apply_updates(singles[i], updates)
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(params["p"][i, :n], singles[i]["p"], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(params["p"][i, n:], 0.0)
    # Stepping the padded rows whole (no row_lengths) is not the same: their padding enters the statistics.
    assert np.abs(np.asarray(plain["p"][0, :1]) - np.asarray(singles[0]["p"])).max() > 1e-4
