"""The T5 encoder-decoder (t5x's `examples/t5/network.py` semantics) with a hook for soft prompts.

`Transformer.apply({'params': params}, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens)`
returns float32 logits exactly as t5x's module does, including t5x's masking: decoder self-attention and
encoder-decoder attention masks come from `decoder_target_tokens > 0` when given.

Encoder input processor (the soft prompt plugs in here): a module built by `encoder_input_processor_factory`
and placed at `encoder/prompt`, with
    __call__(embedded [B,L,D], tokens [B,L], embedding_table [V,D], prompt_index=None)
        -> (embedded [B,L',D], valid [B,L'] bool)
    mask(tokens [B,L], prompt_index=None) -> valid [B,L'] bool
Without one the encoder sees the embedded tokens and `tokens > 0`.

Packed rows (several examples per row, t5x's `pack=True`): `encoder_segment_ids` / `decoder_segment_ids`
[B, L] (0 = padding) keep attention inside each example; relative positions need nothing more, as each
example's positions are contiguous.  With a soft prompt, a packed row must already hold every segment's
prompt slot (feature_converters.EncDecFeatureConverter(prompt_slots=P) puts them there; the call says so with
`packed_prompts=True`): the processor is then called with `segment_ids=` and `positions=` and fills the
slots in place.  t5x's own packed rows have no slots, so with a prompt they are refused (see refuse_packed).
"""
from typing import Callable, Optional

import flax.linen as nn
import gin
import jax.numpy as jnp

from prompt_tuning.t5 import layers
from prompt_tuning.t5.config import T5Config

EMBED_AXES = ("batch", "length", "embed")


def _dtype(config: T5Config):
    return jnp.dtype(config.dtype)


