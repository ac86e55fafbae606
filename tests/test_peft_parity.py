"""PEFT parity: our prompted T5 with PEFT's adapter matches PEFT's loss, logits and prompt gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from prompt_tuning import prompts
from prompt_tuning.pretrained import load_pretrained

TOL = 1e-4


@pytest.fixture(scope="module")
def setup():
    model_dir = shared_path("fixtures", "hf_t5_1_1_tiny")
    model, params = load_pretrained(str(model_dir), prompt=str(model_dir / "peft_prompt"))
    return model_dir, model.module, params, dict(np.load(model_dir / "peft_reference.npz"))


def hf_loss(module, params, ref):
    """HF's loss: mean cross-entropy over all labels != -100 of the batch (and per-token log-probs)."""
    labels = ref["labels"]
    # HF's decoder is causal only (no padding mask), i.e. our decode without decoder_target_tokens.
    logits = module.apply({"params": params}, ref["input_ids"].astype(np.int32),
                          ref["decoder_input_ids"].astype(np.int32))
    real = labels != -100
    log_probs = jax.nn.log_softmax(logits)
    token = jnp.take_along_axis(log_probs, jnp.where(real, labels, 0)[..., None], axis=-1)[..., 0] * real
    return -token.sum() / real.sum(), (logits, token)


def test_prompt_loaded_from_adapter(setup):
    _, _, params, ref = setup
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], ref["prompt_embedding"])


def test_loss_logits_likelihood_and_prompt_gradient(setup):
    _, module, params, ref = setup

    def loss_of_prompt(prompt):
        p = dict(params, encoder=dict(params["encoder"], prompt={"prompt": prompt}))
        return hf_loss(module, p, ref)

    (loss, (logits, token)), grad = jax.jit(jax.value_and_grad(loss_of_prompt, has_aux=True))(
        params["encoder"]["prompt"]["prompt"])
    np.testing.assert_allclose(loss, ref["loss"], atol=TOL)
    np.testing.assert_allclose(logits, ref["logits"], atol=TOL)
    np.testing.assert_allclose(token, ref["token_log_probs"], atol=TOL)
    np.testing.assert_allclose(token.sum(1), ref["label_log_likelihood"], atol=TOL)
    np.testing.assert_allclose(grad, ref["prompt_grad"], atol=TOL)
    assert np.abs(ref["prompt_grad"]).max() > 1e-3  # the comparison is not vacuous


def test_encoder_mask_is_pefts(setup):
    _, module, params, ref = setup
    mask = module.apply({"params": params}, ref["input_ids"].astype(np.int32), method=module.encoder_mask)
    np.testing.assert_array_equal(mask, ref["encoder_attention_mask_with_prompt"].astype(bool))


def test_export_and_reimport_round_trip(setup, tmp_path):
    model_dir, module, params, ref = setup
    prompts.save_peft_prompt(str(tmp_path), params["encoder"]["prompt"]["prompt"], num_layers=2,
                             num_attention_heads=4)
    _, params2 = load_pretrained(str(model_dir), prompt=str(tmp_path))
    np.testing.assert_array_equal(params2["encoder"]["prompt"]["prompt"], ref["prompt_embedding"])
