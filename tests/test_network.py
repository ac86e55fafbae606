"""The Flax T5: parameter tree and axes, parity with t5x's own outputs, scan/remat/dropout/dtype, prompt hook."""
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from prompt_tuning import losses, models
from prompt_tuning.t5 import layers, network
from prompt_tuning.t5.config import T5Config
from conftest import shared_path

# The fixtures' t5x model (shared/fixtures/README.md section A).
FIXTURE_CONFIG = T5Config(vocab_size=128, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                          num_encoder_layers=2, num_decoder_layers=2, mlp_activations=("gelu", "linear"),
                          float32_attention_logits=False)
TINY = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2,
                num_decoder_layers=2)


def tiny_batch(batch=2, enc_len=7, dec_len=5, vocab=32, seed=0):
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, vocab, (batch, enc_len)).astype(np.int32)
    enc[1, enc_len - 2:] = 0  # padding
    tgt = rng.randint(2, vocab, (batch, dec_len)).astype(np.int32)
    tgt[0, -1] = 1
    tgt[1, dec_len - 2], tgt[1, dec_len - 1] = 1, 0
    dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
                decoder_loss_weights=(tgt > 0).astype(np.int32))


def init_params(module, batch, key=0):
    variables = module.init(jax.random.PRNGKey(key), batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                            batch["decoder_target_tokens"])
    return variables["params"]


def logits_of(module, params, batch, **kwargs):
    return module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                        batch["decoder_target_tokens"], **kwargs)


@pytest.fixture(scope="module")
def tiny():
    module, batch = network.Transformer(TINY), tiny_batch()
    boxed = init_params(module, batch)
    return module, nn.unbox(boxed), boxed, batch


@pytest.fixture(scope="module")
def tiny_logits(tiny):
    module, params, _, batch = tiny
    return np.asarray(logits_of(module, params, batch))


# ---------------------------------------------------------------------------------------------------------------
# Parameter tree and logical axes
# ---------------------------------------------------------------------------------------------------------------

def _expected_tree(cfg, gated=True, tied=False):
    d, hd, m, v, h = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size, cfg.num_heads
    mlp = ({"mlp/wi_0/kernel": (d, m), "mlp/wi_1/kernel": (d, m)} if gated else {"mlp/wi/kernel": (d, m)})
    mlp["mlp/wo/kernel"] = (m, d)

    def attention(name):
        return {f"{name}/{p}/kernel": (d, hd) for p in ("query", "key", "value")} | {f"{name}/out/kernel": (hd, d)}

    tree = {"token_embedder/embedding": (v, d), "encoder/relpos_bias/rel_embedding": (h, 32),
            "encoder/encoder_norm/scale": (d,), "decoder/relpos_bias/rel_embedding": (h, 32),
            "decoder/decoder_norm/scale": (d,)}
    if not tied:
        tree["decoder/logits_dense/kernel"] = (d, v)
    for i in range(cfg.num_encoder_layers):
        layer = (attention("attention") | mlp
                 | {"pre_attention_layer_norm/scale": (d,), "pre_mlp_layer_norm/scale": (d,)})
        tree |= {f"encoder/layers_{i}/{k}": s for k, s in layer.items()}
    for i in range(cfg.num_decoder_layers):
        layer = (attention("self_attention") | attention("encoder_decoder_attention") | mlp
                 | {f"{n}/scale": (d,) for n in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
                                                 "pre_mlp_layer_norm")})
        tree |= {f"decoder/layers_{i}/{k}": s for k, s in layer.items()}
    return tree


def _shapes(params):
    return {k: tuple(v.shape) for k, v in flatten_dict(nn.unbox(params), sep="/").items()}


def test_param_tree_names_and_shapes(tiny):
    _, params, _, _ = tiny
    assert _shapes(params) == _expected_tree(TINY)
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(params))


def test_logical_axes(tiny):
    specs = flatten_dict(nn.get_partition_spec(tiny[2]), sep="/")
    expected = {"token_embedder/embedding": ("vocab", "embed"),
                "encoder/layers_0/attention/query/kernel": ("embed", "joined_kv"),
                "decoder/layers_1/encoder_decoder_attention/out/kernel": ("joined_kv", "embed"),
                "encoder/layers_0/mlp/wi_0/kernel": ("embed", "mlp"),
                "decoder/layers_0/mlp/wo/kernel": ("mlp", "embed"),
                "decoder/layers_0/pre_cross_attention_layer_norm/scale": ("embed",),
                "encoder/relpos_bias/rel_embedding": ("heads", "relpos_buckets"),
                "decoder/logits_dense/kernel": ("embed", "vocab")}
    for key, axes in expected.items():
        assert tuple(specs[key]) == axes, key
    assert all(len(spec) > 0 for spec in specs.values())


