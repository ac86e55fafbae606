"""Prompt parameter, initializers, joins and masks on plain arrays (no model needed)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompts
from prompt_tuning.prompts import initializers, join

KEY = jax.random.PRNGKey(0)


class FakeVocab:
    """Word -> ids, enough to test tokenization-based initializers exactly."""

    IDS = {"yes": [5, 6], "no": [7], "maybe": [8, 9, 10], "hello": [11], "world": [12, 13]}

    def encode(self, text):
        return [i for word in text.split() for i in self.IDS[word]]


def id_table(vocab=6000, dim=4):
    """Row i is filled with i, so an initialised prompt shows which ids it came from."""
    return jnp.tile(jnp.arange(vocab, dtype=jnp.float32)[:, None], (1, dim))


# ----------------------------------------------------------------------------- initializers

def test_uniform_range_and_statistics():
    x = np.asarray(initializers.uniform()(KEY, (200, 64)))
    assert x.dtype == np.float32 and x.shape == (200, 64)
    assert x.min() >= -0.5 and x.max() <= 0.5
    assert x.min() < -0.49 and x.max() > 0.49  # both signs: not the original's [0, 0.5)
    assert abs(x.mean()) < 0.01
    assert abs(x.std() - 1 / np.sqrt(12)) < 0.01  # std of U(-0.5, 0.5)


def test_sampled_vocab_without_replacement_from_frequent_ids():
    x = np.asarray(initializers.sampled_vocab()(KEY, (2000, 4), id_table()))
    ids = x[:, 0].astype(int)
    assert (x == ids[:, None]).all()
    assert len(set(ids)) == 2000, "drawn without replacement"
    assert ids.min() >= 3 and ids.max() < 5000, "special ids 0,1,2 and ids >= 5000 excluded"
    assert abs(ids.mean() - 2501) < 100  # uniform over 3..4999


def test_sampled_vocab_with_replacement_when_longer_than_population():
    ids = np.asarray(initializers.sampled_vocab(population_size=10)(KEY, (50, 4), id_table()))[:, 0]
    assert set(ids.astype(int)) == set(range(3, 10))


def test_sampled_vocab_needs_table_of_matching_width():
    with pytest.raises(ValueError, match="embedding table"):
        initializers.sampled_vocab()(KEY, (5, 4), None)
    with pytest.raises(ValueError, match="width 4 != prompt width 8"):
        initializers.sampled_vocab()(KEY, (5, 8), id_table())


def test_class_labels_exact_then_fallback():
    table = jax.random.normal(KEY, (100, 4))
    init = initializers.class_labels(["yes", "no", "maybe"], FakeVocab(), fallback=initializers.from_array(
        np.full((2, 4), 7.0)))
    x = np.asarray(init(KEY, (5, 4), table))
    np.testing.assert_allclose(x[0], (table[5] + table[6]) / 2, rtol=1e-6)
    np.testing.assert_allclose(x[1], table[7])
    np.testing.assert_allclose(x[2], table[8:11].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(x[3:], 7.0)


def test_class_labels_default_fallback_is_sampled_vocab():
    x = np.asarray(initializers.class_labels(["no"], FakeVocab())(KEY, (20, 4), id_table()))
    assert (x[0] == 7).all()
    rest = x[1:, 0].astype(int)
    assert len(set(rest)) == 19 and rest.min() >= 3 and rest.max() < 5000


def test_class_labels_too_many():
    with pytest.raises(ValueError, match="3 labels do not fit a prompt of length 2"):
        initializers.class_labels(["yes", "no", "maybe"], FakeVocab())(KEY, (2, 4), id_table())


def test_from_text_cycles_or_falls_back():
    x = np.asarray(initializers.from_text("hello world", FakeVocab())(KEY, (7, 4), id_table()))
    np.testing.assert_array_equal(x[:, 0], [11, 12, 13, 11, 12, 13, 11])
    fill = initializers.from_array(np.zeros((4, 4)))
    x = np.asarray(initializers.from_text("hello world", FakeVocab(), fallback=fill)(KEY, (7, 4), id_table()))
    np.testing.assert_array_equal(x[:, 0], [11, 12, 13, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="has 3 tokens, more than prompt length 2"):
        initializers.from_text("hello world", FakeVocab())(KEY, (2, 4), id_table())


def test_from_array_and_npy(tmp_path):
    value = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    np.testing.assert_array_equal(initializers.from_array(value)(KEY, (5, 4)), value)
    np.save(tmp_path / "p.npy", value)
    np.testing.assert_array_equal(initializers.from_npy(str(tmp_path / "p.npy"))(KEY, (5, 4)), value)
    with pytest.raises(ValueError, match=r"p.npy has shape \(5, 4\), expected \(6, 4\)"):
        initializers.from_npy(str(tmp_path / "p.npy"))(KEY, (6, 4))


def test_from_checkpoint_reads_only_the_prompt(tmp_path):
    import orbax.checkpoint as ocp
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    tree = {"params": {"encoder": {"encoder_input_processor": {"prompt": {"prompt": value}}},
                       "token_embedder": {"embedding": np.ones((10, 4), np.float32)}},
            "opt_state": {"mu": {"encoder": {"encoder_input_processor": {"prompt": {"prompt": value * 0}}}}}}
    ocp.PyTreeCheckpointer().save(tmp_path / "ckpt" / "state", tree)
    np.testing.assert_array_equal(prompts.read_prompt_checkpoint(tmp_path / "ckpt"), value)
    np.testing.assert_array_equal(initializers.from_checkpoint(str(tmp_path / "ckpt"))(KEY, (3, 4)), value)
    emb = prompts.read_prompt_checkpoint(tmp_path / "ckpt", "token_embedder/embedding")
    np.testing.assert_array_equal(emb, np.ones((10, 4)))
    with pytest.raises(ValueError, match="found 0"):
        prompts.read_prompt_checkpoint(tmp_path / "ckpt", "decoder/prompt")


def test_bank_draws_each_prompt_independently():
    x = np.asarray(initializers.uniform()(KEY, (3, 5, 4)))
    assert x.shape == (3, 5, 4)
    assert not np.allclose(x[0], x[1]) and not np.allclose(x[1], x[2])


# ----------------------------------------------------------------------------- Prompt module

def test_prompt_module_param_and_axes():
    table = jnp.ones((10, 4))
    variables = prompts.Prompt(3, initializers.uniform()).init(KEY, table)
    boxed = variables["params"]["prompt"]
    assert isinstance(boxed, nn.LogicallyPartitioned) and boxed.names == ("prompt", "prompt_embed")
    assert boxed.value.shape == (3, 4) and boxed.value.dtype == jnp.float32
    bank = prompts.Prompt(3, initializers.uniform(), num_prompts=2).init(KEY, table)["params"]["prompt"]
    assert bank.names == ("prompt_bank", "prompt", "prompt_embed") and bank.value.shape == (2, 3, 4)


def test_prompt_uses_the_embedding_table_it_is_given():
    loaded = id_table(100, 4)
    value = prompts.Prompt(4, initializers.sampled_vocab(population_size=50)).init(KEY, loaded)
    ids = np.asarray(nn.unbox(value)["params"]["prompt"])[:, 0]
    assert (ids >= 3).all() and (ids < 50).all() and (ids == ids.astype(int)).all()


# ----------------------------------------------------------------------------- joins and masks

# Right-padded rows; EOS = 1 ends rows 0 and 2, row 1 has no EOS, row 3 is empty.
TOKENS = np.array([[7, 8, 9, 1, 0],
                   [7, 8, 0, 0, 0],
                   [7, 1, 0, 0, 0],
                   [0, 0, 0, 0, 0]], np.int32)
PROMPT = -np.arange(1, 3, dtype=np.float32)  # prompt positions read as -1, -2


def _joined(placement):
    embedded = jnp.asarray(TOKENS, jnp.float32)[..., None]
    prompt = jnp.broadcast_to(jnp.asarray(PROMPT)[None, :, None], (4, 2, 1))
    out, valid = join.join(prompt, embedded, jnp.asarray(TOKENS), placement)
    return np.asarray(out[..., 0]).astype(int), np.asarray(valid)


def test_prefix():
    out, valid = _joined("prefix")
    np.testing.assert_array_equal(out, [[-1, -2, 7, 8, 9, 1, 0], [-1, -2, 7, 8, 0, 0, 0],
                                        [-1, -2, 7, 1, 0, 0, 0], [-1, -2, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(valid, out != 0)


def test_prefix_after_bos():
    out, valid = _joined("prefix_after_bos")
    np.testing.assert_array_equal(out, [[7, -1, -2, 8, 9, 1, 0], [7, -1, -2, 8, 0, 0, 0],
                                        [7, -1, -2, 1, 0, 0, 0], [0, -1, -2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(valid, out != 0)


def test_suffix_before_eos():
    out, valid = _joined("suffix")
    np.testing.assert_array_equal(out, [[7, 8, 9, -1, -2, 1, 0], [7, 8, -1, -2, 0, 0, 0],
                                        [7, -1, -2, 1, 0, 0, 0], [-1, -2, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(valid, out != 0)


@pytest.mark.parametrize("placement", join.PLACEMENTS)
def test_processor_mask_matches_join_and_prompt_positions(placement):
    out, valid = _joined(placement)
    proc = prompts.PromptProcessor(length=2, placement=placement)
    np.testing.assert_array_equal(proc.mask(jnp.asarray(TOKENS)), valid)
    np.testing.assert_array_equal(join.prompt_positions(jnp.asarray(TOKENS), 2, placement), out < 0)


def test_unknown_placement():
    with pytest.raises(ValueError, match="unknown prompt placement 'middle'"):
        join.insertion_points(jnp.asarray(TOKENS), "middle")


def test_processor_joins_bank_by_index():
    embedded = jnp.zeros((4, 5, 3))
    proc = prompts.PromptProcessor(length=2, num_prompts=3)
    variables = proc.init(KEY, embedded, jnp.asarray(TOKENS), jnp.ones((10, 3)), prompt_index=jnp.zeros(4, int))
    bank = nn.unbox(variables)["params"]["prompt"]
    index = jnp.array([2, 0, 1, 2])
    out, valid = proc.apply(variables, embedded, jnp.asarray(TOKENS), jnp.ones((10, 3)), prompt_index=index)
    np.testing.assert_array_equal(out[:, :2], bank[index])
    np.testing.assert_array_equal(valid, proc.mask(jnp.asarray(TOKENS)))
    with pytest.raises(ValueError, match="needs a per-example prompt_index"):
        proc.apply(variables, embedded, jnp.asarray(TOKENS), jnp.ones((10, 3)))


def test_select_prompts_rejects_index_for_single_prompt():
    with pytest.raises(ValueError, match="not a bank"):
        prompts.select_prompts(jnp.zeros((2, 3)), jnp.zeros(4, int), 4)


def test_prompt_cast_to_activation_dtype():
    embedded = jnp.zeros((4, 5, 3), jnp.bfloat16)
    proc = prompts.PromptProcessor(length=2)
    (out, _), variables = proc.init_with_output(KEY, embedded, jnp.asarray(TOKENS), jnp.ones((10, 3)))
    assert out.dtype == jnp.bfloat16
    assert nn.unbox(variables)["params"]["prompt"].dtype == jnp.float32
