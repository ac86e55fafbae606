"""Compile-only plans: the run's real train / score / decode programs for abstract parameters on a mesh.

`plan_run()` reads what `loop.train` is configured with (model, task feature lengths, batch size, model
parallelism, trainable regex, microbatches, frozen dtype), builds the Trainer around `jax.ShapeDtypeStruct`
parameters that carry their shardings (nothing is read or allocated), lowers and compiles each step, and
reports per-device memory from `compiled.memory_analysis()`, FLOPs from `cost_analysis()`, and the biggest
buffers from XLA's buffer-assignment dump (`xla_buffers`).  `python -m prompt_tuning.scripts.plan` prints it.
"""
import dataclasses
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
from flax import traverse_util

from prompt_tuning import hlo_flops, partitioning, xla_buffers
from prompt_tuning.models import BaseModel
from prompt_tuning.train import optimizers, params as params_lib, setup, trainer as trainer_lib

PHASES = ("train", "score", "decode")
# The jit names of the compiled programs (the functions the Trainer and the model jit).
MODULE_NAMES = {"train": "jit__step", "score": "jit__score_rows", "decode": "jit__predict_jit"}


def _per_device_bytes(leaves) -> int:
    """Bytes one device holds of these abstract arrays (the largest shard, for uneven layouts)."""
    total = 0
    for x in leaves:
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def _abstract(tree, shardings):
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def configured_run() -> Dict[str, Any]:
    """The arguments `loop.train` is configured with by the parsed gin files (resolved, e.g. MODEL built)."""
    bindings = gin.get_bindings("loop.train")
    if "model" not in bindings or "train_dataset_cfg" not in bindings:
        raise ValueError("the gin files configure no loop.train model and train_dataset_cfg: include a model "
                         "file and runs/prompt_finetune.gin")
    return bindings


@dataclasses.dataclass
class Plan:
    """What a compile-only plan builds: the abstract trainer, state and batch of one run on `mesh`."""

    trainer: trainer_lib.Trainer
    state: trainer_lib.TrainState
    batch: Dict[str, jax.ShapeDtypeStruct]
    lengths: Mapping[str, int]
    logical_specs: Dict[str, Any]   # '/'-path -> the parameter's logical axes

    @property
    def mesh(self):
        return self.trainer.mesh


def build(model: BaseModel, lengths: Mapping[str, int], batch_size: int, mesh, *,
          trainable_regex: str = optimizers.DEFAULT_TRAINABLE_REGEX, num_microbatches: int = 1,
          frozen_dtype: Optional[str] = None, **trainer_kwargs) -> Plan:
    """The run's Trainer over abstract parameters (no weights), its abstract state and a batch's shapes."""
    dummy = model.dummy_batch(lengths)
    params, shardings = params_lib.abstract_params(model, dummy, mesh)
    specs = traverse_util.flatten_dict(params_lib.logical_specs(model, dummy), sep="/")
    tx, schedule = optimizers.make_optimizer()
    banks = setup.bank_paths(specs)
    if banks:
        tx = optimizers.per_array(tx, banks)
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, trainable_regex=trainable_regex,
                                  num_microbatches=num_microbatches, frozen_dtype=frozen_dtype, row_arrays=banks,
                                  **trainer_kwargs)
    abstract_state = trainer.abstract_state()
    state = _abstract(abstract_state, trainer.state_shardings(abstract_state))
    shapes = jax.eval_shape(lambda: model.dummy_batch(lengths, batch_size))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding) for k, v in shapes.items()}
    return Plan(trainer, state, batch, dict(lengths), specs)


def lower(plan: Plan, phase: str) -> jax.stages.Lowered:
    trainer, state, batch = plan.trainer, plan.state, plan.batch
    if phase == "train":
        return trainer.lower_train_step(state, batch)
    if phase == "score":
        return trainer.lower_score_batch(state, batch)
    if phase == "decode":
        inputs = {k: v for k, v in batch.items() if k in trainer.model.decoding_features(batch)}
        return trainer.lower_predict_batch(state, inputs, method="greedy",
                                           max_decode_len=int(plan.lengths.get("targets", 8)))
    raise ValueError(f"unknown phase {phase!r}; use {', '.join(PHASES)}")


def group_name(path: str) -> str:
    """A parameter's group: its path with layer numbers folded ('encoder/layers_*/mlp/wi_0/kernel')."""
    return re.sub(r"layers_\d+", "layers_*", path)


def sharding_groups(plan: Plan) -> List[Dict[str, Any]]:
    """One row per parameter group: global and per-device shape, mesh axes, trainable or frozen, count."""
    rows: Dict[str, Dict[str, Any]] = {}
    for trainable, tree in ((True, plan.state.trainable), (False, plan.trainer.frozen)):
        for path, x in traverse_util.flatten_dict(tree, sep="/").items():
            name = group_name(path)
            spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
            row = rows.setdefault(name, dict(group=name, shape=list(x.shape), dtype=str(np.dtype(x.dtype)),
                                             per_device=list(x.sharding.shard_shape(x.shape)),
                                             spec=[s if s is None or isinstance(s, str) else list(s) for s in spec],
                                             trainable=trainable, count=0))
            row["count"] += 1
    return list(rows.values())


def shard_shapes(plan: Plan, tree) -> List[tuple]:
    """Per-device shapes of these parameter leaves, and of one layer's slice of a scanned ('layers') leaf."""
    out, specs = [], plan.logical_specs
    for path, x in traverse_util.flatten_dict(tree, sep="/").items():
        shape = tuple(x.sharding.shard_shape(x.shape))
        out.append(shape)
        if specs.get(path) and specs[path][0] == "layers":
            out.append(shape[1:])
    return out


