"""Run a grid of prompt-tuning runs (the paper's ablations), resumably, and tabulate and plot the results.

  python -m prompt_tuning.scripts.sweep --gin_file=runs/synthetic_second_letter.gin \
    --grid PROMPT_LENGTH=1,5,20,100 --grid 'PROMPT_INIT=@prompts.uniform(),@prompts.sampled_vocab()' \
    --repeats 3 --metric synthetic_second_letter/accuracy --output_dir /tmp/sweep [--gin.KEY=VALUE ...]

Every grid point x repeat is one `python -m prompt_tuning.train` process with the gin files, the --gin.
bindings, the point's bindings, MODEL_DIR=<output_dir>/<point>/seed_<k> and SEED=k (k = 0..repeats-1:
prompt initialisation, data order and dropout all follow SEED, as the paper's 3 runs).  Other arguments
go to the training CLI unchanged.

--grid KEY=V1,V2,...  KEY is any gin binding (a macro such as PROMPT_LENGTH, or e.g. loop.train.z_loss);
    the special key gin_file adds a gin file.  Values are gin literals split at the commas that are outside
    brackets (), [], {} and quotes, so "CLASS_LABELS=['a','b'],['c','d']" gives two values; a value with a
    bare top-level comma (rare in gin) can be given with --grid_sep, e.g. --grid_sep=';'.
Resuming: rerun the same command.  A run whose directory holds sweep_done.json (written once training
    reached TRAIN_STEPS) is skipped and never touched again; any other run is started again into its
    MODEL_DIR, where the trainer resumes from its newest checkpoint.  Directory names come from the grid
    values only, so give a sweep with other --gin. bindings its own --output_dir.
In --gin. bindings, {KEY} stands for the point's value of grid key KEY (a gin string without its quotes),
    e.g. --gin.INITIAL_CHECKPOINT_PATH="'/ckpt/lm100k_{MODEL_SIZE}'" with --grid "MODEL_SIZE='small','xxl'".
Results (each run's MODEL_DIR/eval/metrics.jsonl; rerun with another --metric to re-tabulate, no training):
    a run's result is --metric at its best evaluation after step 0 by --select (default --metric itself:
    early stopping on the evaluated split, as the paper; for a transfer, select by the source's dev set).
    Both are regular expressions over the metric names whose matches are averaged per evaluation (e.g.
    'taskless_super_glue_cb_v102/(accuracy|mean_3class_f1)' is CB's SuperGLUE score).  Per point: the mean
    and sample standard deviation (n-1) over repeats; --average KEY adds, per seed, the mean over KEY's
    values (the SuperGLUE score over per-task gin files), then its mean and std over seeds.  Written to
    <output_dir>/results.jsonl, results.md (also printed) and results.png (the metric against --x, one line
    per setting of the other keys, error bars one standard deviation; the averages when --average is given).
Every point's gin configuration is parsed before anything runs, so a misspelt key fails at once.
"""
import argparse
import ast
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DONE = "sweep_done.json"
GIN_FILE_KEY = "gin_file"
RESERVED = ("MODEL_DIR", "SEED")
_OPEN, _CLOSE = "([{", ")]}"


class SweepError(ValueError):
    """A bad sweep argument or result, reported as one line."""


# ------------------------------------------------------------------------------------------- the grid


def split_values(text: str, sep: str = ",") -> List[str]:
    """`text` split at `sep` outside brackets and quotes; every value stripped and non-empty."""
    values, depth, quote, start = [], [], None, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth.append(_CLOSE[_OPEN.index(ch)])
        elif ch in _CLOSE:
            if not depth or depth.pop() != ch:
                raise SweepError(f"unbalanced {ch!r} at character {i + 1} of {text!r}")
        elif not depth and text.startswith(sep, i):
            values.append(text[start:i])
            start = i + len(sep)
            i += len(sep) - 1
        i += 1
    if quote or depth:
        raise SweepError(f"unclosed {quote or depth[-1]!r} in {text!r}")
    values.append(text[start:])
    values = [v.strip() for v in values]
    if not all(values):
        raise SweepError(f"empty value in {text!r}")
    return values


