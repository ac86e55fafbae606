"""Decoder-only T5 (t5x's `examples/decoder_only` layout) that takes a soft prompt: causal LM or prefix-LM.

The prompt is prepended to the embedded tokens; its positions are stripped from the logits, so no loss can
see them.  Decoding keeps the prompt in the key/value cache: the first (`prefill=True`) call writes prompt +
given tokens into the cache, later calls add one token each.

    logits = m.apply(v, decoder_input_tokens, decoder_target_tokens, decoder_causal_attention)  # [B, T, V]
    _, cache = m.apply(v, tokens_of_max_len, decode=True, mutable=['cache'])      # cache for P + max_len
    logits, cache = m.apply({**v, **cache}, prefix, decode=True, prefill=True, mutable=['cache'])
    logits, cache = m.apply({**v, **cache}, next_token[:, None], decode=True, mutable=['cache'])
"""
import functools
from typing import Callable, Optional

import flax.linen as nn
import gin
import jax.numpy as jnp
from jax import lax

from prompt_tuning.prompts import join
from prompt_tuning.t5 import layers
from prompt_tuning.t5.config import T5Config


class CachedSelfAttention(nn.Module):
    """t5x self-attention (same parameter names) whose cache accepts chunks of several tokens (prefill)."""

    config: T5Config

    @nn.compact
    def __call__(self, x, bias, decode=False, cache_index=None, deterministic=True):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        dense = functools.partial(layers.Dense, features=(cfg.num_heads, cfg.head_dim),
                                  kernel_axes=("embed", "joined_kv"), dtype=dtype)
        depth = jnp.sqrt(cfg.head_dim).astype(dtype)
        q = dense(kernel_init=lambda *a: layers.attention_kernel_init(*a) / depth, name="query")(x)
        k = dense(kernel_init=layers.attention_kernel_init, name="key")(x)
        v = dense(kernel_init=layers.attention_kernel_init, name="value")(x)
        if decode:
            ready = self.has_variable("cache", "cached_key")
            ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
            cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
            if ready:  # write this chunk at cache_index, attend over the whole cache (bias masks the rest)
                ck.value = k = lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, cache_index, 0, 0))
                cv.value = v = lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, cache_index, 0, 0))
        dropout_rng = None if deterministic or cfg.dropout_rate == 0 else self.make_rng("dropout")
        y = layers.dot_product_attention(q, k, v, bias, dropout_rate=cfg.dropout_rate, deterministic=deterministic,
                                         dropout_rng=dropout_rng, dtype=dtype,
                                         float32_logits=cfg.float32_attention_logits)
        return layers.Dense(features=x.shape[-1], in_axes=2, kernel_axes=("joined_kv", "embed"),
                            kernel_init=layers.attention_kernel_init, dtype=dtype, name="out")(y)


class DecoderOnlyLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, bias, decode=False, cache_index=None, deterministic=True):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        drop = functools.partial(nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,)), deterministic=deterministic)
        y = layers.RMSNorm(dtype=dtype, name="pre_self_attention_layer_norm")(x)
        x = drop(CachedSelfAttention(cfg, name="self_attention")(y, bias, decode, cache_index, deterministic)) + x
        y = layers.RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
        y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=tuple(cfg.mlp_activations),
                            dropout_rate=cfg.dropout_rate, dtype=dtype, name="mlp")(y, deterministic=deterministic)
        return nn.with_logical_constraint(drop(y) + x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    config: T5Config
    input_processor_factory: Optional[Callable[[], nn.Module]] = None

    @nn.compact
    def __call__(self, tokens, target_tokens=None, causal_attention=None, valid=None, deterministic=True,
                 decode=False, prefill=False, prompt_index=None):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        batch, num_tokens = tokens.shape
        token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, name="token_embedder")
        prompt = None if self.input_processor_factory is None else self.input_processor_factory(name="prompt")
        if prompt is not None and prompt.placement != "prefix":
            raise ValueError(f"decoder-only prompts are prefixes (the cache holds them first); "
                             f"got placement {prompt.placement!r}")
        dropout = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))
        x = token_embedder(tokens)
        if valid is None:
            valid = jnp.ones(tokens.shape, bool) if target_tokens is None or decode else target_tokens > 0
        flags = jnp.zeros(tokens.shape, bool) if causal_attention is None else causal_attention > 0
        stepping = decode and self.has_variable("cache", "cache_index")
        at = jnp.zeros((batch,), jnp.int32)  # where the prompt sits: before each row's first real token
        num_prompt = 0
        if prompt is not None and (prefill or not stepping):  # the prompt enters once: first in the cache
            at = join.insertion_points(valid.astype(jnp.int32), "prefix")
            x, valid = prompt(x, valid.astype(jnp.int32), token_embedder.embedding, prompt_index=prompt_index)
            num_prompt = prompt.length
            # The prompt belongs to the prefix-LM input (bidirectional) whenever there is one.
            prompt_flags = jnp.full((batch, num_prompt, 1), causal_attention is not None)
            flags = join.insert(prompt_flags, flags[:, :, None], at)[:, :, 0]
        x = dropout(x, deterministic=deterministic).astype(dtype)
        length = x.shape[1]

        index = None
        if decode:
            counter = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            # Which cached positions are real: rows of a decoding batch may start with padding.
            cached_valid = self.variable("cache", "cached_valid", jnp.zeros, (batch, length), bool)
            if stepping:
                index = jnp.array(0, jnp.int32) if prefill else counter.value
                counter.value = index + length
                cached_valid.value = lax.dynamic_update_slice(cached_valid.value, valid, (0, index))
        if index is None:  # teacher forcing (or cache creation): positions 0..length-1
            q_pos, k_len = jnp.arange(length), length
            k_valid, k_flags = valid, flags
        else:
            k_valid = cached_valid.value
            k_len = k_valid.shape[1]
            q_pos = index + jnp.arange(length)
            k_flags = lax.dynamic_update_slice(jnp.zeros((batch, k_len), bool), flags, (0, index))
        k_pos = jnp.arange(k_len)
        mask = (k_pos[None, :] <= q_pos[:, None])[None] | (flags[:, :, None] & k_flags[:, None, :])
        mask = mask & valid[:, :, None] & k_valid[:, None, :]
        relpos_bias = layers.RelativePositionBiases(cfg.relpos_num_buckets, cfg.relpos_max_distance, cfg.num_heads,
                                                    dtype=dtype, name="relpos_bias")
        relpos = lax.dynamic_slice_in_dim(relpos_bias(k_len, k_len, bidirectional=False),
                                          q_pos[0], length, axis=2)
        bias = layers.mask_to_bias(mask[:, None], dtype) + relpos
        for i in range(cfg.num_decoder_layers):
            x = DecoderOnlyLayer(cfg, name=f"layers_{i}")(x, bias, decode, index, deterministic)
        x = layers.RMSNorm(dtype=dtype, name="decoder_norm")(x)
        x = dropout(x, deterministic=deterministic)
        if cfg.logits_via_embedding:
            logits = token_embedder.attend(x) / jnp.sqrt(x.shape[-1])
        else:
            logits = layers.Dense(features=cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=jnp.float32,
                                  name="logits_dense")(x)
        if not num_prompt:
            return logits
        # Only the tokens' positions leave the model: prompt positions never reach a loss.
        k = jnp.arange(num_tokens)[None, :]
        return jnp.take_along_axis(logits, jnp.where(k < at[:, None], k, k + num_prompt)[:, :, None], axis=1)


@gin.configurable
class DecoderOnly(nn.Module):
    """Decoder-only T5 with an optional input processor (the soft prompt); parameters under `decoder/`."""

    config: T5Config
    input_processor_factory: Optional[Callable[[], nn.Module]] = None
    PROCESSOR_HOOK = "input_processor_factory"  # the attribute a soft prompt is injected through

    def setup(self):
        self.decoder = Decoder(self.config, self.input_processor_factory)

    def __call__(self, decoder_input_tokens, decoder_target_tokens=None, decoder_causal_attention=None,
                 valid=None, enable_dropout=False, decode=False, prefill=False, prompt_index=None):
        """Logits [B, T, vocab] for the given tokens (prompt positions removed).

        decoder_causal_attention [B, T]: 1 on the prefix-LM input (bidirectional), None = causal LM.
        valid [B, T]: the real positions (default: decoder_target_tokens > 0, or all when decoding); a prefill
        may start rows with padding, and each row's prompt then sits before its first real token.
        decode=True: the first call creates the cache (its length = prompt + tokens given); prefill=True
        writes prompt + tokens from position 0; plain decode calls append their tokens.
        """
        return self.decoder(decoder_input_tokens, decoder_target_tokens, decoder_causal_attention, valid,
                            deterministic=not enable_dropout, decode=decode, prefill=prefill,
                            prompt_index=prompt_index)
