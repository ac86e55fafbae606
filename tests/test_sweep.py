"""The ablation sweep runner: grid parsing, one training process per run, resume/skip, mean and std, figure."""
import json
import os
import shutil
import numpy as np
import pytest

from prompt_tuning.scripts import sweep
from prompt_tuning.scripts.demo import ASSET_CHECKPOINT

METRIC = "synthetic_second_letter/accuracy"
TINY = ["--gin_file=runs/synthetic_second_letter.gin", f"--gin.INITIAL_CHECKPOINT_PATH='{ASSET_CHECKPOINT}'",
        "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=2", "--gin.CHECKPOINT_PERIOD=2", "--gin.KEEP_CHECKPOINTS=2",
        "--gin.BATCH_SIZE=8", "--gin.loop.train.eval_at_start=False", "--gin.loop.train.eval_num_examples=32",
        f"--metric={METRIC}"]


# ------------------------------------------------------------------------------------------ the grid


@pytest.mark.parametrize("text,values", [
    ("1,5,20,100", ["1", "5", "20", "100"]),
    ("@prompts.uniform(),@prompts.sampled_vocab()", ["@prompts.uniform()", "@prompts.sampled_vocab()"]),
    ("['a','b'],['c','d']", ["['a','b']", "['c','d']"]),
    ("{'inputs': 8, 'targets': 2}, {'inputs': 16, 'targets': 4}",
     ["{'inputs': 8, 'targets': 2}", "{'inputs': 16, 'targets': 4}"]),
    ("'a,b',\"c, d\"", ["'a,b'", '"c, d"']),
    ("@prompts.uniform(scale=0.1),@f(x=[1, (2, 3)])", ["@prompts.uniform(scale=0.1)", "@f(x=[1, (2, 3)])"]),
])
def test_values_split_outside_brackets_and_quotes(text, values):
    assert sweep.split_values(text) == values


def test_alternative_separator_and_bad_grids():
    assert sweep.parse_grid(["K=a,b;c"], sep=";") == [("K", ["a,b", "c"])]
    for spec, message in [("K=[1,2", "unclosed '\\]'"), ("K=1)", "unbalanced '\\)'"), ("K=1,,2", "empty value"),
                          ("K", "expected KEY=VALUE1,VALUE2"), ("SEED=1,2", "use --repeats"),
                          ("K='x", "unclosed \"'\"")]:
        with pytest.raises(sweep.SweepError, match=message):
            sweep.parse_grid([spec])
    with pytest.raises(sweep.SweepError, match="given twice"):
        sweep.parse_grid(["K=1", "K=2"])


def test_point_names_are_readable_and_distinct():
    assert sweep.point_name([("PROMPT_LENGTH", "5")]) == "PROMPT_LENGTH-5"
    a = sweep.point_name([("PROMPT_INIT", "@prompts.uniform()")])
    b = sweep.point_name([("PROMPT_INIT", "@prompts.uniform")])
    assert a.startswith("PROMPT_INIT-prompts.uniform__") and a != b and "/" not in a and "'" not in a
    assert sweep.point_name([("gin_file", "reproduce/superglue/rte.gin")]).startswith("gin_file-rte.gin")


