"""`python -m prompt_tuning.infer --gin_file=models/..._prompt.gin --gin_file=runs/prompt_infer.gin ...`

Decodes a task split with the prompted model and writes MODEL_DIR/inference/<task>-<split>.jsonl, one
{"index", "inputs", "prediction", "targets"} object per example (texts decoded with the task's vocabulary).

Mixed-task batches (a prompt bank, see prompt_tuning/inference.py): MIXTURE_OR_TASK_NAME a mixture decoded with
a per-task bank (a PROMPT_ROWS='per_task' run) writes one file per task, every batch mixing the tasks, each
example with its task's row; INPUT_FILE (JSON lines {"inputs": text, "task": name} or {"inputs", "prompt": row})
decodes those examples in mixed batches into MODEL_DIR/inference/<file name>.
"""
import os
from typing import Mapping, Optional, Sequence

import gin
import seqio

from prompt_tuning import gin_utils
from prompt_tuning.models import BaseModel


@gin.configurable
def infer(*, model: BaseModel = gin.REQUIRED, model_dir: str = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = 32, split: str = "validation", initial_checkpoint_path: Optional[str] = None,
          prompt_checkpoint_path: Optional[str] = None, num_examples: Optional[int] = None,
          model_parallel_size: int = 1, seed: int = 0, eos_id: int = 1, input_file: Optional[str] = None,
          length_buckets: Optional[Mapping[str, Sequence[int]]] = None) -> str:
    """Writes predictions; returns the JSON lines path (of the last task, for a mixture)."""
    from prompt_tuning import inference
    from prompt_tuning.train import setup
    from prompt_tuning.train.evaluation import predict_dataset
    task = seqio.get_mixture_or_task(mixture_or_task_name)
    lengths = dict(task_feature_lengths)
    trainer, state, rows = setup.load_for_eval(
        model, lengths, model_parallel_size=model_parallel_size, initial_checkpoint_path=initial_checkpoint_path,
        prompt_checkpoint_path=prompt_checkpoint_path, seed=seed)
    if input_file or not isinstance(task, seqio.Task):
        return inference.infer_mixed(trainer, state, rows, task, model_dir, lengths, batch_size, split,
                                     num_examples, eos_id, input_file, length_buckets)
    if rows is not None and mixture_or_task_name not in rows:
        raise ValueError(f"MIXTURE_OR_TASK_NAME={mixture_or_task_name!r} has no row in the prompt bank of "
                         f"{prompt_checkpoint_path} (rows: {sorted(rows, key=rows.get)})")
    row = None if rows is None else rows[mixture_or_task_name]
    params, mesh = trainer.params_for_eval(state), trainer.mesh
    vocab = task.output_features["targets"].vocabulary
    in_vocab = task.output_features["inputs"].vocabulary
    ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
    if num_examples:
        ds = ds.take(num_examples)
    examples = list(ds.as_numpy_iterator())
    model_ds = model.feature_converter(prompt_index=row)(ds, lengths).enumerate()
    out_path = os.path.join(model_dir, "inference", f"{mixture_or_task_name}-{split}.jsonl")
    lines = []
    for i, tokens in predict_dataset(model, params, model_ds, batch_size, mesh, lengths["targets"], eos_id,
                                     length_buckets=length_buckets):
        ex = examples[i]
        lines.append({"index": i, "inputs": in_vocab.decode(ex["inputs"].tolist()),
                      "prediction": vocab.decode([t for t in tokens if t > 0]),
                      "targets": vocab.decode(ex["targets"].tolist()) if "targets" in ex else None})
    return inference.write_predictions(out_path, lines)


def main(argv=None) -> str:
    return gin_utils.run_cli(infer, argv, __doc__, "config_infer.gin")