def test_t5_1_0_tied_and_scaled_logits(tiny):
    """relu + tied output: no logits_dense, `wi`, logits = attend(embedding) / sqrt(emb_dim)."""
    _, params, _, batch = tiny
    cfg = TINY.replace(mlp_activations=("relu",), logits_via_embedding=True)
    tied = network.Transformer(cfg)
    tied_params = nn.unbox(init_params(tied, batch))
    assert _shapes(tied_params) == _expected_tree(cfg, gated=False, tied=True)
    # The same model with an untied head holding embedding.T / sqrt(d) gives the same logits.
    untied_params = flatten_dict(tied_params, sep="/")
    untied_params["decoder/logits_dense/kernel"] = untied_params["token_embedder/embedding"].T / np.sqrt(16.0)
    untied = network.Transformer(cfg.replace(logits_via_embedding=False))
    a = logits_of(tied, tied_params, batch)
    b = logits_of(untied, unflatten_dict(untied_params, sep="/"), batch)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_transformer_is_gin_configurable(tiny):
    try:
        gin.bind_parameter("Transformer.config", TINY)
        assert network.Transformer().config == TINY
    finally:
        gin.clear_config()


# ---------------------------------------------------------------------------------------------------------------
# Parity with t5x (shared/fixtures/t5x_t5_1_1_tiny)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5x_fixture():
    from prompt_tuning.checkpoints import read_params
    ckpt = shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0")
    ref = dict(np.load(shared_path("fixtures", "t5x_t5_1_1_tiny", "reference.npz")))
    return network.Transformer(FIXTURE_CONFIG), read_params(str(ckpt)), ref


def test_t5x_param_tree_matches_checkpoint(t5x_fixture):
    module, params, ref = t5x_fixture
    abstract = jax.eval_shape(lambda: init_params(module, ref))
    assert _shapes(abstract) == _shapes(params)


def test_t5x_logits_all_positions(t5x_fixture):
    module, params, ref = t5x_fixture
    logits = models.EncoderDecoderModel(module).logits(params, ref)
    assert logits.dtype == jnp.float32
    # Every position, padded targets included (t5x's fully masked rows -> uniform attention).
    assert np.abs(np.asarray(logits) - ref["logits"]).max() <= 1e-4


def test_t5x_encoded(t5x_fixture):
    module, params, ref = t5x_fixture
    encoded = module.apply({"params": params}, ref["encoder_input_tokens"], method=module.encode)
    assert np.abs(np.asarray(encoded) - ref["encoded"]).max() <= 1e-4


@pytest.mark.parametrize("bidirectional,name", [(True, "relpos_bucket_encoder"), (False, "relpos_bucket_decoder")])
def test_relative_position_buckets(t5x_fixture, bidirectional, name):
    expected = t5x_fixture[2][name]
    n = expected.shape[0]
    rel = np.arange(n)[None, :] - np.arange(n)[:, None]
    np.testing.assert_array_equal(layers.relative_position_bucket(rel, bidirectional, 32, 128), expected)


def test_relative_position_buckets_far():
    """Large distances saturate in the last bucket; the encoder splits directions in halves."""
    rel = np.array([-1000, -128, -8, -7, 0, 7, 8, 1000])
    np.testing.assert_array_equal(layers.relative_position_bucket(rel, True, 32, 128),
                                  [15, 15, 8, 7, 0, 23, 24, 31])
    np.testing.assert_array_equal(layers.relative_position_bucket(rel, False, 32, 128),
                                  [31, 31, 8, 7, 0, 0, 0, 0])


