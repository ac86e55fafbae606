"""Writes SCALING.md from `python -m prompt_tuning.scripts.plan` runs (one process per plan: each sets its own
simulated device count).  Figures come from the compiled programs only.

    python bench/scaling.py run [NAME ...]   # plan the grid (or the named rows), appending to scaling_results.jsonl
    python bench/scaling.py render           # SCALING.md from scaling_results.jsonl
"""
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "scaling_results.jsonl")
GIB = 2 ** 30
COMMON = ["--gin_file=runs/prompt_finetune.gin", "--gin.BATCH_SIZE=32", "--gin.PROMPT_LENGTH=100",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}", "--phases=train", "--largest=6"]
# Fitting switches: bfloat16 weights and activations, scanned + fully rematerialised layers, activation constraints.
FIT = ["--gin.FROZEN_DTYPE='bfloat16'", "--gin.ACTIVATION_DTYPE='bfloat16'", "--gin.SCAN_LAYERS=True",
       "--gin.REMAT_POLICY='full'", "--gin.ACTIVATION_PARTITIONING_DIMS=1"]
FULL = ["--gin.TRAINABLE_REGEX='.*'"]


def row(name, size, devices, mp, *extra):
    return dict(name=name, size=size, devices=devices, mp=mp, extra=list(extra))


# In the order they are run (the most informative first: a 2-core machine compiles XXL slowly).
GRID = [
    row("xxl-16-mp8-fit", "xxl", 16, 8, *FIT),
    row("xxl-8-mp8-fit-mb4", "xxl", 8, 8, *FIT, "--gin.NUM_MICROBATCHES=4"),
    row("xxl-32-mp16-fit", "xxl", 32, 16, *FIT),
    row("xxl-16-mp8-fit-full", "xxl", 16, 8, *FIT, *FULL),
    row("xxl-8-mp8-fit", "xxl", 8, 8, *FIT),
    row("base-8-mp2", "base", 8, 2),
    row("base-8-mp2-full", "base", 8, 2, *FULL),
    row("xl-16-mp8-fit", "xl", 16, 8, *FIT),
    row("large-16-mp4-fit", "large", 16, 4, *FIT),
    row("xxl-16-mp8-f32", "xxl", 16, 8, "--gin.SCAN_LAYERS=True"),
    row("xxl-64-mp16-fit", "xxl", 64, 16, *FIT),
    row("xxl-16-mp8-fit-2d", "xxl", 16, 8, *FIT, "--gin.PARAMETER_PARTITIONING_DIMS=2"),
    row("base-8-mp1-fit", "base", 8, 1, *FIT),
    row("large-8-mp1-fit", "large", 8, 1, *FIT),
    row("xl-8-mp4-fit", "xl", 8, 4, *FIT),
    row("xl-32-mp8-fit", "xl", 32, 8, *FIT),
    row("large-32-mp2-fit", "large", 32, 2, *FIT),
    row("base-64-mp2-fit", "base", 64, 2, *FIT),
]


def command(r):
    return ([sys.executable, "-m", "prompt_tuning.scripts.plan", f"--num_devices={r['devices']}",
             f"--gin_search_paths={os.path.join(ROOT, 'gin')}",
             f"--gin_file=models/t5_1_1_lm_adapted_{r['size']}_prompt.gin", *COMMON,
             f"--gin.MODEL_PARALLEL_SIZE={r['mp']}", *r["extra"]])


