"""t5x's gin habits for our CLIs: repeatable --gin_file, --gin.KEY=VALUE, --gin_search_paths, macro checks.

Gin files are looked up in the given search paths, then the installed `prompt_tuning.gin` package (the repo's
gin/ directory), then the working directory, so `--gin_file=runs/prompt_finetune.gin` works after any install.
A macro that a config requires but nobody set, a macro set on the command line that no config uses (a
typo, in any letter case), or a documented macro of the wrong type is a one-line error naming it.

`run_cli` also turns the expected failures of a run (`errors.UserError`, file-system errors such as a
missing file, an unwritable MODEL_DIR or a full disk) into one line on stderr and exit status 1; bugs keep
their traceback.  `--traceback` (or PROMPT_TUNING_TRACEBACK=1) shows the full stack of any failure.
"""
import argparse
import difflib
import importlib.resources
import logging
import os
import sys
import time
from typing import Iterable, List, Optional, Sequence, Set, Tuple

import gin
from gin import config as gin_config

from prompt_tuning.errors import UserError, one_line

# Macros users are expected to know (documented in gin/runs/*.gin).
KNOWN_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE",
                "INITIAL_CHECKPOINT_PATH", "EVAL_PERIOD", "PROMPT_LENGTH", "CLASS_LABELS", "PROMPT_FILE")


# The documented macros' types, checked after parsing: a wrong type fails here, not deep inside a run.
_POSITIVE_INT, _NON_NEGATIVE_INT = "a positive int", "an int >= 0"
MACRO_TYPES = {"BATCH_SIZE": _POSITIVE_INT, "TRAIN_STEPS": _NON_NEGATIVE_INT, "EVAL_PERIOD": _NON_NEGATIVE_INT,
               "PROMPT_LENGTH": _POSITIVE_INT, "MODEL_PARALLEL_SIZE": _POSITIVE_INT,
               "NUM_MICROBATCHES": _POSITIVE_INT, "CHECKPOINT_PERIOD": _NON_NEGATIVE_INT,
               "EARLY_STOPPING_PATIENCE": _NON_NEGATIVE_INT, "SEED": _NON_NEGATIVE_INT,
               "MODEL_DIR": "a string", "MIXTURE_OR_TASK_NAME": "a string",
               "INITIAL_CHECKPOINT_PATH": "a string or None", "TASK_FEATURE_LENGTHS": "a dict of feature: int"}


class GinConfigError(UserError):
    """A configuration mistake, reported as one line."""


def _type_ok(value, kind: str) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == _POSITIVE_INT:
        return is_int and value > 0
    if kind == _NON_NEGATIVE_INT:
        return is_int and value >= 0
    if kind == "a string":
        return isinstance(value, str) and bool(value)
    if kind == "a string or None":
        return value is None or isinstance(value, str)
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                           and v > 0 for k, v in value.items())


def default_search_paths() -> List[str]:
    try:
        # gin/ has no __init__.py: as a namespace package its files() is a MultiplexedPath, whose str() is
        # "MultiplexedPath('...')", not a directory; a child's parent is the real one either way.
        package_dir = str(importlib.resources.files("prompt_tuning.gin").joinpath("runs").parent)
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
        if "." not in key and "/" not in key and key not in used:  # a bare name binds a macro: a typo
            by_upper = {name.upper(): name for name in used}
            close = difflib.get_close_matches(key.upper(), list(by_upper), n=1)
            hint = by_upper[close[0]] if close else None
            raise GinConfigError(f"macro {key} set on the command line is not used by any gin file"
                                 + (f" (did you mean {hint}?)" if hint else ""))
    for name, kind in MACRO_TYPES.items():
        value = defined.get(name)
        if name in defined and not isinstance(value, gin_config.ConfigurableReference) and not _type_ok(value, kind):
            raise GinConfigError(f"macro {name}={value!r} must be {kind}")


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
    """The effective configuration (every binding, after includes and command-line overrides).

    An earlier start's different config is kept beside it, renamed `<name>.<its time>.gin`.
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, filename)
    text = gin.config_str()
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(os.path.getmtime(path)))
            stem, ext = os.path.splitext(path)
            kept, n = f"{stem}.{stamp}{ext}", 1
            while os.path.exists(kept):
                kept, n = f"{stem}.{stamp}-{n}{ext}", n + 1
            os.replace(path, kept)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def parse_cli(argv: Sequence[str], description: str, extra_flags=None,
              required_defaults: Sequence[str] = ()) -> argparse.Namespace:
    """Shared CLI front: flags, multi-host initialisation, TFDS directory, gin files and bindings."""
    from prompt_tuning.train import multihost
    argv, cli_bindings = split_gin_args(argv)
    parser = argparse.ArgumentParser(description=description)
    add_gin_flags(parser)
    parser.add_argument("--traceback", action="store_true",
                        help="show the full stack of a failure (also PROMPT_TUNING_TRACEBACK=1)")
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


# Expected failures of a run, printed as one line (see the module docstring).  OSError covers missing and
# unreadable files, an unwritable MODEL_DIR and a full disk; its message names the file.
EXPECTED_ERRORS = (UserError, OSError)


def run_cli(fn, argv: Optional[Sequence[str]], description: str, config_filename: Optional[str] = "config.gin"):
    """The CLIs' shared main: parse flags and gin, write the effective config to MODEL_DIR (unless
    `config_filename` is None: the train loop writes its own once the resume is checked), return `fn()`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    show_traceback = "--traceback" in argv or os.environ.get("PROMPT_TUNING_TRACEBACK", "") not in ("", "0")
    try:
        import jax
        register_configurables()
        parse_cli(argv, description=description)
        model_dir = macro("MODEL_DIR")
        if jax.process_index() == 0 and model_dir and config_filename:
            write_config(model_dir, config_filename)
        return fn()
    except EXPECTED_ERRORS as e:
        if show_traceback:
            raise
        raise SystemExit(f"error: {_describe(e)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return one_line(exc)
