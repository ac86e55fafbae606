"""Benchmark the microbatch split per batch shape: fixed counts against a position budget (MICROBATCH_POSITIONS).

With length buckets one run compiles steps for many shapes, and no single `num_microbatches` suits them all on
CPU: short rows run fastest whole, long rows split (their [rows, heads, L, L] attention tensors outgrow the
caches).  `Trainer(microbatch_positions=N)` picks, per shape, the fewest microbatches of at most N positions
per device.  This script times the W-small train (or score) step at each --shapes entry (rows x positions per
row, the 100 prompt positions and 8 targets included) with every fixed count in --counts that divides the rows,
and with the budget, all in one process, alternating the order every round; it prints seconds per step, the
count the budget chose, and the budget against the best fixed count and against --reference (the count the
other benches use).

    python bench/bench_microbatches.py                                   # the default sweep, train, 3 rounds
    python bench/bench_microbatches.py --shapes 8x164,32x292 --phase score --rounds 2
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SHAPES = "8x164,8x228,8x292,8x356,8x420,8x512,8x612,32x164,32x228,32x292"
PER_MICROBATCH = (300, 6000)   # fixed counts whose microbatch holds fewer or more positions are not timed


def counts_for(rows: int, positions: int, counts):
    lo, hi = PER_MICROBATCH
    return [m for m in counts if rows % m == 0 and lo <= rows // m * positions <= hi]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=SHAPES, help="rows x positions per row (prompt + inputs + 8 targets)")
    p.add_argument("--counts", default="1,2,4,8,16", help="fixed num_microbatches to time (those that divide)")
    p.add_argument("--positions", type=int, default=2048, help="the budget: microbatch_positions")
    p.add_argument("--reference", type=int, default=4, help="the fixed count to compare with (bench defaults: 4)")
    p.add_argument("--phase", choices=("train", "score"), default="train")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per variant and shape, alternating order")
    p.add_argument("--json", help="also append one JSON line per shape here")
    args = p.parse_args(argv)
    import jax

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    print(f"W-small {args.phase}, {args.rounds} rounds; budget {args.positions} positions; load "
          f"{' '.join(common.loadavg())}", flush=True)
    budget = common.ours_setup(microbatch_positions=args.positions)
    fixed = {m: common.ours_setup(microbatches=m) for m in counts}
    print("\n| rows x positions | " + " | ".join(f"m={m}" for m in counts) + " | budget (m) | budget / best | "
          f"budget / m={args.reference} |\n" + "|---" * (len(counts) + 4) + "|", flush=True)
    for rows, positions in shapes:
        x = common.make_batch(0, rows, positions - common.PROMPT_LEN - common.TARGET_LEN)
        variants = {m: fixed[m] for m in counts_for(rows, positions, counts)}
        variants["budget"] = budget
        batches = {k: {f: jax.device_put(v, o.trainer.batch_sharding) for f, v in x.items()}
                   for k, o in variants.items()}
        chosen = budget.trainer.microbatches(batches["budget"])

        def call(key):
            o = variants[key]
            if args.phase == "train":
                o.state, out = o.trainer.train_step(o.state, batches[key])
            else:
                out = o.trainer.score_batch(o.state, batches[key])
            jax.block_until_ready(out)
        for key in variants:   # compile
            call(key)
        times = {key: [] for key in variants}
        for r in range(args.rounds):
            for key in common.alternate(variants, r):
                t = time.perf_counter()
                call(key)
                times[key].append(time.perf_counter() - t)
        med = {key: statistics.median(t) for key, t in times.items()}
        best = min(v for k, v in med.items() if k != "budget")
        ref = med.get(args.reference)
        print(f"| {rows} x {positions} | " + " | ".join(f"{med[m]:.2f}" if m in med else "-" for m in counts)
              + f" | {med['budget']:.2f} ({chosen}) | {med['budget'] / best:.2f} | "
              + (f"{med['budget'] / ref:.2f}" if ref else "-") + " |", flush=True)
        common.append_json(args.json, {"phase": args.phase, "rows": rows, "positions": positions,
                                       "budget": args.positions, "chosen": chosen, "times_s": {
                                           str(k): v for k, v in times.items()}, "load": common.loadavg()})
    print(f"load after: {' '.join(common.loadavg())}")


if __name__ == "__main__":
    main()
