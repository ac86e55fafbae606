"""The input processor that puts a soft prompt (or a bank of them) into the model.

The networks call it on their embedded input (`t5.network`'s docstring gives the interface); gin binds
`Transformer.encoder_input_processor_factory = @prompts.processor_factory()` (models/add_prompt.gin).
"""
import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.prompts import initializers, join
from prompt_tuning.prompts.prompt import Prompt


def select_prompts(prompt, prompt_index, batch_size: int):
    """[B, P, D] prompts for a batch: broadcast one prompt, or pick bank rows by `prompt_index` [B]."""
    if prompt.ndim == 2:
        if prompt_index is not None:
            raise UserError("prompt_index was given but the prompt is a single [length, embed] prompt, not a bank")
        return jnp.broadcast_to(prompt[None], (batch_size,) + prompt.shape)
    if prompt_index is None:
        raise UserError(f"a prompt bank of {prompt.shape[0]} prompts needs a per-example prompt_index [batch]")
    return jnp.take(prompt, jnp.asarray(prompt_index, jnp.int32), axis=0)


def check_lengths(lengths: Optional[Sequence[int]], length: int,
                  num_prompts: Optional[int]) -> Optional[Tuple[int, ...]]:
    """`lengths` as a tuple, checked against the bank: one per row, each in 1..length (the slot's size)."""
    if lengths is None:
        return None
    lengths = tuple(int(n) for n in lengths)
    if num_prompts is None or len(lengths) != num_prompts:
        raise UserError(f"prompt lengths {lengths}: a bank of {num_prompts} prompts needs one length per row")
    if not all(1 <= n <= length for n in lengths):
        raise UserError(f"prompt lengths {lengths}: each must be between 1 and the bank's length {length}")
    return lengths


class PromptProcessor(Prompt):
    """A `Prompt` that also joins itself with the embedded input.

    Holding the parameter directly (not in a submodule) keeps its path t5x prompt tuning's
    `encoder/prompt/prompt`.  num_prompts=None gives one prompt; an int gives a bank indexed per
    example by `prompt_index`.  placement: see join.PLACEMENTS.

    lengths: a bank whose rows have their own lengths (one per row, the longest = `length`); the parameter
    stays [num_prompts, length, embed] and each row's positions past its length are masked out (see `join`),
    so each row's outputs are those of its prompt alone.  They never receive a gradient.
    """

    placement: str = "prefix"
    eos_id: int = 1
    lengths: Optional[Tuple[int, ...]] = None

    def row_lengths(self, prompt_index, batch_size: int):
        """[B] prompt length of each example's row, or None when every row fills the slot."""
        lengths = check_lengths(self.lengths, self.length, self.num_prompts)
        if lengths is None or len(set(lengths)) == 1 and lengths[0] == self.length:
            return None
        if prompt_index is None:
            return jnp.full((batch_size,), lengths[0], jnp.int32)  # creating parameters: shapes only
        return jnp.take(jnp.asarray(lengths, jnp.int32), jnp.asarray(prompt_index, jnp.int32))

    @nn.compact
    def __call__(self, embedded, tokens, embedding_table, prompt_index=None, segment_ids=None, positions=None):
        """(joined, valid) as in `t5.network`'s docstring.  Packed rows (segment_ids and positions [B, L]) hold
        each example's prompt slot already (see join.fill_slots); their length stays L."""
        prompt = self.prompt_param(embedding_table)
        if prompt.ndim == 3 and prompt_index is None and self.is_mutable_collection("params"):
            # Creating parameters (init, or completing a loaded model): shapes only, callers need no index.
            prompt_index = jnp.zeros((embedded.shape[0],), jnp.int32)
        prompt = select_prompts(prompt, prompt_index, embedded.shape[0]).astype(embedded.dtype)
        lengths = self.row_lengths(prompt_index, embedded.shape[0])
        if segment_ids is not None:
            self.check_packable()
            return join.fill_slots(prompt, embedded, segment_ids, positions, lengths)
        return join.join(prompt, embedded, tokens, self.placement, self.eos_id, lengths)

    def check_packable(self) -> None:
        """Packing puts each example's slot first, which only the `prefix` placement does."""
        if self.placement != "prefix":
            raise UserError(f"PACK=True needs the 'prefix' prompt placement (each packed example starts with its "
                            f"prompt), not {self.placement!r}")

    def mask(self, tokens, prompt_index=None, segment_ids=None, positions=None):
        if segment_ids is not None:
            return join.packed_mask(segment_ids, positions, self.length, self.row_lengths(prompt_index,
                                                                                          tokens.shape[0]))
        at = join.insertion_points(tokens, self.placement, self.eos_id)
        return join.joined_mask(tokens, self.length, at, self.row_lengths(prompt_index, tokens.shape[0]),
                                self.placement)


@gin.configurable(module=initializers.GIN_MODULE)
def processor_factory(length: int = gin.REQUIRED, initializer: Optional[initializers.Initializer] = None,
                      placement: str = "prefix", num_prompts: Optional[int] = None, eos_id: int = 1,
                      lengths: Optional[Sequence[int]] = None):
    """The model's processor factory, its settings fixed when gin evaluates it.

    Flax rebuilds submodules on every `apply`; fixing the settings here (rather than making the
    module class gin-configurable) keeps a built model independent of later gin state.
    """
    return functools.partial(PromptProcessor, length=length, placement=placement, num_prompts=num_prompts,
                             eos_id=eos_id, lengths=check_lengths(lengths, length, num_prompts),
                             initializer=initializers.uniform() if initializer is None else initializer)
