"""The README's main job: prompt tuning that visibly works, offline, in a few minutes on 2 CPU cores.

  python -m prompt_tuning.scripts.demo [--model_dir=DIR] [--no_control] [--gin.KEY=VALUE ...]

Runs `python -m prompt_tuning.train --gin_file=runs/synthetic_second_letter.gin` on the tiny T5 the project
pretrained itself (prompt_tuning/assets/synthetic_t5_tiny/checkpoint_0, frozen), evaluating the untrained prompt first.
As a control, the same prompt tuning then runs on a randomly initialised frozen model of the same shape:
the prompt alone cannot make a random model name the right letter; it has to find the skill in the
pretrained weights.
Prints both next to the majority-class baseline.  Extra arguments go to the training CLI.
"""
import argparse
import os
import tempfile
import time
from typing import List, Optional

import gin

from prompt_tuning.tasks import synthetic

ASSET_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                "synthetic_t5_tiny", "checkpoint_0")  # t5x names a checkpoint checkpoint_<step>
RUN_GIN = "runs/synthetic_second_letter.gin"
METRIC = f"{synthetic.HELD_OUT_TASK}/accuracy"


def _train(model_dir: str, checkpoint: Optional[str], extra: List[str]) -> dict:
    """One run of the training CLI; returns {'before', 'after', 'best', 'best_step', 'steps'}."""
    from prompt_tuning.train.__main__ import main as train_main
    gin.clear_config()
    try:
        result = train_main([f"--gin_file={RUN_GIN}", f"--gin.MODEL_DIR='{model_dir}'",
                             f"--gin.INITIAL_CHECKPOINT_PATH={checkpoint and repr(checkpoint)}"] + extra)
    finally:
        gin.clear_config()  # the next run (or the caller) starts from a clean config
    evals = [e for e in result.evals if METRIC in e and e["step"] > 0]
    best = max(evals, key=lambda e: e[METRIC]) if evals else {}
    return {"before": (result.initial_eval or {}).get(METRIC), "after": evals[-1][METRIC] if evals else None,
            "best": best.get(METRIC), "best_step": best.get("step"), "steps": result.step}


def _row(label: str, value: Optional[float]) -> str:
    return f"  {label:<58} {'n/a' if value is None else f'{value:5.1f}%'}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="where the runs write (default: a new directory under /tmp)")
    parser.add_argument("--no_control", action="store_true", help="skip the randomly initialised control run")
    args, extra = parser.parse_known_args(argv)
    model_dir = args.model_dir or tempfile.mkdtemp(prefix="prompt_tuning_demo_")
    if not os.path.isdir(os.path.join(ASSET_CHECKPOINT, "state")):
        raise SystemExit(f"the frozen model is missing: {ASSET_CHECKPOINT}/state (make it with "
                         f"python -m prompt_tuning.scripts.pretrain_tiny --out={ASSET_CHECKPOINT})")

    start = time.time()
    pretrained = _train(os.path.join(model_dir, "pretrained_model"), ASSET_CHECKPOINT, extra)
    control = None if args.no_control else _train(os.path.join(model_dir, "random_model_control"), None, extra)
    baseline = synthetic.held_out_majority_baseline()

    print(f"\n{synthetic.HELD_OUT_TASK}: answer a bare string's second letter, a skill the frozen model never saw "
          f"({pretrained['steps']} steps, only the prompt trained, {time.time() - start:.0f} s)")
    print(_row("majority-class baseline", baseline))
    print(_row("pretrained frozen model, untrained prompt", pretrained["before"]))
    print(_row(f"pretrained frozen model, trained prompt (best step {pretrained['best_step']})", pretrained["best"]))
    if control:
        print(_row("random frozen model (control), trained prompt", control["best"]))
    print(f"  runs in {model_dir}: config.gin, checkpoints/, best/, prompt .npy files, eval/, TensorBoard events, "
          "training_curves.png")
    return {"baseline": baseline, "pretrained": pretrained, "control": control, "model_dir": model_dir}


if __name__ == "__main__":
    main()
