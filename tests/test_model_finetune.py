"""runs/model_finetune.gin: the paper's model-tuning baseline trains every parameter through the prompt-tuning trainer."""
import gin
import jax
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import gin_utils, partitioning
from prompt_tuning.train import __main__ as train_cli, optimizers, setup
from prompt_tuning.train.checkpointing import read_trainable

# The tiny T5 1.1 without a prompt: model tuning has none.
TINY_GIN = """
include 'models/t5_1_1.gin'
import prompt_tuning.train.testing
network.Transformer.config = @testing.tiny_config()
"""
LENGTHS = {"inputs": 12, "targets": 4}
FLAGS = ["--gin.MIXTURE_OR_TASK_NAME='pt_tiny_count'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
         "--gin.INITIAL_CHECKPOINT_PATH=None"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(MODEL_DIR of a 2-step model-tuning run, a trainer built from the same config: the loop's initial weights,
    seed 0 and no checkpoint).  One training compile for the module."""
    tmp = tmp_path_factory.mktemp("model_finetune")
    gin_file, run = tmp / "tiny.gin", tmp / "run"
    gin_file.write_text(TINY_GIN)
    gin.clear_config()
    result = train_cli.main([f"--gin_file={gin_file}", "--gin_file=runs/model_finetune.gin", f"--gin.MODEL_DIR='{run}'",
                             "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0",
                             "--gin.CHECKPOINT_PERIOD=1", *FLAGS])
    assert result.step == 2
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    trainer = setup.build_trainer(model, LENGTHS, partitioning.make_mesh(1),
                                  trainable_regex=gin_utils.macro("TRAINABLE_REGEX"))
    gin.clear_config()
    return run, trainer


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_settings_are_the_papers_model_tuning(trained, tmp_path):
    _, trainer = trained
    # Every parameter is trainable: nothing left frozen (no gradient-free weights, no missing optimizer state).
    assert not trainer.frozen and len(_flat(trainer.initial_trainable)) > 10
    assert any("encoder" in p and "kernel" in p for p in _flat(trainer.initial_trainable))
    gin_file = tmp_path / "tiny.gin"
    gin_file.write_text(TINY_GIN)
    gin.clear_config()
    gin_utils.register_configurables()
    gin_utils.parse_cli([f"--gin_file={gin_file}", "--gin_file=runs/model_finetune.gin", "--gin.MODEL_DIR='/tmp/x'",
                         "--gin.TRAIN_STEPS=2", *FLAGS], "test")
    macro = gin_utils.macro
    assert macro("TRAINABLE_REGEX") == ".*" and macro("LEARNING_RATE") == 1e-3
    assert macro("BATCH_SIZE") * 512 == 2 ** 16          # 128 x 512 tokens: the paper's 2^16 per batch
    assert gin.query_parameter("optimizers.make_optimizer.name") == "adafactor"
    assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is True
    assert gin.query_parameter("optimizers.adafactor.weight_decay_rate") == 0.0
    _, schedule = optimizers.make_optimizer()
    assert float(schedule(0)) == float(schedule(10 ** 6)) == pytest.approx(1e-3)   # constant
    gin.clear_config()


def test_two_steps_change_the_whole_model_and_checkpoint_it(trained):
    run, trainer = trained
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]
    assert not (run / "numpy_checkpoints").exists()       # save_npy off: the orbax checkpoint is the copy
    initial = _flat(trainer.initial_trainable)
    saved = traverse_util.flatten_dict(read_trainable(str(run / "checkpoints" / "2")), sep="/")
    assert set(saved) == set(initial)                     # the checkpoint holds the whole model
    unchanged = [p for p in initial if np.array_equal(saved[p], initial[p])]
    assert not unchanged, f"arrays the 2 steps did not move: {unchanged}"