def test_dry_run_commands(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert sweep.main(TINY + ["--grid", "PROMPT_LENGTH=1,5", "--grid", "PROMPT_INIT=@prompts.uniform(),"
                              "@prompt_init/prompts.sampled_vocab()", "--repeats", "2", f"--output_dir={out_dir}",
                              "--gin_bindings", "Z_LOSS = 0.001", "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"sweep: 4 points x 2 repeats = 8 runs in {out_dir}"
    commands = lines[1:]
    assert len(commands) == 8 and not out_dir.exists()
    first = commands[0].split()
    assert first[:3] == ["python", "-m", "prompt_tuning.train"]
    # Fixed bindings, then the point's, then the run's own directory and seed (later bindings win in gin).
    assert first[-4:] == ["--gin.PROMPT_LENGTH=1", "--gin.PROMPT_INIT=@prompts.uniform()",
                          f"--gin.MODEL_DIR='{out_dir}/{sweep.point_name([('PROMPT_LENGTH', '1'), ('PROMPT_INIT', '@prompts.uniform()')])}/seed_0'",
                          "--gin.SEED=0"]
    assert commands[0].startswith("python -m prompt_tuning.train --gin_file=runs/synthetic_second_letter.gin --gin.Z_LOSS = 0.001 ")
    assert [c.split()[-1] for c in commands] == ["--gin.SEED=0"] * 4 + ["--gin.SEED=1"] * 4  # seeds outer


def test_gin_mistakes_fail_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"^sweep: point PROMPT_LENGTHS-1: gin error: macro PROMPT_LENGTHS set on the "
                                         r"command line is not used by any gin file \(did you mean PROMPT_LENGTH\?\)$"):
        sweep.main(TINY + ["--grid", "PROMPT_LENGTHS=1", f"--output_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="the sweep sets MODEL_DIR and SEED itself"):
        sweep.main(TINY + ["--gin.SEED=3", f"--output_dir={tmp_path}"])
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------- results


def _fake_run(root, point, seed, evaluations, done=True):
    run_dir = root / point / f"seed_{seed}"
    (run_dir / "eval").mkdir(parents=True)
    with open(run_dir / "eval" / "metrics.jsonl", "w") as f:
        for e in evaluations:
            f.write(json.dumps(e) + "\n")
    if done:
        (run_dir / sweep.DONE).write_text("{}")


def test_best_over_evaluations_mean_and_sample_std(tmp_path):
    runs = [sweep.Run(str(tmp_path), [("L", "1")], s) for s in range(3)] + [sweep.Run(str(tmp_path), [("L", "5")], 0)]
    a, b = "t/accuracy", "t/f1"
    _fake_run(tmp_path, "L-1", 0, [{"step": 0, a: 99, b: 99}, {"step": 2, a: 40, b: 60}, {"step": 4, a: 30, b: 30}])
    _fake_run(tmp_path, "L-1", 1, [{"step": 2, a: 10, b: 10}, {"step": 2, a: 70, b: 70}])  # re-evaluated: last counts
    _fake_run(tmp_path, "L-1", 2, [{"step": 2, a: 20, b: 40}], done=False)  # unfinished: not counted
    _fake_run(tmp_path, "L-5", 0, [{"step": 2, a: 80, b: 0}])
    summary = sweep.summarise(runs, "t/(accuracy|f1)")  # the mean of both metrics per evaluation
    one, five = summary
    assert one["best"] == [50.0, 70.0] and one["best_step"] == [2, 2] and one["seeds"] == [0, 1]
    assert one["mean"] == 60.0 and one["std"] == pytest.approx(np.std([50, 70], ddof=1))
    assert five["best"] == [40.0] and five["std"] is None
    table = sweep.markdown(summary, ["L"])
    assert "| 1 | 2 | 60.00 | 14.14 | 50.00 (2), 70.00 (2) |" in table and "| 5 | 1 | 40.00 | n/a |" in table
    paths = sweep.write_results(str(tmp_path), summary, ["L"], "L", "t/(accuracy|f1)")
    assert os.path.getsize(paths["png"]) > 1000
    assert [json.loads(line)["mean"] for line in open(paths["jsonl"])] == [60.0, 40.0]
    with pytest.raises(sweep.SweepError, match=r"metrics.jsonl: no evaluation after step 0 has metrics matching "
                                               r"'t/em' \(metrics: t/accuracy, t/f1\)"):
        sweep.summarise(runs, "t/em")


def test_select_picks_the_step_and_average_over_tasks(tmp_path):
    """Transfer: report the target at the step the source's dev set chose; a score averaged over tasks."""
    src, tgt = "src/accuracy", "tgt/accuracy"
    _fake_run(tmp_path, "T-x", 0, [{"step": 2, src: 50, tgt: 90}, {"step": 4, src: 80, tgt: 60}])
    run = sweep.Run(str(tmp_path), [("T", "x")], 0)
    assert sweep.score_run(run.dir, tgt, select=src) == {"best": 60.0, "best_step": 4, "keys": [tgt]}
    assert sweep.score_run(run.dir, tgt)["best"] == 90.0
    # Two "tasks" (gin files) x two seeds at one size; the size's score per seed is the mean over tasks.
    runs = []
    for task, values in (("a.gin", (10, 20)), ("b.gin", (30, 60))):
        for seed, value in enumerate(values):
            runs.append(sweep.Run(str(tmp_path), [("S", "small"), ("gin_file", task)], seed))
            _fake_run(tmp_path, runs[-1].point, seed, [{"step": 1, f"{task}/accuracy": value}])
    summary = sweep.summarise(runs, ".*/accuracy")
    (avg,) = sweep.average_over(summary, "gin_file")
    assert avg["assignment"] == {"S": "small"} and avg["best"] == [20.0, 40.0] and avg["over"] == 2
    assert avg["mean"] == 30.0 and avg["std"] == pytest.approx(np.std([20, 40], ddof=1))
    paths = sweep.write_results(str(tmp_path), summary, ["S", "gin_file"], "S", ".*/accuracy", None, "gin_file")
    text = open(paths["md"]).read()
    assert "Averaged over gin_file" in text and "| small | 2 | 30.00 | 14.14 | 20.00, 40.00 |" in text


def test_placeholders_take_the_points_value():
    run = sweep.Run("/out", [("MODEL_SIZE", "'xxl'"), ("PROMPT_LENGTH", "20")], 1)
    args = run.train_args(["f.gin"], ["INITIAL_CHECKPOINT_PATH='/ckpt/{MODEL_SIZE}/{PROMPT_LENGTH}'",
                                      "TASK_FEATURE_LENGTHS={'inputs': 8}"])
    assert "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/xxl/20'" in args and "--gin.TASK_FEATURE_LENGTHS={'inputs': 8}" in args
    assert args[-2:] == [f"--gin.MODEL_DIR='/out/{run.point}/seed_1'", "--gin.SEED=1"]


# ----------------------------------------------------------------------- real runs on the tiny model


@pytest.fixture
def run_sweep(shared_compilation_cache, capsys):
    """sweep.main in this process (its runs are training subprocesses, sharing compiled programs)."""

    def run(args):
        capsys.readouterr()
        code = sweep.main(args)
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        return out.out
    return run


def _snapshot(path):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(path) for f in files}


def test_sweep_trains_skips_finished_and_resumes_interrupted(tmp_path_factory, run_sweep):
    out_dir = tmp_path_factory.mktemp("sweep")
    # Two inits of one prompt shape (the runs share compiled programs); values with parentheses.
    args = TINY + ["--gin.PROMPT_LENGTH=8", "--grid", "PROMPT_INIT=@prompts.uniform(),@prompts.sampled_vocab()",
                   f"--output_dir={out_dir}"]
    uniform, sampled = (sweep.point_name([("PROMPT_INIT", v)]) for v in ("@prompts.uniform()", "@prompts.sampled_vocab()"))
    first = run_sweep(args)
    assert f"[1/2] {uniform}/seed_0: training ... done" in first
    assert f"[2/2] {sampled}/seed_0: training ... done" in first
    for point, init in ((uniform, "uniform"), (sampled, "sampled_vocab")):
        run_dir = out_dir / point / "seed_0"
        assert (run_dir / sweep.DONE).exists() and sweep.reached_step(str(run_dir)) == 4
        assert f"PROMPT_INIT = @prompts.{init}()" in (run_dir / "config.gin").read_text()
    results = [json.loads(line) for line in open(out_dir / "results.jsonl")]
    for entry in results:
        evals = sweep.read_evaluations(str(out_dir / entry["point"] / "seed_0"))
        assert [e["step"] for e in evals] == [2, 4]
        assert entry["best"] == [max(e[METRIC] for e in evals)] and entry["n"] == 1
    assert (out_dir / "results.md").read_text() in first and os.path.getsize(out_dir / "results.png") > 1000

    # Interrupt the second run after its step-2 checkpoint: no marker, no step-4 checkpoint.
    finished, interrupted = out_dir / uniform / "seed_0", out_dir / sampled / "seed_0"
    (interrupted / sweep.DONE).unlink()
    shutil.rmtree(interrupted / "checkpoints" / "4")
    shutil.rmtree(interrupted / "numpy_checkpoints" / "checkpoint_4")
    before = _snapshot(finished)
    second = run_sweep(args)
    assert f"[1/2] {uniform}/seed_0: skipped (finished)" in second
    assert f"[2/2] {sampled}/seed_0: resuming ... done" in second
    assert _snapshot(finished) == before  # a finished run's directory is never touched
    assert sweep.reached_step(str(interrupted)) == 4 and (interrupted / sweep.DONE).exists()
    starts = [line for line in (interrupted / "sweep.log").read_text().splitlines()
              if line.startswith("# ") and "python -m prompt_tuning.train" in line]
    assert len(starts) == 2 and starts[0].split(" ", 3)[3] == starts[1].split(" ", 3)[3]  # same command
    # Resumed from step 2: only step 4 was evaluated again (a fresh start would have evaluated step 2 too).
    steps = [json.loads(line)["step"] for line in open(interrupted / "eval" / "metrics.jsonl")]
    assert steps == [2, 4, 4]
