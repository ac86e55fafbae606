"""The masked optimizer's filter and Adafactor factor rules that know the prompt's logical axes.

t5x trains a subset of parameters with `optimizers.MultiOptimizer(((ModelParamTraversal(filter_fn), opt),))`:
leaves the filter rejects get no optimizer state and are never updated.  `match_any` is that filter for the
regexes of `TRAINABLE_REGEX` (the original project's `prompt_utils.match_any`).
"""
import re
from typing import Sequence

import gin
import jax
from flax.core import freeze, unfreeze
from t5x import adafactor


@gin.configurable(module="t5x_bridge")
def match_any(regexes: Sequence[str]):
    """filter_fn(path, value) for ModelParamTraversal: True when any regex fully matches the path.

    Paths are '/'-joined with a leading '/', as ModelParamTraversal gives them ('/encoder/prompt/prompt');
    the leading '/' is dropped so the project's TRAINABLE_REGEX ('.*prompt.*', 'encoder/prompt/prompt')
    means the same here as under `prompt_tuning.train`.
    """
    if isinstance(regexes, str):
        regexes = [regexes]
    patterns = [re.compile(r) for r in regexes]

    def filter_fn(path: str, _):
        path = path.lstrip("/")
        return any(p.fullmatch(path) for p in patterns)
    return filter_fn


# The prompt's axes (prompts/prompt.py): rows and width are not factored; a bank's rows are batch-like
# (each prompt normalised on its own).
PROMPT_FACTOR_RULES = {
    "prompt": adafactor.FactorDim.NONE,
    "prompt_embed": adafactor.FactorDim.NONE,
    "prompt_bank": adafactor.FactorDim.BATCH,
}


@gin.configurable(module="t5x_bridge")
def standard_logical_factor_rules():
    """t5x's `standard_logical_factor_rules()` plus the prompt's axes (without them t5x's Adafactor raises
    KeyError on 'prompt').  Note that t5x ignores factor rules of 2-D parameters and falls back to its size
    heuristic (factored once both dims are >= min_dim_size_to_factor=128): runs/prompt_finetune.gin therefore
    also sets `factored=False` for the prompt's Adafactor, as the project's optax Adafactor does."""
    rules = unfreeze(adafactor.standard_logical_factor_rules())
    rules.update(PROMPT_FACTOR_RULES)
    return freeze(rules)


@gin.configurable(module="t5x_bridge")
def masked_optax(optax_optimizer, regexes: Sequence[str]):
    """An optax optimizer for t5x's `OptaxWrapper` that updates only the parameters `regexes` match.

    t5x's MultiOptimizer cannot hold an optax state (it expects per-parameter dicts), so an optax optimizer
    is masked inside optax instead: `optax_optimizer` on the trained leaves, zero updates on the rest.
    (The frozen leaves still get gradients; t5x's own Adafactor under MultiOptimizer avoids even their state.)
    """
    import optax
    keep = match_any(regexes)

    def mask(params, trained=True):
        # Same container types as params (FrozenDict under t5x), as optax.masked requires.
        return jax.tree_util.tree_map_with_path(
            lambda path, v: keep("/".join(str(getattr(k, "key", k)) for k in path), v) == trained, params)
    return optax.chain(optax.masked(optax_optimizer, mask),
                       optax.masked(optax.set_to_zero(), lambda params: mask(params, trained=False)))
