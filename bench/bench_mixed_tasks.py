"""Benchmark mixed-task inference at W-small: one batch mixing K tasks' prompts vs K single-prompt batches vs PEFT.

The work: K tasks, `--per-task` examples each (412 input tokens, each task its own 100-token prompt), greedy
decoding of 8 tokens (W-small, see bench/common.py and BENCHMARKS.md).  Serving all K * per_task examples once
is one call; examples/s = K * per_task / its median time.

Systems, each (system, K) in its own child process (peak memory = that configuration's alone):
  ours_mixed     one prompt bank of K rows; ONE batch of K * per_task rows, `prompt_index` naming each row's
                 prompt (models.predict_batch).
  ours_separate  one single-prompt model; K batches of per_task rows, the prompt leaf swapped between them
                 (same shapes: compiled once).
  peft           transformers T5 + PEFT with K prompt-tuning adapters; set_adapter(task) and generate() once
                 per task (PEFT's prompt tuning serves one adapter per batch).  Needs the `torch` extra.

    python bench/bench_mixed_tasks.py                       # K = 1, 4, 16, every system, 3 alternating rounds
    python bench/bench_mixed_tasks.py --tiny --ks 1,2 --per-task 2 --steps 1 --warmup 1 --rounds 1   # smoke

--tiny swaps W-small for a 2-layer model of width 64 with short inputs: it checks the script, it measures nothing.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SYSTEMS = ("ours_mixed", "ours_separate", "peft")
TINY = dict(vocab=300, d_model=64, heads=2, head_dim=32, d_ff=128, layers=2, input_len=24, prompt_len=5,
            target_len=4)
W_SMALL = dict(vocab=common.VOCAB, d_model=512, heads=6, head_dim=64, d_ff=1024, layers=8,
               input_len=common.INPUT_LEN, prompt_len=common.PROMPT_LEN, target_len=common.TARGET_LEN)


def _dims(args):
    return TINY if args.tiny else W_SMALL


def _inputs(dims, k: int, per_task: int, seed: int = 0):
    """[K * per_task, input_len] full-length random inputs ending in EOS, task-major (task t: rows t*per_task...)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, dims["vocab"], (k * per_task, dims["input_len"]), dtype=np.int32)
    tokens[:, -1] = 1
    return tokens


# --------------------------------------------------------------------------------------------------- ours
def _ours(dims, num_prompts):
    import functools

    import jax
    import numpy as np

    from prompt_tuning import models, partitioning
    from prompt_tuning.prompts import PromptProcessor, initializers
    from prompt_tuning.t5 import config as t5config
    from prompt_tuning.t5 import network
    from prompt_tuning.train import params as tparams
    cfg = t5config.get_config("t5_1_1", "small")
    if dims is TINY:
        cfg = cfg.replace(vocab_size=dims["vocab"], emb_dim=dims["d_model"], num_heads=dims["heads"],
                          head_dim=dims["head_dim"], mlp_dim=dims["d_ff"], num_encoder_layers=dims["layers"],
                          num_decoder_layers=dims["layers"])
    processor = functools.partial(PromptProcessor, length=dims["prompt_len"], num_prompts=num_prompts,
                                  initializer=initializers.uniform())
    model = models.EncoderDecoderModel(network.Transformer(config=cfg, encoder_input_processor_factory=processor))
    mesh = partitioning.make_mesh()
    batch = model.dummy_batch({"inputs": dims["input_len"], "targets": dims["target_len"]})
    if num_prompts:
        batch["prompt_index"] = np.zeros((1,), np.int32)
    params, _ = tparams.init_params(model, batch, mesh, jax.random.PRNGKey(0))
    return jax, np, model, params


def run_ours(system: str, k: int, args):
    dims = _dims(args)
    tokens = _inputs(dims, k, args.per_task)
    if system == "ours_mixed":
        jax, np, model, params = _ours(dims, k)
        batch = {"encoder_input_tokens": tokens,
                 "prompt_index": np.repeat(np.arange(k, dtype=np.int32), args.per_task)}

        def call():
            jax.block_until_ready(model.predict_batch(params, batch, max_decode_len=dims["target_len"]))
    else:
        jax, np, model, params = _ours(dims, None)
        prompt = params["encoder"]["prompt"]["prompt"]
        rng = np.random.default_rng(1)
        task_params = [dict(params, encoder=dict(params["encoder"], prompt={"prompt": jax.numpy.asarray(
            rng.uniform(-0.5, 0.5, prompt.shape).astype(np.float32))})) for _ in range(k)]
        batches = [{"encoder_input_tokens": tokens[t * args.per_task:(t + 1) * args.per_task]} for t in range(k)]

        def call():
            outs = [model.predict_batch(p, b, max_decode_len=dims["target_len"])
                    for p, b in zip(task_params, batches)]
            jax.block_until_ready(outs)
    return common.time_calls(call, args.warmup, args.steps)