def parse_grid(specs: Sequence[str], sep: str = ",") -> List[Tuple[str, List[str]]]:
    """[(key, values)] in the order given."""
    grid, seen = [], set()
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq or not key:
            raise SweepError(f"--grid {spec!r}: expected KEY=VALUE1{sep}VALUE2...")
        if key in RESERVED:
            raise SweepError(f"--grid {key}: the sweep sets {key} itself (use --repeats for seeds)")
        if key in seen:
            raise SweepError(f"--grid {key} given twice")
        seen.add(key)
        try:
            grid.append((key, split_values(values, sep)))
        except SweepError as e:
            raise SweepError(f"--grid {key}: {e}") from None
    return grid


def _slug(value: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.+-]", "_", os.path.basename(value))).strip("_") or "_"


def point_name(assignment: Sequence[Tuple[str, str]]) -> str:
    """A readable directory name; a short hash is added when the slug loses characters (it could collide)."""
    parts = [f"{_slug(k)}-{_slug(v)}" for k, v in assignment]
    name = "__".join(parts) or "default"
    exact = all(_slug(v) == v for _, v in assignment)
    if not exact or len(name) > 120:
        digest = hashlib.sha1(json.dumps(list(assignment)).encode()).hexdigest()[:6]
        name = f"{name[:120]}__{digest}"
    return name


# ---------------------------------------------------------------------------------------------- runs


class Run:
    """One training process: a grid point and a seed."""

    def __init__(self, output_dir: str, assignment: Sequence[Tuple[str, str]], seed: int):
        self.assignment, self.seed = list(assignment), seed
        self.point = point_name(assignment)
        self.dir = os.path.join(output_dir, self.point, f"seed_{seed}")

    def train_args(self, gin_files: Sequence[str], bindings: Sequence[str]) -> List[str]:
        files = list(gin_files) + [v for k, v in self.assignment if k == GIN_FILE_KEY]
        args = [f"--gin_file={f}" for f in files] + [f"--gin.{self.fill(b)}" for b in bindings]
        args += [f"--gin.{k}={v}" for k, v in self.assignment if k != GIN_FILE_KEY]
        return args + [f"--gin.MODEL_DIR={os.path.abspath(self.dir)!r}", f"--gin.SEED={self.seed}"]

    def fill(self, binding: str) -> str:
        """`{KEY}` -> this point's value of grid key KEY (a gin string without its quotes)."""
        for key, value in self.assignment:
            try:
                plain = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                plain = value
            binding = binding.replace("{" + key + "}", plain if isinstance(plain, str) else value)
        return binding

    @property
    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.dir, DONE))


def reached_step(model_dir: str) -> int:
    """The newest saved step (numpy_checkpoints/checkpoint_<step>, else checkpoints/<step>); -1 if none."""
    steps = [-1]
    for sub, pattern in (("numpy_checkpoints", r"checkpoint_(\d+)"), ("checkpoints", r"(\d+)")):
        path = os.path.join(model_dir, sub)
        if os.path.isdir(path):
            steps += [int(m[1]) for m in (re.fullmatch(pattern, d) for d in os.listdir(path)) if m]
    return max(steps)


def check_gin(train_args: Sequence[str]) -> int:
    """Parses a run's gin configuration as the training CLI will; returns its TRAIN_STEPS."""
    import gin
    from prompt_tuning import gin_utils
    files = [a.split("=", 1)[1] for a in train_args if a.startswith("--gin_file=")]
    rest, bindings = gin_utils.split_gin_args([a for a in train_args if not a.startswith("--gin_file=")])
    search = [a.split("=", 1)[1] for a in rest if a.startswith("--gin_search_paths=")]
    gin.clear_config()
    try:
        gin_utils.parse_gin(files, bindings, ",".join(search).split(","))
        steps = gin_utils.macro("TRAIN_STEPS")
    finally:
        gin.clear_config()
    if not isinstance(steps, int):
        raise gin_utils.GinConfigError(f"TRAIN_STEPS is {steps!r}, not an int")
    return steps


