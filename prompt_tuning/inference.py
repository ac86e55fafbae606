"""Inference primitives on a `Transformer`: teacher-forced logits, sequence scores and cached decoding.

Batches are dicts with t5x's feature names (encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
decoder_loss_weights, optionally prompt_index).  Each function is jitted once per module and batch shape.
"""
import functools
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import decoding

Batch = Mapping[str, Any]
_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
             "prompt_index")


def _select(batch: Batch, *required: str) -> dict:
    """The model features of `batch` (extra keys such as strings are dropped before jit)."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
    return {k: jnp.asarray(batch[k]) for k in _FEATURES if k in batch and batch[k] is not None}


@functools.partial(jax.jit, static_argnames=("module",))
def _logits(module: nn.Module, params, batch):
    return module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                        batch["decoder_target_tokens"], enable_dropout=False,
                        prompt_index=batch.get("prompt_index"))


def compute_logits(module: nn.Module, params, batch: Batch) -> jax.Array:
    """Teacher-forced float32 logits [B, T, vocab] (eval mode)."""
    return _logits(module, params, _select(batch, "encoder_input_tokens", "decoder_input_tokens",
                                           "decoder_target_tokens"))


def token_log_probs_from_logits(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """weights * log_softmax(logits)[target], [B, T] (t5x's cross_entropy_with_logits, z_loss 0)."""
    log_softmax = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    picked = jnp.take_along_axis(log_softmax, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked * weights.astype(picked.dtype)


@functools.partial(jax.jit, static_argnames=("module",))
def _token_scores(module, params, batch):
    logits = _logits(module, params, batch)
    weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
    return token_log_probs_from_logits(logits, batch["decoder_target_tokens"], weights)


def token_log_probs(module: nn.Module, params, batch: Batch) -> jax.Array:
    """Per-token target log-likelihood [B, T], 0 where decoder_loss_weights is 0."""
    return _token_scores(module, params, _select(batch, "encoder_input_tokens", "decoder_input_tokens",
                                                 "decoder_target_tokens"))


def score_batch(module: nn.Module, params, batch: Batch) -> jax.Array:
    """Per-example summed target log-likelihood [B] (t5x's score_batch; EOS counts): rank classification score.

    Weights default to decoder_target_tokens > 0 when the batch has no decoder_loss_weights.
    """
    return token_log_probs(module, params, batch).sum(-1)


def init_cache(module: nn.Module, params, encoded, encoder_input_tokens, max_decode_len: int, prompt_index=None):
    """An all-zero decoding cache for batch B and `max_decode_len` steps (shapes found without computing)."""
    batch = encoder_input_tokens.shape[0]

    def run(params, encoded, tokens, prompt_index):
        decoder_tokens = jnp.zeros((batch, max_decode_len), jnp.int32)
        _, variables = module.apply({"params": params}, encoded, tokens, decoder_tokens, decode=True,
                                    max_decode_length=max_decode_len, prompt_index=prompt_index,
                                    method=module.decode, mutable=["cache"])
        return variables["cache"]

    shapes = jax.eval_shape(run, params, encoded, encoder_input_tokens, prompt_index)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("module", "method", "num_decodes", "temperature", "topk", "topp",
                                             "alpha", "max_decode_len", "eos_id"))
def _predict(module, params, batch, rng, *, method, num_decodes, temperature, topk, topp, alpha, max_decode_len,
             eos_id):
    tokens = batch["encoder_input_tokens"]
    prompt_index = batch.get("prompt_index")
    encoded = module.apply({"params": params}, tokens, enable_dropout=False, prompt_index=prompt_index,
                           method=module.encode)
    cache = init_cache(module, params, encoded, tokens, max_decode_len, prompt_index)
    # Per-example inputs the step needs, repeated for each decode/beam (row b * n + j, decoding's order).
    flat = lambda x: None if x is None else decoding.expand_batch(x, num_decodes)  # noqa: E731
    flat_encoded, flat_tokens, flat_prompt_index = flat(encoded), flat(tokens), flat(prompt_index)

    def step_fn(token_ids, cache, step):
        del step  # the model keeps its own position counter in the cache
        logits, variables = module.apply(
            {"params": params, "cache": cache}, flat_encoded, flat_tokens, token_ids[:, None],
            enable_dropout=False, decode=True, max_decode_length=max_decode_len, prompt_index=flat_prompt_index,
            method=module.decode, mutable=["cache"])
        return logits[:, 0, :].astype(jnp.float32), variables["cache"]

    batch_size = tokens.shape[0]
    if method == "beam":
        return decoding.beam_search(step_fn, cache, batch_size, num_decodes, max_decode_len, eos_id, alpha=alpha)
    if method in ("greedy", "sample"):
        return decoding.temperature_sample(step_fn, cache, batch_size, max_decode_len, eos_id, rng,
                                           temperature=temperature, topk=1 if method == "greedy" else topk,
                                           topp=topp, num_decodes=num_decodes)
    raise ValueError(f"predict_batch: unknown method {method!r}; use 'greedy', 'sample' or 'beam'")


def predict_batch(module: nn.Module, params, batch: Batch, *, method: str = "greedy", num_decodes: int = 1,
                  temperature: float = 1.0, topk: int = 0, topp: float = 0.0, alpha: float = 0.6,
                  max_decode_len: Optional[int] = None, rng: Optional[jax.Array] = None, eos_id: int = 1,
                  return_all_decodes: bool = False) -> Tuple[jax.Array, jax.Array]:
    """Decodes with a key/value cache, as t5x's `predict_batch_with_aux`.

    method: 'greedy' (argmax), 'sample' (temperature / topk / topp, `num_decodes` samples) or 'beam'
    (`num_decodes` beams, brevity penalty alpha).  max_decode_len defaults to decoder_input_tokens' length.
    Returns the best decode (tokens int32[B, T], scores float32[B]) or, with return_all_decodes, all of them
    ([B, num_decodes, T], [B, num_decodes]) sorted ascending by score, best last.  Positions after EOS are 0.
    Greedy/sample scores are summed log-probs of the generated tokens up to and including EOS; beam scores
    are length-normalised as t5x.
    """
    features = _select(batch, "encoder_input_tokens")
    if max_decode_len is None:
        if "decoder_input_tokens" not in features:
            raise ValueError("predict_batch: pass max_decode_len or a batch with decoder_input_tokens")
        max_decode_len = features["decoder_input_tokens"].shape[1]
    features = {k: v for k, v in features.items() if k in ("encoder_input_tokens", "prompt_index")}
    rng = jax.random.PRNGKey(0) if rng is None else rng
    tokens, scores = _predict(module, params, features, rng, method=method, num_decodes=num_decodes,
                              temperature=float(temperature), topk=int(topk), topp=float(topp), alpha=float(alpha),
                              max_decode_len=int(max_decode_len), eos_id=int(eos_id))
    if return_all_decodes:
        return tokens, scores
    return tokens[:, -1], scores[:, -1]