def _dropout(config: T5Config, x, deterministic: bool):
    return nn.Dropout(rate=config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _attention(config: T5Config, name: str):
    return layers.MultiHeadDotProductAttention(
        num_heads=config.num_heads, head_dim=config.head_dim, dtype=_dtype(config),
        dropout_rate=config.dropout_rate, float32_logits=config.float32_attention_logits, name=name)


def _mlp(config: T5Config):
    return layers.MlpBlock(intermediate_dim=config.mlp_dim, activations=tuple(config.mlp_activations),
                           dropout_rate=config.dropout_rate, dtype=_dtype(config), name="mlp")


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP block.  Returns (x, None) when scanned."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, inputs, bias):
        cfg, det = self.config, self.deterministic
        x = layers.RMSNorm(dtype=_dtype(cfg), name="pre_attention_layer_norm")(inputs)
        x = _attention(cfg, "attention")(x, x, bias, deterministic=det)
        x = _dropout(cfg, x, det) + inputs
        y = layers.RMSNorm(dtype=_dtype(cfg), name="pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=det)
        y = nn.with_logical_constraint(_dropout(cfg, y, det) + x, EMBED_AXES)
        return (y, None) if cfg.scan_layers else y


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention (cached when decoding) + encoder-decoder attention + MLP."""

    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, inputs, encoded, self_bias, cross_bias, cache_index):
        cfg, det = self.config, self.deterministic
        x = layers.RMSNorm(dtype=_dtype(cfg), name="pre_self_attention_layer_norm")(inputs)
        x = _attention(cfg, "self_attention")(x, x, self_bias, deterministic=det, decode=self.decode,
                                               cache_index=cache_index)
        x = _dropout(cfg, x, det) + inputs
        queries = layers.RMSNorm(dtype=_dtype(cfg), name="pre_cross_attention_layer_norm")(x)
        # Rows that share an encoded input (see Decoder) attend as one longer query sequence: the encoder
        # output's keys and values are then projected once per input, not once per row.
        grouped = queries.reshape(encoded.shape[0], -1, queries.shape[-1])
        attended = _attention(cfg, "encoder_decoder_attention")(grouped, encoded, cross_bias, deterministic=det)
        y = _dropout(cfg, attended.reshape(queries.shape), det) + x
        z = layers.RMSNorm(dtype=_dtype(cfg), name="pre_mlp_layer_norm")(y)
        z = _mlp(cfg)(z, deterministic=det)
        z = nn.with_logical_constraint(_dropout(cfg, z, det) + y, EMBED_AXES)
        return (z, None) if cfg.scan_layers else z


def _run_layers(config, layer_cls, num_layers, x, *args, **attrs):
    """Applies `num_layers` layers: unrolled as layers_N, or one scanned 'layers' module."""
    wrapped = layers.maybe_wrap_layer(layer_cls, config, num_layers=num_layers)
    if config.scan_layers:
        return wrapped(config=config, name="layers", **attrs)(x, *args)[0]
    for i in range(num_layers):
        x = wrapped(config=config, name=f"layers_{i}", **attrs)(x, *args)
    return x


def _relpos(config: T5Config):
    return layers.RelativePositionBiases(num_buckets=config.relpos_num_buckets,
                                         max_distance=config.relpos_max_distance,
                                         num_heads=config.num_heads, dtype=_dtype(config), name="relpos_bias")


def _packing(segment_ids, positions) -> dict:
    """The processor's packed-row keywords, only when packed (unpacked processors need not take them)."""
    return {} if segment_ids is None else {"segment_ids": segment_ids, "positions": positions}


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module
    input_processor_factory: Optional[Callable[[], nn.Module]] = None

    def setup(self):
        # Created in setup so it is named after the attribute: parameters live under encoder/prompt/...
        self.prompt = None if self.input_processor_factory is None else self.input_processor_factory()

    def mask(self, tokens, prompt_index=None, segment_ids=None, positions=None):
        """Validity [B, L'] of the encoded positions (prompt positions included)."""
        if self.prompt is None:
            return tokens > 0
        return self.prompt.mask(tokens, prompt_index=prompt_index, **_packing(segment_ids, positions))

    @nn.compact
    def __call__(self, tokens, deterministic=True, prompt_index=None, segment_ids=None, positions=None):
        cfg = self.config
        x = self.shared_embedding(tokens)
        valid = tokens > 0
        if self.prompt is not None:
            x, valid = self.prompt(x, tokens, self.shared_embedding.embedding, prompt_index=prompt_index,
                                   **_packing(segment_ids, positions))
        x = _dropout(cfg, x, deterministic).astype(_dtype(cfg))
        x = nn.with_logical_constraint(x, EMBED_AXES)
        length = x.shape[1]
        mask = layers.make_attention_mask(valid, valid)
        if segment_ids is not None:
            mask = mask & layers.make_attention_mask(segment_ids, segment_ids, jnp.equal)
        bias = layers.mask_to_bias(mask, _dtype(cfg)) + _relpos(cfg)(length, length, bidirectional=True)
        x = _run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x, bias, deterministic=deterministic)
        x = layers.RMSNorm(dtype=_dtype(cfg), name="encoder_norm")(x)
        return _dropout(cfg, x, deterministic)


class Decoder(nn.Module):
    """T5 decoder.  `encoded` may have fewer rows than the decoder: with G = decoder rows / encoded rows, rows
    i*G .. i*G+G-1 all attend to encoded row i (rank classification's G candidate targets of one input).
    Exact: cross-attention has no position bias, and each query's softmax runs over its own input's keys.
    (Not with attention dropout, whose mask is drawn per attended row: G > 1 is refused when dropout is on.)"""

    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_valid, decoder_input_tokens, decoder_target_tokens=None,
                 deterministic=True, decode=False, max_decode_length=None, encoder_segment_ids=None,
                 decoder_segment_ids=None):
        cfg, dtype = self.config, _dtype(self.config)
        batch, length = decoder_input_tokens.shape
        groups, rest = divmod(batch, encoded.shape[0])
        dropout = not deterministic and cfg.dropout_rate > 0
        if rest or encoder_valid.shape[0] != encoded.shape[0] or (groups > 1 and (decoder_segment_ids is not None
                                                                                  or dropout)):
            raise ValueError(f"Decoder: {batch} decoder rows for {encoded.shape[0]} encoded rows (encoder mask "
                             f"{encoder_valid.shape[0]}); each encoded row needs the same number of consecutive "
                             "decoder rows, and packed rows or dropout one each")
        y = self.shared_embedding(decoder_input_tokens)
        y = _dropout(cfg, y, deterministic).astype(dtype)
        y = nn.with_logical_constraint(y, EMBED_AXES)

        cache_index, stepping = None, False
        if decode:
            # One position counter for all layers; the layers cache keys/values in the 'cache' collection.
            stepping = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            cache_index = index.value
            if stepping:
                if max_decode_length is None:
                    raise ValueError("Decoder: decode=True steps need max_decode_length (the cache length)")
                index.value = cache_index + 1
        rel_len = max_decode_length if decode and max_decode_length else length
        relpos = _relpos(cfg)(rel_len, rel_len, bidirectional=False)

        if decode or decoder_target_tokens is None:
            # t5x does not mask decoder padding at inference; the cached attention slices relpos per step.
            query_valid = jnp.ones((batch, length), bool)
            self_mask = layers.make_causal_mask(length)
        else:
            query_valid = decoder_target_tokens > 0
            self_mask = layers.make_causal_mask(length) & layers.make_attention_mask(query_valid, query_valid)
        cross_mask = layers.make_attention_mask(query_valid.reshape(-1, groups * length), encoder_valid)
        if decoder_segment_ids is not None:  # packed rows (never while decoding: Transformer refuses it)
            self_mask = self_mask & layers.make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal)
            cross_mask = cross_mask & layers.make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal)
        self_bias = relpos if stepping else layers.mask_to_bias(self_mask, dtype) + relpos[..., :length, :length]
        cross_bias = layers.mask_to_bias(cross_mask, dtype)

        y = _run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, y, encoded, self_bias, cross_bias, cache_index,
                        deterministic=deterministic, decode=decode)
        y = layers.RMSNorm(dtype=dtype, name="decoder_norm")(y)
        y = _dropout(cfg, y, deterministic)
        if cfg.logits_via_embedding:
            # T5 1.0: output through the tied embedding, scaled by emb_dim**-0.5.
            logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
        else:
            logits = layers.Dense(features=cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=jnp.float32,
                                  name="logits_dense")(y)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


