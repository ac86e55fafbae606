"""CLIs with t5x habits: gin files + --gin.KEY=VALUE, config.gin, one-line macro errors, train -> eval -> infer."""
import json

import gin
import numpy as np
import pytest

from prompt_tuning import gin_utils

TINY_GIN = """
include 'models/t5_1_1_prompt.gin'
include 'prompts/uniform.gin'
import prompt_tuning.train.testing
network.Transformer.config = @testing.tiny_config()
PROMPT_LENGTH = 3
"""
DECODER_ONLY_GIN = """
include 'models/decoder_only_prompt.gin'
include 'prompts/uniform.gin'
import prompt_tuning.train.testing
decoder_only.DecoderOnly.config = @testing.tiny_config()
PROMPT_LENGTH = 3
"""
TASK_FLAGS = ["--gin.MIXTURE_OR_TASK_NAME='pt_tiny_count'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
              "--gin.BATCH_SIZE=8"]


@pytest.fixture(scope="module")
def tiny_gin(tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "tiny_prompt.gin"
    path.write_text(TINY_GIN)
    return str(path)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _parse(argv):
    gin_utils.register_configurables()
    return gin_utils.parse_cli(argv, "test")


def test_missing_required_macro_is_one_line(tiny_gin):
    with pytest.raises(SystemExit) as e:
        _parse([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_DIR='/tmp/x'",
                *TASK_FLAGS])
    assert str(e.value) == "gin error: missing required macro TRAIN_STEPS: pass --gin.TRAIN_STEPS=..."


def test_misspelt_macro_is_named(tiny_gin):
    with pytest.raises(SystemExit) as e:
        _parse([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_DIR='/tmp/x'",
                "--gin.TRAIN_STEPS=2", "--gin.TRAIN_STEP=3", *TASK_FLAGS])
    message = str(e.value)
    assert "\n" not in message and "TRAIN_STEP " in message and "TRAIN_STEPS" in message


def test_missing_model_file_names_model_macro():
    with pytest.raises(SystemExit, match="macro MODEL is used but never defined"):
        _parse(["--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_DIR='/tmp/x'", "--gin.TRAIN_STEPS=2",
                *TASK_FLAGS])


def test_unknown_gin_file_and_bad_binding_are_one_line(tiny_gin):
    with pytest.raises(SystemExit) as e:
        _parse(["--gin_file=runs/no_such_file.gin"])
    assert "no_such_file.gin" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        _parse([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_finetune.gin", "--gin.loop.train.trian_steps=3"])
    assert "trian_steps" in str(e.value) and "\n" not in str(e.value)


def test_every_shipped_model_gin_parses():
    from prompt_tuning.t5 import config as t5_config
    gin_utils.register_configurables()
    for family in ("t5_1_1_lm_adapted", "t5_1_1", "t5_1_0", "flan_t5", "mt5", "byt5"):
        for size in ("small", "xxl"):
            gin.clear_config()
            gin_utils.parse_gin([f"models/{family}_{size}.gin"], [])
            cfg = gin.get_configurable(t5_config.get_config)()
            assert cfg == t5_config.get_config(family, size)


def test_train_then_eval_then_infer(tiny_gin, tmp_path):
    from prompt_tuning import eval as eval_cli, infer as infer_cli
    from prompt_tuning.train import __main__ as train_cli
    run = tmp_path / "run"
    history = train_cli.main([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_finetune.gin",
                              f"--gin.MODEL_DIR='{run}'", "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4",
                              "--gin.CHECKPOINT_PERIOD=2", *TASK_FLAGS])
    config = (run / "config.gin").read_text()
    assert "TRAIN_STEPS = 4" in config and "MIXTURE_OR_TASK_NAME = 'pt_tiny_count'" in config
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]   # KEEP_CHECKPOINTS = 2
    train_accuracy = history.evals[-1]["pt_tiny_count/accuracy"]

    gin.clear_config()
    metrics = eval_cli.main([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_eval.gin",
                             f"--gin.MODEL_DIR='{tmp_path / 'eval'}'", f"--gin.PROMPT_CHECKPOINT_PATH='{run}'",
                             *TASK_FLAGS])
    assert metrics["pt_tiny_count/accuracy"] == train_accuracy
    assert (tmp_path / "eval" / "eval" / "metrics.jsonl").exists()

    gin.clear_config()
    path = infer_cli.main([f"--gin_file={tiny_gin}", "--gin_file=runs/prompt_infer.gin",
                           "--gin_file=decoding/beam_search.gin", "--gin.BEAM_SIZE=2",
                           f"--gin.MODEL_DIR='{tmp_path / 'infer'}'", f"--gin.PROMPT_CHECKPOINT_PATH='{run}'",
                           *TASK_FLAGS])
    lines = [json.loads(x) for x in open(path)]
    assert len(lines) == 16 and [x["index"] for x in lines] == list(range(16))
    assert set(lines[0]) == {"index", "inputs", "prediction", "targets"}
    assert all(set(x["inputs"]) <= set("ab") for x in lines)
    assert np.mean([x["targets"] in ("yes", "no") for x in lines]) == 1.0


def test_shipped_prompt_model_with_run_file_parses():
    """models/*_prompt.gin + runs/prompt_finetune.gin: only the required macros to set."""
    from prompt_tuning.prompts import PromptProcessor
    _parse(["--gin_file=models/t5_1_1_lm_adapted_small_prompt.gin", "--gin_file=runs/prompt_finetune.gin",
            "--gin.MODEL_DIR='/tmp/x'", "--gin.TRAIN_STEPS=2", "--gin.PROMPT_LENGTH=7", *TASK_FLAGS])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.module.config.emb_dim == 512 and model.module.config.dropout_rate == 0.1
    factory = model.module.encoder_input_processor_factory
    assert factory.func is PromptProcessor and factory.keywords["length"] == 7
    assert gin.query_parameter("%PROMPT_LENGTH") == 7


def test_class_labels_prompt_without_labels_names_the_macro():
    with pytest.raises(SystemExit) as e:
        _parse(["--gin_file=models/t5_1_1_small_prompt.gin", "--gin_file=prompts/class_labels.gin",
                "--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_DIR='/tmp/x'", "--gin.TRAIN_STEPS=2",
                *TASK_FLAGS])
    assert "CLASS_LABELS" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cli, run_file", [("prompt_tuning.train", "runs/prompt_finetune.gin"),
                                           ("prompt_tuning.eval", "runs/prompt_eval.gin"),
                                           ("prompt_tuning.infer", "runs/prompt_infer.gin")])
