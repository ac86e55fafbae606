"""kill -9 of a real training process, at a seeded pseudo-random step and while a checkpoint is being written:
the resumed run ends with the uninterrupted run's prompt, bit for bit, and the same per-step losses."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from prompt_tuning.train import testing

STEPS = 12
GIN = testing.TINY_RUN_GIN + f"""
TRAIN_STEPS = {STEPS}
EVAL_PERIOD = 0
CHECKPOINT_PERIOD = 2
DROPOUT_RATE = 0.1
loop.train.log_every = 1
"""


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "kill.gin"
    path.write_text(GIN)
    return str(path)


def _start(gin_file, model_dir):
    return subprocess.Popen([sys.executable, "-m", "prompt_tuning.train", f"--gin_file={gin_file}",
                             f"--gin.MODEL_DIR='{model_dir}'"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def _run_to_end(gin_file, model_dir):
    process = _start(gin_file, model_dir)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-2000:]


def _kill_at_step(gin_file, model_dir, step):
    """Starts the run and SIGKILLs it once it has printed step `step`."""
    process = _start(gin_file, model_dir)
    for line in process.stdout:
        if f" step {step:>2}/{STEPS} " in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL


def _kill_during_checkpoint_write(gin_file, model_dir):
    """Starts the run and SIGKILLs it the moment an orbax temporary checkpoint directory appears."""
    checkpoints = os.path.join(model_dir, "checkpoints")
    process, seen = _start(gin_file, model_dir), []

    def watch():
        while process.poll() is None:
            names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
            tmp = [n for n in names if "tmp" in n]
            if tmp:
                process.send_signal(signal.SIGKILL)
                seen.extend(tmp)
                return
            time.sleep(0.0005)
    watcher = threading.Thread(target=watch)
    watcher.start()
    process.communicate(timeout=600)
    watcher.join()
    return seen, process.returncode


def _final(model_dir):
    prompt = np.load(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{STEPS}", "encoder.prompt.prompt.npy"))
    losses = {}
    with open(os.path.join(model_dir, "train", "scalars.jsonl")) as f:
        for line in f:                       # a resumed start re-logs the steps after its checkpoint
            row = json.loads(line)
            losses.setdefault(row["step"], set()).add(row["loss"])
    return prompt, losses


def test_kill_9_then_resume_gives_the_uninterrupted_prompt(gin_file, tmp_path, shared_compilation_cache):
    reference = tmp_path / "reference"
    _run_to_end(gin_file, reference)
    prompt, losses = _final(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    refused = subprocess.run([sys.executable, "-m", "prompt_tuning.train", f"--gin_file={gin_file}",
                              f"--gin.MODEL_DIR='{reference}'", "--gin.BATCH_SIZE=16"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"error: MODEL_DIR={reference} holds another run (step {STEPS}); it differs in data.batch_size: 8 -> 16")

    killed = tmp_path / "killed"
    step = random.Random(1234).randint(3, STEPS - 3)   # seeded: the same step on every run of the test
    _kill_at_step(gin_file, killed, step)
    saved = sorted(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
    assert saved and max(saved) < STEPS
    tmp_seen, returncode = _kill_during_checkpoint_write(gin_file, killed)
    assert tmp_seen and returncode == -signal.SIGKILL, "the kill did not land during a checkpoint write"
    _run_to_end(gin_file, killed)

    resumed_prompt, resumed_losses = _final(killed)
    np.testing.assert_array_equal(resumed_prompt, prompt)
    assert all(len(values) == 1 for values in resumed_losses.values()), resumed_losses  # re-run steps agree
    assert {s: v.pop() for s, v in resumed_losses.items()} == {s: v.pop() for s, v in losses.items()}
