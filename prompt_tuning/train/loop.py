"""The training loop (t5x's `train.train`), configured by gin; `python -m prompt_tuning.train` calls it.

TRAIN_STEPS counts prompt-tuning updates from 0 (the frozen model's own pretraining steps are not
included, unlike t5x).  A run whose MODEL_DIR holds checkpoints resumes from the newest readable one: same
step, same data position, same dropout rng, so interrupted and uninterrupted runs end with the same prompt.
A resume is refused, before anything is written, when the configuration's run identity (identity.py) is not
the checkpoint's: another MODEL_DIR starts a new run, `resume_despite_changes=True` continues deliberately
(and then no earlier checkpoint is deleted).
"""
import dataclasses
import logging
import os
from typing import Dict, List, Optional

import gin
import jax

from prompt_tuning import gin_utils, losses, partitioning
from prompt_tuning.errors import ResumeMismatchError, UserError
from prompt_tuning.models import BaseModel
from prompt_tuning.train import data, identity as identity_lib, optimizers, setup, trainer as trainer_lib
from prompt_tuning.train.checkpointing import Checkpointer
from prompt_tuning.train.evaluation import Evaluator
from prompt_tuning.train.observability import Progress, Writer, plot_curves


@dataclasses.dataclass
class TrainResult:
    """What a run did (its prompt is in MODEL_DIR: checkpoints/, best/, numpy_checkpoints/)."""

    model_dir: str
    step: int                                     # the last step trained (TRAIN_STEPS unless stopped early)
    start_step: int                               # 0, or the step the run resumed from
    best_step: Optional[int] = None               # by BEST_METRIC, when set
    initial_eval: Optional[Dict[str, float]] = None
    evals: List[Dict[str, float]] = dataclasses.field(default_factory=list)   # {'step': s, metric: value}
    last_train: Dict[str, float] = dataclasses.field(default_factory=dict)    # the last logged train scalars
    stop_reason: Optional[str] = None             # why it ended before TRAIN_STEPS (early stopping)
    plot: Optional[str] = None                    # training_curves.png, written once TRAIN_STEPS are done


class _EarlyStopping:
    """Stops once `metric` has not improved for `patience` evaluations (the paper's dev-set protocol).

    The count is rebuilt from MODEL_DIR/eval/metrics.jsonl on resume, so a resumed run keeps its patience.
    """

    def __init__(self, metric: Optional[str], patience: int, mode: str = "max"):
        self.metric, self.patience, self.sign = metric, patience, 1.0 if mode == "max" else -1.0
        self.best, self.since_best = None, 0

    def update(self, step: int, metrics: Dict[str, float]) -> Optional[str]:
        """Records one evaluation; returns the reason to stop, or None."""
        if not self.patience or self.metric not in metrics:
            return None
        value = self.sign * metrics[self.metric]
        if self.best is None or value > self.best:
            self.best, self.since_best = value, 0
            return None
        self.since_best += 1
        if self.since_best >= self.patience:
            return (f"early stopping at step {step}: {self.metric} has not improved for {self.patience} "
                    f"evaluations (best {self.sign * self.best:.4f})")
        return None


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, model: BaseModel = gin.REQUIRED,
          train_dataset_cfg: data.DatasetConfig = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None, eval_period: int = 0, eval_split: str = "validation",
          eval_num_examples: Optional[int] = None, eval_batch_size: Optional[int] = None,
          eval_at_start: bool = False, model_parallel_size: int = 1, num_devices: Optional[int] = None,
          trainable_regex: str = optimizers.DEFAULT_TRAINABLE_REGEX, num_microbatches: int = 1,
          microbatch_positions: Optional[int] = None, z_loss: float = 1e-4,
          loss_normalizing_factor: losses.Normalizer = losses.NUM_REAL_TARGET_TOKENS,
          frozen_dtype: Optional[str] = None, seed: int = 0, log_every: int = 10,
          early_stopping_metric: Optional[str] = None, early_stopping_patience: int = 0,
          on_nonfinite: str = "stop", resume_despite_changes: bool = False,
          max_truncated_share: float = 1.0) -> TrainResult:
    """Prompt-tunes `model` on the train split; evaluates every `eval_period` steps.

    early_stopping_patience > 0: stop when `early_stopping_metric` (default: the checkpointer's BEST_METRIC)
    has not improved for that many evaluations.  on_nonfinite: 'stop' (a one-line error naming the step) or
    'skip' (keep the previous prompt for that step and count it).  max_truncated_share: refuse to train when
    a larger share of a task's sampled inputs or targets is cut to TASK_FEATURE_LENGTHS.  num_devices: the
    mesh takes the first N devices (None: all), e.g. to resume a run on a smaller mesh (the prompt and its
    optimizer state restore onto any mesh).
    """
    mesh = partitioning.make_mesh(model_parallel_size, jax.devices()[:num_devices] if num_devices else None)
    lengths = dict(train_dataset_cfg.task_feature_lengths)
    rows = data.prompt_row_names(train_dataset_cfg)
    data.check_batch_size(train_dataset_cfg, mesh)
    data.check_length_buckets(train_dataset_cfg.length_buckets, model.LENGTH_GROUPS)
    trainer = setup.build_trainer(model, lengths, mesh, initial_checkpoint_path=initial_checkpoint_path, seed=seed,
                                  trainable_regex=trainable_regex, num_microbatches=num_microbatches,
                                  microbatch_positions=microbatch_positions, z_loss=z_loss,
                                  loss_normalizing_factor=loss_normalizing_factor, frozen_dtype=frozen_dtype,
                                  on_nonfinite=on_nonfinite)
    _check_bank(trainer, rows)
    identity = identity_lib.run_identity(trainer, train_dataset_cfg)
    data.report_truncation(train_dataset_cfg, max_truncated_share)
    checkpointer = Checkpointer(model_dir)
    try:
        state, start = _restore_or_init(trainer, checkpointer, model_dir, identity, train_steps,
                                        resume_despite_changes)
    except BaseException:
        checkpointer.close()   # orbax's threads would otherwise bury the message at exit
        raise
    if jax.process_index() == 0:
        gin_utils.write_config(model_dir)
    run = _Run(trainer, checkpointer, model_dir, train_dataset_cfg, lengths, start,
               meta={"identity": identity, "seed": seed, "batch_size": train_dataset_cfg.batch_size,
                     "task": train_dataset_cfg.mixture_or_task_name, "prompt_rows": rows},
               evaluator=_evaluator(trainer, train_dataset_cfg, lengths, model_dir, eval_period or eval_at_start,
                                    eval_split, eval_num_examples, eval_batch_size),
               stopping=_EarlyStopping(early_stopping_metric or checkpointer.metric, early_stopping_patience))
    try:
        if run.evaluator is not None and eval_at_start and start == 0:
            run.result.initial_eval = run.evaluate(state, 0)
        state = run.loop(state, train_steps, eval_period, log_every)
        run.finish(state, train_steps, eval_period)
    finally:
        run.close()
    return run.result