def test_python_dash_m_reaches_the_gin_config(cli, run_file, tmp_path):
    """`python -m` for real: each CLI registers its configurables once and fails on the missing macro alone."""
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, "-m", cli, "--gin_file=models/t5_1_1_small_prompt.gin", f"--gin_file={run_file}",
         f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "gin error: missing required macro MIXTURE_OR_TASK_NAME: pass --gin.MIXTURE_OR_TASK_NAME=..."), result.stderr


def test_decoder_only_trains_evaluates_and_decodes_through_the_clis(tmp_path, capsys):
    """The prefix-LM model through the same three CLIs' mains (`python -m` itself is the test above)."""
    from prompt_tuning import eval as eval_cli, infer as infer_cli
    from prompt_tuning.train import __main__ as train_cli
    gin_file = tmp_path / "decoder_only.gin"
    gin_file.write_text(DECODER_ONLY_GIN)
    run = tmp_path / "run"

    def cli(main, *flags):
        gin.clear_config()
        capsys.readouterr()
        main([f"--gin_file={gin_file}", *flags, *TASK_FLAGS])
        return capsys.readouterr().out
    out = cli(train_cli.main, "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{run}'",
              "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=4")
    assert "eval @ step 4: pt_tiny_count/accuracy=" in out
    prompt = np.load(run / "numpy_checkpoints" / "checkpoint_4" / "decoder.prompt.prompt.npy")
    assert prompt.shape == (3, 16)
    out = cli(eval_cli.main, "--gin_file=runs/prompt_eval.gin", f"--gin.MODEL_DIR='{tmp_path / 'eval'}'",
              f"--gin.PROMPT_CHECKPOINT_PATH='{run}'")
    eval_line = json.loads((run / "eval" / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"pt_tiny_count/accuracy: {eval_line['pt_tiny_count/accuracy']:.4f}" in out
    cli(infer_cli.main, "--gin_file=runs/prompt_infer.gin", "--gin_file=decoding/beam_search.gin",
        "--gin.BEAM_SIZE=2", f"--gin.MODEL_DIR='{tmp_path / 'infer'}'", f"--gin.PROMPT_CHECKPOINT_PATH='{run}'")
    lines = [json.loads(x) for x in open(tmp_path / "infer" / "inference" / "pt_tiny_count-validation.jsonl")]
    assert len(lines) == 16 and all(set(x["inputs"]) <= set("ab") for x in lines)
