"""`python -m prompt_tuning.eval --gin_file=models/..._prompt.gin --gin_file=runs/prompt_eval.gin ...`

Evaluates a prompt (from a training run's checkpoint, or whatever the model gin initialises, e.g.
PROMPT_FILE) on a task's split with its seqio metrics; writes MODEL_DIR/eval/metrics.jsonl.

A prompt ensemble (the paper's Table 3): ENSEMBLE_PROMPTS = [N prompt files, checkpoints or PEFT dirs], or a
PROMPT_CHECKPOINT_PATH of an ensemble run (PROMPT_ROWS=N); every example runs with all N prompts in one
batched forward, and MODEL_DIR/eval/ensemble.{jsonl,md} report each prompt, the average, the best and the
ensemble (majority vote over decodes, summed rank-classification scores; see train/ensemble.py).
"""
import os
from typing import Mapping, Optional, Sequence

import gin
import jax

from prompt_tuning import gin_utils
from prompt_tuning.models import BaseModel


@gin.configurable
def evaluate(*, model: BaseModel = gin.REQUIRED, model_dir: str = gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = 32, split: str = "validation", initial_checkpoint_path: Optional[str] = None,
             prompt_checkpoint_path: Optional[str] = None, num_examples: Optional[int] = None,
             model_parallel_size: int = 1, seed: int = 0, ensemble_prompts: Optional[Sequence[str]] = None,
             length_buckets: Optional[Mapping[str, Sequence[int]]] = None) -> dict:
    """Metrics {'<task>/<metric>': value} of the prompted model (of the ensemble, with per-prompt keys too)."""
    from prompt_tuning.train import ensemble, setup
    from prompt_tuning.train.evaluation import Evaluator
    if ensemble_prompts:
        if prompt_checkpoint_path:
            raise ValueError("give ENSEMBLE_PROMPTS or PROMPT_CHECKPOINT_PATH, not both")
        model = ensemble.with_prompt_bank(model, ensemble_prompts)
    trainer, state, rows = setup.load_for_eval(
        model, task_feature_lengths, model_parallel_size=model_parallel_size,
        initial_checkpoint_path=initial_checkpoint_path, prompt_checkpoint_path=prompt_checkpoint_path, seed=seed)
    names = [os.path.basename(os.path.normpath(str(p))) for p in ensemble_prompts] if ensemble_prompts \
        else ensemble.ensemble_rows(rows)
    output_dir = os.path.join(model_dir, "eval")
    if names:
        evaluator = ensemble.EnsembleEvaluator(trainer, mixture_or_task_name, dict(task_feature_lengths), batch_size,
                                               rows=range(len(names)), split=split, num_examples=num_examples,
                                               output_dir=output_dir, names=_unique(names),
                                               length_buckets=length_buckets)
    else:
        evaluator = Evaluator(trainer, mixture_or_task_name, dict(task_feature_lengths), batch_size, split=split,
                              num_examples=num_examples, output_dir=output_dir, task_rows=rows,
                              length_buckets=length_buckets)
    metrics = evaluator.evaluate(state, int(jax.device_get(state.step)))
    if jax.process_index() == 0:
        for name, value in sorted(metrics.items()):
            print(f"{name}: {value:.4f}")
    return metrics


def _unique(names):
    """Report column names: the prompts' own names, numbered where two are the same."""
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def main(argv=None) -> dict:
    return gin_utils.run_cli(evaluate, argv, __doc__, "config_eval.gin")
