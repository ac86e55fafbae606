"""The same prompt tuning run under `python -m t5x.train` and under `python -m prompt_tuning.train`, compared.

  python -m prompt_tuning.t5x_bridge.parity [--steps 20] [--out DIR] [--variants ...] [--control]

Both CLIs train the tiny shipped model's prompt on synthetic_second_letter with the same data order (no
shuffling), the same initial prompt (one class-label row per letter: no sampling), no dropout, z-loss 1e-4,
a constant learning rate 0.3, a checkpoint every step.  t5x runs in three variants:

  same_optimizer   optax SGD in both (through t5x's OptaxWrapper) and the project's loss normalisation (mean
                   per target token): the implementations agree
  t5x_adafactor    t5x's own Adafactor (t5x_cli's default), mean per target token
  t5x_defaults     t5x's own Adafactor and t5x's default LOSS_NORMALIZING_FACTOR=None (a plain sum)

and the table gives max |prompt_t5x - prompt_ours| after each step.  Each t5x start takes a minute of
imports and compilation on CPU.

--control adds, for each project optimizer used, a column `ours_m2_<optimizer>`: prompt_tuning.train against
itself with NUM_MICROBATCHES=2.  Accumulating two half-batch gradients is the same step in exact arithmetic
but rounds differently, so that column is how far float32 rounding alone moves the prompt: the yardstick
for the t5x columns.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

TINY_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                               "synthetic_t5_tiny", "checkpoint_0")
TASK = "synthetic_second_letter"
LABELS = list("abcdefgh")
COMMON = {  # gin bindings both CLIs take the same way
    "MIXTURE_OR_TASK_NAME": repr(TASK),
    "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}",
    "INITIAL_CHECKPOINT_PATH": repr(TINY_CHECKPOINT),
    "CLASS_LABELS": repr(LABELS),
    "PROMPT_LENGTH": str(len(LABELS)),
    "BATCH_SIZE": "8",
    "DROPOUT_RATE": "0.0",
    "Z_LOSS": "0.0001",
    "LEARNING_RATE": "0.3",
    "CHECKPOINT_PERIOD": "1",
}
# The project's optimizer in each comparison (optimizers.make_optimizer.name).
PROJECT_OPTIMIZER = {"same_optimizer": "sgd", "t5x_adafactor": "adafactor", "t5x_defaults": "adafactor"}
VARIANTS = {  # gin text for t5x.train (flags cannot name dynamically registered t5x classes)
    "same_optimizer": """
LOSS_NORMALIZING_FACTOR = 'NUM_REAL_TARGET_TOKENS'
OPTIMIZER = @optimizers.OptaxWrapper()
optimizers.OptaxWrapper.optax_optimizer = @bridge_optim.masked_optax()
bridge_optim.masked_optax.optax_optimizer = @optax.sgd()
bridge_optim.masked_optax.regexes = [%TRAINABLE_REGEX]
optax.sgd.learning_rate = %LEARNING_RATE
""",
    "t5x_adafactor": "LOSS_NORMALIZING_FACTOR = 'NUM_REAL_TARGET_TOKENS'\n",
    "t5x_defaults": "",
}


def _flags(bindings: Dict[str, str]) -> List[str]:
    return [f"--gin.{k}={v}" for k, v in bindings.items()]


def t5x_train_command(model_dir: str, steps: int, gin_files: Sequence[str] = (),
                      extra: Optional[Dict[str, str]] = None) -> List[str]:
    """`python -m t5x.train` on the tiny model with the t5x_cli gin files, every step checkpointed."""
    from prompt_tuning.scripts.find_module import t5x_search_paths
    bindings = dict(COMMON, MODEL_DIR=repr(model_dir), TRAIN_STEPS=str(steps), USE_CACHED_TASKS="False",
                    MIXTURE_OR_TASK_MODULE="'prompt_tuning.tasks'", RANDOM_SEED="0",
                    **{"train/utils.DatasetConfig.shuffle": "False", "utils.SaveCheckpointConfig.keep": "None"})
    bindings.update(extra or {})
    return [sys.executable, "-m", "t5x.train", f"--gin_search_paths={','.join(t5x_search_paths())}",
            "--gin_file=t5x_cli/models/synthetic_tiny_prompt.gin", "--gin_file=t5x_cli/prompts/from_class_labels.gin",
            "--gin_file=t5x_cli/runs/prompt_finetune.gin", *[f"--gin_file={f}" for f in gin_files],
            *_flags(bindings)]


def project_train_command(model_dir: str, steps: int, optimizer: str = "adafactor",
                          extra: Optional[Dict[str, str]] = None) -> List[str]:
    bindings = dict(COMMON, **{"optimizers.make_optimizer.name": repr(optimizer)}, MODEL_DIR=repr(model_dir), TRAIN_STEPS=str(steps), EVAL_PERIOD="0", SEED="0",
                    KEEP_CHECKPOINTS="1", LOSS_NORMALIZING_FACTOR="'NUM_REAL_TARGET_TOKENS'",
                    **{"train/data.DatasetConfig.shuffle": "False",
                       "prompt_init/prompts.class_labels.vocab": "@prompts.byte_vocabulary()"})
    bindings.update(extra or {})
    from prompt_tuning.scripts.find_module import gin_dir
    return [sys.executable, "-m", "prompt_tuning.train", f"--gin_search_paths={gin_dir()}",
            "--gin_file=models/synthetic_tiny_prompt.gin",
            "--gin_file=prompts/class_labels.gin", "--gin_file=runs/prompt_finetune.gin", *_flags(bindings)]


def t5x_prompt(model_dir: str, step: int) -> np.ndarray:
    from prompt_tuning.prompts.checkpoint_io import read_prompt_checkpoint
    return read_prompt_checkpoint(os.path.join(model_dir, f"checkpoint_{step}"))


def project_prompt(model_dir: str, step: int) -> np.ndarray:
    return np.load(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}", "encoder.prompt.prompt.npy"))


def run(command: List[str], log: str) -> None:
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:3])} failed (exit {done.returncode}); see {log}")


# t5x names the train function `__main__.train`, which only a gin file (not a --gin flag) can import as a
# module alias.  No evaluation inside training (t5x.eval does that); the optimizer modules of same_optimizer.
EXTRA_GIN = """from __gin__ import dynamic_registration
import __main__ as train_script
import optax
from t5x import optimizers
from prompt_tuning.t5x_bridge import optim as bridge_optim

