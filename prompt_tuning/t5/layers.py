"""T5 building blocks in flax.linen, numerically identical to t5x's `examples/t5/layers.py`.

Parameter names, shapes ([in, out] kernels, q/k/v [embed, heads*head_dim] head-major) and logical axis names
are t5x's, so t5x checkpoints load without renaming.  Parameters are float32 and cast to the activation dtype
where they are used.
"""
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Initializer = Callable[..., jax.Array]

# t5x's initialisers (only matter for training from scratch; checkpoints overwrite them).
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
# t5x turns a boolean mask into this additive bias; a fully masked row thus becomes uniform attention.
MASK_BIAS = -1e10


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; computed in float32."""

    dtype: jnp.dtype = jnp.float32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
        y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        return y * jnp.asarray(scale, self.dtype)


class Dense(nn.Module):
    """y = x @ kernel over the last `len(in_shape)` axes; the kernel is stored flat [prod(in), prod(out)]."""

    features: Sequence[int]
    kernel_axes: Sequence[str]
    in_axes: int = 1
    kernel_init: Initializer = default_kernel_init
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = tuple(int(f) for f in np.atleast_1d(self.features))
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                            (int(np.prod(in_shape)), int(np.prod(features))), jnp.float32)
        kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
        contract = tuple(range(x.ndim - self.in_axes, x.ndim))
        return lax.dot_general(jnp.asarray(x, self.dtype), kernel,
                               ((contract, tuple(range(self.in_axes))), ((), ())))


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; a real gather in, `attend` (float32) out."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features), jnp.float32)

    def __call__(self, tokens):
        return jnp.take(jnp.asarray(self.embedding, self.dtype), tokens.astype(jnp.int32), axis=0)

    def attend(self, query):
        """Logits against the table, in float32 as t5x (attend_dtype float32)."""
        return jnp.dot(jnp.asarray(query, jnp.float32), jnp.asarray(self.embedding, jnp.float32).T)


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """t5x's bucket of `key_pos - query_pos` (NumPy, static shapes; note the eps inside the log)."""
    ret = 0
    n = -np.asarray(relative_position)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
    val_if_large = np.minimum(val_if_large, num_buckets - 1)
    return (ret + np.where(is_small, n, val_if_large)).astype(np.int32)


class RelativePositionBiases(nn.Module):
    """One learned scalar per (head, distance bucket); one table per stack, shared by its layers."""

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, qlen: int, klen: int, bidirectional: bool = True):
        """Bias [1, heads, qlen, klen]."""
        rel = np.arange(klen, dtype=np.int32)[None, :] - np.arange(qlen, dtype=np.int32)[:, None]
        bucket = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
        table = self.param("rel_embedding", nn.with_logical_partitioning(relpos_init, ("heads", "relpos_buckets")),
                           (self.num_heads, self.num_buckets), jnp.float32)
        return jnp.take(jnp.asarray(table, self.dtype), jnp.asarray(bucket), axis=1)[None]


