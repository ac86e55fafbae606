"""The training loop (t5x's `train.train`), configured by gin; `python -m prompt_tuning.train` calls it.

TRAIN_STEPS counts prompt-tuning updates from 0 (the frozen model's own pretraining steps are not
included, unlike t5x).  A run whose MODEL_DIR holds checkpoints resumes from the newest one: same step,
same data position, same dropout rng, so interrupted and uninterrupted runs end with the same prompt.
"""
import logging
import os
from typing import Any, Dict, Optional

import flax.linen as nn
import gin
import jax

from prompt_tuning import partitioning
from prompt_tuning.train import data, losses, optimizers, params as params_lib, trainer as trainer_lib
from prompt_tuning.train.checkpointing import Checkpointer
from prompt_tuning.train.evaluation import Evaluator
from prompt_tuning.train.observability import Progress, Writer, plot_curves


def load_frozen(path: str, module: nn.Module, mesh):
    """The pretrained parameters (no prompt), read straight into their shardings."""
    from prompt_tuning.checkpoints import load_pretrained
    _, loaded = load_pretrained(path, config=module.config, mesh=mesh)
    return loaded


def build_trainer(model: nn.Module, task_feature_lengths, mesh, *, initial_checkpoint_path=None, seed=0,
                  **trainer_kwargs) -> trainer_lib.Trainer:
    """Frozen model + fresh prompt placed on `mesh`, and the Trainer around them."""
    inputs = params_lib.dummy_inputs(task_feature_lengths)
    loaded = load_frozen(initial_checkpoint_path, model, mesh) if initial_checkpoint_path else None
    params, shardings = params_lib.init_params(model, inputs, mesh, jax.random.PRNGKey(seed), loaded)
    tx, schedule = optimizers.make_optimizer()
    return trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, seed=seed, **trainer_kwargs)


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, model: nn.Module = gin.REQUIRED,
          train_dataset_cfg: data.DatasetConfig = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None, eval_period: int = 0, eval_split: str = "validation",
          eval_num_examples: Optional[int] = None, eval_batch_size: Optional[int] = None,
          eval_at_start: bool = False, model_parallel_size: int = 1,
          trainable_regex: str = optimizers.DEFAULT_TRAINABLE_REGEX, num_microbatches: int = 1,
          z_loss: float = 1e-4, loss_normalizing_factor: losses.Normalizer = losses.NUM_REAL_TARGET_TOKENS,
          frozen_dtype: Optional[str] = None, seed: int = 0, log_every: int = 10,
          stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Prompt-tunes `model` on the train split; evaluates every `eval_period` steps; returns a summary.

    stop_after: stop once this step is reached (simulates a preemption in tests); the next run resumes.
    """
    mesh = partitioning.make_mesh(model_parallel_size)
    lengths = dict(train_dataset_cfg.task_feature_lengths)
    trainer = build_trainer(model, lengths, mesh, initial_checkpoint_path=initial_checkpoint_path, seed=seed,
                            trainable_regex=trainable_regex, num_microbatches=num_microbatches, z_loss=z_loss,
                            loss_normalizing_factor=loss_normalizing_factor, frozen_dtype=frozen_dtype)
    checkpointer = Checkpointer(model_dir)
    abstract = trainer.abstract_state()
    state, _ = checkpointer.restore_latest(abstract, trainer.state_shardings(abstract))
    if state is None:
        state = trainer.init_state()
    start = int(jax.device_get(state.step))
    if start:
        logging.info("resuming from step %d of %s", start, model_dir)
    meta = {"seed": seed, "batch_size": train_dataset_cfg.batch_size, "task": train_dataset_cfg.mixture_or_task_name}

    evaluator = None
    if eval_period or eval_at_start:
        evaluator = Evaluator(trainer, train_dataset_cfg.mixture_or_task_name, lengths,
                              eval_batch_size or train_dataset_cfg.batch_size, split=eval_split,
                              num_examples=eval_num_examples, output_dir=os.path.join(model_dir, "eval"))
    train_writer, eval_writer = Writer(model_dir, "train"), Writer(model_dir, "eval")
    history = {"eval": []}

    def run_eval(step):
        metrics = evaluator.evaluate(state, step)
        if metrics:
            eval_writer.write(step, metrics)
            checkpointer.save_if_best(step, state, dict(meta, step=step), metrics)
            history["eval"].append({"step": step, **metrics})
            if jax.process_index() == 0:
                print(f"eval @ step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        return metrics

    if evaluator is not None and eval_at_start and start == 0:
        history["initial_eval"] = run_eval(0)

    end = train_steps if stop_after is None else min(train_steps, stop_after)
    batches = data.numpy_batches(data.get_dataset(train_dataset_cfg, start_step=start))
    progress = Progress(train_steps, start, train_dataset_cfg.batch_size)
    metrics, step = None, start
    for step in range(start + 1, end + 1):
        state, metrics = trainer.train_step(state, data.to_global(next(batches), mesh))
        if step % log_every == 0 or step == end:
            scalars = trainer_lib.get_metrics(metrics)
            scalars.update(progress.report(step, scalars))
            train_writer.write(step, scalars)
            history["last_train"] = scalars
        checkpointer.maybe_save(step, state, dict(meta, step=step))
        if evaluator is not None and eval_period and step % eval_period == 0:
            run_eval(step)
            progress.restart(step)   # eval time is not training throughput
    if evaluator is not None and eval_period and step % eval_period and step == train_steps:
        run_eval(step)   # the final prompt is always evaluated
    checkpointer.maybe_save(step, state, dict(meta, step=step), force=True)
    checkpointer.wait()
    history.update(step=step, best_step=checkpointer.best_step(), state=state, trainer=trainer)
    checkpointer.close()
    train_writer.close()
    eval_writer.close()
    if step == train_steps:
        history["plot"] = plot_curves(model_dir, metric=checkpointer.metric)
    return history


def restore_trainable(trainer: trainer_lib.Trainer, path: Optional[str], step: Optional[int] = None):
    """A TrainState whose trainable params come from one of our checkpoints (a run's MODEL_DIR, its
    checkpoints/ or best/ directory, or one step directory); with `path` None, the freshly initialised
    ones (e.g. a prompt the model gin loads from PROMPT_FILE)."""
    import numpy as np
    from prompt_tuning.train.checkpointing import read_trainable
    state = trainer.init_state()
    if not path:
        return state
    if os.path.isdir(os.path.join(path, "best")) and os.listdir(os.path.join(path, "best")):
        path = os.path.join(path, "best")
    elif os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    loaded = read_trainable(path, step)

    def place(value, like, sharding):
        if tuple(value.shape) != tuple(like.shape):
            raise ValueError(f"{path}: trainable array of shape {value.shape}, the model wants {like.shape}")
        value = np.asarray(value, like.dtype)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    try:
        trainable = jax.tree_util.tree_map(place, loaded, state.trainable, trainer.trainable_shardings)
    except ValueError as e:
        raise ValueError(f"{path}: checkpoint does not match the model's trainable params ({e})") from None
    return state.replace(trainable=trainable)
