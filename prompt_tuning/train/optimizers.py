"""Optimizers over the trainable subtree only (the prompt, by default).

The parameters are split by a regex on their '/'-joined path into a trainable
subtree and a frozen one.  Gradients and optimizer state exist only for the
trainable subtree -- the frozen model never gets a gradient buffer, a moment
or a global-norm term -- which is what `optax.multi_transform` with
`set_to_zero` would give without ever materialising the frozen gradients.
"""
import re
from typing import Any, Callable, Collection, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from prompt_tuning.errors import UserError

Params = Mapping[str, Any]
DEFAULT_TRAINABLE_REGEX = ".*prompt.*"


def _flat(params: Params) -> dict:
    return traverse_util.flatten_dict(params, sep="/")


def split_params(params: Params, regex: str = DEFAULT_TRAINABLE_REGEX) -> Tuple[dict, dict]:
    """(trainable, frozen) nested dicts; a path is trainable when `regex` fully matches it."""
    pattern = re.compile(regex)
    trainable, frozen = {}, {}
    for path, value in _flat(params).items():
        (trainable if pattern.fullmatch(path) else frozen)[path] = value
    if not trainable:
        raise UserError(f"trainable_regex {regex!r} matches no parameter; "
                         f"parameters are e.g. {sorted(_flat(params))[:5]}")
    return (traverse_util.unflatten_dict(trainable, sep="/"),
            traverse_util.unflatten_dict(frozen, sep="/"))


def merge_params(trainable: Params, frozen: Params) -> dict:
    """Inverse of `split_params`."""
    return traverse_util.unflatten_dict({**_flat(frozen), **_flat(trainable)}, sep="/")


@gin.configurable
def adafactor(learning_rate: Union[float, Callable] = 0.3, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = False, weight_decay_rate: float = 1e-5,
              clipping_threshold: float = 1.0, min_dim_size_to_factor: int = 128,
              momentum=None) -> optax.GradientTransformation:
    """t5x's Adafactor with the paper's prompt-tuning settings.

    Weight decay is applied as t5x does, `param * (1 - weight_decay_rate)`,
    i.e. NOT multiplied by the learning rate (optax's built-in decay is).
    """
    tx = optax.adafactor(learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                         decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                         clipping_threshold=clipping_threshold, momentum=momentum, eps=1e-30)
    if weight_decay_rate:
        tx = optax.chain(tx, optax.add_decayed_weights(-weight_decay_rate))
    return tx


@gin.configurable
def adam(learning_rate: Union[float, Callable] = 1e-3, b1: float = 0.9, b2: float = 0.999,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """AdamW (plain Adam when weight_decay is 0)."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


@gin.configurable
def sgd(learning_rate: Union[float, Callable] = 0.1, momentum=None) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum)


@gin.configurable
def learning_rate_schedule(base_learning_rate: float = 0.3, warmup_steps: int = 0,
                           decay: str = "constant", total_steps: int = 0) -> optax.Schedule:
    """Constant (the paper's), or linear warmup then constant / linear / cosine / rsqrt decay."""
    if decay == "constant":
        after = optax.constant_schedule(base_learning_rate)
    elif decay == "linear":
        after = optax.linear_schedule(base_learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(base_learning_rate, max(total_steps - warmup_steps, 1))
    elif decay == "rsqrt":
        start = max(warmup_steps, 1)
        after = lambda step: base_learning_rate * (start / (step + start)) ** 0.5  # noqa: E731
    else:
        raise UserError(f"learning_rate_schedule.decay={decay!r}; use constant, linear, cosine or rsqrt")
    if not warmup_steps:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, base_learning_rate, warmup_steps), after],
                                [warmup_steps])


@gin.configurable
def make_optimizer(name: str = "adafactor", learning_rate=None) -> Tuple[optax.GradientTransformation,
                                                                        optax.Schedule]:
    """(optimizer, schedule) for `name` in adafactor / adam / sgd; the schedule is logged."""
    schedule = learning_rate if learning_rate is not None else learning_rate_schedule()
    if not callable(schedule):
        schedule = optax.constant_schedule(schedule)
    factories = {"adafactor": adafactor, "adam": adam, "adamw": adam, "sgd": sgd}
    if name not in factories:
        raise UserError(f"make_optimizer.name={name!r}; known: {', '.join(factories)}")
    return factories[name](learning_rate=schedule), schedule


def per_array(tx: optax.GradientTransformation, row_arrays: Collection[str] = (),
              row_lengths: Optional[Mapping[str, Sequence[int]]] = None) -> optax.GradientTransformation:
    """`tx` applied to every trainable array on its own, and to every row of the arrays in `row_arrays`
    ('/'-joined paths of prompt banks, [rows, ...]) on its own.

    Adafactor clips by the RMS of a whole array and factors its two largest dimensions, so a bank updated as
    one array would couple its prompts; mapped over the rows, each row takes exactly the steps it would take
    as a single prompt.  Without `row_arrays` this equals `tx` for any per-array transformation (Adafactor,
    Adam, SGD: none of them mixes arrays).

    row_lengths {path: one length per row}: a bank whose rows have their own lengths ([rows, max_length, ...],
    `PromptProcessor.lengths`).  Each row is then stepped on its first `length` positions only (its padding
    would otherwise enter the RMS and the factored moments) and the padding gets no update, so each row
    still steps exactly as the single prompt of its length.
    """
    row_lengths = {path: tuple(int(n) for n in lengths) for path, lengths in (row_lengths or {}).items()}

    def sliced(lengths):
        def init(value):
            return tuple(tx.init(value[i, :n]) for i, n in enumerate(lengths))

        def update(grad, state, param):
            updates, states = [], []
            for i, n in enumerate(lengths):
                u, s = tx.update(grad[i, :n], state[i], None if param is None else param[i, :n])
                updates.append(jnp.pad(u, [(0, grad.shape[1] - n)] + [(0, 0)] * (grad.ndim - 2)))
                states.append(s)
            return jnp.stack(updates), tuple(states)
        return init, update

    def leaf_tx(path):
        if path in row_lengths:
            return sliced(row_lengths[path])
        if path not in row_arrays:
            return tx.init, tx.update
        return jax.vmap(tx.init), jax.vmap(tx.update)

    def init(params):
        return {path: leaf_tx(path)[0](value) for path, value in _flat(params).items()}

    def update(grads, state, params=None):
        flat_grads, flat_params = _flat(grads), _flat(params) if params is not None else {}
        updates, new_state = {}, {}
        for path, grad in flat_grads.items():
            updates[path], new_state[path] = leaf_tx(path)[1](grad, state[path], flat_params.get(path))
        return traverse_util.unflatten_dict(updates, sep="/"), new_state
    return optax.GradientTransformation(init, update)
