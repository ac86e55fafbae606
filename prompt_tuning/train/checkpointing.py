"""Prompt-only checkpoints with orbax, `.npy` prompts, retention and exact resume.

Layout under MODEL_DIR:
  checkpoints/<step>/{state,meta}    trainable params + optimizer state + step (kilobytes: no frozen model);
                                     `keep` latest kept; resume reads the newest.
  best/<step>/{state,meta}           the best by the validation metric (`keep_best` of them).
  numpy_checkpoints/checkpoint_<step>/<param.path>.npy   each trainable array, written atomically.
The frozen model is never saved: it is re-read from INITIAL_CHECKPOINT_PATH, so a resume needs the same one
(the meta's run identity holds its fingerprint; see identity.py).  Two latest checkpoints are kept by default,
so a resume whose newest checkpoint is unreadable (a crash mid-write, a corrupted disk) falls back to the one
before.
The data position is the step (see data.py) and the dropout rng is fold_in(seed, step): restoring the step
restores both.
"""
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from prompt_tuning.checkpoints import runs
from prompt_tuning.errors import UserError, check_finite, one_line
from prompt_tuning.train.trainer import TrainState


def _state_dict(state: TrainState):
    return {"step": state.step, "trainable": state.trainable, "opt_state": state.opt_state}


