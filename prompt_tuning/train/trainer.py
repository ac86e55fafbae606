"""Train state and the jitted train step (t5x's trainer.py, prompt-only).

The state holds only the trainable subtree and its optimizer state; the frozen
parameters are a separate, never-donated argument of the step.  Gradients are
taken with respect to the trainable subtree alone, accumulated over
microbatches with `lax.scan`, and normalised once for the whole batch, so a
run with M microbatches takes the same step as one with 1.  M is fixed
(`num_microbatches`) or chosen per batch shape (`microbatch_positions`), so each
length bucket gets its own split.

Health: the compiled step also reports whether its loss and gradient were finite and the largest token id
of its batch.  These stay on the device until `check_health` (called by the loop at every logging, eval and
checkpoint point) reads all steps since the last check at once: no host sync per step, and no checkpoint is
written before the steps it holds were checked.
"""
import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import losses, partitioning
from prompt_tuning.errors import NonFiniteError, UserError
from prompt_tuning.models import BaseModel
from prompt_tuning.train import optimizers

PyTree = Any
Batch = Mapping[str, jax.Array]
ON_NONFINITE = ("stop", "skip")   # stop: one-line error naming the step; skip: keep the old state, count it


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: number of updates applied
    trainable: PyTree        # the trainable subtree only (the prompt by default)
    opt_state: PyTree        # optimizer state of `trainable` only


def _replicated_tree(tree, mesh):
    return jax.tree_util.tree_map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def _is_abstract(tree) -> bool:
    return all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(tree))


def _subtree_like(tree, like):
    """The leaves of `tree` at the paths present in `like` (both nested dicts)."""
    flat = flax.traverse_util.flatten_dict(tree)
    return flax.traverse_util.unflatten_dict({k: flat[k] for k in flax.traverse_util.flatten_dict(like)})


