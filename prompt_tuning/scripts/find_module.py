"""Where modules are installed, for gin search paths (the original project's `find_module`).

  python -m prompt_tuning.scripts.find_module            # the search path for t5x's CLI: t5x's configs and ours
  python -m prompt_tuning.scripts.find_module t5x        # one module's directory

With no argument it prints `<dir holding t5x/>,<this project's gin dir>`, for
  python -m t5x.train --gin_search_paths="$(python -m prompt_tuning.scripts.find_module)" \\
    --gin_file=t5x_cli/models/...  (files found in gin/t5x_cli/, which include the project's gin/ files)
"""
import importlib
import importlib.util
import os
import sys
from typing import List, Optional, Sequence


def module_dir(name: str) -> str:
    module = importlib.import_module(name)
    return os.path.dirname(os.path.abspath(module.__file__))


def gin_dir() -> str:
    """The project's gin directory: the installed `prompt_tuning.gin` (a namespace package), else the checkout's."""
    spec = importlib.util.find_spec("prompt_tuning.gin")
    if spec is not None and spec.submodule_search_locations:
        return os.path.abspath(list(spec.submodule_search_locations)[0])
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "gin")


def t5x_search_paths() -> List[str]:
    """t5x's parent (its gin files are named 't5x/configs/...') and the project's gin directory."""
    try:
        t5x_parent = os.path.dirname(module_dir("t5x"))
    except ImportError as e:
        raise SystemExit(f"find_module: t5x is not importable ({e}); install it (README: Training with t5x's own CLI)")
    return [t5x_parent, gin_dir()]


def main(argv: Optional[Sequence[str]] = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    out = ",".join(t5x_search_paths()) if not argv else "\n".join(module_dir(name) for name in argv)
    print(out)
    return out


if __name__ == "__main__":
    main()
