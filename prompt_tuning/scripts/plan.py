"""Compile a run's real steps for N simulated devices and report what each device would hold.

    python -m prompt_tuning.scripts.plan --num_devices=16 \\
      --gin_file=models/t5_1_1_lm_adapted_xxl_prompt.gin --gin_file=runs/prompt_finetune.gin \\
      --gin.MODEL_PARALLEL_SIZE=8 --gin.BATCH_SIZE=32 --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \\
      --gin.FROZEN_DTYPE="'bfloat16'" --device_memory_gib=16

The same gin files and --gin.KEY=VALUE overrides as `python -m prompt_tuning.train` (MODEL_DIR,
MIXTURE_OR_TASK_NAME and TRAIN_STEPS need not be given: nothing is trained or read).  The parameters are
abstract (`jax.ShapeDtypeStruct`s with their shardings): no weight is read or allocated.  This process sets
the simulated device count itself (XLA_FLAGS, before jax starts), so run it as its own process.  The last
line printed is one JSON object (num_devices, model_parallel_size, per_device_total_bytes, ...).
"""
import argparse
import json
import os
import sys
import shutil
import tempfile

# Defaults for the train run file's required macros: a plan trains nothing and reads no data.
PLAN_DEFAULTS = ("MODEL_DIR = '/tmp/prompt_tuning_plan'", "MIXTURE_OR_TASK_NAME = 'plan_only'", "TRAIN_STEPS = 1",
                 "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}")
GIB = 2 ** 30


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_devices", type=int, default=8, help="simulated devices of the mesh")
    parser.add_argument("--phases", default="train,score,decode", help="programs to compile (comma-separated)")
    parser.add_argument("--peak_tflops", type=float, default=123.0,
                        help="one chip's peak (TFLOP/s) for the projected step time (TPU v3 core pair: 123)")
    parser.add_argument("--device_memory_gib", type=float, default=None, help="say whether the plan fits this")
    parser.add_argument("--largest", type=int, default=8, help="how many of the largest buffers to name")


def _set_device_count(argv) -> None:
    """XLA reads the simulated device count once, when jax starts: set it before anything imports jax."""
    n = 8
    for i, arg in enumerate(argv):
        if arg.startswith("--num_devices="):
            n = int(arg.split("=", 1)[1])
        elif arg == "--num_devices" and i + 1 < len(argv):
            n = int(argv[i + 1])
    if "jax" in sys.modules:
        raise SystemExit("plan: jax is already imported; run `python -m prompt_tuning.scripts.plan` as its own "
                         "process so it can set the simulated device count")
    dump = tempfile.mkdtemp(prefix="plan_xla_dump_")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_dump_to",
                                  "--xla_dump_hlo_module_re"))]
    flags += [f"--xla_force_host_platform_device_count={n}", f"--xla_dump_to={dump}",
              "--xla_dump_hlo_module_re=jit__step|jit__score_rows|jit__predict_jit"]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["PLAN_XLA_DUMP"] = dump


def _gib(n) -> str:
    return f"{n / GIB:.2f} GiB"