def _cost(compiled) -> Dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def analyse(plan: Plan, phase: str, dump_dir: Optional[str] = None, largest: int = 8) -> Dict[str, Any]:
    """Lowers and compiles one phase; its per-device memory, FLOPs, compile time and biggest buffers."""
    start = time.perf_counter()
    compiled = lower(plan, phase).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = _cost(compiled)
    # XLA's cost analysis counts a while loop's body once (scanned layers, microbatches): count dots instead.
    matmul = hlo_flops.matmul_flops(compiled.as_text())
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    out = dict(phase=phase, compile_seconds=round(seconds, 2),
               per_device_argument_bytes=int(mem.argument_size_in_bytes),
               per_device_output_bytes=int(mem.output_size_in_bytes),
               per_device_alias_bytes=int(mem.alias_size_in_bytes),
               per_device_temp_bytes=int(mem.temp_size_in_bytes),
               per_device_total_bytes=int(total),
               # The SPMD-partitioned program is one device's share of the step.
               per_device_flops=matmul,
               flops_per_step=matmul * plan.mesh.size,
               xla_cost_analysis_flops_per_step=float(cost.get("flops", 0.0)) * plan.mesh.size,
               per_device_bytes_accessed=float(cost.get("bytes accessed", 0.0)))
    assignment = xla_buffers.find_dump(dump_dir, MODULE_NAMES[phase]) if dump_dir else None
    if assignment is not None:
        out["largest_buffers"] = [v.describe() for v in assignment.largest(largest)]
        out["temp_value_bytes_by_dtype"] = assignment.temp_bytes_by_dtype()
        upcasts = xla_buffers.xla_upcasts(assignment)
        out["xla_float32_copies"] = [v.describe() for v in upcasts[:6]]
        # With bfloat16 switched on, an accelerator keeps these values in bfloat16 (no float32 copy); the
        # figure below drops the copies as if all were live at once, so it brackets the accelerator's total.
        out["xla_float32_copy_bytes"] = int(sum(v.size for v in upcasts))
        out["per_device_total_bytes_without_float32_copies"] = int(max(0, total - out["xla_float32_copy_bytes"]))
        if phase == "train":
            grads = xla_buffers.frozen_gradient_buffers(assignment, shard_shapes(plan, plan.trainer.frozen))
            out["frozen_gradient_buffers"] = len(grads)
            out["frozen_gradient_examples"] = [v.describe() for v in grads[:3]]
            # The same test over every weight matrix, trained or not: what full tuning's gradients look like.
            matrices = {k: v for k, v in traverse_util.flatten_dict(plan.trainer.params_for_eval(plan.state),
                                                                    sep="/").items() if "prompt" not in k}
            out["weight_shaped_backward_buffers"] = len(xla_buffers.frozen_gradient_buffers(
                assignment, shard_shapes(plan, traverse_util.unflatten_dict(matrices, sep="/"))))
    return out


def state_bytes(plan: Plan) -> Dict[str, int]:
    """Per-device bytes of the step's arguments as the compiled program lays them out (its input shardings)."""
    leaves = jax.tree_util.tree_leaves
    return dict(per_device_frozen_param_bytes=_per_device_bytes(leaves(plan.trainer.frozen)),
                per_device_trainable_param_bytes=_per_device_bytes(leaves(plan.state.trainable)),
                per_device_optimizer_bytes=_per_device_bytes(leaves(plan.state.opt_state)),
                per_device_batch_bytes=_per_device_bytes(leaves(plan.batch)))


def plan_run(num_devices: int, phases: Sequence[str] = PHASES, dump_dir: Optional[str] = None,
             largest: int = 8) -> Dict[str, Any]:
    """The configured run (gin) planned on `num_devices` devices: one report dict (see scripts/plan.py)."""
    run = configured_run()
    cfg = run["train_dataset_cfg"]
    mp = int(run.get("model_parallel_size", 1))
    devices = jax.devices()
    if len(devices) < num_devices:
        raise ValueError(f"--num_devices={num_devices} but jax sees {len(devices)} devices")
    mesh = partitioning.make_mesh(mp, devices[:num_devices])
    if cfg.batch_size % mesh.shape["data"]:
        raise ValueError(f"BATCH_SIZE={cfg.batch_size} is not divisible by the {mesh.shape['data']}-way 'data' axis")
    kwargs = {k: run[k] for k in ("trainable_regex", "num_microbatches", "microbatch_positions",
                                  "frozen_dtype", "z_loss", "loss_normalizing_factor") if k in run}
    plan = build(run["model"], dict(cfg.task_feature_lengths), cfg.batch_size, mesh, **kwargs)
    report = dict(num_devices=num_devices, model_parallel_size=mp, data_parallel_size=int(mesh.shape["data"]),
                  batch_size=int(cfg.batch_size), task_feature_lengths=dict(cfg.task_feature_lengths),
                  trainable_regex=plan.trainer.trainable_regex, num_microbatches=plan.trainer.microbatches(plan.batch),
                  frozen_dtype=plan.trainer.frozen_dtype or "float32",
                  parameter_partitioning_dims=partitioning.parameter_partitioning_dims(),
                  activation_partitioning_dims=partitioning.activation_partitioning_dims(),
                  **state_bytes(plan))
    report["parameters"] = sharding_groups(plan)
    report["phases"] = {phase: analyse(plan, phase, dump_dir, largest) for phase in phases}
    main = report["phases"].get("train") or next(iter(report["phases"].values()))
    for key in ("per_device_total_bytes", "per_device_argument_bytes", "per_device_output_bytes",
                "per_device_temp_bytes", "flops_per_step", "per_device_flops", "compile_seconds"):
        report[key] = main[key]
    for key in ("frozen_gradient_buffers", "weight_shaped_backward_buffers"):
        if key in main:
            report[key] = main[key]
    return report
