"""`python -m prompt_tuning.eval --gin_file=models/..._prompt.gin --gin_file=runs/prompt_eval.gin ...`

Evaluates a prompt (from a training run's checkpoint, or whatever the model gin initialises, e.g.
PROMPT_FILE) on a task's split with its seqio metrics; writes MODEL_DIR/eval/metrics.jsonl.
"""
import os
from typing import Mapping, Optional

import gin
import jax

from prompt_tuning import gin_utils
from prompt_tuning.models import BaseModel


@gin.configurable
def evaluate(*, model: BaseModel = gin.REQUIRED, model_dir: str = gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = 32, split: str = "validation", initial_checkpoint_path: Optional[str] = None,
             prompt_checkpoint_path: Optional[str] = None, num_examples: Optional[int] = None,
             model_parallel_size: int = 1, seed: int = 0) -> dict:
    """Metrics {'<task>/<metric>': value} of the prompted model."""
    from prompt_tuning.train import setup
    from prompt_tuning.train.evaluation import Evaluator
    trainer, state, rows = setup.load_for_eval(
        model, task_feature_lengths, model_parallel_size=model_parallel_size,
        initial_checkpoint_path=initial_checkpoint_path, prompt_checkpoint_path=prompt_checkpoint_path, seed=seed)
    evaluator = Evaluator(trainer, mixture_or_task_name, dict(task_feature_lengths), batch_size, split=split,
                          num_examples=num_examples, output_dir=os.path.join(model_dir, "eval"), task_rows=rows)
    metrics = evaluator.evaluate(state, int(jax.device_get(state.step)))
    if jax.process_index() == 0:
        for name, value in sorted(metrics.items()):
            print(f"{name}: {value:.4f}")
    return metrics


def main(argv=None) -> dict:
    return gin_utils.run_cli(evaluate, argv, __doc__, "config_eval.gin")