def run_one(run: Run, args: List[str], train_steps: int) -> str:
    """Trains (or resumes) one run; 'done', or why not.  Output goes to <run dir>/sweep.log."""
    os.makedirs(run.dir, exist_ok=True)
    start = time.time()
    with open(os.path.join(run.dir, "sweep.log"), "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} python -m prompt_tuning.train {' '.join(args)}\n")
        log.flush()
        rc = subprocess.call([sys.executable, "-m", "prompt_tuning.train", *args], stdout=log,
                             stderr=subprocess.STDOUT)
    step = reached_step(run.dir)
    if rc != 0:
        return f"FAILED (exit {rc}; see {os.path.join(run.dir, 'sweep.log')})"
    if step < train_steps:
        return f"incomplete (reached step {step} of {train_steps}; rerun to resume)"
    with open(os.path.join(run.dir, DONE), "w") as f:
        json.dump({"point": run.point, "assignment": run.assignment, "seed": run.seed, "step": step,
                   "train_steps": train_steps, "wall_s": round(time.time() - start, 1), "args": args}, f, indent=1)
    return "done"


# ------------------------------------------------------------------------------------------- results


def read_evaluations(model_dir: str) -> List[dict]:
    """eval/metrics.jsonl, one record per step (a step evaluated again after a resume: its last record)."""
    path = os.path.join(model_dir, "eval", "metrics.jsonl")
    by_step = {}
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                by_step[int(record["step"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise SweepError(f"{path}:{lineno}: not an evaluation record ({e})") from None
    return [by_step[s] for s in sorted(by_step)]


def _mean_of(record: dict, pattern: "re.Pattern") -> Optional[float]:
    values = [record[k] for k in record if k != "step" and pattern.fullmatch(k)]
    return float(np.mean(values)) if values else None


def score_run(model_dir: str, metric: str, select: Optional[str] = None) -> dict:
    """The run's result: --metric at its best evaluation after step 0 by --select (default: --metric).

    A regex's matching metrics are averaged per evaluation.  Returns {'best', 'best_step', 'keys'}.
    """
    path = os.path.join(model_dir, "eval", "metrics.jsonl")
    if not os.path.isfile(path):
        raise SweepError(f"{path}: no evaluations (set EVAL_PERIOD)")
    report, chooser = re.compile(metric), re.compile(select or metric)
    evaluations = read_evaluations(model_dir)
    scored = []
    for record in evaluations:
        value, rank = _mean_of(record, report), _mean_of(record, chooser)
        if record["step"] > 0 and value is not None and rank is not None:
            scored.append((rank, -record["step"], value, record))
    if not scored:
        available = sorted({k for r in evaluations for k in r if k != "step"})
        wanted = repr(metric) + (f" and {select!r}" if select else "")
        raise SweepError(f"{path}: no evaluation after step 0 has metrics matching {wanted} "
                         f"(metrics: {', '.join(available) or 'none'})")
    _, neg_step, value, record = max(scored, key=lambda s: s[:2])  # ties: the earliest step
    keys = sorted(k for k in record if k != "step" and report.fullmatch(k))
    return {"best": value, "best_step": -neg_step, "keys": keys}


def _stats(entry: dict) -> dict:
    values = np.asarray(entry["best"], float)
    entry["n"] = len(values)
    entry["mean"] = float(values.mean()) if len(values) else None
    entry["std"] = float(values.std(ddof=1)) if len(values) > 1 else None
    return entry


def summarise(runs: Sequence[Run], metric: str, select: Optional[str] = None) -> List[dict]:
    """One record per point (in grid order) over its finished runs: values per seed, mean, sample std."""
    points: Dict[str, dict] = {}
    for run in runs:
        entry = points.setdefault(run.point, {"point": run.point, "assignment": dict(run.assignment),
                                              "seeds": [], "best": [], "best_step": [], "metric": metric,
                                              "select": select or metric})
        if not run.done:
            continue
        scored = score_run(run.dir, metric, select)
        entry["seeds"].append(run.seed)
        entry["best"].append(scored["best"])
        entry["best_step"].append(scored["best_step"])
        entry["metrics"] = scored["keys"]
    return [_stats(e) for e in points.values()]


def average_over(summary: Sequence[dict], key: str) -> List[dict]:
    """Per setting of the other keys and per seed, the mean over `key`'s values (e.g. the SuperGLUE score
    over the tasks, given as gin files); then mean and std over seeds.  A seed counts once all values ran."""
    groups: Dict[tuple, dict] = {}
    for entry in summary:
        rest = tuple((k, v) for k, v in entry["assignment"].items() if k != key)
        group = groups.setdefault(rest, {"values": set(), "by_seed": {}})
        group["values"].add(entry["assignment"][key])
        for seed, value in zip(entry["seeds"], entry["best"]):
            group["by_seed"].setdefault(seed, []).append(value)
    out = []
    for rest, group in groups.items():
        seeds = sorted(s for s, v in group["by_seed"].items() if len(v) == len(group["values"]))
        out.append(_stats({"point": point_name(rest), "assignment": dict(rest), "averaged_over": key,
                           "over": len(group["values"]), "seeds": seeds,
                           "best": [float(np.mean(group["by_seed"][s])) for s in seeds], "best_step": None,
                           "metric": summary[0]["metric"] if summary else None}))
    return out


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(summary: Sequence[dict], keys: Sequence[str]) -> str:
    header = list(keys) + ["runs", "mean", "std", "per seed" + ("" if summary and summary[0].get("averaged_over")
                                                              else " (best step)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        steps = entry["best_step"] or [None] * len(entry["best"])
        per_seed = ", ".join(f"{v:.2f}" + (f" ({s})" if s is not None else "") for v, s in zip(entry["best"], steps))
        cells = [entry["assignment"][k].replace("|", "\\|") for k in keys]
        cells += [str(entry["n"]), _fmt(entry["mean"]), _fmt(entry["std"]), per_seed or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def caption(metric: str, select: Optional[str]) -> str:
    chosen = f"its best evaluation by {select}" if select and select != metric else "its best evaluation"
    return (f"Each run: {metric} at {chosen} after step 0; mean and sample standard deviation over seeds.\n")


def _number(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def plot(summary: Sequence[dict], keys: Sequence[str], x_key: str, metric: str, path: str) -> str:
    """Figure 3's layout: the metric against x_key, one line per setting of the other keys, std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != x_key]
    x_values = list(dict.fromkeys(e["assignment"][x_key] for e in summary)) if x_key else ["-"]
    numeric = x_key and all(_number(v) is not None for v in x_values)
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(x_values)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: Dict[tuple, list] = {}
    for entry in summary:
        if entry["mean"] is not None:
            lines.setdefault(tuple(entry["assignment"][k] for k in others), []).append(entry)
    for setting, entries in lines.items():
        entries.sort(key=lambda e: position[e["assignment"][x_key]] if x_key else 0)
        xs = [position[e["assignment"][x_key]] if x_key else 0 for e in entries]
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or metric
        ax.errorbar(xs, [e["mean"] for e in entries], yerr=[e["std"] or 0.0 for e in entries], marker="o",
                    capsize=3, label=label)
    if numeric and len(x_values) > 2 and max(position.values()) / max(min(position.values()), 1e-9) >= 20:
        ax.set_xscale("log")  # prompt lengths 1..150, model sizes: the paper's log axes
    if numeric:
        ax.set_xticks([position[v] for v in x_values], x_values)
    else:
        ax.set_xticks(range(len(x_values)), x_values, rotation=15)
    ax.set_xlabel(x_key or "")
    ax.set_ylabel(metric)
    ax.set_title("best evaluation per run: mean ± std over repeats", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(output_dir: str, summary: Sequence[dict], keys: Sequence[str], x_key: Optional[str],
                  metric: str, select: Optional[str] = None, average_key: Optional[str] = None) -> Dict[str, str]:
    """results.jsonl (every point, then the averages), results.md and results.png (the averages if any)."""
    paths = {k: os.path.join(output_dir, f"results.{k}") for k in ("jsonl", "md", "png")}
    averaged = average_over(summary, average_key) if average_key else []
    rest = [k for k in keys if k != average_key]
    with open(paths["jsonl"], "w") as f:
        for entry in list(summary) + averaged:
            f.write(json.dumps(entry) + "\n")
    with open(paths["md"], "w") as f:
        f.write(caption(metric, select) + "\n" + markdown(summary, keys))
        if average_key:
            f.write(f"\nAveraged over {average_key} (per seed, then mean and std over seeds):\n\n")
            f.write(markdown(averaged, rest))
    plot(averaged or summary, rest if average_key else keys, x_key, metric, paths["png"])
    return paths


# ---------------------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file of every run (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key (repeatable)")
    parser.add_argument("--grid_sep", default=",", help="separator of --grid values (default ',')")
    parser.add_argument("--repeats", type=int, default=1, help="runs per point, SEED = 0..repeats-1")
    parser.add_argument("--metric", required=True, help="regex over metric names, e.g. 'mytask/accuracy'")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--select", default=None, help="regex of the metric that picks each run's best "
                        "evaluation (default: --metric); e.g. the source task's dev metric for a transfer")
    parser.add_argument("--average", default=None, metavar="KEY",
                        help="also average over this grid key's values per seed (e.g. gin_file over tasks)")
    parser.add_argument("--x", default=None, help="grid key on the plot's x axis (default: the first other "
                        "than --average)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'KEY = VALUE' of "
                        "every run (as --gin.KEY=VALUE)")
    parser.add_argument("--dry_run", action="store_true", help="print the runs' commands and stop")
    argv = list(sys.argv[1:] if argv is None else argv)
    args, train_extra = parser.parse_known_args([a for a in argv if not a.startswith("--gin.")])
    bindings = [b.strip() for b in args.gin_bindings] + [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
    try:
        return _sweep(args, bindings, train_extra)
    except SweepError as e:
        raise SystemExit(f"sweep: {e}") from None


def _sweep(args, bindings: List[str], train_extra: List[str]) -> int:
    from prompt_tuning import gin_utils
    if not args.gin_file:
        raise SweepError("no --gin_file given")
    if args.repeats < 1:
        raise SweepError(f"--repeats must be at least 1, got {args.repeats}")
    for binding in bindings:
        if binding.split("=", 1)[0].strip() in RESERVED:
            raise SweepError(f"--gin.{binding}: the sweep sets MODEL_DIR and SEED itself")
    grid = parse_grid(args.grid, args.grid_sep)
    keys = [k for k, _ in grid]
    if args.average is not None and args.average not in keys:
        raise SweepError(f"--average {args.average}: not a grid key ({', '.join(keys)})")
    x_key = args.x or next((k for k in keys if k != args.average), None)
    if x_key is not None and (x_key not in keys or x_key == args.average):
        raise SweepError(f"--x {x_key}: not a grid key other than --average ({', '.join(keys)})")
    for flag, pattern in (("--metric", args.metric), ("--select", args.select)):
        try:
            re.compile(pattern or "")
        except re.error as e:
            raise SweepError(f"{flag} {pattern!r}: not a regular expression ({e})") from None
    points = [list(zip(keys, values)) for values in itertools.product(*(v for _, v in grid))]
    # Seeds outer: every point runs once before any runs twice, so a sweep stopped early covers the grid.
    runs = [Run(args.output_dir, point, seed) for seed in range(args.repeats) for point in points]

    gin_utils.register_configurables()
    plans = []
    for run in runs:
        train_args = run.train_args(args.gin_file, bindings) + list(train_extra)
        try:
            steps = check_gin(train_args)
        except gin_utils.GinConfigError as e:
            raise SweepError(f"point {run.point}: gin error: {e}") from None
        plans.append((run, train_args, steps))
    print(f"sweep: {len(points)} points x {args.repeats} repeats = {len(runs)} runs in {args.output_dir}", flush=True)
    if args.dry_run:
        for run, train_args, _ in plans:
            print("python -m prompt_tuning.train " + " ".join(train_args))
        return 0

    os.makedirs(args.output_dir, exist_ok=True)
    failures = 0
    for i, (run, train_args, steps) in enumerate(plans, start=1):
        label = f"[{i}/{len(runs)}] {run.point}/seed_{run.seed}"
        if run.done:
            with open(os.path.join(run.dir, DONE)) as f:
                changed = json.load(f).get("args") != train_args
            # A point's name comes from its grid values only: say so when other bindings have changed since.
            print(f"{label}: skipped (finished" + ("; it ran with other arguments, see its sweep_done.json)"
                                                   if changed else ")"), flush=True)
            continue
        resuming = reached_step(run.dir) >= 0
        print(f"{label}: {'resuming' if resuming else 'training'} ...", end=" ", flush=True)
        start = time.time()
        status = run_one(run, train_args, steps)
        failures += status != "done"
        print(f"{status} ({time.time() - start:.0f} s)", flush=True)

    summary = summarise(runs, args.metric, args.select)
    paths = write_results(args.output_dir, summary, keys, x_key, args.metric, args.select, args.average)
    print()
    print(open(paths["md"]).read(), end="")
    print(f"results: {paths['jsonl']}, {paths['md']}, {paths['png']}")
    if failures:
        print(f"sweep: {failures} of {len(runs)} runs did not finish; rerun the same command to resume them",
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