def _autodiff_attention(query, key, value, bias, keep_scale):
    """The attention core as plain jnp, differentiated by JAX (the reference for the hand-written backward)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) + (0.0 if bias is None else bias)
    weights = jax.nn.softmax(logits) * (1.0 if keep_scale is None else keep_scale)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


@pytest.mark.parametrize("bias_shape", [None, (1, 3, 5, 7), (2, 1, 5, 7), (3, 5, 7)])
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_backward_matches_autodiff(bias_shape, dropout):
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    query = jax.random.normal(keys[0], (2, 5, 3, 4))
    key, value = (jax.random.normal(k, (2, 7, 3, 4)) for k in keys[1:3])
    bias = None if bias_shape is None else jax.random.normal(keys[3], bias_shape)
    keep_scale = None
    if dropout:  # the same [b, h, 1, k] mask dot_product_attention draws from this rng
        keep_scale = jax.random.bernoulli(keys[4], 0.7, (2, 3, 1, 7)).astype(jnp.float32) / 0.7

    def ours(q, k, v, b):
        return layers.dot_product_attention(q, k, v, b, dropout_rate=0.3 if dropout else 0.0,
                                            deterministic=not dropout, dropout_rng=keys[4])

    def loss(attention):
        return lambda *args: jnp.sum(jnp.sin(attention(*args)))
    wrt = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    expected = jax.grad(loss(lambda q, k, v, b: _autodiff_attention(q, k, v, b, keep_scale)), wrt)(
        query, key, value, bias)
    got = jax.jit(jax.grad(loss(ours), wrt))(query, key, value, bias)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours(query, key, value, bias), _autodiff_attention(query, key, value, bias, keep_scale),
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Scan, remat, dropout, dtype
# ---------------------------------------------------------------------------------------------------------------

def stack_layers(params):
    """Unscanned layers_N subtrees -> one 'layers' subtree stacked on axis 0 (the scanned layout)."""
    out = dict(params)
    for stack in ("encoder", "decoder"):
        tree = dict(params[stack])
        names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
        tree["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[tree.pop(k) for k in names])
        out[stack] = tree
    return out


def test_scanned_layers_match_unscanned(tiny, tiny_logits):
    module, params, _, batch = tiny
    scanned = network.Transformer(TINY.replace(scan_layers=True))
    boxed = jax.eval_shape(lambda: init_params(scanned, batch))
    stacked = stack_layers(params)
    assert _shapes(boxed) == _shapes(stacked)
    spec = flatten_dict(nn.get_partition_spec(boxed), sep="/")["encoder/layers/attention/query/kernel"]
    assert tuple(spec) == ("layers", "embed", "joined_kv")
    np.testing.assert_allclose(logits_of(scanned, stacked, batch), tiny_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["full", "minimal"])
def test_remat_same_logits(tiny, tiny_logits, policy):
    module, params, _, batch = tiny
    remat = network.Transformer(TINY.replace(remat_policy=policy))
    np.testing.assert_allclose(logits_of(remat, params, batch), tiny_logits, atol=1e-6)


def test_unknown_remat_policy_is_an_error(tiny):
    with pytest.raises(ValueError, match="remat_policy"):
        init_params(network.Transformer(TINY.replace(remat_policy="sometimes")), tiny[3])


def test_dropout(tiny, tiny_logits):
    _, params, _, batch = tiny
    module = network.Transformer(TINY.replace(dropout_rate=0.3))
    # Eval mode: no rng needed and dropout is off.
    np.testing.assert_allclose(logits_of(module, params, batch), tiny_logits, atol=1e-6)
    run = lambda seed: logits_of(module, params, batch, enable_dropout=True,  # noqa: E731
                                 rngs={"dropout": jax.random.PRNGKey(seed)})
    a, b = run(0), run(1)
    assert np.abs(a - tiny_logits).max() > 1e-3 and np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(a, run(0))


def test_bfloat16_activations(tiny, tiny_logits):
    _, params, _, batch = tiny
    module = network.Transformer(TINY.replace(dtype="bfloat16"))
    logits = logits_of(module, params, batch)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - tiny_logits).max() < 0.1 * np.abs(tiny_logits).max()


# ---------------------------------------------------------------------------------------------------------------
# Encoder input processor (soft prompt hook)
# ---------------------------------------------------------------------------------------------------------------

class PrependRows(nn.Module):
    """A test processor: prepends `length` learned vectors, initialised from the first rows of the table."""

    length: int = 3

    @nn.compact
    def __call__(self, embedded, tokens, embedding_table, prompt_index=None):
        prompt = self.param("prompt", lambda rng: embedding_table[: self.length])
        batch = embedded.shape[0]
        joined = jnp.concatenate([jnp.broadcast_to(prompt.astype(embedded.dtype), (batch,) + prompt.shape),
                                  embedded], axis=1)
        return joined, self.mask(tokens)

    def mask(self, tokens, prompt_index=None):
        return jnp.concatenate([jnp.ones((tokens.shape[0], self.length), bool), tokens > 0], axis=1)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, embedded, tokens, embedding_table, prompt_index=None):
        return embedded, tokens > 0

    def mask(self, tokens, prompt_index=None):
        return tokens > 0


def test_identity_processor_changes_nothing(tiny, tiny_logits):
    _, params, _, batch = tiny
    module = network.Transformer(TINY, encoder_input_processor_factory=Identity)
    np.testing.assert_array_equal(logits_of(module, params, batch), tiny_logits)


@pytest.fixture(scope="module")
def prompted(tiny):
    """A loaded (here: random) model plus a prompt created by initialising only the missing parameter."""
    _, params, _, batch = tiny
    module = network.Transformer(TINY, encoder_input_processor_factory=PrependRows)
    logits, variables = module.apply({"params": params}, batch["encoder_input_tokens"],
                                     batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                                     rngs={"params": jax.random.PRNGKey(5)}, mutable=["params"])
    return module, variables["params"], logits, batch


def test_init_only_missing_prompt_from_loaded_embedding(tiny, prompted):
    _, params, _, _ = tiny
    _, new_params, _, _ = prompted
    old, new = flatten_dict(params, sep="/"), flatten_dict(nn.unbox(new_params), sep="/")
    assert set(new) - set(old) == {"encoder/prompt/prompt"}
    for key, value in old.items():
        np.testing.assert_array_equal(new[key], value, err_msg=key)
    np.testing.assert_array_equal(new["encoder/prompt/prompt"], params["token_embedder"]["embedding"][:3])


def test_prompt_joins_encoder_sequence(prompted):
    module, params, logits, batch = prompted
    tokens = batch["encoder_input_tokens"]
    encoded = module.apply({"params": params}, tokens, method=module.encode)
    mask = module.apply({"params": params}, tokens, method=module.encoder_mask)
    assert encoded.shape == (2, 3 + tokens.shape[1], TINY.emb_dim)
    np.testing.assert_array_equal(mask, np.concatenate([np.ones((2, 3), bool), tokens > 0], axis=1))
    np.testing.assert_array_equal(logits_of(module, params, batch), logits)
    # The decoder cross-attends the prompt positions: changing the prompt changes the logits.
    moved = jax.tree_util.tree_map(lambda x: x, params)
    moved["encoder"]["prompt"]["prompt"] = params["encoder"]["prompt"]["prompt"] + 1.0
    assert np.abs(logits_of(module, moved, batch) - logits).max() > 1e-3


def test_prompted_greedy_decode_matches_teacher_forcing(prompted):
    """Cached decoding sees the same joined encoder sequence as teacher forcing."""
    module, params, _, batch = prompted
    tokens, scores = models.EncoderDecoderModel(module).predict_batch(params, batch, method="greedy",
                                                                      max_decode_len=4)
    tokens = np.asarray(tokens)
    before_eos = np.cumsum(np.cumsum(tokens == 1, axis=1), axis=1) <= 1
    decoder_inputs = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    logits = module.apply({"params": params}, batch["encoder_input_tokens"], decoder_inputs)
    expected = losses.token_log_probs(logits, tokens, before_eos).sum(-1)
    np.testing.assert_allclose(expected, scores, atol=1e-5)


def test_sharded_apply_matches(tiny, tiny_logits):
    """Under a (data, model) mesh with t5x's logical rules, sharded params and constraints give the same logits."""
    from prompt_tuning import partitioning
    module, params, boxed, batch = tiny
    mesh = partitioning.make_mesh(2, devices=jax.devices()[:4])
    shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
    sharded = jax.device_put(params, shardings)
    doubled = {k: np.concatenate([v, v]) for k, v in batch.items()}  # batch 4 splits over 'data'
    with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.STANDARD_RULES):
        logits = jax.jit(lambda p, b: logits_of(module, p, b))(sharded, doubled)
    np.testing.assert_allclose(logits[:2], tiny_logits, atol=1e-5, rtol=1e-5)