train_script.train.train_eval_dataset_cfg = None
train_script.train.infer_eval_dataset_cfg = None
"""


def write_extra_gin(directory: str, variant: str = "t5x_defaults") -> str:
    """A gin file for t5x.train (include it last): no evaluation inside training, and the variant's settings."""
    path = os.path.join(directory, f"t5x_train_{variant}.gin")
    with open(path, "w") as f:
        f.write(EXTRA_GIN + VARIANTS[variant])
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="directory for the runs (default: a new one under /tmp)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--control", action="store_true",
                        help="also compare prompt_tuning.train with itself at NUM_MICROBATCHES=2 (rounding only)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="t5x_parity_")
    os.makedirs(out, exist_ok=True)
    ours = {}
    diffs = {}
    for name in args.variants.split(","):
        model_dir = os.path.join(out, f"t5x_{name}")
        run(t5x_train_command(model_dir, args.steps, gin_files=[write_extra_gin(out, name)]), model_dir + ".log")
        optimizer = PROJECT_OPTIMIZER[name]
        if optimizer not in ours:
            ours[optimizer] = os.path.join(out, f"prompt_tuning_train_{optimizer}")
            run(project_train_command(ours[optimizer], args.steps, optimizer), ours[optimizer] + ".log")
        diffs[name] = [float(np.abs(t5x_prompt(model_dir, s) - project_prompt(ours[optimizer], s)).max())
                       for s in range(1, args.steps + 1)]
    for optimizer, ours_dir in list(ours.items()) if args.control else ():
        control = ours_dir + "_2microbatches"
        run(project_train_command(control, args.steps, optimizer, {"NUM_MICROBATCHES": "2"}), control + ".log")
        diffs[f"ours_m2_{optimizer}"] = [float(np.abs(project_prompt(control, s) - project_prompt(ours_dir, s)).max())
                                         for s in range(1, args.steps + 1)]
    print(f"max |prompt(t5x.train) - prompt(prompt_tuning.train)| per step ({out})"
          + ("; ours_m2_*: prompt_tuning.train with NUM_MICROBATCHES=2 against 1" if args.control else ""))
    width = {n: max(15, len(n)) for n in diffs}
    print("step " + " ".join(f"{n:>{width[n]}}" for n in diffs))
    for s in range(args.steps):
        print(f"{s + 1:4d} " + " ".join(f"{diffs[n][s]:{width[n]}.2e}" for n in diffs))
    return diffs


if __name__ == "__main__":
    main()
