"""Where the prompt goes in the embedded input, and which joined positions are valid.

All placements are one operation: insert the prompt at a per-example position `at` [B].
Padding stays at the end of the joined sequence, so relative positions between real tokens
and prompt positions are contiguous whatever the padding.

Prompts of different lengths (a bank whose rows have their own lengths, `lengths` [B] per example) share
one slot of the longest row's size P.  The slot's unused positions are invalid and never split real
positions: for `prefix` the row's prompt is right-aligned in the slot (the unused positions sit before it,
next to any left padding, so decoder-only decoding still ends every row's input at the same position); for
the other placements they move to the very end of the sequence.  Either way every real position keeps its
distance to every other, so with T5's relative positions a row's outputs equal those of its prompt alone.

Packed rows (several examples per row; `fill_slots`) arrive with every example's prompt slot already in
place: its first P positions (`positions < P`), filled here as an unpacked `prefix` join would fill them.
"""
from typing import Optional

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


def _source_index(at, input_length: int, prompt_length: int, lengths=None, placement: str = "prefix"):
    """For each joined position, its index in concat([input, prompt slot]) along the length axis.

    lengths [B]: each row's prompt length (<= prompt_length); None: every row fills the slot.
    """
    j = jnp.arange(input_length + prompt_length)[None, :]
    at = at[:, None]
    if lengths is None or placement == "prefix":  # prefix rows are right-aligned in the slot beforehand
        return jnp.where(j < at, j, jnp.where(j < at + prompt_length, input_length + j - at, j - prompt_length))
    p = lengths[:, None]
    # input before `at`, the row's p prompt positions, the rest of the input, then the slot's unused positions.
    return jnp.where(j < at, j, jnp.where(j < at + p, input_length + j - at,
                                          jnp.where(j < input_length + p, j - p, j)))


def _slot(prompt, lengths, placement):
    """The prompt slot [B, P, D] as it is inserted, and its validity [B, P] (all valid without lengths)."""
    size = prompt.shape[1]
    if lengths is None:
        return prompt, jnp.ones(prompt.shape[:2], bool)
    valid = jnp.arange(size)[None, :] < lengths[:, None]
    if placement != "prefix":
        return prompt, valid
    # Right-align: slot position k holds prompt position k - (P - p) (invalid before it).
    source = jnp.arange(size)[None, :] - (size - lengths[:, None])
    aligned = jnp.take_along_axis(prompt, jnp.maximum(source, 0)[:, :, None], axis=1)
    return aligned, source >= 0


def insert(prompt, embedded, at, lengths=None, placement: str = "prefix"):
    """Insert `prompt` [B, P, D] into `embedded` [B, L, D] at index `at` [B] -> [B, L+P, D]."""
    slot, _ = _slot(prompt, lengths, placement)
    index = _source_index(at, embedded.shape[1], prompt.shape[1], lengths, placement)
    source = jnp.concatenate([embedded, slot.astype(embedded.dtype)], axis=1)
    return jnp.take_along_axis(source, index[:, :, None], axis=1)


def joined_mask(tokens, prompt_length: int, at, lengths=None, placement: str = "prefix"):
    """Validity [B, L+P] of the joined positions: the rows' prompt positions, input ones where not pad."""
    index = _source_index(at, tokens.shape[1], prompt_length, lengths, placement)
    slot_valid = (jnp.ones((tokens.shape[0], prompt_length), bool) if lengths is None else
                  _slot(jnp.zeros((tokens.shape[0], prompt_length, 1)), lengths, placement)[1])
    source = jnp.concatenate([tokens > 0, slot_valid], axis=1)
    return jnp.take_along_axis(source, index, axis=1)


def join(prompt, embedded, tokens, placement: str = "prefix", eos_id: int = 1, lengths: Optional[jnp.ndarray] = None):
    """(joined [B, L+P, D], valid [B, L+P]) for `placement`; prompt is [B, P, D], `lengths` [B] its rows'."""
    at = insertion_points(tokens, placement, eos_id)
    return (insert(prompt, embedded, at, lengths, placement),
            joined_mask(tokens, prompt.shape[1], at, lengths, placement))


def prompt_positions(tokens, prompt_length: int, placement: str = "prefix", eos_id: int = 1, lengths=None):
    """Bool [B, L+P], True at (real) prompt positions (to keep them out of losses in decoder-only models)."""
    at = insertion_points(tokens, placement, eos_id)
    index = _source_index(at, tokens.shape[1], prompt_length, lengths, placement)
    slot_valid = (jnp.ones((tokens.shape[0], prompt_length), bool) if lengths is None else
                  _slot(jnp.zeros((tokens.shape[0], prompt_length, 1)), lengths, placement)[1])
    source = jnp.concatenate([jnp.zeros(tokens.shape, bool), slot_valid], axis=1)
    return jnp.take_along_axis(source, index, axis=1)


def _packed_slot(segment_ids, positions, prompt_length: int, lengths=None):
    """For packed rows: (in_slot [B, L], prompt position [B, L] each slot position holds, slot-valid [B, L])."""
    in_slot = (segment_ids > 0) & (positions < prompt_length)
    offset = 0 if lengths is None else prompt_length - lengths[:, None]   # right-aligned, as `_slot` prefix
    source = positions - offset
    return in_slot, jnp.clip(source, 0, prompt_length - 1), source >= 0


def fill_slots(prompt, embedded, segment_ids, positions, lengths=None):
    """Packed rows: (embedded [B, L, D] with each example's slot holding the row's prompt [B, P, D], valid
    [B, L]).  Positions of the slot a shorter bank row leaves unused are invalid, like `prefix` joins'."""
    in_slot, source, _ = _packed_slot(segment_ids, positions, prompt.shape[1], lengths)
    gathered = jnp.take_along_axis(prompt.astype(embedded.dtype), source[:, :, None], axis=1)
    return (jnp.where(in_slot[:, :, None], gathered, embedded),
            packed_mask(segment_ids, positions, prompt.shape[1], lengths))


def packed_mask(segment_ids, positions, prompt_length: int, lengths=None):
    """Validity [B, L] of packed rows' positions (see fill_slots)."""
    in_slot, _, slot_valid = _packed_slot(segment_ids, positions, prompt_length, lengths)
    return (segment_ids > 0) & (slot_valid | ~in_slot)
