"""Compile-only analysis of the project's real train / score steps on W-small (no timing; safe under load).

Prints XLA's FLOP and byte estimates, the buffer-assignment memory numbers and op counts of the optimized
HLO, so a change can be checked for extra work (e.g. frozen-weight gradients) without a quiet machine.

    python bench/analyze_step.py [--microbatches 2] [--bf16] [--remat none] [--dump DIR]
"""
import argparse
import collections
import re
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--f32-frozen", action="store_true")
    p.add_argument("--remat", default="none")
    p.add_argument("--phase", default="train")
    p.add_argument("--dump")
    args = p.parse_args()
    ours = common.ours_setup(args.microbatches, args.bf16, args.f32_frozen, args.remat)
    trainer, state, batch = ours.trainer, ours.state, ours.batch
    if args.phase == "train":
        lowered = trainer.lower_train_step(state, batch)
    elif args.phase == "decode":
        lowered = trainer.lower_predict_batch(state, {"encoder_input_tokens": batch["encoder_input_tokens"]},
                                              method="greedy", max_decode_len=common.TARGET_LEN)
    else:
        lowered = trainer.lower_score_batch(state, batch)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    print(f"flops {cost.get('flops', 0) / 1e9:.1f} GFLOP, bytes accessed {cost.get('bytes accessed', 0) / 1e9:.2f} GB")
    mem = compiled.memory_analysis()
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes"):
        print(f"{k}: {getattr(mem, k) / 2**20:.1f} MiB")
    hlo = compiled.as_text()
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", hlo))
    print("ops:", {k: ops[k] for k in ("dot", "convolution", "gather", "scatter", "fusion", "custom-call",
                                       "while", "copy", "transpose", "all-reduce") if ops[k]})
    dots = re.findall(r"= (\S+) dot\(", hlo)
    print("dot shapes:", collections.Counter(dots).most_common(40))
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        open(os.path.join(args.dump, f"{args.phase}.hlo.txt"), "w").write(hlo)


if __name__ == "__main__":
    main()
