"""Building what a run needs: the frozen model read onto the mesh, a fresh or restored prompt, the Trainer.

`build_trainer` serves training; `load_for_eval` serves the eval and infer CLIs (and any script that
evaluates a trained prompt).
"""
from typing import Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import checkpoints, partitioning
from prompt_tuning.errors import UserError, one_line
from prompt_tuning.models import BaseModel
from prompt_tuning.prompts.prompt import BANK_AXES
from prompt_tuning.train import optimizers, params as params_lib, trainer as trainer_lib
from prompt_tuning.train.checkpointing import read_meta, read_trainable


def load_frozen(path: str, model: BaseModel, task_feature_lengths: Mapping[str, int], mesh) -> dict:
    """The pretrained parameters (the model without its prompt), read straight into their shardings."""
    bare = model.bare()
    batch = bare.dummy_batch(task_feature_lengths)
    abstract = jax.eval_shape(lambda: bare.init(jax.random.PRNGKey(0), batch))["params"]
    shapes = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(nn.unbox(abstract)).items()}
    shardings = params_lib.param_shardings(bare, batch, mesh)
    try:
        loaded = checkpoints.read_arrays(path, shapes, shardings)
    except (UserError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - TensorStore/orbax failures, translated to the checkpoint at fault
        raise UserError(f"INITIAL_CHECKPOINT_PATH={path}: cannot read the frozen model ({one_line(e)})") from None
    finite = jax.device_get(jax.jit(lambda t: jax.tree_util.tree_map(lambda x: jnp.all(jnp.isfinite(x)), t))(loaded))
    bad = [k for k, ok in traverse_util.flatten_dict(finite, sep="/").items() if not ok]
    if bad:
        raise UserError(f"INITIAL_CHECKPOINT_PATH={path}: {bad[0]} holds non-finite values (NaN or inf)"
                        + (f", and {len(bad) - 1} more arrays" if len(bad) > 1 else ""))
    return loaded


def build_trainer(model: BaseModel, task_feature_lengths: Mapping[str, int], mesh, *,
                  initial_checkpoint_path: Optional[str] = None, seed: int = 0,
                  **trainer_kwargs) -> trainer_lib.Trainer:
    """Frozen model + fresh prompt placed on `mesh`, and the Trainer around them.

    initial_checkpoint_path None: a randomly initialised frozen model (tests and smoke runs).
    """
    batch = model.dummy_batch(task_feature_lengths)
    loaded = load_frozen(initial_checkpoint_path, model, task_feature_lengths, mesh) if initial_checkpoint_path \
        else None
    params, shardings = params_lib.init_params(model, batch, mesh, jax.random.PRNGKey(seed), loaded)
    tx, schedule = optimizers.make_optimizer()
    banks = prompt_banks(model, batch)
    if banks:
        tx = optimizers.per_array(tx, banks, prompt_row_lengths(model, banks))
    return trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, seed=seed, row_arrays=banks,
                               **trainer_kwargs)


def prompt_banks(model: BaseModel, batch) -> Tuple[str, ...]:
    """'/'-paths of the model's prompt banks: arrays whose leading logical axis is the bank's rows."""
    return bank_paths(traverse_util.flatten_dict(params_lib.logical_specs(model, batch), sep="/"))


def bank_paths(flat_specs: Mapping[str, tuple]) -> Tuple[str, ...]:
    """The prompt banks among '/'-paths -> logical axes (see `prompt_banks`)."""
    return tuple(sorted(path for path, spec in flat_specs.items() if spec and spec[0] == BANK_AXES[0]))


def prompt_row_lengths(model: BaseModel, banks: Tuple[str, ...]) -> Dict[str, Tuple[int, ...]]:
    """{bank path: its rows' lengths} when the model's bank rows have their own lengths (else {})."""
    factory = getattr(model.module, getattr(model.module, "PROCESSOR_HOOK", ""), None)
    lengths = getattr(factory(), "lengths", None) if factory is not None else None
    if not lengths or not banks:
        return {}
    if len(banks) != 1:
        raise UserError(f"prompt rows of their own lengths {lengths} but {len(banks)} banks {banks}; expected one")
    return {banks[0]: tuple(lengths)}


def restore_trainable(trainer: trainer_lib.Trainer, path: Optional[str],
                      step: Optional[int] = None) -> trainer_lib.TrainState:
    """A TrainState whose trainable params come from one of our checkpoints (see `checkpoints.runs.resolve`);
    with `path` None, the freshly initialised ones (e.g. a prompt the model gin loads from PROMPT_FILE)."""
    state = trainer.init_state()
    if not path:
        return state
    loaded = read_trainable(path, step)

    def place(value, like, sharding):
        if tuple(value.shape) != tuple(like.shape):
            raise UserError(f"trainable array of shape {value.shape}, the model wants {like.shape}")
        value = np.asarray(value, like.dtype)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    try:
        trainable = jax.tree_util.tree_map(place, loaded, state.trainable, trainer.trainable_shardings)
    except ValueError as e:
        raise UserError(f"{path}: checkpoint does not match the model's trainable params ({e})") from None
    return state.replace(trainable=trainable)


def load_for_eval(model: BaseModel, task_feature_lengths: Mapping[str, int], *, model_parallel_size: int = 1,
                  initial_checkpoint_path: Optional[str] = None, prompt_checkpoint_path: Optional[str] = None,
                  seed: int = 0) -> Tuple[trainer_lib.Trainer, trainer_lib.TrainState, Optional[Dict[str, int]]]:
    """(trainer, state, rows): the frozen model and the prompt to evaluate or decode with, and for a prompt
    bank what each row is ({name: row}, from the checkpoint that trained it; None without a bank)."""
    mesh = partitioning.make_mesh(model_parallel_size)
    trainer = build_trainer(model, task_feature_lengths, mesh, initial_checkpoint_path=initial_checkpoint_path,
                            seed=seed)
    rows = None
    if prompt_checkpoint_path and trainer.num_prompt_rows:
        names = read_meta(prompt_checkpoint_path).get("prompt_rows")
        if not names or len(names) != trainer.num_prompt_rows:
            raise UserError(f"{prompt_checkpoint_path}: the model has a bank of {trainer.num_prompt_rows} prompts "
                             f"but the checkpoint names rows {names}")
        rows = {name: i for i, name in enumerate(names)}
    return trainer, restore_trainable(trainer, prompt_checkpoint_path), rows