def print_report(report: dict, peak_tflops: float, memory_gib) -> None:
    p = print
    p(f"plan: {report['num_devices']} devices = {report['data_parallel_size']} data x "
      f"{report['model_parallel_size']} model; batch {report['batch_size']}, lengths {report['task_feature_lengths']}, "
      f"trainable {report['trainable_regex']!r}, microbatches {report['num_microbatches']}, frozen "
      f"{report['frozen_dtype']}, parameter/activation partitioning dims {report['parameter_partitioning_dims']}/"
      f"{report['activation_partitioning_dims']}")
    p(f"per device (from the arguments' shardings): frozen params {_gib(report['per_device_frozen_param_bytes'])}, "
      f"trainable params {_gib(report['per_device_trainable_param_bytes'])}, optimizer state "
      f"{_gib(report['per_device_optimizer_bytes'])}, batch {_gib(report['per_device_batch_bytes'])}")
    p("parameter groups (per-device shape on the mesh axes):")
    for row in report["parameters"]:
        kind = "trainable" if row["trainable"] else "frozen"
        p(f"  {row['group']:<60} x{row['count']:<3} {kind:<9} {row['dtype']:<8} {row['shape']} -> "
          f"{row['per_device']} spec {row['spec']}")
    for phase, r in report["phases"].items():
        step_s = r["per_device_flops"] / (peak_tflops * 1e12) if peak_tflops else 0.0
        p(f"{phase}: compiled in {r['compile_seconds']:.1f} s; per device arguments {_gib(r['per_device_argument_bytes'])}"
          f", outputs {_gib(r['per_device_output_bytes'])} (aliased {_gib(r['per_device_alias_bytes'])}), temporaries "
          f"{_gib(r['per_device_temp_bytes'])}, total {_gib(r['per_device_total_bytes'])}")
        p(f"  {r['flops_per_step'] / 1e12:.2f} TFLOP of matmuls per step ({r['per_device_flops'] / 1e12:.3f} per "
          f"device; XLA's cost analysis, loop bodies once: {r['xla_cost_analysis_flops_per_step'] / 1e12:.2f}): "
          f"{step_s * 1e3:.1f} ms per step at {peak_tflops:g} TFLOP/s per chip and 100% utilisation")
        if r.get("xla_float32_copy_bytes"):
            p(f"  float32 copies XLA:CPU made of bfloat16 values: {_gib(r['xla_float32_copy_bytes'])} (total without "
              f"them {_gib(r['per_device_total_bytes_without_float32_copies'])}): " + "; ".join(r["xla_float32_copies"][:3]))
        if "frozen_gradient_buffers" in r:
            p(f"  frozen-weight-shaped backward buffers (a frozen gradient would be one): {r['frozen_gradient_buffers']}"
              + (f" e.g. {r['frozen_gradient_examples']}" if r["frozen_gradient_buffers"] else ""))
        if "temp_value_bytes_by_dtype" in r:
            p("  temporaries' values by dtype (overlapping): " + ", ".join(
                f"{k} {_gib(v)}" for k, v in sorted(r["temp_value_bytes_by_dtype"].items(), key=lambda kv: -kv[1])))
        if memory_gib:
            fits = r["per_device_total_bytes"] <= memory_gib * GIB
            p(f"  {'fits' if fits else 'DOES NOT FIT'} {memory_gib:g} GiB per device")
            if not fits and r.get("largest_buffers"):
                p("  largest buffers: " + "; ".join(r["largest_buffers"]))
        elif r.get("largest_buffers"):
            p("  largest buffers: " + "; ".join(r["largest_buffers"][:4]))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    _set_device_count(argv)
    from prompt_tuning import gin_utils
    from prompt_tuning.train import planning
    gin_utils.register_configurables()
    args = gin_utils.parse_cli(argv, description=__doc__, extra_flags=_flags,
                                required_defaults=PLAN_DEFAULTS)
    phases = [p for p in args.phases.split(",") if p]
    dump = os.environ.get("PLAN_XLA_DUMP")
    try:
        report = planning.plan_run(args.num_devices, phases, dump_dir=dump, largest=args.largest)
    except ValueError as e:
        raise SystemExit(f"plan: {e}") from None
    finally:
        if dump and os.path.isdir(dump):
            shutil.rmtree(dump, ignore_errors=True)
    if args.device_memory_gib:
        report["device_memory_gib"] = args.device_memory_gib
        report["fits"] = report["per_device_total_bytes"] <= args.device_memory_gib * GIB
    report["peak_tflops"] = args.peak_tflops
    report["projected_step_seconds"] = report["per_device_flops"] / (args.peak_tflops * 1e12)
    print_report(report, args.peak_tflops, args.device_memory_gib)
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
