"""Prompt interpretability: nearest vocabulary tokens of each prompt position in the frozen embedding table."""
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from prompt_tuning.scripts import nearest_tokens
from prompt_tuning.scripts.demo import ASSET_CHECKPOINT

LABELS = "abcdefgh"  # synthetic_second_letter answers with one of these letters


@pytest.fixture(scope="module")
def trained_prompt(tmp_path_factory, subprocess_env):
    """A class-label prompt (position i = letter i) trained 20 steps by the training CLI: its final .npy."""
    model_dir = tmp_path_factory.mktemp("class_labels_run")
    labels = "[" + ",".join(repr(c) for c in LABELS) + "]"
    cmd = [sys.executable, "-m", "prompt_tuning.train", "--gin_file=runs/synthetic_second_letter.gin",
           "--gin_file=prompts/class_labels.gin", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.INITIAL_CHECKPOINT_PATH='{ASSET_CHECKPOINT}'", "--gin.PROMPT_LENGTH=8",
           f"--gin.CLASS_LABELS={labels}", "--gin.prompt_init/prompts.class_labels.vocab=@prompts.byte_vocabulary()",
           "--gin.TRAIN_STEPS=20", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=20",
           "--gin.loop.train.eval_at_start=False"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = sorted(int(d.split("_")[1]) for d in os.listdir(model_dir / "numpy_checkpoints"))
    assert steps[-1] == 20
    return str(model_dir / "numpy_checkpoints" / "checkpoint_20" / "encoder.prompt.prompt.npy")


def _own_label_ranks(result):
    """For each position i, the rank of letter i among its neighbours (None when absent)."""
    ranks = []
    for p, letter in zip(result["positions"], LABELS):
        ranks.append(p["tokens"].index(letter) if letter in p["tokens"] else None)
    return ranks


def test_trained_class_label_prompt_keeps_its_labels_as_neighbours(trained_prompt, capsys):
    result = nearest_tokens.main([trained_prompt, "--checkpoint", ASSET_CHECKPOINT, "-k", "5", "--vocab", "byte",
                                  "--labels", ",".join(LABELS)])
    out = capsys.readouterr().out
    ranks = _own_label_ranks(result)
    assert None not in ranks and ranks.count(0) >= 6, ranks  # each letter among its position's neighbours
    assert result["with_label"] == list(range(8))
    assert "positions with a class label (a, b, c, d, e, f, g, h) among their neighbours: 8/8" in out
    # Training moved it: an untrained class-label prompt is the letters' rows themselves (cosine 1).
    top = [p["similarities"][0] for p in result["positions"]]
    assert max(top) < 0.99 and min(top) > 0.3, top
    assert len(out.strip().splitlines()) == 1 + 8 + 2


def test_uniform_random_prompt_has_no_label_neighbours(tmp_path):
    path = tmp_path / "uniform.npy"
    np.save(path, np.random.default_rng(0).uniform(-0.5, 0.5, (8, 128)).astype(np.float32))
    result = nearest_tokens.main([str(path), "--checkpoint", ASSET_CHECKPOINT, "--vocab", "byte",
                                  "--labels", ",".join(LABELS)])
    assert _own_label_ranks(result) == [None] * 8
    assert len(result["with_label"]) <= 2  # chance: 5 of 259 tokens per position, 8 of them labels
    assert max(p["similarities"][0] for p in result["positions"]) < 0.35


def test_neighbours_by_hand():
    table = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [20, 1]], np.float32)  # row 4: padding past the vocab
    vocab = seqio.ByteVocabulary()

    class Four(seqio.ByteVocabulary):
        vocab_size = 4

    result = nearest_tokens.interpret(np.array([[2, 0.1], [0.1, 3]], np.float32), table, Four(), k=2,
                                      labels=["\x00"])  # byte 0 is id 3
    assert [p["ids"] for p in result["positions"]] == [[0, 2], [1, 2]]
    assert result["positions"][0]["similarities"][1] == pytest.approx((2 + 0.1) / np.hypot(2, 0.1) / np.sqrt(2))
    assert result["repeated"] == [{"id": 2, "token": "<unk>", "positions": [0, 1]}]
    assert result["with_label"] == []
    assert nearest_tokens.token_text(vocab, 3 + ord("a")) == "a" and nearest_tokens.token_text(vocab, 3) == "<0x00>"


def test_bad_inputs_are_one_line(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.zeros((3, 64), np.float32))
    with pytest.raises(SystemExit, match=r"^nearest_tokens: prompt width 64 != embedding width 128$"):
        nearest_tokens.main([str(path), "--checkpoint", ASSET_CHECKPOINT, "--vocab", "byte"])
    with pytest.raises(SystemExit, match=r"no array 'nope'.*token_embedder/embedding"):
        nearest_tokens.main([str(path), "--checkpoint", ASSET_CHECKPOINT, "--vocab", "byte", "--embedding_key",
                             "nope"])
    with pytest.raises(SystemExit, match=r"^nearest_tokens: .*does not exist"):
        nearest_tokens.main([str(path), "--checkpoint", str(tmp_path / "missing"), "--vocab", "byte"])
