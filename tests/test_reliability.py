"""Refusing what would waste or destroy a run: non-finite values, resumes that are not the same run, one-line
errors, data honesty.  Runs on the tiny model and task of prompt_tuning.train.testing."""
import functools
import os
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from prompt_tuning import errors, gin_utils, models, partitioning
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.checkpoint_io import read_prompt
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, identity, loop, testing
from prompt_tuning.train.checkpointing import read_trainable

LENGTHS = {"inputs": 12, "targets": 4}


def tiny_model(**config):
    return models.EncoderDecoderModel(Transformer(
        testing.tiny_config(**config), encoder_input_processor_factory=functools.partial(PromptProcessor, length=3)))


def _run(model_dir, steps, *, bindings=(), batch_size=8, model=None, **kwargs):
    gin.clear_config()
    gin.bind_parameter("Checkpointer.period", 2)
    for key, value in bindings:
        gin.bind_parameter(key, value)
    try:
        return loop.train(model_dir=str(model_dir), model=model or tiny_model(),
                          train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=batch_size),
                          train_steps=steps, log_every=2, model_parallel_size=2, **kwargs)
    finally:
        gin.clear_config()


def _listing(model_dir):
    """Every file under model_dir with its bytes: what a refused run must leave exactly as it was."""
    return {str(p.relative_to(model_dir)): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """4 steps, checkpoints at steps 2 and 4 (kept: the default keep is 2)."""
    model_dir = tmp_path_factory.mktemp("base")
    return model_dir, _run(model_dir, 4)


@pytest.fixture
def copy_of_base(base_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(base_run[0], target)
    return target


# ------------------------------------------------------------------------------------------ non-finite
INF_LR = [("prompt_tuning.train.optimizers.learning_rate_schedule.base_learning_rate", float("inf"))]


def test_infinite_learning_rate_stops_at_step_one_and_saves_nothing(tmp_path):
    with pytest.raises(errors.NonFiniteError, match=r"^step 1: non-finite"):
        _run(tmp_path, 4, bindings=INF_LR)
    assert not list((tmp_path / "checkpoints").glob("*/state")) and not (tmp_path / "numpy_checkpoints").exists()


def test_skip_mode_keeps_the_prompt_finite_and_counts(tmp_path):
    result = _run(tmp_path, 2, bindings=INF_LR, on_nonfinite="skip")
    assert result.last_train["skipped_nonfinite_steps"] == 2
    prompt = read_trainable(str(tmp_path))["encoder"]["prompt"]["prompt"]
    assert np.all(np.isfinite(prompt))


def test_token_ids_beyond_the_vocabulary_stop_with_the_step(tmp_path):
    # The tiny task's byte ids (letters and digits: 51-125) do not fit a 40-id vocabulary.
    with pytest.raises(errors.NonFiniteError, match=r"^step 1: the batch has token id \d+, but the model's "
                                                    r"vocabulary has 40 ids"):
        _run(tmp_path, 2, model=tiny_model(vocab_size=40))


def test_nan_prompts_are_refused_when_loaded(tmp_path):
    bad = np.ones((3, 16), np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(errors.UserError, match=r"bad\.npy holds 1 non-finite"):
        read_prompt(str(tmp_path / "bad.npy"))
    with pytest.raises(errors.UserError, match="non-finite"):
        read_prompt(bad)
    with pytest.raises(errors.UserError, match=r"bad\.npy holds 1 non-finite"):
        initializers.from_npy(str(tmp_path / "bad.npy"))(None, (3, 16))


# ------------------------------------------------------------------------------------------ run identity
def test_identity_ignores_the_mesh_and_sees_content():
    params = {"a": np.arange(24, dtype=np.float32).reshape(4, 6), "b": {"c": np.ones(5, np.float32)}}
    placed = {"a": jax.device_put(params["a"], jax.sharding.NamedSharding(
        partitioning.make_mesh(2), jax.sharding.PartitionSpec("data", "model"))), "b": params["b"]}
    assert identity.fingerprint(params) == identity.fingerprint(placed)
    changed = {"a": params["a"] * 1.0001, "b": params["b"]}
    assert identity.fingerprint(changed) != identity.fingerprint(params)


def test_resume_with_another_configuration_is_refused_and_changes_nothing(copy_of_base):
    before = _listing(copy_of_base)
    with pytest.raises(errors.ResumeMismatchError) as e:
        _run(copy_of_base, 6, batch_size=4)
    message = errors.one_line(e.value)   # gin appends "In call to configurable 'train'" on a line of its own
    assert "data.batch_size: 8 -> 4" in message and "new MODEL_DIR" in message
    assert _listing(copy_of_base) == before
    with pytest.raises(errors.ResumeMismatchError, match="frozen_model"):   # another frozen model
        _run(copy_of_base, 6, model=tiny_model(mlp_dim=48))
    assert _listing(copy_of_base) == before


def test_resume_despite_changes_keeps_the_earlier_checkpoints(copy_of_base):
    # (a binding the first start did not have, so this start's config.gin differs)
    result = _run(copy_of_base, 6, batch_size=4, resume_despite_changes=True,
                  bindings=[("Checkpointer.save_npy", True)])
    assert (result.start_step, result.step) == (4, 6)
    assert sorted(int(d) for d in os.listdir(copy_of_base / "checkpoints")) == [2, 4, 6]
    configs = sorted(p.name for p in copy_of_base.glob("config*.gin"))
    assert len(configs) == 2 and "config.gin" in configs   # the earlier start's config kept beside it


def test_train_steps_below_the_checkpoint_is_refused(copy_of_base):
    with pytest.raises(errors.UserError, match="TRAIN_STEPS=3 is below step 4"):
        _run(copy_of_base, 3)


def test_unreadable_newest_checkpoint_falls_back_to_the_older_one(copy_of_base, capsys):
    for f in (copy_of_base / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    result = _run(copy_of_base, 4)
    assert (result.start_step, result.step) == (2, 4)
    assert "resuming from step 2" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ data honesty
def test_truncation_is_reported_and_can_be_refused(capsys):
    cfg = data.DatasetConfig(testing.TINY_TASK, {"inputs": 4, "targets": 4}, batch_size=8)
    report = data.report_truncation(cfg, num_examples=32)
    cut, seen = report[testing.TINY_TASK]["inputs"]
    assert seen == 32 and 0 < cut <= 32
    assert f"inputs cut to 4 tokens in {cut} of 32" in capsys.readouterr().out
    with pytest.raises(errors.UserError, match=r"TASK_FEATURE_LENGTHS\['inputs'\]=4 cuts"):
        data.report_truncation(cfg, max_share=0.0, num_examples=32)


def test_best_metric_must_be_a_metric_of_the_evaluation(tmp_path):
    with pytest.raises(errors.UserError, match=r"BEST_METRIC 'nope/accuracy' is not a metric.*pt_tiny_count/"):
        _run(tmp_path, 2, eval_period=2, bindings=[("Checkpointer.metric", "nope/accuracy")])


def test_named_culprits():
    with pytest.raises(errors.UserError, match=r"TASK_FEATURE_LENGTHS=\{'inputs': 12\} lacks \['targets'\]"):
        tiny_model().dummy_batch({"inputs": 12})
    with pytest.raises(errors.UserError, match=r"BATCH_SIZE=3 is not divisible by the 4 data-parallel devices "
                                               r"\(8 devices / MODEL_PARALLEL_SIZE=2\)"):
        data.check_batch_size(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=3),
                              partitioning.make_mesh(2))


# ------------------------------------------------------------------------------------------ gin macros


@pytest.fixture(scope="module")
def tiny_gin(tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "tiny.gin"
    path.write_text(testing.TINY_RUN_GIN)
    return str(path)


@pytest.mark.parametrize("binding, message", [
    ("Batch_Size = 4", "macro Batch_Size set on the command line is not used by any gin file (did you mean "
                       "BATCH_SIZE?)"),
    ("BATCH_SIZE = '32'", "macro BATCH_SIZE='32' must be a positive int"),
    ("PROMPT_LENGTH = 0", "macro PROMPT_LENGTH=0 must be a positive int"),
    ("TASK_FEATURE_LENGTHS = {'inputs': '12'}", "macro TASK_FEATURE_LENGTHS={'inputs': '12'} must be a dict"),
])
def test_macro_mistakes_are_one_line(tiny_gin, binding, message):
    gin.clear_config()
    gin_utils.register_configurables()
    try:
        with pytest.raises(gin_utils.GinConfigError) as e:
            gin_utils.parse_gin([tiny_gin], ["MODEL_DIR = '/tmp/unused'", binding])
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    finally:
        gin.clear_config()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "prompt_tuning.train", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_cli_prints_one_line_and_exits_non_zero(tiny_gin, tmp_path):
    args = [f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.BATCH_SIZE=3"]
    failed = _cli(*args)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: BATCH_SIZE=3 is not divisible by the 8 data-parallel devices")
    assert "Traceback" not in failed.stderr
    shown = _cli(*args, "--traceback")
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "UserError" in shown.stderr
