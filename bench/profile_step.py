"""Where the wall time of one W-small step goes, and how far it is from this machine's matmul floor.

Traces the project's real `Trainer.train_step` (or `score_batch`) with the jax profiler, maps every executed
XLA thunk to its HLO, and shares each slice of wall time among the thunks running in it.  Prints the wall
time per kind of work (dense dots, batched attention dots, everything else) with the FLOPs it did, then the
isolated float32 GEMM rate of XLA (and of torch, when installed) at the step's dense shapes, and the step
time those rates would allow if every FLOP ran at them.

    python bench/profile_step.py [--phase train|score] [--microbatches 4] [--calls 2]
    python bench/profile_step.py --gemm-dtypes float32,bfloat16   # the GEMM rates alone, and XLA's dot types
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

_INSTR = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\((.*)")


def _dims(shape: str):
    m = re.match(r"\w+\[([\d,]*)\]", shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def parse_hlo(text: str):
    """{instruction: its (name, shape, opcode, rest)} and {computation: [instructions]} of an HLO module."""
    computations, instructions, current = {}, {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            current.append(m.groups())
            instructions[m.group(1)] = m.groups()
    return instructions, computations


def dot_flops(instrs, instructions):
    """(FLOPs, batched?) of the dots among `instrs` (a fused computation's body, or one bare dot)."""
    flops, batched = 0, False
    for _, shape, opcode, rest in instrs:
        if opcode != "dot":
            continue
        lhs = _dims(instructions[re.findall(r"%([\w.\-]+)", rest)[0]][1])
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
        k = 1
        for d in filter(None, contracting.split(",")):
            k *= lhs[int(d)]
        out = 1
        for d in _dims(shape):
            out *= d
        flops += 2 * out * k
        batched |= bool(re.search(r"lhs_batch_dims=\{\d", rest))
    return flops, batched


def wall_by_kind(trace_file, instructions, computations, calls: int):
    """{kind: [wall seconds per call, GFLOP per call]}; overlapping thunks split the overlap evenly."""
    with gzip.open(trace_file) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    thunks = [e for e in events if e.get("ph") == "X" and e["name"] in instructions]
    edges = sorted([(e["ts"], 1, i) for i, e in enumerate(thunks)] + [(e["ts"] + e["dur"], -1, i)
                                                                       for i, e in enumerate(thunks)])
    wall, active, last = collections.Counter(), set(), None
    for t, step, i in edges:
        if last is not None and active:
            for j in active:
                wall[j] += (t - last) / len(active)
        (active.add if step > 0 else active.discard)(i)
        last = t
    kinds = collections.defaultdict(lambda: [0.0, 0.0])
    for i, e in enumerate(thunks):
        instr = instructions[e["name"]]
        called = re.search(r"calls=%([\w.\-]+)", instr[3])
        flops, batched = dot_flops(computations[called.group(1)] if called else [instr], instructions)
        kind = ("attention dots (batched)" if batched else "dense dots") if flops else "other (element-wise, copies)"
        kinds[kind][0] += wall[i] / 1e6 / calls
        kinds[kind][1] += flops / 1e9 / calls
    return kinds


def gemm_rate(m: int, k: int, n: int, repeats: int = 20, dtype: str = "float32"):
    """Best GFLOP/s of one [m,k]x[k,n] matmul in `dtype`: XLA, and torch when importable."""
    import jax
    import numpy as np
    rates = {}
    a, b = np.random.rand(m, k).astype(np.float32), np.random.rand(k, n).astype(np.float32)
    xa, xb = jax.device_put(a).astype(dtype), jax.device_put(b).astype(dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    rates["xla"] = _best_rate(lambda: matmul(xa, xb).block_until_ready(), 2 * m * k * n, repeats)
    try:
        import torch
    except ImportError:
        return rates
    torch.set_num_threads(os.cpu_count())
    ta, tb = torch.from_numpy(a).to(getattr(torch, dtype)), torch.from_numpy(b).to(getattr(torch, dtype))
    rates["torch"] = _best_rate(lambda: ta @ tb, 2 * m * k * n, repeats)
    return rates


def xla_dot_dtypes(m: int, k: int, n: int, dtype: str):
    """The operand types of the dots XLA:CPU actually runs for a `dtype` matmul (after its own passes,
    which may convert bfloat16 operands to float32 where the backend has no bfloat16 dot)."""
    import jax
    import jax.numpy as jnp
    x, y = jnp.zeros((m, k), dtype), jnp.zeros((k, n), dtype)
    hlo = jax.jit(lambda a, b: a @ b).lower(x, y).compile().as_text()
    instructions, _ = parse_hlo(hlo)
    return sorted({instructions[re.findall(r"%([\w.\-]+)", rest)[0]][1].split("[")[0]
                   for _, _, opcode, rest in instructions.values() if opcode == "dot"})


def _best_rate(fn, flops, repeats):
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("train", "score"), default="train")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--calls", type=int, default=2, help="traced calls (after 2 untimed warm-ups)")
    p.add_argument("--gemm-dtypes", default=None,
                   help="only the isolated GEMM at the step's shape, in these dtypes (e.g. float32,bfloat16)")
    args = p.parse_args()
    rows = common.BATCH // args.microbatches * (common.INPUT_LEN + common.PROMPT_LEN)  # one microbatch's positions
    if args.gemm_dtypes:
        for dtype in args.gemm_dtypes.split(","):
            rates = gemm_rate(rows, 512, 1024, dtype=dtype)
            print(f"GEMM [{rows},512]x[512,1024] {dtype}: " + ", ".join(f"{system} {rate:.0f} GFLOP/s"
                  for system, rate in rates.items()) + f"; XLA runs its dots on {xla_dot_dtypes(rows, 512, 1024, dtype)}")
        return
    import jax

    ours = common.ours_setup(args.microbatches)
    trainer, batch, box = ours.trainer, ours.batch, {"state": ours.state}

    def call():
        if args.phase == "train":
            box["state"], metrics = trainer.train_step(box["state"], batch)
            jax.block_until_ready(metrics["loss"])
        else:
            jax.block_until_ready(trainer.score_batch(box["state"], batch))

    for _ in range(2):
        call()
    if args.phase == "train":
        hlo = trainer.lower_train_step(box["state"], batch).compile().as_text()
    else:
        hlo = trainer.lower_score_batch(box["state"], batch).compile().as_text()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call()
        step_s = (time.perf_counter() - t0) / args.calls
        jax.profiler.stop_trace()
        trace_file = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
        kinds = wall_by_kind(trace_file, *parse_hlo(hlo), calls=args.calls)

    print(f"{args.phase}, {args.microbatches} microbatches: {step_s:.2f} s per call (traced)")
    total_wall = sum(w for w, _ in kinds.values())
    total_flops = sum(f for _, f in kinds.values())
    for kind, (wall, gflop) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        rate = f"{gflop / wall:6.1f} GFLOP/s" if gflop else ""
        print(f"  {kind:30s} {wall:5.2f} s  {100 * wall / total_wall:4.1f}%  {gflop:6.1f} GFLOP  {rate}")
    for system, rate in gemm_rate(rows, 512, 1024).items():
        print(f"  isolated GEMM [{rows},512]x[512,1024], {system}: {rate:.0f} GFLOP/s -> "
              f"{total_flops:.0f} GFLOP at that rate = {total_flops / rate:.2f} s")


if __name__ == "__main__":
    main()