def _restore_or_init(trainer, checkpointer, model_dir, identity, train_steps, resume_despite_changes):
    """(state, start step): the newest readable checkpoint of this same run, or a fresh state."""
    def check(step, meta):
        if step > train_steps:
            raise UserError(f"TRAIN_STEPS={train_steps} is below step {step} of the checkpoint in {model_dir}: "
                            "raise TRAIN_STEPS to continue it, or use a new MODEL_DIR")
        saved = meta.get("identity")
        if saved is None:
            logging.warning("%s: checkpoint step %d records no run identity (an older version); continuing",
                            model_dir, step)
            return
        diffs = identity_lib.differences(saved, identity)
        if not diffs:
            return
        if not resume_despite_changes:
            raise ResumeMismatchError(
                f"MODEL_DIR={model_dir} holds another run (step {step}); it differs in " + "; ".join(diffs)
                + ". Use a new MODEL_DIR for a new run, or --gin.RESUME_DESPITE_CHANGES=True to continue "
                "this one deliberately")
        logging.warning("continuing %s despite changes: %s", model_dir, "; ".join(diffs))
        checkpointer.keep_everything()   # the earlier configuration's checkpoints stay
    abstract = trainer.abstract_state()
    state, _ = checkpointer.restore_latest(abstract, trainer.state_shardings(abstract), check_meta=check)
    if state is None:
        return trainer.init_state(), 0
    start = int(jax.device_get(state.step))
    logging.info("resuming from step %d of %s", start, model_dir)
    if start == train_steps and jax.process_index() == 0:
        print(f"{model_dir} has already trained TRAIN_STEPS={train_steps} steps", flush=True)
    return state, start


def _check_bank(trainer, rows) -> None:
    """A bank's size must be the rows the data gives it (PROMPT_BANK_SIZE against PROMPT_ROWS)."""
    if (rows is None) != (not trainer.num_prompt_rows) or (rows and len(rows) != trainer.num_prompt_rows):
        raise UserError(f"the model's prompt bank has {trainer.num_prompt_rows or 'no'} rows but the data gives "
                         f"{len(rows) if rows else 'no'} prompt rows ({rows}): set PROMPT_BANK_SIZE to match "
                         "PROMPT_ROWS")


