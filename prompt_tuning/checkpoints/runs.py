"""Which checkpoint of one of our training runs a path means (the one resolver every reader uses).

A run's MODEL_DIR holds `checkpoints/<step>/{state,meta}` (the newest `keep`) and, with a BEST_METRIC,
`best/<step>/{state,meta}`.  A path may name the run, one of those two directories, or one step directory.
"""
import os
from typing import List, Optional

LATEST_DIR, BEST_DIR, STATE_ITEM = "checkpoints", "best", "state"


def _is_step_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STATE_ITEM))


def steps(manager_dir: str) -> List[int]:
    """The saved steps under `checkpoints/` or `best/`, ascending."""
    if not os.path.isdir(manager_dir):
        return []
    return sorted(int(d) for d in os.listdir(manager_dir) if d.isdigit() and _is_step_dir(os.path.join(manager_dir, d)))


def resolve(path: str, step: Optional[int] = None) -> Optional[str]:
    """The step directory `path` means, or None when `path` is not one of our runs' checkpoints.

    A run directory means its best checkpoint when it kept one (the newest of best/), else its newest;
    `step` picks a step instead (a missing one is an error listing those saved).
    """
    path = os.path.abspath(os.fspath(path))
    if _is_step_dir(path):
        return path
    if steps(os.path.join(path, BEST_DIR)) or steps(os.path.join(path, LATEST_DIR)):
        if step is not None:
            for name in (LATEST_DIR, BEST_DIR):
                if step in steps(os.path.join(path, name)):
                    return os.path.join(path, name, str(step))
        manager = BEST_DIR if steps(os.path.join(path, BEST_DIR)) and step is None else LATEST_DIR
        path = os.path.join(path, manager)
    saved = steps(path)
    if not saved:
        return None
    if step is None:
        return os.path.join(path, str(saved[-1]))
    if step not in saved:
        raise FileNotFoundError(f"{path}: no checkpoint of step {step} (saved: {', '.join(map(str, saved))})")
    return os.path.join(path, str(step))
