"""Mixed-task inference: the Python API and the infer CLI decode batches whose rows use different prompts, and
each row decodes as its prompt alone would."""
import functools
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import inference, models, prompts
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, testing

LENGTHS = {"inputs": 12, "targets": 4}
TEXTS = ["abba", "aab", "bbbab", "a", "babab", "aaaa", "b"]


@pytest.fixture(scope="module")
def frozen():
    tokens = np.ones((1, 4), np.int32)
    return nn.unbox(Transformer(testing.tiny_config()).init(jax.random.PRNGKey(3), tokens, tokens))["params"]


def test_predict_mixed_rows_decode_as_each_prompt_alone(frozen):
    rng = np.random.RandomState(0)
    width = testing.tiny_config().emb_dim
    sources = [rng.uniform(-3, 3, (n, width)).astype(np.float32) for n in (2, 6)]
    model, params = prompts.attach_prompt(Transformer(testing.tiny_config()), frozen, sources)
    model = models.EncoderDecoderModel(model)
    rows = {"count": 0, "other": 1}
    examples = [{"inputs": t, "task": "count" if i % 2 else "other"} for i, t in enumerate(TEXTS)]
    examples[3] = {"inputs": TEXTS[3], "prompt": 0}  # a row by number
    mixed = inference.predict_mixed(model, params, examples, rows, testing.VOCAB, LENGTHS, batch_size=4)
    want = [inference.row_of(ex, rows) for ex in examples]
    for row, source in enumerate(sources):
        alone, alone_params = prompts.attach_prompt(Transformer(testing.tiny_config()), frozen, source)
        alone = models.EncoderDecoderModel(alone)
        features = inference.convert_examples(alone, examples, testing.VOCAB, LENGTHS)
        tokens = inference.predict_features(alone, alone_params, features, 8, LENGTHS["targets"])
        expected = [testing.VOCAB.decode(t) for t in tokens]
        assert [m for m, r in zip(mixed, want) if r == row] == [e for e, r in zip(expected, want) if r == row]
    with pytest.raises(ValueError, match="task 'nope', which has no prompt row"):
        inference.row_of({"inputs": "a", "task": "nope"}, rows)
    with pytest.raises(ValueError, match="prompt row 5; the bank has 2 rows"):
        inference.row_of({"inputs": "a", "prompt": 5}, rows, num_rows=2)


def test_infer_cli_decodes_a_mixture_and_a_file_in_mixed_batches(tmp_path):
    """A per-task bank run, then infer on its mixture (one file per task, batches mixing both) gives what infer
    gives a task alone with its row; an INPUT_FILE naming a task or a row per line gives the same predictions."""
    import gin
    import seqio

    from prompt_tuning import infer as infer_cli
    from prompt_tuning.train import loop
    mixture = "pt_tiny_count_twice"
    if mixture not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(mixture, [testing.TINY_TASK, testing.TINY_SCORE_TASK], default_rate=1.0)
    model = models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=(
        functools.partial(PromptProcessor, length=3, num_prompts=2,
                          initializer=prompts.uniform(scale=3.0)))))
    run = str(tmp_path / "run")
    gin.clear_config()
    try:
        loop.train(model_dir=run, model=model, train_steps=1, model_parallel_size=2,
                   train_dataset_cfg=data.DatasetConfig(mixture, LENGTHS, batch_size=8, prompt_rows=data.PER_TASK))
    finally:
        gin.clear_config()
    common = dict(model=model, task_feature_lengths=LENGTHS, batch_size=8, prompt_checkpoint_path=run,
                  model_parallel_size=2)
    infer_cli.infer(model_dir=str(tmp_path / "mixed"), mixture_or_task_name=mixture, **common)
    lines = {task: [json.loads(x) for x in open(tmp_path / "mixed" / "inference" / f"{task}-validation.jsonl")]
             for task in (testing.TINY_TASK, testing.TINY_SCORE_TASK)}
    alone = [json.loads(x) for x in open(infer_cli.infer(model_dir=str(tmp_path / "alone"),
                                                         mixture_or_task_name=testing.TINY_TASK, **common))]
    mixed = lines[testing.TINY_TASK]
    assert len(mixed) == 16 and [m["prediction"] for m in mixed] == [a["prediction"] for a in alone]
    assert [m["inputs"] for m in mixed] == [a["inputs"] for a in alone]
    assert {m["prediction"] for m in lines[testing.TINY_TASK]} != {m["prediction"] for m in
                                                                   lines[testing.TINY_SCORE_TASK]}
    with open(tmp_path / "requests.jsonl", "w") as f:
        for a, b in zip(lines[testing.TINY_TASK], lines[testing.TINY_SCORE_TASK]):
            f.write(json.dumps({"inputs": a["inputs"], "task": testing.TINY_TASK}) + "\n")
            f.write(json.dumps({"inputs": b["inputs"], "prompt": 1}) + "\n")
    path = infer_cli.infer(model_dir=str(tmp_path / "file"), mixture_or_task_name=testing.TINY_TASK,
                           input_file=str(tmp_path / "requests.jsonl"), **common)
    out = [json.loads(x) for x in open(path)]
    assert [o["prediction"] for o in out[0::2]] == [m["prediction"] for m in lines[testing.TINY_TASK]]
    assert [o["prediction"] for o in out[1::2]] == [m["prediction"] for m in lines[testing.TINY_SCORE_TASK]]