@dataclasses.dataclass
class Trainer:
    """Builds the jitted train / score steps of `model` on `mesh`; knows nothing of the architecture.

    `params`: the full parameter tree (frozen model + prompt), already placed with `param_shardings`
    (see `params.init_params`); only its split halves are kept.  Frozen leaves are cast to
    `frozen_dtype` (e.g. 'bfloat16') when given.
    """

    model: BaseModel
    params: dataclasses.InitVar[PyTree]
    param_shardings: PyTree
    mesh: Mesh
    optimizer: optax.GradientTransformation
    learning_rate_fn: Callable = lambda step: 0.0
    trainable_regex: str = optimizers.DEFAULT_TRAINABLE_REGEX
    num_microbatches: int = 1
    # Instead of a fixed count: each batch shape is split into the fewest microbatches whose rows fill at most
    # this many positions per device (`model.positions_per_row`, prompt included).  Short length buckets then
    # run whole and long ones split; on the AMX Xeon of BENCHMARKS.md 2048 was within 4% of the best fixed
    # count at every W-small shape, where each fixed count was 15-76% slower than the best at some shape.
    # Same step either way.
    microbatch_positions: Optional[int] = None
    z_loss: float = 1e-4
    loss_normalizing_factor: losses.Normalizer = losses.NUM_REAL_TARGET_TOKENS
    frozen_dtype: Optional[str] = None
    seed: int = 0
    # Prompt banks: '/'-paths of trainable [rows, ...] arrays whose rows are independent prompts.  Each row's
    # gradient is normalised by its own examples' tokens (and the optimizer should be
    # `optimizers.per_array(tx, row_arrays)`), so every row steps exactly as the single prompt it stands for.
    row_arrays: Tuple[str, ...] = ()
    on_nonfinite: str = "stop"

    def __post_init__(self, params):
        if self.on_nonfinite not in ON_NONFINITE:
            raise UserError(f"on_nonfinite={self.on_nonfinite!r}: use one of {ON_NONFINITE}")
        if self.microbatch_positions is not None:
            if isinstance(self.microbatch_positions, bool) or not isinstance(self.microbatch_positions, int) \
                    or self.microbatch_positions < 1:
                raise UserError(f"microbatch_positions={self.microbatch_positions!r}: use a positive int (positions "
                                "per device in one microbatch) or None")
            if self.num_microbatches > 1:
                raise UserError(f"num_microbatches={self.num_microbatches} and microbatch_positions="
                                f"{self.microbatch_positions}: give a count or a position budget, not both")
        trainable, frozen = optimizers.split_params(params, self.trainable_regex)
        rows = {flax.traverse_util.flatten_dict(trainable, sep="/")[p].shape[0] for p in self.row_arrays}
        if len(rows) > 1:
            raise UserError(f"prompt banks {self.row_arrays} have different numbers of rows {sorted(rows)}")
        self.num_prompt_rows = rows.pop() if rows else 0
        self.trainable_shardings = _subtree_like(self.param_shardings, trainable)
        self.frozen_shardings = _subtree_like(self.param_shardings, frozen)
        if self.frozen_dtype and _is_abstract(frozen):   # a compile-only plan (scripts/plan.py)
            frozen = jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(x.shape, self.frozen_dtype, sharding=x.sharding), frozen)
        elif self.frozen_dtype:
            frozen = jax.jit(lambda f: jax.tree_util.tree_map(lambda x: x.astype(self.frozen_dtype), f),
                             out_shardings=self.frozen_shardings)(frozen)
        self.frozen = frozen
        self.initial_trainable = trainable
        self.batch_sharding = partitioning.batch_sharding(self.mesh)
        self._train_step = None
        self._score = {}           # candidates (bool) -> jitted scoring program
        self._unchecked = []       # (step, health) of the steps since the last check_health, on the device
        self.skipped_steps = 0     # non-finite steps skipped (on_nonfinite='skip') in this process

    # ------------------------------------------------------------------ state
    def state_shardings(self, state: TrainState) -> TrainState:
        """Trainable leaves by their logical rules; step and optimizer state replicated (they are tiny)."""
        return TrainState(step=NamedSharding(self.mesh, PartitionSpec()), trainable=self.trainable_shardings,
                          opt_state=_replicated_tree(state.opt_state, self.mesh))

    def abstract_state(self) -> TrainState:
        return jax.eval_shape(self._make_state, self.initial_trainable)

    def _make_state(self, trainable):
        return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                          opt_state=self.optimizer.init(trainable))

    def init_state(self) -> TrainState:
        shardings = self.state_shardings(self.abstract_state())
        return jax.jit(self._make_state, out_shardings=shardings)(self.initial_trainable)

    # ------------------------------------------------------------------ step
    def _microbatch_grads(self, trainable, frozen, batch, rng):
        def loss_fn(tr):
            sums = self.model.loss_sums(optimizers.merge_params(tr, frozen), batch, dropout_rng=rng,
                                        z_loss=self.z_loss, num_prompt_rows=self.num_prompt_rows)
            return sums["loss"], sums
        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        return grads, sums

    def microbatches(self, batch: Batch) -> int:
        """How many microbatches a batch of these shapes is split into, for training and for scoring."""
        if self.microbatch_positions is None:
            return self.num_microbatches
        rows, data = batch["decoder_target_tokens"].shape[0], self.mesh.shape["data"]
        per_row = self.model.positions_per_row(batch)
        splits = [m for m in range(1, rows + 1) if rows % m == 0 and (rows // m) % data == 0]
        fits = [m for m in splits if rows // m // data * per_row <= self.microbatch_positions]
        return fits[0] if fits else (splits[-1] if splits else 1)

    def _split_microbatches(self, batch, m: int):
        """[B, ...] -> [M, B/M, ...], microbatch i = rows i, i+M, ... so every device keeps its own rows."""

        def split(x):
            if x.shape[0] % m:
                raise UserError(f"batch size {x.shape[0]} is not divisible by num_microbatches={m}")
            x = x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1)
            spec = PartitionSpec(None, "data", *([None] * (x.ndim - 2)))
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))
        return jax.tree_util.tree_map(split, batch)

    def _step(self, frozen, state: TrainState, batch: Batch):
        rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.step)
        m = self.microbatches(batch)
        if m <= 1:
            grads, sums = self._microbatch_grads(state.trainable, frozen, batch, rng)
        else:
            micro = self._split_microbatches(batch, m)

            def body(carry, xs):
                index, mb = xs
                g, s = self._microbatch_grads(state.trainable, frozen, mb, jax.random.fold_in(rng, index))
                return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None
            zeros = jax.eval_shape(self._microbatch_grads, state.trainable, frozen,
                                   jax.tree_util.tree_map(lambda x: x[0], micro), rng)
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(m), micro))
        norm = losses.normalizer(sums, self.loss_normalizing_factor)
        grads = self._normalize(grads, sums, norm)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        # The updated prompt too: an infinite learning rate makes finite gradients into a non-finite prompt.
        finite = jnp.all(jnp.stack([jnp.isfinite(sums["loss"])] + [
            jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves((grads, trainable))]))
        if self.on_nonfinite == "skip":
            keep = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
            trainable, opt_state = keep(trainable, state.trainable), keep(opt_state, state.opt_state)
        health = {"step": state.step + 1, "finite": finite, "max_token_id": jnp.max(jnp.stack(
            [jnp.max(batch[k]) for k in self.model.token_features if k in batch]))}
        metrics = {
            "loss": sums["loss"] / norm,
            "z_loss": sums["z_loss"] / norm,
            "cross_ent_loss_per_token": (sums["loss"] - sums["z_loss"]) / jnp.maximum(sums["weight"], 1.0),
            "accuracy": sums["correct"] / jnp.maximum(sums["weight"], 1.0),
            "num_tokens": sums["weight"],
            "num_examples": sums["examples"],
            "learning_rate": jnp.asarray(self.learning_rate_fn(state.step), jnp.float32),
            "grad_norm": optax.tree.norm(grads),  # of the trainable subtree only
        }
        return TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics, health

    def _jitted_train_step(self, state: TrainState):
        if self._train_step is None:
            shardings = self.state_shardings(state)
            self._train_step = jax.jit(
                partitioning.constrained(self._step, self.mesh),
                in_shardings=(self.frozen_shardings, shardings, self.batch_sharding),
                out_shardings=(shardings, NamedSharding(self.mesh, PartitionSpec()),
                               NamedSharding(self.mesh, PartitionSpec())), donate_argnums=(1,))
        return self._train_step

    def _normalize(self, grads, sums, norm):
        """grads / norm; a bank's rows each by their own tokens (a row's prompt reaches only its examples)."""
        if not self.row_arrays:
            return jax.tree_util.tree_map(lambda g: g / norm, grads)
        row_norm = losses.normalizer({"weight": sums["row_weight"]}, self.loss_normalizing_factor)
        flat = flax.traverse_util.flatten_dict(grads, sep="/")
        for path, g in flat.items():
            if path in self.row_arrays:
                flat[path] = g / jnp.reshape(jnp.broadcast_to(row_norm, (g.shape[0],)), (-1,) + (1,) * (g.ndim - 1))
            else:
                flat[path] = g / norm
        return flax.traverse_util.unflatten_dict(flat, sep="/")

    def train_step(self, state: TrainState, batch: Batch):
        """One update; `batch` is a dict of global jax.Arrays sharded on 'data' (see `data.to_global`).

        Returns (state, metrics); the step's health flags wait on the device for `check_health`.
        """
        state, metrics, health = self._jitted_train_step(state)(self.frozen, state, self.model.features(batch))
        self._unchecked.append(health)
        if len(self._unchecked) >= 1000:  # callers that never check still get checked, once per 1000 steps
            self.check_health()
        return state, metrics

    def check_health(self) -> None:
        """Reads the health of every step since the last check; raises NonFiniteError for the first bad one.

        A token id at or above the model's vocabulary size always stops (the task's vocabulary is not the
        model's); a non-finite loss or gradient stops unless `on_nonfinite='skip'`, which counts it.
        """
        pending, self._unchecked = jax.device_get(self._unchecked), []
        for health in pending:
            step = int(health["step"])
            if int(health["max_token_id"]) >= self.model.vocab_size:
                raise NonFiniteError(f"step {step}: the batch has token id {int(health['max_token_id'])}, but the "
                                     f"model's vocabulary has {self.model.vocab_size} ids (is the task's vocabulary "
                                     "the model's?)")
            if not bool(health["finite"]):
                if self.on_nonfinite == "stop":
                    raise NonFiniteError(f"step {step}: non-finite loss or gradient; nothing of this step or later "
                                         "was saved (lower the learning rate, check the prompt file and data, or "
                                         "set ON_NONFINITE='skip' to skip such updates)")
                self.skipped_steps += 1

    def lower_train_step(self, state: TrainState, batch: Batch) -> jax.stages.Lowered:
        """The train step's program for these shapes, lowered (`.compile()` it for memory and cost analyses).

        `state` and `batch` may be abstract (`jax.ShapeDtypeStruct`s), as t5x's `compile_train`.
        """
        return self._jitted_train_step(state).lower(self.frozen, state, self.model.features(batch))

    # ------------------------------------------------------------------ eval
    def params_for_eval(self, state: TrainState) -> PyTree:
        return optimizers.merge_params(state.trainable, self.frozen)

    def _score_rows(self, frozen, trainable, batch, candidates=False):
        """Per-example scores, computed in `microbatches(batch)` slices when the batch splits evenly.

        Scores are per example, so the split changes no number; it keeps the [b, heads, L, L] attention
        tensors small enough to stay in cache (12-15% faster on W-small with 2 or 4 slices).
        candidates: the batch holds C candidate targets per example (`model.score_candidates`, [B, C]).
        """
        def score(mb):
            params = optimizers.merge_params(trainable, frozen)
            return (self.model.score_candidates if candidates else self.model.score_batch)(params, mb)
        m = self.microbatches(batch)
        rows = batch["decoder_target_tokens"].shape[0]
        if m <= 1 or rows % (m * self.mesh.shape["data"]):
            return score(batch)
        per_slice = jax.lax.map(score, self._split_microbatches(batch, m))  # [M, B/M, ...]: slice i = rows i, i+M, ...
        return per_slice.swapaxes(0, 1).reshape(rows, *per_slice.shape[2:])

    def _jitted_score(self, candidates=False):
        if candidates not in self._score:
            self._score[candidates] = jax.jit(
                partitioning.constrained(functools.partial(self._score_rows, candidates=candidates), self.mesh),
                in_shardings=(self.frozen_shardings, self.trainable_shardings, self.batch_sharding),
                out_shardings=NamedSharding(self.mesh, PartitionSpec()))
        return self._score[candidates]

    def score_batch(self, state: TrainState, batch: Batch) -> jax.Array:
        """Summed log-likelihood of each example's targets (rank classification), [B]."""
        return self._jitted_score()(self.frozen, state.trainable, self.model.features(batch))

    def lower_score_batch(self, state: TrainState, batch: Batch) -> jax.stages.Lowered:
        """The scoring program for these shapes, lowered (see `lower_train_step`)."""
        return self._jitted_score().lower(self.frozen, state.trainable, self.model.features(batch))

    def score_candidates(self, state: TrainState, batch: Batch) -> jax.Array:
        """[B, C] scores of C candidate targets per input (decoder features [B, C, T]); see
        `BaseModel.score_candidates`: an encoder-decoder encodes each input once."""
        return self._jitted_score(candidates=True)(self.frozen, state.trainable, self.model.features(batch))

    def predict_batch(self, state: TrainState, batch: Batch, **decoding_options):
        """The model's cached decoding with this state's prompt (see `BaseModel.predict_batch`)."""
        return self.model.predict_batch(self.params_for_eval(state), batch, **decoding_options)

    def lower_predict_batch(self, state: TrainState, batch: Batch, **decoding_options) -> jax.stages.Lowered:
        return self.model.lower_predict_batch(self.params_for_eval(state), batch, **decoding_options)


def get_metrics(metrics: Dict[str, jax.Array]) -> Dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}