def write_npy_atomic(path: str, array) -> None:
    """np.save to a temporary file beside `path`, then rename: readers never see a partial file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(array))
    os.replace(tmp, path)


def save_trainable_npy(model_dir: str, step: int, trainable) -> None:
    """Each trainable array to numpy_checkpoints/checkpoint_<step>/<dotted path>.npy (process 0 only)."""
    if jax.process_index() != 0:
        return
    for path, value in traverse_util.flatten_dict(trainable, sep=".").items():
        write_npy_atomic(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}", f"{path}.npy"),
                         jax.device_get(value))


@gin.configurable
class Checkpointer:
    """Saves every `period` steps and at the end; keeps `keep` latest and `keep_best` best by `metric`."""

    def __init__(self, model_dir: str, period: int = 1000, keep: Optional[int] = 2,
                 metric: Optional[str] = None, metric_mode: str = "max", keep_best: int = 1,
                 save_npy: bool = True):
        self.model_dir, self.period, self.metric, self.save_npy = model_dir, period, metric, save_npy
        self.metric_mode = metric_mode
        self.latest, self.best = None, None
        self._open(keep, keep_best)

    def _open(self, keep: Optional[int], keep_best: Optional[int]) -> None:
        self.close()
        self.latest = ocp.CheckpointManager(
            os.path.abspath(os.path.join(self.model_dir, runs.LATEST_DIR)), item_names=(runs.STATE_ITEM, "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        if self.metric:
            metric = self.metric
            self.best = ocp.CheckpointManager(
                os.path.abspath(os.path.join(self.model_dir, runs.BEST_DIR)), item_names=(runs.STATE_ITEM, "meta"),
                options=ocp.CheckpointManagerOptions(max_to_keep=keep_best, best_fn=lambda m: m[metric],
                                                     best_mode=self.metric_mode, create=True))

    def keep_everything(self) -> None:
        """From now on delete no checkpoint (a run continued deliberately over another run's checkpoints)."""
        self._open(None, None)

    def due(self, step: int) -> bool:
        return bool(self.period) and step % self.period == 0 and step not in self.latest.all_steps()

    @staticmethod
    def _args(state: TrainState, meta: Mapping[str, Any]):
        return ocp.args.Composite(state=ocp.args.StandardSave(_state_dict(state)),
                                  meta=ocp.args.JsonSave(dict(meta)))

    def maybe_save(self, step: int, state: TrainState, meta: Mapping[str, Any], force: bool = False) -> bool:
        """Saves at multiples of `period` (and when `force`); returns whether it saved."""
        if step in self.latest.all_steps() or not (force or self.due(step)):
            return False
        self.latest.save(step, args=self._args(state, meta), force=True)
        if self.save_npy:
            save_trainable_npy(self.model_dir, step, state.trainable)
        return True

    def save_if_best(self, step: int, state: TrainState, meta: Mapping[str, Any],
                     metrics: Mapping[str, float]) -> None:
        """Offers this step to the best-by-metric manager (which keeps `keep_best`)."""
        if self.best is None or self.metric not in metrics:
            return
        if step not in self.best.all_steps():
            self.best.save(step, args=self._args(state, meta), metrics={self.metric: float(metrics[self.metric])},
                           force=True)

    def saved_meta(self) -> Optional[dict]:
        """The meta of the newest checkpoint whose meta reads, or None when there is none."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                return read_meta(os.path.join(self.model_dir, runs.LATEST_DIR, str(step)))
            except (OSError, ValueError):
                continue
        return None

    def restore_latest(self, abstract_state: TrainState, shardings: TrainState,
                       check_meta: Optional[Callable[[int, dict], None]] = None):
        """(state, meta) of the newest readable checkpoint placed with `shardings`, or (None, None) when none.

        `check_meta(step, meta)` runs before a step's arrays are read (it raises to refuse the run).  An
        unreadable checkpoint is reported and the next older one tried.
        """
        failures = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            step_dir = os.path.join(self.model_dir, runs.LATEST_DIR, str(step))
            try:
                meta = read_meta(step_dir)
            except (OSError, ValueError) as e:
                failures.append(f"step {step}: {one_line(e)}")
                continue
            if check_meta is not None:
                check_meta(step, meta)
            try:
                state, _ = restore(self.latest, step, abstract_state, shardings)
            except Exception as e:  # noqa: BLE001 - orbax/TensorStore: a truncated or corrupted checkpoint
                failures.append(f"step {step}: {one_line(e)}")
                continue
            check_finite(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(jax.device_get(
                state.trainable))]), f"checkpoint {step_dir}")
            if failures:
                message = (f"{self.model_dir}: newest checkpoint(s) unreadable ({'; '.join(failures)}); resuming "
                           f"from step {step}")
                logging.warning(message)
                if jax.process_index() == 0:
                    print(f"warning: {message}", flush=True)
            return state, meta
        if failures:
            raise UserError(f"{self.model_dir}: no readable checkpoint ({'; '.join(failures)})")
        return None, None

    def best_step(self) -> Optional[int]:
        return None if self.best is None else self.best.best_step()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        for manager in (self.latest, self.best):
            if manager is not None:
                manager.close()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState, shardings: TrainState):
    target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    _state_dict(abstract_state), _state_dict(shardings))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                             meta=ocp.args.JsonRestore()))
    s = restored["state"]
    return TrainState(step=s["step"], trainable=s["trainable"], opt_state=s["opt_state"]), restored["meta"]


def _step_dir(path: str, step: Optional[int]) -> str:
    step_dir = runs.resolve(path, step)
    if step_dir is None:
        raise FileNotFoundError(f"{path}: not a training run's checkpoint (no {runs.LATEST_DIR}/<step>/"
                                f"{runs.STATE_ITEM}, {runs.BEST_DIR}/<step>/{runs.STATE_ITEM} or {runs.STATE_ITEM}/)")
    return step_dir


def read_meta(path: str, step: Optional[int] = None) -> dict:
    """The meta a checkpoint was saved with (its run identity, the prompt bank's rows, ...)."""
    meta_file = os.path.join(_step_dir(path, step), "meta", "metadata")
    with open(meta_file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{meta_file}: not valid JSON ({e})") from None


def read_trainable(path: str, step: Optional[int] = None):
    """The trainable params of one of our checkpoints as numpy (no model needed).

    `path`: a run's MODEL_DIR, its checkpoints/ or best/ directory, or one step directory (see `runs.resolve`).
    """
    item = os.path.join(_step_dir(path, step), runs.STATE_ITEM)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(item)
    except Exception as e:  # noqa: BLE001 - orbax/TensorStore errors, translated to the file at fault
        raise UserError(f"{item}: unreadable checkpoint ({one_line(e)})") from None
    trainable = jax.tree_util.tree_map(np.asarray, tree["trainable"])
    for name, value in traverse_util.flatten_dict(trainable, sep="/").items():
        check_finite(value, f"checkpoint {item} ({name})")
    return trainable
