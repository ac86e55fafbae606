"""gin: models/*_prompt.gin + prompts/*.gin turn any base model config into its prompted version."""
import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from prompt_tuning import gin_utils

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
# A tiny model in place of the family's published size (the prompt wiring is what is tested).
TINY = ["network.Transformer.config = @config.T5Config()", "config.T5Config.vocab_size = 512",
        "config.T5Config.emb_dim = 8", "config.T5Config.num_heads = 2", "config.T5Config.head_dim = 4",
        "config.T5Config.mlp_dim = 16", "config.T5Config.num_encoder_layers = 1",
        "config.T5Config.num_decoder_layers = 1"]
TOKENS = jnp.array([[5, 6, 7, 1, 0]], jnp.int32)


def build(files, bindings=()):
    """(module, params) of the gin MODEL, params initialised from scratch."""
    gin.clear_config()
    gin_utils.parse_gin(files, TINY + list(bindings))
    try:
        module = gin.query_parameter("%MODEL").scoped_configurable_fn().module
        params = nn.unbox(module.init(jax.random.PRNGKey(0), TOKENS, TOKENS))["params"]
    finally:
        gin.clear_config()
    return module, params


def test_every_family_and_size_has_a_prompted_model_file():
    for base in sorted((GIN_DIR / "models").glob("*.gin")):
        if base.stem.endswith("_prompt"):
            continue
        assert (GIN_DIR / "models" / f"{base.stem}_prompt.gin").exists(), f"no prompted version of {base.name}"


@pytest.mark.parametrize("model_file", ["models/t5_1_1_prompt.gin", "models/t5_1_0_small_prompt.gin",
                                        "models/mt5_base_prompt.gin", "models/flan_t5_prompt.gin"])
def test_prompted_model_has_the_prompt_param(model_file):
    module, params = build([model_file], ["PROMPT_LENGTH = 7"])
    assert params["encoder"]["prompt"]["prompt"].shape == (7, 8)
    assert module.apply({"params": params}, TOKENS, method=module.encoder_mask).shape == (1, 12)


def test_default_init_is_sampled_vocab():
    _, params = build(["models/t5_1_1_prompt.gin"], ["PROMPT_LENGTH = 4"])
    table, prompt = np.asarray(params["token_embedder"]["embedding"]), np.asarray(params["encoder"]["prompt"]["prompt"])
    assert all(np.flatnonzero((table == row).all(1))[0] in range(3, 5000) for row in prompt)


def test_uniform_and_bank_and_placement():
    module, params = build(["models/t5_1_1_prompt.gin", "prompts/uniform.gin"],
                           ["PROMPT_LENGTH = 50", "PROMPT_BANK_SIZE = 2", "PROMPT_PLACEMENT = 'suffix'"])
    prompt = np.asarray(params["encoder"]["prompt"]["prompt"])
    assert prompt.shape == (2, 50, 8) and prompt.min() < -0.4 and prompt.max() > 0.4 and np.abs(prompt).max() <= 0.5
    mask = module.apply({"params": params}, TOKENS, method=module.encoder_mask)
    np.testing.assert_array_equal(mask[0, :3], True)  # suffix: real tokens first...
    assert not mask[0, -1]                              # ...padding last


def test_class_labels_and_text_with_the_real_vocabulary():
    spm = str(shared_path("vocab", "t5_spiece.model"))
    import seqio
    vocab = seqio.SentencePieceVocabulary(spm, extra_ids=100)
    _, params = build(["models/t5_1_1_prompt.gin", "prompts/class_labels.gin"],
                      ["PROMPT_LENGTH = 3", "CLASS_LABELS = ['yes', 'no']", "config.T5Config.vocab_size = 32128",
                       f"prompt_init/prompts.class_labels.vocab = '{spm}'"])
    table, prompt = np.asarray(params["token_embedder"]["embedding"]), np.asarray(params["encoder"]["prompt"]["prompt"])
    np.testing.assert_allclose(prompt[0], table[vocab.encode("yes")].mean(0), rtol=1e-6)
    np.testing.assert_allclose(prompt[1], table[vocab.encode("no")].mean(0), rtol=1e-6)
    _, params = build(["models/t5_1_1_prompt.gin", "prompts/from_text.gin"],
                      ["PROMPT_LENGTH = 3", "PROMPT_TEXT = 'hello'", "config.T5Config.vocab_size = 32128",
                       f"prompt_init/prompts.from_text.vocab = '{spm}'"])
    ids = vocab.encode("hello")
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"],
                                  np.asarray(params["token_embedder"]["embedding"])[[ids[i % len(ids)] for i in range(3)]])


def test_from_file(tmp_path):
    value = np.random.RandomState(0).randn(4, 8).astype(np.float32)
    np.save(tmp_path / "p.npy", value)
    _, params = build(["models/t5_1_1_prompt.gin", "prompts/from_file.gin"],
                      ["PROMPT_LENGTH = 4", f"PROMPT_FILE = '{tmp_path / 'p.npy'}'"])
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], value)
    with pytest.raises(ValueError, match=r"p.npy has shape \(4, 8\), expected \(5, 8\)"):
        build(["models/t5_1_1_prompt.gin", "prompts/from_file.gin"],
              ["PROMPT_LENGTH = 5", f"PROMPT_FILE = '{tmp_path / 'p.npy'}'"])


def test_from_checkpoint(tmp_path):
    import orbax.checkpoint as ocp
    value = np.random.RandomState(1).randn(4, 8).astype(np.float32)
    ocp.PyTreeCheckpointer().save(tmp_path / "ckpt", {"target": {"encoder": {"prompt": {"prompt": value}}}})
    _, params = build(["models/t5_1_1_prompt.gin", "prompts/from_checkpoint.gin"],
                      ["PROMPT_LENGTH = 4", f"PROMPT_INIT_CHECKPOINT = '{tmp_path / 'ckpt'}'",
                       "PROMPT_VARIABLE = 'encoder/prompt/prompt'"])
    np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], value)


def test_required_macros_are_one_line_errors():
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError, match="CLASS_LABELS"):
        gin_utils.parse_gin(["models/t5_1_1_prompt.gin", "prompts/class_labels.gin"], TINY)
    gin.clear_config()