def mask_to_bias(mask, dtype):
    """Boolean mask [..., q, k] -> additive bias (0 or -1e10), as t5x."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(dtype)


def dot_product_attention(query, key, value, bias, *, dropout_rate=0.0, deterministic=True, dropout_rng=None,
                          dtype=jnp.float32, float32_logits=False):
    """t5x's attention core: no 1/sqrt(d) (folded into the query init); softmax in the logits' dtype.

    query [b, q, h, d], key/value [b, k, h, d], bias broadcastable to [b, h, q, k].
    """
    if float32_logits:
        query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    keep_scale = None
    if not deterministic and dropout_rate > 0.0:
        keep_prob = 1.0 - dropout_rate
        # t5x broadcasts the attention dropout mask over queries.
        shape = (query.shape[0], query.shape[2], 1, key.shape[1])
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        keep_scale = keep.astype(dtype) / jnp.asarray(keep_prob, dtype)
    return _softmax_attention(query, key, value, bias, keep_scale, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _softmax_attention(query, key, value, bias, keep_scale, dtype):
    return _softmax_attention_fwd(query, key, value, bias, keep_scale, dtype)[0]


def _softmax_attention_fwd(query, key, value, bias, keep_scale, dtype):
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    probs = jax.nn.softmax(logits).astype(dtype)
    weights = probs if keep_scale is None else probs * keep_scale
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    return out, (query, key, value, probs, keep_scale, out, bias)


def _softmax_attention_bwd(dtype, residuals, d_out):
    """The backward written out, as FlashAttention's: the softmax term needs rowsum(P * dP) over all keys,
    which equals rowsum(dO * O) over head_dim (O = (P * keep) V, so dropout included).  Fewer passes over the
    [b, h, q, k] tensors than JAX's softmax rule: a train step's XLA temporaries fell from 608 to 419 MiB and
    its element-wise time by ~25% on W-small."""
    query, key, value, probs, keep_scale, out, bias = residuals
    weights = probs if keep_scale is None else probs * keep_scale
    d_value = jnp.einsum("bhqk,bqhd->bkhd", weights, d_out).astype(value.dtype)
    d_weights = jnp.einsum("bqhd,bkhd->bhqk", d_out, value)
    d_probs = d_weights if keep_scale is None else d_weights * keep_scale
    row_dot = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    d_logits = probs.astype(jnp.float32) * (d_probs.astype(jnp.float32) - row_dot[..., None])
    d_logits = d_logits.astype(query.dtype)
    d_query = jnp.einsum("bhqk,bkhd->bqhd", d_logits, key).astype(query.dtype)
    d_key = jnp.einsum("bhqk,bqhd->bkhd", d_logits, query).astype(key.dtype)
    d_bias = None
    if bias is not None:
        lead = d_logits.ndim - bias.ndim  # bias may have fewer (leading, broadcast) dims
        summed = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(bias.shape) if n == 1)
        d_bias = d_logits.sum(summed).reshape(bias.shape).astype(bias.dtype)
    d_keep = None if keep_scale is None else jnp.zeros_like(keep_scale)
    return d_query, d_key, d_value, d_bias, d_keep


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with t5x's projections; optional key/value cache for autoregressive decoding.

    With `decode=True` the 'cache' collection holds `cached_key`/`cached_value` [batch, length, heads, head_dim];
    the first (initialising) call fills nothing and attends normally, later calls take one token at position
    `cache_index`: the caller's (our decoder keeps one for all its layers) or, when None, this module's own
    scalar 'cache_index' variable, as in t5x.
    """

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    float32_logits: bool = False

    @nn.compact
    def __call__(self, inputs_q, inputs_kv, bias, *, deterministic=True, decode=False, cache_index=None):
        """bias: additive, broadcastable to [batch, heads, q, k] (mask bias + relative position bias)."""
        projection = functools.partial(Dense, features=(self.num_heads, self.head_dim),
                                       kernel_axes=("embed", "joined_kv"), dtype=self.dtype)
        depth_scaling = jnp.sqrt(self.head_dim).astype(self.dtype)
        query_init = lambda *args: attention_kernel_init(*args) / depth_scaling  # noqa: E731
        query = projection(kernel_init=query_init, name="query")(inputs_q)
        key = projection(kernel_init=attention_kernel_init, name="key")(inputs_kv)
        value = projection(kernel_init=attention_kernel_init, name="value")(inputs_kv)
        axes = ("batch", "length", "heads", "kv")
        query, key, value = (_constrain(t, axes) for t in (query, key, value))

        if decode:
            initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            if cache_index is None:
                own_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
                cache_index = own_index.value
                if initialized:
                    own_index.value = cache_index + 1
            if initialized:
                batch, length = cached_key.value.shape[:2]
                if key.shape[1] != 1:
                    raise ValueError(f"decode step expects one token per row, got inputs {inputs_q.shape}")
                start = (0, cache_index, 0, 0)
                key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
                value = lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype), start)
                cached_key.value, cached_value.value = key, value
                # Attend to the filled prefix only; the caller's bias is the full-length one, sliced to this row.
                valid = jnp.arange(length) <= cache_index
                step_bias = mask_to_bias(jnp.broadcast_to(valid, (batch, 1, 1, length)), self.dtype)
                if bias is not None:
                    bias = lax.dynamic_slice_in_dim(bias, cache_index, 1, axis=-2)
                    bias = step_bias + bias.astype(self.dtype)
                else:
                    bias = step_bias

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        x = dot_product_attention(query, key, value, bias, dropout_rate=self.dropout_rate,
                                  deterministic=deterministic, dropout_rng=dropout_rng, dtype=self.dtype,
                                  float32_logits=self.float32_logits)
        return Dense(features=inputs_q.shape[-1], in_axes=2, kernel_axes=("joined_kv", "embed"),
                     kernel_init=attention_kernel_init, dtype=self.dtype, name="out")(x)


_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,  # approximate=True (tanh), as t5x and HF's gelu_new
    "gelu_exact": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "swish": nn.swish,
    "linear": lambda x: x,
}


def activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown MLP activation {name!r}; known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class MlpBlock(nn.Module):
    """Feed-forward block: one `wi` (single activation) or gated `wi_0`, `wi_1`, ... multiplied, then `wo`."""

    intermediate_dim: int
    activations: Sequence[str] = ("relu",)
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs, deterministic=True):
        hidden = None
        for idx, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{idx}"
            h = activation(act)(Dense(features=self.intermediate_dim, kernel_axes=("embed", "mlp"),
                                      dtype=self.dtype, name=name)(inputs))
            hidden = h if hidden is None else hidden * h
        hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic=deterministic)
        hidden = _constrain(hidden, ("batch", "length", "mlp"))
        return Dense(features=inputs.shape[-1], kernel_axes=("mlp", "embed"), dtype=self.dtype, name="wo")(hidden)


def make_attention_mask(query_valid, key_valid, pairwise_fn=jnp.logical_and):
    """[b, q], [b, k] -> [b, 1, q, k] bool: pairwise_fn of each query's and key's value (e.g. jnp.equal of
    segment ids)."""
    return pairwise_fn(query_valid[:, None, :, None], key_valid[:, None, None, :])


def make_causal_mask(length: int):
    """[1, 1, length, length] bool, True where key position <= query position."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def remat_policy(name: str):
    """Maps T5Config.remat_policy to a jax.checkpoint policy; 'none' -> no rematerialisation (returns False)."""
    policies = {"none": False, "full": None, "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}
    if name not in policies:
        raise ValueError(f"unknown remat_policy {name!r}; known: {', '.join(policies)}")
    return policies[name]


def maybe_wrap_layer(layer_cls, config, *, num_layers: int, cache_axis: int = 1):
    """The layer class, rematerialised and/or scanned as `config` asks.

    Scanned layers take (x, *broadcast_args) and return (x, None); parameters are stacked on a leading
    'layers' axis, caches (batch-leading leaves) on axis `cache_axis` so that their batch axis stays first.
    """
    policy = remat_policy(config.remat_policy)
    if policy is not False:
        layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not config.scan_layers)
    if config.scan_layers:
        layer_cls = nn.scan(layer_cls, variable_axes={"params": 0, "cache": cache_axis},
                            split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                            length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return layer_cls
