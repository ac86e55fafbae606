"""Benchmark: train step time and peak memory of prompt tuning vs model tuning, same W-small workload.

Both go through the real Trainer on W-small (bench/common.py: T5 1.1 small dimensions, batch 8, 412 input +
100 prompt tokens, 8 targets, float32, random weights); they differ only in what is trained:
  prompt   the prompt only, the paper's prompt-tuning Adafactor (lr 0.3, no parameter scaling, decay 1e-5);
  model    every parameter (prompt included, so the compute is the same model), runs/model_finetune.gin's
           optimizer (t5x's default Adafactor: parameter scaling, no weight decay, constant lr 1e-3).
The difference is what model tuning pays on top: gradients for every weight, Adafactor state for every
weight, and updating them.

    python bench/bench_model_vs_prompt.py --rounds 3 --json /tmp/model_vs_prompt.jsonl

Every (mode, round) runs in its own child process, alternating the modes within a round so both share the
machine's drift.  Memory: peak_rss (the child's ru_maxrss: setup + compile + steps), step_rss (VmHWM over the
timed steps), and on an accelerator device_peak (the device's peak_bytes_in_use).  Times: the median of the
timed calls after the warm-up ones.  Results print as JSON lines (RESULT ...), also appended to --json.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODES = ("prompt", "model")


def worker(args) -> None:
    import jax
    from flax import traverse_util

    t0 = time.perf_counter()
    ours = common.ours_setup(args.microbatches, model_tuning=(args.worker == "model"))
    trainer, batch, box = ours.trainer, ours.batch, {"state": ours.state}

    def call():
        box["state"], metrics = trainer.train_step(box["state"], batch)
        jax.block_until_ready(metrics["loss"])

    times, cpu, step_rss = common.time_calls(call, args.warmup, args.steps)
    stats = jax.devices()[0].memory_stats() or {}   # None on CPU
    sizes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    common.report({
        "mode": args.worker, "median_s": statistics.median(times), "times_s": times,
        "cpu_median_s": statistics.median(cpu), "steps_per_s": 1.0 / statistics.median(times),
        "peak_rss_bytes": common.maxrss_bytes(), "step_rss_bytes": step_rss,
        "device_peak_bytes": stats.get("peak_bytes_in_use"), "device": str(jax.devices()[0].platform),
        "trainable_arrays": len(traverse_util.flatten_dict(box["state"].trainable)),
        "trainable_bytes": sizes(box["state"].trainable), "opt_state_bytes": sizes(box["state"].opt_state),
        "microbatches": args.microbatches, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "wall_s": time.perf_counter() - t0})


def _run_child(mode, args):
    """One measurement in a fresh process (so its peak memory is its own); the RESULT dict, or None if it failed."""
    worker_args = [mode, "--steps", str(args.steps), "--warmup", str(args.warmup), "--microbatches", str(args.microbatches)]
    return common.run_child(__file__, worker_args, mode, args.wait_load)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--steps", type=int, default=5, help="timed train steps per child (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile + warm caches)")
    p.add_argument("--microbatches", type=int, default=4, help="Trainer num_microbatches (bench_w_small's default)")
    p.add_argument("--rounds", type=int, default=1, help="repeat both modes this many times, alternating them")
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="before each child, wait (up to 10 min) until the 1-minute load average is below this")
    p.add_argument("--json", help="also append the results as JSON lines here")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: unknown {m!r}; known: {', '.join(MODES)}")

    print(f"W-small train step: batch {common.BATCH}, {common.INPUT_LEN} input + {common.PROMPT_LEN} prompt tokens, "
          f"{common.TARGET_LEN} targets; {args.warmup} warm-up + {args.steps} timed steps, microbatches "
          f"{args.microbatches}; load average at start {' '.join(common.loadavg())}", flush=True)
    results = {m: [] for m in modes}
    for round_index in range(args.rounds):
        for mode in common.alternate(modes, round_index):
            r = _run_child(mode, args)
            if r is None:
                continue
            r["round"] = round_index
            results[mode].append(r)
            print("RESULT " + json.dumps(r), flush=True)
            print(f"{mode:7s} {r['median_s']:7.3f} s/step  peak {common.gb(r['peak_rss_bytes'])} GB  steps "
                  f"{common.gb(r['step_rss_bytes'])} GB  device peak {common.gb(r['device_peak_bytes'])} GB  trainable "
                  f"{common.gb(r['trainable_bytes'])} GB  opt state {common.gb(r['opt_state_bytes'])} GB  "
                  f"load {r['load_before']} -> {r['load_after']}", flush=True)
            common.append_json(args.json, r)
    if results.get("prompt") and results.get("model"):
        pooled = {m: statistics.median(t for r in results[m] for t in r["times_s"]) for m in ("prompt", "model")}
        peak = {m: max(r["peak_rss_bytes"] for r in results[m]) for m in ("prompt", "model")}
        print(f"ratio model/prompt: step time {pooled['model'] / pooled['prompt']:.2f}x ({pooled['model']:.3f} vs "
              f"{pooled['prompt']:.3f} s/step)  peak memory {peak['model'] / peak['prompt']:.2f}x")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