# --------------------------------------------------------------------------------------------------- peft
def run_peft(k: int, args):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model
    dims = _dims(args)
    base = common.torch_t5(dims["vocab"], dims["d_model"], dims["heads"], dims["head_dim"], dims["d_ff"],
                           dims["layers"], args.threads)
    prompt_cfg = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=dims["prompt_len"])
    model = get_peft_model(base, prompt_cfg, adapter_name="task_0")
    for t in range(1, k):
        model.add_adapter(f"task_{t}", prompt_cfg)
    model.eval()
    tokens = torch.from_numpy(_inputs(dims, k, args.per_task)).long()
    batches = [tokens[t * args.per_task:(t + 1) * args.per_task] for t in range(k)]

    def call():
        with torch.inference_mode():
            for t, ids in enumerate(batches):
                model.set_adapter(f"task_{t}")
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=dims["target_len"], min_new_tokens=dims["target_len"],
                               do_sample=False, num_beams=1)
    return common.time_calls(call, args.warmup, args.steps)


# --------------------------------------------------------------------------------------------------- driver
def worker(args):
    system, k = args.worker[0], int(args.worker[1])
    t0 = time.perf_counter()
    times, cpu, step_rss = run_peft(k, args) if system == "peft" else run_ours(system, k, args)
    med = statistics.median(times)
    common.report({
        "system": system, "k": k, "per_task": args.per_task, "tiny": bool(args.tiny), "median_s": med,
        "times_s": times, "cpu_median_s": statistics.median(cpu), "examples_per_s": k * args.per_task / med,
        "peak_rss_bytes": common.maxrss_bytes(), "step_rss_bytes": step_rss, "wall_s": time.perf_counter() - t0})


def _run_child(system, k, passthrough, args):
    return common.run_child(__file__, [system, str(k), *passthrough], f"{system}/K={k}", args.wait_load)


def _print_table(results, systems, ks):
    """Per K, side by side: examples/s (median over all rounds' timed calls) and the largest peak RSS."""
    print("\n| K | " + " | ".join(f"{s} ex/s | {s} peak GB" for s in systems) + " | mixed / separate | mixed / peft |")
    print("|---|" + "---|---|" * len(systems) + "---|---|")
    for k in ks:
        cells, speed = [], {}
        for s in systems:
            runs = results.get((s, k))
            if not runs:
                cells += ["-", "-"]
                continue
            speed[s] = k * runs[0]["per_task"] / statistics.median(t for r in runs for t in r["times_s"])
            cells += [f"{speed[s]:.2f}", common.gb(max(r["peak_rss_bytes"] for r in runs))]
        ratio = lambda a, b: f"{speed[a] / speed[b]:.2f}x" if a in speed and b in speed else "-"  # noqa: E731
        print(f"| {k} | " + " | ".join(cells) + f" | {ratio('ours_mixed', 'ours_separate')} | "
              f"{ratio('ours_mixed', 'peft')} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--ks", default="1,4,16", help="numbers of tasks (prompts) served together")
    p.add_argument("--per-task", type=int, default=common.BATCH, help="examples per task")
    p.add_argument("--steps", type=int, default=5, help="timed calls (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (compile + warm caches)")
    p.add_argument("--rounds", type=int, default=3, help="repeat every (K, system), alternating the systems")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="before each child, wait (up to 10 min) until the 1-minute load average is below this")
    p.add_argument("--tiny", action="store_true", help="a tiny model instead of W-small (smoke test only)")
    p.add_argument("--json", help="also append the results as JSON lines here")
    p.add_argument("--worker", nargs=2, metavar=("SYSTEM", "K"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        p.error(f"--systems: unknown {unknown}; known: {', '.join(SYSTEMS)}")
    ks = [int(k) for k in args.ks.split(",") if k]
    if "peft" in systems and not common.have_torch_peers():
        print("torch/transformers/peft not installed (pip install -e .[torch]); skipping the PEFT baseline")
        systems.remove("peft")
    dims = _dims(args)
    print(f"{'TINY (smoke only)' if args.tiny else 'W-small'}: {args.per_task} examples per task, "
          f"{dims['input_len']} input + {dims['prompt_len']} prompt tokens, {dims['target_len']} greedy tokens; "
          f"K = {ks}; {args.warmup} warm-up + {args.steps} timed calls x {args.rounds} rounds; "
          f"load average at start {' '.join(common.loadavg())}", flush=True)
    passthrough = ["--per-task", str(args.per_task), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
    results = {}
    for round_index in range(args.rounds):
        for k in ks:
            for system in common.alternate(systems, round_index):
                r = _run_child(system, k, passthrough, args)
                if r is None:
                    continue
                r["round"] = round_index
                results.setdefault((system, k), []).append(r)
                print(f"round {round_index} K={k:<3d} {system:14s} {r['median_s']:8.3f} s/call "
                      f"{r['examples_per_s']:8.2f} ex/s  peak {common.gb(r['peak_rss_bytes'])} GB  "
                      f"[{' '.join(f'{t:.2f}' for t in r['times_s'])}]  load {r['load_before']} -> {r['load_after']}",
                      flush=True)
                common.append_json(args.json, r)
    _print_table(results, systems, ks)
    return results


if __name__ == "__main__":
    main()
