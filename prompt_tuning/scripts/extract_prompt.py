"""Write the prompt of a checkpoint to .npy (or as a PEFT adapter).

  python -m prompt_tuning.scripts.extract_prompt CHECKPOINT OUTPUT.npy [--step N] [--variable REGEX]
      [--task NAME] [--peft]

CHECKPOINT: one of our training runs (its MODEL_DIR, checkpoints/ or best/ directory, or one step directory),
or any checkpoint `prompt_tuning.prompts.read_prompt_checkpoint` reads (t5x legacy / t5x orbax).
--task: of a prompt bank, the row the run trained for that task (or ensemble member, '<task>/prompt_<i>').
--peft: OUTPUT is a directory that receives a PEFT prompt-tuning adapter (one prompt: a row with --task).
"""
import argparse
import re
import sys

import numpy as np
from flax import traverse_util


def extract(path: str, step=None, variable: str = ".*prompt.*", task=None) -> np.ndarray:
    """The prompt of one of our runs (the checkpoint `checkpoints.runs.resolve` picks) or of a t5x checkpoint;
    with `task`, that task's row of the run's prompt bank."""
    from prompt_tuning.checkpoints import runs
    if runs.resolve(path, step) is None:
        if task:
            raise SystemExit(f"{path}: --task needs one of our training runs (its checkpoint names the rows)")
        from prompt_tuning.prompts import read_prompt_checkpoint
        return np.asarray(read_prompt_checkpoint(path))
    from prompt_tuning.train.checkpointing import read_meta, read_trainable
    flat = traverse_util.flatten_dict(read_trainable(path, step), sep="/")
    matches = [k for k in flat if re.fullmatch(variable, k)]
    if len(matches) != 1:
        raise SystemExit(f"{path}: {len(matches)} trainable arrays match {variable!r} "
                         f"(have {sorted(flat)}); pass --variable")
    prompt = np.asarray(flat[matches[0]])
    if task is None:
        return prompt
    rows = read_meta(path, step).get("prompt_rows") or []
    if task not in rows:
        raise SystemExit(f"{path}: no prompt row for task {task!r}; the bank's rows: {rows or 'none (no bank)'}")
    return prompt[rows.index(task)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest / best)")
    parser.add_argument("--variable", default=".*prompt.*", help="regex on the '/'-joined parameter path")
    parser.add_argument("--task", help="the prompt-bank row of this task (see the run's checkpoint meta)")
    parser.add_argument("--peft", action="store_true", help="write OUTPUT as a PEFT adapter directory")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prompt = extract(args.checkpoint, args.step, args.variable, args.task)
    if args.peft:
        from prompt_tuning.prompts import save_peft_prompt
        if prompt.ndim != 2:
            raise SystemExit(f"a PEFT adapter holds one prompt; this is a bank {prompt.shape}: pass --task")
        save_peft_prompt(args.output, prompt)
    else:
        from prompt_tuning.train.checkpointing import write_npy_atomic
        write_npy_atomic(args.output, prompt)
    print(f"wrote prompt {prompt.shape} {prompt.dtype} to {args.output}")


if __name__ == "__main__":
    main()
