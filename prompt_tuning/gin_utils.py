"""t5x's gin habits for our CLIs: repeatable --gin_file, --gin.KEY=VALUE, --gin_search_paths, macro checks.

Gin files are looked up in the given search paths, then the installed `prompt_tuning.gin` package (the repo's
gin/ directory), then the working directory, so `--gin_file=runs/prompt_finetune.gin` works after any install.
A macro that a config requires but nobody set, or a macro set on the command line that no config uses (a
typo), is a one-line error naming it.
"""
import argparse
import difflib
import importlib.resources
import logging
import os
import sys
from typing import Iterable, List, Optional, Sequence, Set, Tuple

import gin
from gin import config as gin_config

# Macros users are expected to know (documented in gin/runs/*.gin).
KNOWN_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE",
                "INITIAL_CHECKPOINT_PATH", "EVAL_PERIOD", "PROMPT_LENGTH", "CLASS_LABELS", "PROMPT_FILE")


class GinConfigError(ValueError):
    """A configuration mistake, reported as one line."""


def default_search_paths() -> List[str]:
    try:
        package_dir = str(importlib.resources.files("prompt_tuning.gin"))
    except ModuleNotFoundError:  # an editable install made before gin/ was mapped: the checkout's gin/
        package_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
    return [package_dir, os.getcwd()]


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; later wins)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'KEY = VALUE'")
    parser.add_argument("--gin_search_paths", default="", help="comma-separated directories to find gin files")
    parser.add_argument("--tfds_data_dir", default=None, help="TFDS data directory (seqio override)")


def split_gin_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Moves t5x-style `--gin.KEY=VALUE` arguments out of argv, as gin bindings `KEY = VALUE`."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            key, sep, value = arg[len("--gin."):].partition("=")
            if not sep:
                raise GinConfigError(f"{arg}: expected --gin.KEY=VALUE")
            bindings.append(f"{key} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def _references(value) -> Iterable[str]:
    """Macro names referenced (as %NAME) anywhere inside a bound value."""
    if isinstance(value, gin_config.ConfigurableReference):
        if value.selector == "gin.macro":
            yield value.scoped_selector.rsplit("/", 1)[0]
    elif isinstance(value, dict):
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _references(v)


def _macros() -> Tuple[dict, Set[str]]:
    """({macro: value}, {names referenced by some binding})."""
    defined, used = {}, set()
    for (scope, selector), params in gin_config._CONFIG.items():  # gin has no public walk over bindings
        if selector == "gin.macro":
            defined[scope] = params.get("value")
        for value in params.values():
            used.update(_references(value))
    return defined, used


def _is_required(value) -> bool:
    return isinstance(value, gin_config.ConfigurableReference) and value.scoped_selector.startswith("gin.REQUIRED")


def check_macros(cli_bindings: Sequence[str] = ()) -> None:
    """Raises GinConfigError for a required macro left unset, or a command-line macro nothing uses."""
    defined, used = _macros()
    for name in sorted(used):
        if name not in defined:
            raise GinConfigError(f"macro {name} is used but never defined: pass --gin.{name}=...")
        if _is_required(defined[name]):
            raise GinConfigError(f"missing required macro {name}: pass --gin.{name}=...")
    for binding in cli_bindings:
        key = binding.split("=", 1)[0].strip()
        if key.isupper() and "." not in key and "/" not in key and key not in used:
            hint = difflib.get_close_matches(key, sorted(used), n=1)
            raise GinConfigError(f"macro {key} set on the command line is not used by any gin file"
                                 + (f" (did you mean {hint[0]}?)" if hint else ""))


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = (),
              required_defaults: Sequence[str] = ()) -> None:
    """Parses files then bindings (t5x order), checking macros; every failure is one GinConfigError line.

    required_defaults: bindings 'NAME = VALUE' applied only to macros still gin.REQUIRED after parsing
    (a compile-only plan needs no MODEL_DIR)."""
    for path in list(search_paths) + default_search_paths():
        if path:
            gin.add_config_file_search_path(path)
    if not gin_files:
        raise GinConfigError("no --gin_file given (e.g. --gin_file=runs/prompt_finetune.gin)")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs "Path not found" for every search path it tries
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
        defined, _ = _macros()
        unset = [b for b in required_defaults if _is_required(defined.get(b.split("=", 1)[0].strip()))]
        if unset:
            gin.parse_config(unset)
    except (ValueError, IOError, SyntaxError, KeyError) as e:
        raise GinConfigError(" ".join(str(e).split("\n")[0].split())) from None
    finally:
        root.setLevel(level)
    check_macros(bindings)
    gin.finalize()


def macro(name: str, default=None):
    """The value of macro `name` (or `default` when it is not defined)."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


def write_config(model_dir: str, filename: str = "config.gin") -> str:
    """The effective configuration (every binding, after includes and command-line overrides)."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, filename)
    with open(path, "w") as f:
        f.write(gin.config_str())
    return path


def parse_cli(argv: Sequence[str], description: str, extra_flags=None,
              required_defaults: Sequence[str] = ()) -> argparse.Namespace:
    """Shared CLI front: flags, multi-host initialisation, TFDS directory, gin files and bindings."""
    from prompt_tuning.train import multihost
    argv, cli_bindings = split_gin_args(argv)
    parser = argparse.ArgumentParser(description=description)
    add_gin_flags(parser)
    multihost.add_flags(parser)
    if extra_flags:
        extra_flags(parser)
    args = parser.parse_args(argv)
    multihost.initialize(args)
    if args.tfds_data_dir:
        import seqio
        seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    search = [p for p in args.gin_search_paths.split(",") if p]
    try:
        parse_gin(args.gin_file, list(args.gin_bindings) + cli_bindings, search, required_defaults)
    except GinConfigError as e:
        raise SystemExit(f"gin error: {e}") from None
    return args


def register_configurables() -> None:
    """Imports every module whose @gin.configurable names the gin files use."""
    import prompt_tuning.models  # noqa: F401
    import prompt_tuning.prompts  # noqa: F401
    import prompt_tuning.t5.config  # noqa: F401
    import prompt_tuning.t5.decoder_only  # noqa: F401
    import prompt_tuning.t5.network  # noqa: F401
    import prompt_tuning.tasks  # noqa: F401
    from prompt_tuning.train import checkpointing, data, evaluation, loop, optimizers  # noqa: F401


def run_cli(fn, argv: Optional[Sequence[str]], description: str, config_filename: str = "config.gin"):
    """The CLIs' shared main: parse flags and gin, write the effective config to MODEL_DIR, return `fn()`."""
    import jax
    register_configurables()
    parse_cli(sys.argv[1:] if argv is None else argv, description=description)
    model_dir = macro("MODEL_DIR")
    if jax.process_index() == 0 and model_dir:
        write_config(model_dir, config_filename)
    return fn()
