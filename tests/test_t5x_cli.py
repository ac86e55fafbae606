"""t5x's own CLI (python -m t5x.train / t5x.eval / t5x.infer) on the shipped tiny model with gin/t5x_cli.

Real subprocesses, no mocks: one t5x.train run of the shipped configuration (t5x's Adafactor under its masked
MultiOptimizer, PromptCheckpointer) feeds the eval and infer checks; the parity check trains 20 steps under
both t5x.train and prompt_tuning.train with the same optimizer implementation.  Skipped without t5x.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("t5x", reason="t5x is not installed (pip install --no-deps ../shared/t5x and the 't5x' extra; "
                                  "README: Training with t5x's own CLI)")

from flax import serialization, traverse_util  # noqa: E402

from prompt_tuning.prompts.initializers import checkpoint_embedding  # noqa: E402
from prompt_tuning.scripts.find_module import gin_dir, t5x_search_paths  # noqa: E402
from prompt_tuning.t5x_bridge import parity  # noqa: E402
from prompt_tuning.t5x_bridge.checkpointing import MARKER  # noqa: E402

STEPS = 4
TINY = parity.TINY_CHECKPOINT
FULL_STATE_BYTES = 3_000_000  # the tiny model's parameters alone are 3.2 MB


def _one_device_env():
    """The CLIs as a user runs them on CPU: one device.  (conftest's 8 simulated devices: t5x's CPU mesh puts
    them all on its 'model' axis, which the tiny model's 4 heads cannot be split over.)"""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _run(command, log):
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=_one_device_env())
    if done.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        pytest.fail(f"{' '.join(command[1:3])} exited {done.returncode}; log {log}:\n{tail}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A t5x.train run (shipped t5x_cli config), a prompt checkpoint every step."""
    out = tmp_path_factory.mktemp("t5x_train")
    model_dir = str(out / "model")
    extra = parity.write_extra_gin(str(out), "t5x_defaults")
    _run(parity.t5x_train_command(model_dir, STEPS, gin_files=[extra]), str(out / "train.log"))
    return model_dir


def _flat_checkpoint(path):
    with open(os.path.join(path, "checkpoint"), "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    return traverse_util.flatten_dict(contents["optimizer"], sep="/")


def _byte_rows(letters):
    import seqio
    table = checkpoint_embedding(TINY)
    return table, table[[seqio.ByteVocabulary().encode(c)[0] for c in letters]]


def test_search_path_helper_names_t5x_and_our_gin():
    t5x_parent, ours = t5x_search_paths()
    assert os.path.isfile(os.path.join(t5x_parent, "t5x", "configs", "runs", "finetune.gin"))
    assert os.path.isfile(os.path.join(ours, "t5x_cli", "runs", "prompt_finetune.gin"))
    assert ours == gin_dir()


def test_initial_prompt_rows_come_from_the_frozen_checkpoint():
    """t5x initialises from scratch (a random table); every initial prompt row is a row of the checkpoint's."""
    import gin
    import jax
    from prompt_tuning.t5x_bridge.models import PromptEncoderDecoderModel
    gin.clear_config()
    gin.add_config_file_search_path(gin_dir())
    gin.parse_config_files_and_bindings(
        ["t5x_cli/models/synthetic_tiny_prompt.gin", "t5x_cli/prompts/from_class_labels.gin"],
        [f"INITIAL_CHECKPOINT_PATH = {TINY!r}", "CLASS_LABELS = ['c', 'a', 'f']", "PROMPT_LENGTH = 12",
         "prompt_init_fallback/prompts.sampled_vocab.population_size = 259"])
    try:
        variables = PromptEncoderDecoderModel().get_initial_variables(
            jax.random.PRNGKey(3), {"encoder_input_tokens": (2, 16), "decoder_input_tokens": (2, 4)})
    finally:
        gin.clear_config()
    prompt = np.asarray(variables["params"]["encoder"]["prompt"]["prompt"])
    random_table = np.asarray(variables["params"]["token_embedder"]["embedding"])
    table, labels = _byte_rows("caf")
    np.testing.assert_array_equal(prompt[:3], labels)
    for row in prompt:
        assert np.any(np.all(table == row, axis=1)), "a prompt row is not a row of the checkpoint's embedding"
        assert not np.any(np.all(random_table == row, axis=1))
    assert variables["params_axes"]["encoder"]["prompt"]["prompt_axes"].names == ("prompt", "prompt_embed")


def test_t5x_train_trains_and_saves_only_the_prompt(trained):
    last = os.path.join(trained, f"checkpoint_{STEPS}")
    assert os.path.isfile(os.path.join(last, MARKER))
    flat = _flat_checkpoint(last)
    stored = {k for k, v in flat.items() if v is not None and k != "state/step"}
    # Only the prompt and its Adafactor state; every frozen leaf has no optimizer state (masked MultiOptimizer).
    assert stored and all(k.startswith(("target/encoder/prompt/prompt", "state/param_states/encoder/prompt/prompt"))
                          for k in stored), sorted(stored)[:8]
    assert any(k.startswith("state/param_states/decoder/") for k in flat)  # frozen leaves present, state None
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(last) for f in fs)
    assert size < FULL_STATE_BYTES / 10
    # The prompt moved away from its class-label initialisation (one row per letter a-h), step by step.
    _, start = _byte_rows(parity.LABELS)
    first, final = parity.t5x_prompt(trained, 1), parity.t5x_prompt(trained, STEPS)
    assert np.abs(first - start).max() > 1e-3 and np.abs(final - first).max() > 1e-3


def _common(trained):
    return [f"--gin_search_paths={','.join(t5x_search_paths())}", "--gin_file=t5x_cli/models/synthetic_tiny_prompt.gin",
            f"--gin.PROMPT_LENGTH={len(parity.LABELS)}", f"--gin.MIXTURE_OR_TASK_NAME={parity.TASK!r}",
            "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks'", f"--gin.INITIAL_CHECKPOINT_PATH={TINY!r}",
            f"--gin.CHECKPOINT_PATH={os.path.join(trained, f'checkpoint_{STEPS}')!r}",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}"]


def test_t5x_eval_decodes_with_the_trained_prompt(trained, tmp_path):
    _run([sys.executable, "-m", "t5x.eval", *_common(trained), "--gin_file=t5x_cli/runs/prompt_eval.gin",
          f"--gin.EVAL_OUTPUT_DIR={str(tmp_path)!r}"], str(tmp_path / "eval.log"))
    with open(tmp_path / "inference_eval" / f"{parity.TASK}-metrics.jsonl") as f:
        metrics = json.loads(f.readline())
    assert metrics["step"] == STEPS and 0.0 <= metrics["accuracy"] <= 100.0
    with open(tmp_path / "inference_eval" / f"{parity.TASK}-{STEPS:06d}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 512 and all(isinstance(r["prediction"], str) for r in rows)
    # The frozen model was really restored: a random one does not answer in letters of the task's alphabet.
    assert sum(r["prediction"] in "abcdefgh" and len(r["prediction"]) == 1 for r in rows) > 400


def test_t5x_infer_writes_predictions(trained, tmp_path):
    _run([sys.executable, "-m", "t5x.infer", *_common(trained), "--gin_file=t5x_cli/runs/prompt_infer.gin",
          f"--gin.INFER_OUTPUT_DIR={str(tmp_path)!r}"], str(tmp_path / "infer.log"))
    [name] = [n for n in os.listdir(tmp_path) if n.startswith(f"{parity.TASK}-predict.jsonl") and "COMPLETED" not in n]
    with open(tmp_path / name) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 512 and all("prediction" in r for r in rows)


def test_t5x_train_and_prompt_tuning_train_agree_with_the_same_optimizer(tmp_path):
    """20 steps, same data, init and optimizer implementation (optax SGD): prompts within 1e-4."""
    steps = 20
    t5x_dir, ours = str(tmp_path / "t5x"), str(tmp_path / "ours")
    extra = parity.write_extra_gin(str(tmp_path), "same_optimizer")
    _run(parity.t5x_train_command(t5x_dir, steps, gin_files=[extra]), str(tmp_path / "t5x.log"))
    _run(parity.project_train_command(ours, steps, parity.PROJECT_OPTIMIZER["same_optimizer"]),
         str(tmp_path / "ours.log"))
    ours_final, t5x_final = parity.project_prompt(ours, steps), parity.t5x_prompt(t5x_dir, steps)
    assert np.abs(ours_final - parity.project_prompt(ours, 1)).max() > 1e-3  # it trained
    np.testing.assert_allclose(t5x_final, ours_final, atol=1e-4, rtol=0)


def test_every_encoder_decoder_model_has_a_t5x_cli_file_that_parses():
    import gin
    models = os.path.join(gin_dir(), "models")
    ours = {f for f in os.listdir(models) if f.endswith("_prompt.gin")} - {"add_prompt.gin", "decoder_only_prompt.gin"}
    t5x_cli = set(os.listdir(os.path.join(gin_dir(), "t5x_cli", "models"))) - {"prompt_model.gin",
                                                                               "prompted_network.gin"}
    assert t5x_cli == ours
    for name in sorted(t5x_cli):
        gin.clear_config()
        gin.add_config_file_search_path(gin_dir())
        gin.parse_config_files_and_bindings([f"t5x_cli/models/{name}"], ["INITIAL_CHECKPOINT_PATH = None",
                                                                          "VOCABULARY = None"])
        assert gin.query_parameter("%MODEL").selector.endswith("PromptEncoderDecoderModel"), name
    gin.clear_config()
