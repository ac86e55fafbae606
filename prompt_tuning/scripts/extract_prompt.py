"""Write the prompt of a checkpoint to .npy.

  python -m prompt_tuning.scripts.extract_prompt CHECKPOINT OUTPUT.npy [--step N] [--variable REGEX]

CHECKPOINT: one of our training runs (its MODEL_DIR, checkpoints/ or best/ directory, or one step directory),
or any checkpoint `prompt_tuning.prompts.read_prompt_checkpoint` reads (t5x legacy / t5x orbax).
"""
import argparse
import re
import sys

import numpy as np
from flax import traverse_util


def extract(path: str, step=None, variable: str = ".*prompt.*") -> np.ndarray:
    """The prompt of one of our runs (the checkpoint `checkpoints.runs.resolve` picks) or of a t5x checkpoint."""
    from prompt_tuning.checkpoints import runs
    if runs.resolve(path, step) is None:
        from prompt_tuning.prompts import read_prompt_checkpoint
        return np.asarray(read_prompt_checkpoint(path))
    from prompt_tuning.train.checkpointing import read_trainable
    flat = traverse_util.flatten_dict(read_trainable(path, step), sep="/")
    matches = [k for k in flat if re.fullmatch(variable, k)]
    if len(matches) != 1:
        raise SystemExit(f"{path}: {len(matches)} trainable arrays match {variable!r} "
                         f"(have {sorted(flat)}); pass --variable")
    return np.asarray(flat[matches[0]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest / best)")
    parser.add_argument("--variable", default=".*prompt.*", help="regex on the '/'-joined parameter path")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prompt = extract(args.checkpoint, args.step, args.variable)
    from prompt_tuning.train.checkpointing import write_npy_atomic
    write_npy_atomic(args.output, prompt)
    print(f"wrote prompt {prompt.shape} {prompt.dtype} to {args.output}")


if __name__ == "__main__":
    main()
