"""Benchmark W-small: prompt-tuning train step, eval scoring and greedy decoding, ours vs PyTorch + PEFT.

Workload W-small: T5 1.1 small dimensions (vocab 32128, d_model 512, 6 heads of 64, d_ff 1024, 8+8 layers,
gated-gelu, untied head), batch 8, 412 input tokens + 100 prompt tokens, 8 target tokens, float32 on CPU,
random weights (timing only).

    python bench/bench_w_small.py                      # everything, prints a table and the ratios
    python bench/bench_w_small.py --systems ours --phases train --steps 5 --microbatches 4
    python bench/analyze_step.py --microbatches 4     # compile only: FLOPs, temp memory, dot shapes

Results and what moved them: BENCHMARKS.md at the repository root.

Every (system, phase) runs in its own child process, so peak memory is that phase's alone:
  * peak_rss:  the child's ru_maxrss (setup + compile + warm-up + timed steps);
  * step_rss:  VmHWM over the timed steps only (reset through /proc/self/clear_refs after warm-up).
Times: warm-up calls are excluded; the median of the timed calls is reported.

Systems:
  ours       prompt_tuning's real Trainer.train_step / score_batch / predict_batch (the model's decoding), float32.
  ours_bf16  the same with bfloat16 activations (T5Config.dtype) and bfloat16 frozen weights.
  peft       transformers T5ForConditionalGeneration + peft PromptTuningConfig(num_virtual_tokens=100);
             optimizer: transformers' Adafactor with the paper's settings (lr 0.3, decay -0.8, no parameter
             scaling, clip 1.0, weight decay 1e-5), over the prompt only.  Needs the `torch` extra.
  peft_compile  the same model under torch.compile (Inductor, default mode), train and score phases: the
             strongest PyTorch peer.  Its compile time is in the warm-up calls, not in the timed ones.
  peft_bf16  the eager model under torch.autocast('cpu', bfloat16): ours_bf16's peer (bfloat16 matmuls, float32
             weights and optimizer).  Both only pay off where the CPU has bfloat16 dot products (AVX512-BF16/AMX).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import BATCH, INPUT_LEN, PROMPT_LEN, TARGET_LEN, VOCAB, make_batch  # noqa: E402,F401

SYSTEMS = ("ours", "ours_bf16", "peft", "peft_compile", "peft_bf16")
COMPILED_PHASES = ("train", "score")   # peft_compile / peft_bf16: generate() is neither compiled nor autocast
PHASES = ("train", "score", "decode")


# --------------------------------------------------------------------------------------------------- ours
def run_ours(phase: str, args, bf16: bool):
    import jax

    ours = common.ours_setup(args.microbatches, bf16, args.f32_frozen, args.remat)
    trainer, batch, box = ours.trainer, ours.batch, {"state": ours.state}
    if phase == "train":
        def call():
            box["state"], metrics = trainer.train_step(box["state"], batch)
            jax.block_until_ready(metrics["loss"])
        calls_per_example = BATCH
    elif phase == "score":
        def call():
            jax.block_until_ready(trainer.score_batch(box["state"], batch))
        calls_per_example = BATCH
    else:
        prompts_batch = {"encoder_input_tokens": batch["encoder_input_tokens"]}

        def call():
            jax.block_until_ready(trainer.predict_batch(box["state"], prompts_batch, max_decode_len=TARGET_LEN))
        calls_per_example = BATCH
    times, cpu, step_rss = common.time_calls(call, args.warmup, args.steps)
    return times, cpu, step_rss, calls_per_example


# --------------------------------------------------------------------------------------------------- peft
def _peft_setup(args):
    import torch
    import transformers
    from peft import PromptTuningConfig, TaskType, get_peft_model

    base = common.torch_t5(threads=args.threads)
    model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=PROMPT_LEN))
    b = make_batch()
    batch = {k: torch.from_numpy(v) for k, v in b.items()}
    return torch, transformers, model, batch


def run_peft(phase: str, args, compile_model: bool = False, bf16: bool = False):
    import contextlib
    torch, transformers, model, b = _peft_setup(args)
    compiled = torch.compile(model) if compile_model else model

    def forward(**kw):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return compiled(**kw)
    input_ids = b["encoder_input_tokens"].long()
    attention_mask = (input_ids > 0).long()
    labels = b["decoder_target_tokens"].long()
    if phase == "train":
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in trainable) <= 2 * PROMPT_LEN * 512, "PEFT trains more than the prompt"
        opt = transformers.optimization.Adafactor(trainable, lr=0.3, decay_rate=-0.8, scale_parameter=False,
                                                  relative_step=False, warmup_init=False, clip_threshold=1.0,
                                                  weight_decay=1e-5)

        def call():
            out = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif phase == "score":
        model.eval()

        def call():
            with torch.inference_mode():
                logits = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                return logp.gather(-1, labels[..., None])[..., 0].sum(-1)
    else:
        model.eval()

        def call():
            with torch.inference_mode():
                return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=TARGET_LEN,
                                      min_new_tokens=TARGET_LEN, do_sample=False, num_beams=1)
    times, cpu, step_rss = common.time_calls(call, args.warmup, args.steps)
    return times, cpu, step_rss, BATCH


# --------------------------------------------------------------------------------------------------- driver
def worker(args):
    system, phase = args.worker
    t0 = time.perf_counter()
    if system.startswith("peft"):
        times, cpu, step_rss, per_call = run_peft(phase, args, compile_model=(system == "peft_compile"),
                                                  bf16=(system == "peft_bf16"))
    else:
        times, cpu, step_rss, per_call = run_ours(phase, args, bf16=(system == "ours_bf16"))
    med = statistics.median(times)
    common.report({
        "system": system, "phase": phase, "median_s": med, "times_s": times,
        "cpu_median_s": statistics.median(cpu), "xla_flags": os.environ.get("XLA_FLAGS", ""), "steps_per_s": 1.0 / med,
        "examples_per_s": per_call / med, "peak_rss_bytes": common.maxrss_bytes(), "step_rss_bytes": step_rss,
        "wall_s": time.perf_counter() - t0})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--steps", type=int, default=5, help="timed calls per phase (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (compile + warm caches)")
    p.add_argument("--microbatches", type=int, default=4,
                   help="ours: Trainer num_microbatches (gradient accumulation); 4 was fastest and leanest here")
    p.add_argument("--remat", default="none", help="ours: T5Config.remat_policy (none/full/minimal)")
    p.add_argument("--f32-frozen", action="store_true", help="ours_bf16: keep frozen weights float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--xla-flags", default=None,
                   help="XLA_FLAGS for our children, written --xla-flags='--flag=value ...' (default: the environment's)")
    p.add_argument("--wait-load", type=float, default=0.0,
                   help="before each child, wait (up to 10 min) until the 1-minute load average is below this")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every (phase, system) this many times, alternating systems; ratios pool the rounds")
    p.add_argument("--json", help="also write the results as JSON lines here")
    p.add_argument("--worker", nargs=2, metavar=("SYSTEM", "PHASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    systems = [s for s in args.systems.split(",") if s]
    phases = [s for s in args.phases.split(",") if s]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"--systems: unknown {s!r}; known: {', '.join(SYSTEMS)}")
    for s in phases:
        if s not in PHASES:
            p.error(f"--phases: unknown {s!r}; known: {', '.join(PHASES)}")
    if any(s.startswith("peft") for s in systems) and not common.have_torch_peers():
        print("torch/transformers/peft not installed (pip install -e .[torch]); skipping the PEFT baseline")
        systems = [s for s in systems if not s.startswith("peft")]

    print(f"W-small: batch {BATCH}, {INPUT_LEN} input + {PROMPT_LEN} prompt tokens, {TARGET_LEN} targets; "
          f"{args.warmup} warm-up + {args.steps} timed calls; ours microbatches={args.microbatches} "
          f"remat={args.remat}; load average at start {' '.join(common.loadavg())}", flush=True)
    results = {}
    passthrough = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--microbatches",
                   str(args.microbatches), "--remat", args.remat, "--threads", str(args.threads)]
    if args.f32_frozen:
        passthrough.append("--f32-frozen")
    for round_index in range(args.rounds):
        for phase in phases:
            for system in common.alternate(systems, round_index):
                if system in ("peft_compile", "peft_bf16") and phase not in COMPILED_PHASES:
                    continue
                r = _run_child(system, phase, passthrough, args)
                if r is None:
                    continue
                r["round"] = round_index
                results.setdefault((system, phase), []).append(r)
                print(f"{system:10s} {phase:7s} {r['median_s']:7.3f} s/call  {r['steps_per_s']:6.3f} calls/s  "
                      f"{r['examples_per_s']:6.2f} ex/s  peak {common.gb(r['peak_rss_bytes'])} GB  "
                      f"steps {common.gb(r['step_rss_bytes'])} GB  cpu {r['cpu_median_s']:.2f} s/call  "
                      f"[{' '.join(f'{t:.2f}' for t in r['times_s'])}]  load {r['load_before']} -> {r['load_after']}",
                      flush=True)
                common.append_json(args.json, r)
    _print_ratios(results, systems, phases)


def _run_child(system, phase, passthrough, args):
    """One (system, phase) measurement in a fresh process; its RESULT dict, or None (reported) if it failed."""
    env = dict(os.environ)
    if args.xla_flags is not None and not system.startswith("peft"):
        env["XLA_FLAGS"] = args.xla_flags
    return common.run_child(__file__, [system, phase, *passthrough], f"{system}/{phase}", args.wait_load, env)


def _print_ratios(results, systems, phases):
    """Ours against each PyTorch peer: speed from the median of all timed calls pooled over rounds (and each
    round's own ratio, since a round runs both and so shares the machine's drift); memory from the largest peak."""
    for phase in phases:
        for peer in ("peft", "peft_compile", "peft_bf16"):
            base = results.get((peer, phase))
            if not base:
                continue
            base_median = statistics.median(t for r in base for t in r["times_s"])
            base_peak = max(r["peak_rss_bytes"] for r in base)
            base_by_round = {b["round"]: b["median_s"] for b in base}
            for system in systems:
                runs = results.get((system, phase))
                if system.startswith("peft") or not runs:
                    continue
                median = statistics.median(t for r in runs for t in r["times_s"])
                per_round = [base_by_round[r["round"]] / r["median_s"] for r in runs if r["round"] in base_by_round]
                rounds = f"  per round {' '.join(f'{x:.2f}' for x in per_round)}" if len(per_round) > 1 else ""
                print(f"ratio {system}/{peer} {phase:7s}: speed {base_median / median:.2f}x ({median:.2f} vs "
                      f"{base_median:.2f} s/call){rounds}  peak memory "
                      f"{max(r['peak_rss_bytes'] for r in runs) / base_peak:.2f}x")


if __name__ == "__main__":
    main()
