"""The soft prompt parameter: the only thing prompt tuning trains."""
from typing import Optional

import flax.linen as nn
import jax

from prompt_tuning.errors import UserError
from prompt_tuning.prompts import initializers

PROMPT_AXES = ("prompt", "prompt_embed")
BANK_AXES = ("prompt_bank",) + PROMPT_AXES


class Prompt(nn.Module):
    """One parameter `prompt` [length, embed] (or a bank [num_prompts, length, embed]).

    Kept float32 here; the processor casts it to the activation dtype where it joins the input.
    The logical axes map to replicated in partitioning.STANDARD_RULES.
    """

    length: int
    initializer: initializers.Initializer = initializers.uniform()
    num_prompts: Optional[int] = None

    def prompt_param(self, embedding_table: jax.Array) -> jax.Array:
        """Create/fetch the parameter (call from a compact method); subclasses reuse it."""
        if self.length < 1 or (self.num_prompts is not None and self.num_prompts < 1):
            raise UserError(f"prompt length {self.length} x {self.num_prompts or 1} prompts: PROMPT_LENGTH (and a "
                            "bank's size) must be at least 1")
        embed = embedding_table.shape[-1]
        shape = (self.length, embed) if self.num_prompts is None else (self.num_prompts, self.length, embed)
        axes = PROMPT_AXES if self.num_prompts is None else BANK_AXES
        # The table is closed over (not an init arg) so the LOADED table feeds vocab-based inits.
        init = nn.with_logical_partitioning(
            lambda rng, shape: self.initializer(rng, shape, embedding_table), axes)
        return self.param("prompt", init, shape)

    @nn.compact
    def __call__(self, embedding_table: jax.Array) -> jax.Array:
        return self.prompt_param(embedding_table)
