"""Read a prompt from wherever one is kept: arrays, .npy, PEFT adapters, checkpoints (ours, t5x).

Only the prompt leaf is restored from orbax checkpoints, so pulling a prompt out of a
checkpoint of a large frozen model costs next to nothing.
"""
import os
from typing import Optional, Sequence, Tuple

import jax
import numpy as np

from prompt_tuning.checkpoints import open_checkpoint, runs
from prompt_tuning.errors import UserError, check_finite
from prompt_tuning.prompts.peft import is_peft_adapter, load_peft_prompt

# Optimizer-state subtrees that also hold leaves named like parameters.
_STATE_KEYS = ("param_states", "opt_state", "mu", "nu")


def _key_name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _is_prompt(path: Tuple[str, ...], variable: Optional[str]) -> bool:
    if variable is not None:
        want = tuple(p for p in variable.replace(".", "/").split("/") if p)
        return path[-len(want):] == want
    return path[-1] == "prompt" and not any(k in path[:-1] for k in _STATE_KEYS)


def _pick(paths, variable, where):
    found = [p for p in paths if _is_prompt(p, variable)]
    if len(found) != 1:
        what = f"variable {variable!r}" if variable else "a single parameter named 'prompt'"
        listing = ", ".join("/".join(p) for p in found) or "none"
        raise UserError(f"{where}: expected {what}, found {len(found)} ({listing})")
    return found[0]


def _orbax_item_dirs(path: str):
    """Orbax PyTree items (directories holding _METADATA) under a t5x checkpoint `path`, newest step first."""
    items = [root for root, _, files in os.walk(path) if "_METADATA" in files]

    def rank(item):
        parts = os.path.relpath(item, path).split(os.sep)
        steps = [int(p.rsplit("_", 1)[-1]) for p in parts if p.rsplit("_", 1)[-1].isdigit()]
        return steps[-1] if steps else -1
    return sorted(items, key=rank, reverse=True)


def _read_orbax(item_dir: str, variable: Optional[str]):
    import jax
    import orbax.checkpoint as ocp

    item_dir = os.path.abspath(item_dir)  # orbax cannot read a relative path
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(item_dir)
    tree = getattr(metadata, "item_metadata", None) or metadata
    tree = getattr(tree, "tree", tree)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = {tuple(_key_name(k) for k in p): p for p, _ in leaves}
    chosen = _pick(paths, variable, item_dir)
    # A nested dict holding only the chosen leaf; partial_restore skips everything else.
    item = node = {}
    for key in chosen[:-1]:
        node = node.setdefault(key, {})
    node[chosen[-1]] = 0
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = checkpointer.restore(
        item_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    for key in chosen:
        restored = restored[key]
    return np.asarray(restored)


def read_prompt_checkpoint(path, variable: Optional[str] = None) -> np.ndarray:
    """The prompt array stored in checkpoint `path`.

    `variable`: a '/'-separated path suffix (e.g. 'encoder/prompt/prompt'); by default the one
    leaf named 'prompt' outside optimizer state.  Our runs' directories mean the checkpoint
    `checkpoints.runs.resolve` picks; t5x Orbax directories are searched for their PyTree item; of a legacy t5x checkpoint only the prompt's array is read.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such prompt checkpoint")
    ours = runs.resolve(path) if os.path.isdir(path) else None
    if ours is not None:
        items = [os.path.join(ours, runs.STATE_ITEM)]
    else:
        items = _orbax_item_dirs(path) if os.path.isdir(path) else []
    errors = []
    for item_dir in items:
        try:
            return _read_orbax(item_dir, variable)
        except ValueError as e:  # no (unique) prompt in this item; try the next one
            errors.append(str(e))
    if not items:  # legacy t5x (msgpack + tensorstore): read that one array, nothing else
        source = open_checkpoint(path)
        key = _pick({tuple(k.split("/")): k for k in source.shapes}, variable, path)
        return np.asarray(source.read("/".join(key)))
    raise UserError("; ".join(errors))


def read_prompt(prompt) -> np.ndarray:
    """A prompt [length, embed] (or bank [n, length, embed]) from an array, .npy, PEFT dir or checkpoint."""
    if isinstance(prompt, (np.ndarray, jax.Array)):
        value = np.asarray(prompt, np.float32)
    elif isinstance(prompt, (str, os.PathLike)):
        path = os.fspath(prompt)
        if path.endswith(".npy"):
            value = np.load(path, allow_pickle=False)
        elif is_peft_adapter(path):
            value = load_peft_prompt(path)
        else:
            value = read_prompt_checkpoint(path)
    else:
        raise TypeError(f"prompt must be an array or a path (.npy, PEFT adapter dir, checkpoint), got {type(prompt)}")
    name = os.fspath(prompt) if isinstance(prompt, (str, os.PathLike)) else "array"
    if value.ndim not in (2, 3):
        raise UserError(f"prompt {name} has shape {value.shape}; expected [length, embed] or "
                        "[num_prompts, length, embed]")
    return check_finite(np.asarray(value, np.float32), f"prompt {name}")


def read_prompt_bank(sources: Sequence) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """(bank [n, max_length, embed], each row's length) from prompts of any lengths (each as `read_prompt`
    takes them; a source holding a bank gives all its rows).  Shorter rows are zero-padded at the end; the
    model masks those positions (`PromptProcessor.lengths`)."""
    if isinstance(sources, (str, os.PathLike, np.ndarray, jax.Array)) or not len(sources):
        raise UserError("read_prompt_bank takes a non-empty list of prompts (arrays, .npy, PEFT dirs, checkpoints)")
    rows = []
    for source in sources:
        value = read_prompt(source)
        rows.extend(value if value.ndim == 3 else [value])
    widths = {row.shape[-1] for row in rows}
    if len(widths) != 1:
        raise UserError(f"prompts of a bank must share their embedding width; got widths {sorted(widths)} "
                        f"(lengths x widths: {[row.shape for row in rows]})")
    lengths = tuple(int(row.shape[0]) for row in rows)
    bank = np.zeros((len(rows), max(lengths), widths.pop()), np.float32)
    for i, row in enumerate(rows):
        bank[i, :row.shape[0]] = row
    return bank, lengths
