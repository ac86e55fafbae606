"""Where the prompt goes in the embedded input, and which joined positions are valid.

All placements are one operation: insert the prompt at a per-example position `at` [B].
Padding stays at the end of the joined sequence, so relative positions between real tokens
and prompt positions are contiguous whatever the padding.
"""
import jax.numpy as jnp

from prompt_tuning.errors import UserError

PLACEMENTS = ("prefix", "prefix_after_bos", "suffix")


def _lengths(tokens):
    """Index after the last non-pad token (robust to pad ids inside a row)."""
    positions = jnp.arange(1, tokens.shape[1] + 1)
    return jnp.max(jnp.where(tokens > 0, positions, 0), axis=1)


def insertion_points(tokens, placement: str = "prefix", eos_id: int = 1):
    """Per-example insertion index [B] for `placement`.

    prefix: before the first real token (0 for right-padded inputs; a left-padded row, as decoder-only
    decoding aligns them, keeps its prompt next to its tokens).  prefix_after_bos: one token later (for
    inputs that start with BOS).  suffix: after the last real token, or just before it when that is EOS.
    """
    if placement in ("prefix", "prefix_after_bos"):
        first = jnp.argmax(tokens > 0, axis=1).astype(jnp.int32)
        return first if placement == "prefix" else first + 1
    if placement == "suffix":
        n = _lengths(tokens)
        last = jnp.take_along_axis(tokens, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
        return (n - ((n > 0) & (last == eos_id))).astype(jnp.int32)
    raise UserError(f"unknown prompt placement {placement!r}; known: {', '.join(PLACEMENTS)}")


def _source_index(at, input_length: int, prompt_length: int):
    """For each joined position, its index in concat([input, prompt]) along the length axis."""
    j = jnp.arange(input_length + prompt_length)[None, :]
    at = at[:, None]
    return jnp.where(j < at, j, jnp.where(j < at + prompt_length, input_length + j - at, j - prompt_length))


def insert(prompt, embedded, at):
    """Insert `prompt` [B, P, D] into `embedded` [B, L, D] at index `at` [B] -> [B, L+P, D]."""
    index = _source_index(at, embedded.shape[1], prompt.shape[1])
    source = jnp.concatenate([embedded, prompt.astype(embedded.dtype)], axis=1)
    return jnp.take_along_axis(source, index[:, :, None], axis=1)


def joined_mask(tokens, prompt_length: int, at):
    """Validity [B, L+P] of the joined positions: prompt positions always, input ones where not pad."""
    index = _source_index(at, tokens.shape[1], prompt_length)
    source = jnp.concatenate([tokens > 0, jnp.ones((tokens.shape[0], prompt_length), bool)], axis=1)
    return jnp.take_along_axis(source, index, axis=1)


def join(prompt, embedded, tokens, placement: str = "prefix", eos_id: int = 1):
    """(joined [B, L+P, D], valid [B, L+P]) for `placement`; prompt is [B, P, D]."""
    at = insertion_points(tokens, placement, eos_id)
    return insert(prompt, embedded, at), joined_mask(tokens, prompt.shape[1], at)


def prompt_positions(tokens, prompt_length: int, placement: str = "prefix", eos_id: int = 1):
    """Bool [B, L+P], True at prompt positions (to keep them out of losses in decoder-only models)."""
    at = insertion_points(tokens, placement, eos_id)[:, None]
    j = jnp.arange(tokens.shape[1] + prompt_length)[None, :]
    return (j >= at) & (j < at + prompt_length)