def run(names):
    rows = [r for r in GRID if not names or r["name"] in names]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for r in rows:
        cmd = command(r)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        result = dict(r, command=" ".join(cmd[1:]), returncode=proc.returncode)
        if proc.returncode == 0:
            result["report"] = json.loads(line)
        else:
            result["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(r["name"], proc.returncode, flush=True)


def _cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Flags")
    lines = [ln for ln in out.splitlines() if ln.split(":")[0].strip() in keep]
    return "\n".join(ln if not ln.startswith("Flags") else ln[:160] + " ..." for ln in lines)


def _findings(latest):
    def get(name):
        r = latest.get(name)
        return r["report"] if r and not r["returncode"] else None

    def gib(p, key="per_device_total_bytes"):
        return p[key] / GIB
    out = []
    for name, what in (("xxl-16-mp8-fit", "XXL prompt tuning, 16 devices"), ("xxl-32-mp16-fit", "XXL prompt tuning, 32 devices"),
                       ("xxl-8-mp8-fit-mb4", "XXL prompt tuning, 8 devices (one v3-8), 4 microbatches"),
                       ("xxl-8-mp8-fit", "XXL prompt tuning, 8 devices, no microbatches")):
        p = get(name)
        if p:
            out.append(f"- {what}, batch 32: {gib(p):.2f} GiB per device compiled "
                       f"({'fits' if gib(p) <= 16 else 'does not fit'} 16 GiB).")
    a, b = get("xxl-16-mp8-fit"), get("xxl-16-mp8-f32")
    if a and b:
        out.append(f"- Cost of the fitting switches in FLOPs (XXL, 16 devices): {a['flops_per_step'] / 1e12:.0f} TFLOP of "
                   f"matmuls per step with full remat against {b['flops_per_step'] / 1e12:.0f} without "
                   f"({a['flops_per_step'] / b['flops_per_step']:.2f}x: the forward pass runs twice).")
    a, b = get("xxl-8-mp8-fit-mb4"), get("xxl-8-mp8-fit")
    if a and b:
        out.append(f"- Microbatching is free in FLOPs: {a['flops_per_step'] / 1e12:.0f} against {b['flops_per_step'] / 1e12:.0f}"
                   f" TFLOP per step with 4 and 1 microbatches; it cuts temporaries from {gib(b, 'per_device_temp_bytes'):.2f}"
                   f" to {gib(a, 'per_device_temp_bytes'):.2f} GiB.")
    for prompt, full in (("xxl-16-mp8-fit", "xxl-16-mp8-fit-full"), ("base-8-mp2", "base-8-mp2-full")):
        a, b = get(prompt), get(full)
        if a and b:
            out.append(f"- Freezing saves ({prompt} vs full tuning): {gib(a):.2f} against {gib(b):.2f} GiB per device; "
                       f"full tuning's step has {b.get('weight_shaped_backward_buffers')} backward buffers shaped like a "
                       f"weight shard, prompt tuning's {a.get('weight_shaped_backward_buffers')}.")
    out.append("- No frozen-weight gradient: for every prompt-tuning row, the `frozen-grad buffers` column counts the "
               "values of XLA's buffer assignment (temporaries and outputs) made in the backward pass (jax names those "
               "ops `transpose(jvp(...))`) whose shape is a frozen weight's per-device shard (or one layer's slice of a "
               "scanned one). The same count over all weights finds the gradients of full tuning (above).")
    out.append("- bfloat16 on XLA:CPU: the largest temporaries of the bfloat16 rows are float32 `convert`s that no jax op "
               "asked for (e.g. a float32 copy of the scanned layers' saved bfloat16 inputs, float32 copies of the "
               "bfloat16 weight stacks): XLA:CPU computes bfloat16 dots in float32. An accelerator keeps them in "
               "bfloat16; the column `total without XLA:CPU's f32 copies` subtracts them (as if all were live at once, "
               "so it is a lower bracket), the `total` column is the compiled figure.")
    return out


def render():
    results = [json.loads(ln) for ln in open(RESULTS)]
    latest = {r["name"]: r for r in results}
    order = [r["name"] for r in GRID if r["name"] in latest]
    lines = ["# Scaling: T5 1.1 LM-adapted prompt tuning compiled for simulated meshes", "",
             "Every figure below is read from the program XLA compiled (`compiled.memory_analysis()`, "
             "`cost_analysis()`, XLA's buffer-assignment dump) by `python -m prompt_tuning.scripts.plan`, run by "
             "`python bench/scaling.py run` and rendered by `python bench/scaling.py render`. Batch 32, prompt 100, "
             "inputs 512 (+100 prompt positions), targets 8, Adafactor; only the train step was compiled "
             "(`--phases=train`). `fit` = bfloat16 frozen weights and activations, scanned layers, full remat, "
             "activation constraints (`ACTIVATION_PARTITIONING_DIMS=1`). Per device; total = arguments + "
             "outputs - aliased + temporaries.", "",
             "| plan | model | devices (data x model) | tuning | switches | arguments | temporaries | total | "
             "fits 16 / 32 / 80 GiB | total without XLA:CPU's f32 copies | matmul TFLOP/step | frozen-grad buffers "
             "| compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in order:
        r = latest[name]
        if r["returncode"]:
            lines.append(f"| {name} | {r['size']} | {r['devices']} (mp {r['mp']}) | | | failed: {r['error']} |"
                         + " |" * 6)
            continue
        p = r["report"]
        total = p["per_device_total_bytes"]
        fits = " / ".join("yes" if total <= g * GIB else "no" for g in (16, 32, 80))
        tuning = "full" if p["trainable_regex"] == ".*" else "prompt"
        switches = ", ".join(s.split("=", 1)[0].replace("--gin.", "") + "=" + s.split("=", 1)[1].strip("'")
                             for s in r["extra"] if "TRAINABLE" not in s) or "none (float32)"
        lines.append(
            f"| {name} | {r['size']} | {p['num_devices']} ({p['data_parallel_size']} x {p['model_parallel_size']}) | "
            f"{tuning} | {switches} | {p['per_device_argument_bytes'] / GIB:.2f} GiB | "
            f"{p['per_device_temp_bytes'] / GIB:.2f} GiB | {total / GIB:.2f} GiB | {fits} | "
            f"{p['phases']['train'].get('per_device_total_bytes_without_float32_copies', total) / GIB:.2f} GiB | "
            f"{p['flops_per_step'] / 1e12:.0f} | {p.get('frozen_gradient_buffers', '?')} | "
            f"{p['compile_seconds']:.0f} s |")
    lines += ["", "## Findings (computed from the rows above)", ""] + _findings(latest)
    lines += ["", "## What the grid covers and leaves out", "",
              "Every size (base, large, xl, xxl) on 8, 16, 32 or 64 devices with model parallelism 1, 2, 4, 8 and 16 "
              "(not every combination: a 2-core machine shared with other jobs compiled these, one plan at a time), "
              "the 16-GiB targets (XXL on 8, 16 and 32 devices at batch 32), full tuning beside prompt tuning for "
              "base (8 devices) and XXL (16 devices), 2-D parameter sharding for XXL, and XXL in float32 without "
              "remat for the cost of the switches. Left out: the other (size, mesh) pairs, full tuning of large and "
              "xl, the score and decode programs (`plan` compiles them by default; the grid passes `--phases=train`), "
              "unrolled (unscanned) layers: scanning compiles one layer per stack, which keeps each XXL compile near a "
              "minute here (the compile column; each plan process also spends ~20 s starting and tracing). "
              "Full tuning's optimizer state is Adafactor's factored second moments, replicated (they are small); "
              "its trainable weights stay float32 (FROZEN_DTYPE casts only frozen ones).", "",
              "Why bfloat16 alone did not shrink the temporaries (the issue's table): without remat the step keeps "
              "every layer's float32 attention probabilities (`float32_attention_logits`, t5x's default) and "
              "residuals for the backward pass (xxl-16-mp8-f32's largest buffers: f32[24,16,8,612,612] stacks); full "
              "remat keeps only each layer's bfloat16 input, and the rest of the bfloat16 rows' temporaries are "
              "XLA:CPU's float32 copies (no jax op; see below)."]
    lines += ["", "## Largest buffers (per device) and dtypes of the temporaries", ""]
    for name in order:
        r = latest[name]
        if r["returncode"]:
            continue
        t = r["report"]["phases"]["train"]
        dtypes = ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in sorted(t.get("temp_value_bytes_by_dtype", {}).items(),
                                                                       key=lambda kv: -kv[1]) if v > 2 ** 20)
        lines.append(f"- **{name}**: " + "; ".join(t.get("largest_buffers", [])[:4])
                     + f". Temporaries' values by dtype (they overlap in time): {dtypes}.")
    lines += ["", "## Commands", ""]
    for name in order:
        lines.append(f"- `{name}`: `python {latest[name]['command']}`")
    lines += ["", "## Machine that compiled them", "", "```", _cpu(), "```", ""]
    with open(os.path.join(ROOT, "SCALING.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2:])
    elif sys.argv[1:2] == ["render"]:
        render()
    else:
        raise SystemExit(__doc__)