def _evaluator(trainer, cfg, lengths, model_dir, wanted, split, num_examples, batch_size) -> Optional[Evaluator]:
    if not wanted:
        return None
    if cfg.prompt_rows not in (None, data.PER_TASK):  # an ensemble run: all its prompts, and their ensemble
        from prompt_tuning.train.ensemble import EnsembleEvaluator
        return EnsembleEvaluator(trainer, cfg.mixture_or_task_name, lengths, batch_size or cfg.batch_size,
                                 rows=range(cfg.prompt_rows), split=split, num_examples=num_examples,
                                 output_dir=os.path.join(model_dir, "eval"), length_buckets=cfg.length_buckets)
    rows = data.prompt_row_names(cfg) if cfg.prompt_rows == data.PER_TASK else None
    return Evaluator(trainer, cfg.mixture_or_task_name, lengths, batch_size or cfg.batch_size, split=split,
                     num_examples=num_examples, output_dir=os.path.join(model_dir, "eval"),
                     task_rows=None if rows is None else {name: i for i, name in enumerate(rows)},
                     length_buckets=cfg.length_buckets)


class _Run:
    """One start of a run: the loop's state between steps, evaluation, checkpoints and writers."""

    def __init__(self, trainer, checkpointer, model_dir, cfg, lengths, start, meta, evaluator, stopping):
        self.trainer, self.checkpointer, self.cfg, self.meta = trainer, checkpointer, cfg, meta
        self.evaluator, self.stopping = evaluator, stopping
        self.train_writer, self.eval_writer = Writer(model_dir, "train"), Writer(model_dir, "eval")
        self.result = TrainResult(model_dir=model_dir, step=start, start_step=start)
        if evaluator is not None and start:
            for past in evaluator.history():  # a resumed run keeps its early-stopping count
                if past["step"] <= start:
                    self.result.stop_reason = stopping.update(past["step"], past) or self.result.stop_reason

    def evaluate(self, state, step: int) -> Dict[str, float]:
        self.trainer.check_health()   # a non-finite prompt is neither evaluated nor kept as best
        metrics = self.evaluator.evaluate(state, step)
        for name, what in ((self.checkpointer.metric, "BEST_METRIC"), (self.stopping.metric, "the early-stopping metric")):
            if metrics and name and name not in metrics:
                raise UserError(f"{what} {name!r} is not a metric of this evaluation; it reports "
                                f"{', '.join(sorted(metrics))}")
        if metrics:
            self.eval_writer.write(step, metrics)
            self.checkpointer.save_if_best(step, state, dict(self.meta, step=step), metrics)
            self.result.evals.append({"step": step, **metrics})
            if jax.process_index() == 0:
                print(f"eval @ step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
            self.result.stop_reason = self.stopping.update(step, metrics)
        return metrics

    def loop(self, state, train_steps: int, eval_period: int, log_every: int):
        mesh, start = self.trainer.mesh, self.result.start_step
        if self.result.stop_reason:  # it had stopped early before this start
            return state
        batches = data.numpy_batches(data.get_dataset(self.cfg, self.trainer.model.feature_converter,
                                                      start_step=start))
        progress = Progress(train_steps, start, self.cfg.batch_size)
        for step in range(start + 1, train_steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                raise UserError(f"MIXTURE_OR_TASK_NAME={self.cfg.mixture_or_task_name!r} split "
                                f"{self.cfg.split!r} gave no batch of BATCH_SIZE={self.cfg.batch_size} examples "
                                "(an empty or too small data file?)") from None
            batch = data.trim_to_buckets(batch, self.trainer.model.LENGTH_GROUPS, self.cfg.length_buckets)
            state, metrics = self.trainer.train_step(state, data.to_global(batch, mesh))
            self.result.step = step
            if step % log_every == 0 or step == train_steps or self.checkpointer.due(step):
                self.trainer.check_health()   # before anything of this step is logged or saved
            if step % log_every == 0 or step == train_steps:
                scalars = trainer_lib.get_metrics(metrics)
                if self.trainer.skipped_steps:
                    scalars["skipped_nonfinite_steps"] = float(self.trainer.skipped_steps)
                scalars.update(progress.report(step, scalars))
                self.train_writer.write(step, scalars)
                self.result.last_train = scalars
            self.checkpointer.maybe_save(step, state, dict(self.meta, step=step))
            if self.evaluator is not None and eval_period and step % eval_period == 0:
                self.evaluate(state, step)
                progress.restart(step)   # eval time is not training throughput
                if self.result.stop_reason:
                    break
        return state

    def finish(self, state, train_steps: int, eval_period: int) -> None:
        self.trainer.check_health()
        step = self.result.step
        if self.result.stop_reason:
            logging.info(self.result.stop_reason)
            if jax.process_index() == 0:
                print(self.result.stop_reason, flush=True)
        elif self.evaluator is not None and eval_period and step % eval_period and step == train_steps:
            self.evaluate(state, step)   # the final prompt is always evaluated
        self.checkpointer.maybe_save(step, state, dict(self.meta, step=step), force=True)
        self.checkpointer.wait()
        self.result.best_step = self.checkpointer.best_step()
        if step == train_steps or self.result.stop_reason:
            self.result.plot = plot_curves(self.result.model_dir, metric=self.checkpointer.metric)

    def close(self) -> None:
        self.checkpointer.close()
        self.train_writer.close()
        self.eval_writer.close()