@gin.configurable
class Transformer(nn.Module):
    """T5 encoder-decoder with t5x's parameter tree; optional encoder input processor (soft prompt)."""

    config: T5Config
    # Factory of the module transforming the embedded encoder input (gin injects the soft prompt); None: identity.
    encoder_input_processor_factory: Optional[Callable[[], nn.Module]] = None
    PROCESSOR_HOOK = "encoder_input_processor_factory"  # the attribute a soft prompt is injected through

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=_dtype(cfg))
        self.encoder = Encoder(config=cfg, shared_embedding=self.token_embedder,
                               input_processor_factory=self.encoder_input_processor_factory)
        self.decoder = Decoder(config=cfg, shared_embedding=self.token_embedder)

    def encoder_mask(self, encoder_input_tokens, prompt_index=None, encoder_segment_ids=None,
                     encoder_positions=None):
        """bool [B, L']: which encoded positions are real (prompt positions included)."""
        return self.encoder.mask(encoder_input_tokens, prompt_index=prompt_index, segment_ids=encoder_segment_ids,
                                 positions=encoder_positions)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout=False, prompt_index=None, packed_prompts=False):
        """Encoded sequence [B, L', emb] (after the final encoder norm)."""
        self._check_packed(packed_prompts, encoder_segment_ids=encoder_segment_ids,
                           encoder_positions=encoder_positions)
        return self.encoder(encoder_input_tokens, deterministic=not enable_dropout, prompt_index=prompt_index,
                            segment_ids=encoder_segment_ids, positions=encoder_positions)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
               enable_dropout=False, decode=False, max_decode_length=None, prompt_index=None,
               encoder_positions=None, packed_prompts=False):
        """Float32 logits [B, T, vocab] given the encoder output; `decode=True` uses/extends the 'cache'.

        The encoder side (`encoded`, `encoder_input_tokens`, `prompt_index`, encoder segment ids) may have B/G
        rows, one per input whose G consecutive decoder rows share it (see Decoder).
        """
        packed = self._check_packed(packed_prompts, encoder_segment_ids=encoder_segment_ids,
                                    decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions,
                                    encoder_positions=encoder_positions)
        if packed and (decode or decoder_segment_ids is None or encoder_segment_ids is None):
            raise ValueError("packed inputs need both encoder_segment_ids and decoder_segment_ids, and cannot be "
                             "decoded (decode=True): decode unpacked rows")
        valid = self.encoder_mask(encoder_input_tokens, prompt_index, encoder_segment_ids, encoder_positions)
        return self.decoder(encoded, valid, decoder_input_tokens, decoder_target_tokens,
                            deterministic=not enable_dropout, decode=decode, max_decode_length=max_decode_length,
                            encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, enable_dropout=False, decode=False, max_decode_length=None,
                 prompt_index=None, packed_prompts=False):
        # The keyword arguments t5x's models pass (segment ids, positions, max_decode_length) are accepted so
        # t5x can drive this module.
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout, prompt_index=prompt_index,
                              packed_prompts=packed_prompts)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                           encoder_segment_ids, decoder_segment_ids, decoder_positions,
                           enable_dropout=enable_dropout, decode=decode, max_decode_length=max_decode_length,
                           prompt_index=prompt_index, encoder_positions=encoder_positions,
                           packed_prompts=packed_prompts)

    def _check_packed(self, packed_prompts: bool, **features) -> bool:
        """Whether the rows are packed; refuses packed rows a soft prompt cannot use (see refuse_packed)."""
        packed = any(v is not None for v in features.values())
        if packed and self.encoder_input_processor_factory is not None:
            if not packed_prompts:
                refuse_packed(**features)
            if "encoder_positions" in features and features["encoder_positions"] is None:
                raise ValueError("packed rows with prompt slots need encoder_positions (where each slot starts)")
        return packed


def refuse_packed(**features):
    """Packed batches without prompt slots (t5x's `pack=True`) are refused when the model has a soft prompt:
    the prompt joins each row's one input, so several examples per row would share (and misplace) it."""
    given = sorted(name for name, value in features.items() if value is not None)
    if given:
        raise ValueError(f"packed inputs are not supported with a soft prompt unless each example holds its "
                         f"prompt slot (got {', '.join(given)}): set pack=False in t5x's DatasetConfig "
                         "(runs/prompt_finetune.gin does), or pack with this project's PACK=True")
