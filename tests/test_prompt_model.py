"""The prompt inside the T5 encoder-decoder: init-missing-only, banks, masks, gradients, load_pretrained."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from prompt_tuning import prompts
from prompt_tuning.prompts import initializers
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.network import Transformer

CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=2,
                  num_decoder_layers=2)
P = 3
RNG = np.random.RandomState(0)
# Right-padded encoder inputs (rows of different lengths, EOS-terminated) and decoder inputs/targets.
ENC = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [5, 6, 1, 0, 0, 0, 0, 0],
                [9, 8, 7, 6, 5, 4, 3, 1], [4, 1, 0, 0, 0, 0, 0, 0]], np.int32)
TGT = np.array([[3, 4, 1, 0], [5, 1, 0, 0], [6, 7, 8, 1], [9, 1, 0, 0]], np.int32)
DEC = np.concatenate([np.zeros((4, 1), np.int32), TGT[:, :-1]], axis=1)


def prompted(length=P, **kwargs):
    return Transformer(CONFIG, encoder_input_processor_factory=functools.partial(
        prompts.PromptProcessor, length=length, **kwargs))


@pytest.fixture(scope="module")
def frozen():
    """Params of the bare model: stand-ins for a loaded pretrained checkpoint."""
    return nn.unbox(Transformer(CONFIG).init(jax.random.PRNGKey(1), ENC, DEC, TGT))["params"]


@pytest.fixture(scope="module")
def model_and_params(frozen):
    module = prompted(initializer=initializers.uniform())
    _, new = module.apply({"params": frozen}, ENC, DEC, TGT, rngs={"params": jax.random.PRNGKey(2)},
                          mutable=["params"])
    return module, nn.unbox(new["params"])


def test_init_creates_only_the_prompt_from_the_loaded_table(frozen):
    module = prompted(initializer=initializers.sampled_vocab(population_size=40))
    _, new = module.apply({"params": frozen}, ENC, DEC, TGT, rngs={"params": jax.random.PRNGKey(0)},
                          mutable=["params"])
    new = traverse_util.flatten_dict(nn.unbox(new["params"]))
    old = traverse_util.flatten_dict(frozen)
    assert set(new) - set(old) == {("encoder", "prompt", "prompt")}
    for path in old:
        assert new[path] is old[path] or np.array_equal(new[path], old[path])
    prompt, table = np.asarray(new[("encoder", "prompt", "prompt")]), np.asarray(frozen["token_embedder"]["embedding"])
    ids = [int(np.flatnonzero((table == row).all(1))[0]) for row in prompt]  # each row IS a loaded row
    assert len(set(ids)) == P and all(3 <= i < 40 for i in ids)


def test_prompt_param_axes_and_replication():
    axes = nn.get_partition_spec(jax.eval_shape(lambda: prompted().init(jax.random.PRNGKey(0), ENC, DEC)))
    assert tuple(axes["params"]["encoder"]["prompt"]["prompt"]) == ("prompt", "prompt_embed")
    from prompt_tuning import partitioning
    mesh = partitioning.make_mesh(2)
    sharding = partitioning.logical_to_sharding(axes, mesh)["params"]["encoder"]["prompt"]["prompt"]
    assert sharding.is_fully_replicated


@pytest.mark.parametrize("placement", prompts.PLACEMENTS)
def test_encoder_mask_and_padding_invariance(model_and_params, placement):
    """Masks cover prompt positions; extra right padding changes nothing (prompt sits before the padding)."""
    module, params = model_and_params
    module = module.clone(encoder_input_processor_factory=functools.partial(
        prompts.PromptProcessor, length=P, placement=placement))
    mask = np.asarray(module.apply({"params": params}, ENC, method=module.encoder_mask))
    assert mask.shape == (4, ENC.shape[1] + P)
    np.testing.assert_array_equal(mask.sum(1), (ENC > 0).sum(1) + P)
    logits = module.apply({"params": params}, ENC, DEC, TGT)
    padded = module.apply({"params": params}, np.pad(ENC, ((0, 0), (0, 5))), DEC, TGT)
    real = TGT > 0  # t5x fully masks padded target rows (uniform attention), so only real ones are comparable
    np.testing.assert_allclose(np.asarray(padded)[real], np.asarray(logits)[real], atol=1e-5)


def test_prefix_layout_in_encoder_mask(model_and_params):
    module, params = model_and_params
    mask = np.asarray(module.apply({"params": params}, ENC, method=module.encoder_mask))
    np.testing.assert_array_equal(mask, np.concatenate([np.ones((4, P), bool), ENC > 0], 1))


def test_decoder_reads_prompt_positions(model_and_params):
    """Changing only the prompt changes the decoder logits; masking the prompt out in cross-attention
    (encoded prompt positions zeroed, masked) gives different logits, so the decoder does attend them."""
    module, params = model_and_params
    logits = module.apply({"params": params}, ENC, DEC, TGT)
    other = jax.tree.map(lambda x: x, params)
    other["encoder"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"] + 1.0
    assert np.abs(module.apply({"params": other}, ENC, DEC, TGT) - logits).max() > 1e-3
    encoded = module.apply({"params": params}, ENC, method=module.encode)
    assert encoded.shape == (4, ENC.shape[1] + P, CONFIG.emb_dim)
    direct = module.apply({"params": params}, encoded, ENC, DEC, TGT, method=module.decode)
    np.testing.assert_allclose(direct, logits, atol=1e-6)


def test_bank_equals_each_prompt_alone(model_and_params):
    module, params = model_and_params
    bank_value = np.stack([np.asarray(params["encoder"]["prompt"]["prompt"]) * s for s in (1.0, -0.5, 2.0)])
    bank_module = prompted(num_prompts=3)
    bank_params = dict(params, encoder=dict(params["encoder"], prompt={"prompt": jnp.asarray(bank_value)}))
    index = np.array([2, 0, 1, 2])
    bank_logits = np.asarray(jax.jit(bank_module.apply)({"params": bank_params}, ENC, DEC, TGT, prompt_index=index))
    single = jax.jit(module.apply)
    for k in range(3):
        alone = dict(params, encoder=dict(params["encoder"], prompt={"prompt": jnp.asarray(bank_value[k])}))
        logits = np.asarray(single({"params": alone}, ENC, DEC, TGT))
        np.testing.assert_array_equal(bank_logits[index == k], logits[index == k])


def _loss(module, params, prompt_index=None):
    logits = module.apply({"params": params}, ENC, DEC, TGT, prompt_index=prompt_index)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, TGT)
    return (ce * (TGT > 0)).sum() / (TGT > 0).sum()


def test_gradient_flows_into_prompt_and_training_step_changes_only_it(model_and_params):
    module, params = model_and_params
    grads = jax.jit(jax.grad(lambda p: _loss(module, dict(params, encoder=dict(params["encoder"],
                                                                               prompt={"prompt": p})))))(
        params["encoder"]["prompt"]["prompt"])
    assert grads.shape == (P, CONFIG.emb_dim) and np.abs(grads).min(axis=1).max() > 0  # every row gets gradient
    labels = traverse_util.path_aware_map(lambda path, _: "train" if path[-2:] == ("prompt", "prompt") else "freeze",
                                          params)
    tx = optax.multi_transform({"train": optax.adam(0.1), "freeze": optax.set_to_zero()}, labels)
    loss = jax.jit(functools.partial(_loss, module))
    updates, _ = tx.update(jax.jit(jax.grad(loss))(params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    changed = {"/".join(k) for k, v in traverse_util.flatten_dict(new).items()
               if not np.array_equal(v, traverse_util.flatten_dict(params)[k])}
    assert changed == {"encoder/prompt/prompt"}
    assert loss(new) < loss(params)


# ----------------------------------------------------------------------------- loading a trained prompt

def test_attach_prompt_from_array_npy_and_checkpoint(frozen, tmp_path):
    import orbax.checkpoint as ocp
    value = np.random.RandomState(3).randn(4, CONFIG.emb_dim).astype(np.float32)
    base = Transformer(CONFIG)
    reference = None
    np.save(tmp_path / "p.npy", value)
    ocp.PyTreeCheckpointer().save(tmp_path / "ours" / "checkpoint_5" / "state",
                                  {"params": {"encoder": {"prompt": {"prompt": value}}}, "step": 5})
    prompts.save_peft_prompt(str(tmp_path / "peft"), value)
    for source in (value, str(tmp_path / "p.npy"), str(tmp_path / "ours" / "checkpoint_5"), str(tmp_path / "peft")):
        module, params = prompts.attach_prompt(base, frozen, source)
        np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], value)
        logits = np.asarray(module.apply({"params": params}, ENC, DEC, TGT))
        if reference is None:
            reference = logits
        np.testing.assert_array_equal(logits, reference)
    with pytest.raises(ValueError, match=r"prompt from array has shape \(4, 7\), expected \(4, 16\)"):
        prompts.attach_prompt(base, frozen, np.zeros((4, 7), np.float32))


def test_attach_bank(frozen):
    bank = np.random.RandomState(4).randn(2, 3, CONFIG.emb_dim).astype(np.float32)
    module, params = prompts.attach_prompt(Transformer(CONFIG), frozen, bank)
    logits = module.apply({"params": params}, ENC, DEC, TGT, prompt_index=np.array([0, 1, 1, 0]))
    assert logits.shape == (4, TGT.shape[1], CONFIG.vocab_size)
