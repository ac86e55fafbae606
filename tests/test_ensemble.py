"""Prompt ensembles (Table 3): voting and summed scores, one batched forward for all prompts (of different
lengths), N copies of a prompt equal that prompt, ensemble runs evaluated by the train loop and the eval CLI."""
import functools
import json

import jax
import numpy as np
import pytest
import seqio

from prompt_tuning import models, partitioning
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, ensemble, optimizers, params as params_lib, setup, testing
from prompt_tuning.train import trainer as trainer_lib
from prompt_tuning.train.evaluation import Evaluator

LENGTHS = {"inputs": 12, "targets": 4}
RANK_TASK = "pt_tiny_count_rank"
MIXTURE = "pt_tiny_count_ensemble"


# ---------------------------------------------------------------------------------------- combining
def test_majority_vote_and_its_ties():
    assert ensemble.majority_vote(["yes", "no", "yes"]) == "yes"
    assert ensemble.majority_vote(["no", "yes", "yes", "no"]) == "no"      # 2-2: the tied answer of row 0
    assert ensemble.majority_vote(["b", "a", "a", "b", "c"]) == "b"
    assert ensemble.majority_vote(["c", "b", "a"]) == "c"                  # all differ: row 0's
    assert ensemble.majority_vote(["c", "a", "b", "a"]) == "a"
    # Decodes compare up to EOS; padding and what follows EOS do not matter.
    decodes = [[[5, 6, 1, 0], [7, 1, 0, 0], [5, 6, 1, 9]], [[3, 1, 0, 0], [4, 1, 0, 0], [2, 2, 1, 0]]]
    assert ensemble.vote_decodes(decodes) == [[5, 6], [3]]
    np.testing.assert_allclose(ensemble.sum_scores([[-1.0, -2.0, -0.5], [0.0, -3.0, -1.0]]), [-3.5, -4.0])
    with pytest.raises(ValueError, match="at least one answer"):
        ensemble.majority_vote([])


def test_table_row_and_markdown():
    line = ensemble.table_row("rte", "accuracy", [90.0, 91.0, 90.5], 91.3, ["a", "b", "c"])
    assert (line["average"], line["best"], line["ensemble"]) == (90.5, 91.0, 91.3)
    assert line["prompts"] == {"a": 90.0, "b": 91.0, "c": 90.5}
    table = ensemble.markdown_table([line]).splitlines()
    assert table[0] == "| task | metric | a | b | c | average | std | best | ensemble |"
    assert table[2] == "| rte | accuracy | 90.00 | 91.00 | 90.50 | 90.50 | 0.41 | 91.00 | 91.30 |"
    assert ensemble.ensemble_rows({"t/prompt_1": 1, "t/prompt_0": 0}) == ["prompt_0", "prompt_1"]
    assert ensemble.ensemble_rows({"task_a": 0, "task_b": 1}) is None


# ---------------------------------------------------------------------------------------- evaluation
def _register():
    from prompt_tuning.tasks import metrics, postprocessors, preprocessors
    if RANK_TASK not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            RANK_TASK, source=seqio.get_mixture_or_task(testing.TINY_TASK).source,
            preprocessors=[functools.partial(preprocessors.rank_classification, label_names=("yes", "no")),
                           seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=testing.OUTPUT_FEATURES, postprocess_fn=postprocessors.rank_classification,
            metric_fns=[metrics.rank_classification([testing.accuracy])])
    if MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(MIXTURE, [testing.TINY_TASK, RANK_TASK], default_rate=1.0)


def _trainer(model, frozen, mesh):
    batch = model.dummy_batch(LENGTHS)
    params, shardings = params_lib.init_params(model, batch, mesh, jax.random.PRNGKey(0), frozen)
    tx, schedule = optimizers.make_optimizer()
    banks = setup.prompt_banks(model, batch)
    if banks:
        tx = optimizers.per_array(tx, banks)
    return trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, row_arrays=banks)


@pytest.fixture(scope="module")
def world():
    """A random tiny frozen model, two prompts of lengths 3 and 5, and each one's own metrics."""
    _register()
    mesh = partitioning.make_mesh(2)
    bare = models.EncoderDecoderModel(Transformer(testing.tiny_config()))
    frozen = params_lib.init_params(bare, bare.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(1))[0]
    rng = np.random.RandomState(0)
    p3, q5 = (rng.uniform(-2, 2, (n, testing.tiny_config().emb_dim)).astype(np.float32) for n in (3, 5))
    single = {}
    for name, value in (("p3", p3), ("q5", q5)):
        model = models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=(
            functools.partial(PromptProcessor, length=len(value),
                              initializer=lambda rng, shape, table, v=value: jax.numpy.asarray(v)))))
        trainer = _trainer(model, frozen, mesh)
        single[name] = Evaluator(trainer, MIXTURE, LENGTHS, 8).evaluate(trainer.init_state(), 0)
    return bare, frozen, mesh, {"p3": p3, "q5": q5}, single


def _ensemble_eval(world, sources, tmp_path):
    trainer = _ensemble_trainer(world, sources)
    return ensemble.EnsembleEvaluator(trainer, MIXTURE, LENGTHS, 8, rows=range(len(sources)),
                                      output_dir=str(tmp_path)).evaluate(trainer.init_state(), 3)


def _ensemble_trainer(world, sources):
    bare, frozen, mesh, _, _ = world
    return _trainer(ensemble.with_prompt_bank(bare, sources), frozen, mesh)


def test_ensemble_of_copies_equals_the_prompt(world, tmp_path):
    _, _, _, prompts, single = world
    metrics = _ensemble_eval(world, [prompts["p3"]] * 3, tmp_path)
    for task in (testing.TINY_TASK, RANK_TASK):
        expected = single["p3"][f"{task}/accuracy"]
        assert metrics[f"{task}/accuracy"] == expected
        for key in ("prompt_0", "prompt_1", "prompt_2", "average", "best"):
            assert metrics[f"{task}/{key}/accuracy"] == pytest.approx(expected)


def test_one_batched_forward_over_prompts_of_different_lengths(world, tmp_path, monkeypatch):
    """[p3, q5, p3]: each call holds every example with all three prompts; each prompt scores as alone; the
    vote is p3's (two of three rows); the report has Table 3's columns."""
    _, _, _, prompts, single = world
    seen = []

    def spy(original):
        def call(self, params_or_state, batch, **kw):
            seen.append((original.__name__, np.asarray(jax.device_get(batch["prompt_index"]))))
            return original(self, params_or_state, batch, **kw)
        return call
    monkeypatch.setattr(models.EncoderDecoderModel, "predict_batch", spy(models.EncoderDecoderModel.predict_batch))
    monkeypatch.setattr(trainer_lib.Trainer, "score_batch", spy(trainer_lib.Trainer.score_batch))
    monkeypatch.setattr(trainer_lib.Trainer, "score_candidates", spy(trainer_lib.Trainer.score_candidates))
    metrics = _ensemble_eval(world, [prompts["p3"], prompts["q5"], prompts["p3"]], tmp_path)
    # 16 examples / 8 per batch = 2 decoding calls; the rank task's 16 inputs (2 labels each) / 8 per call =
    # 2 scoring calls, each input encoded once per prompt; every call holds 8 inputs x the 3 prompts.
    assert [name for name, _ in seen] == ["predict_batch"] * 2 + ["score_candidates"] * 2
    assert all(np.array_equal(rows, np.tile([0, 1, 2], 8)) for _, rows in seen)
    for task in (testing.TINY_TASK, RANK_TASK):
        for key, name in (("prompt_0", "p3"), ("prompt_1", "q5"), ("prompt_2", "p3")):
            assert metrics[f"{task}/{key}/accuracy"] == pytest.approx(single[name][f"{task}/accuracy"]), key
    assert metrics[f"{testing.TINY_TASK}/accuracy"] == single["p3"][f"{testing.TINY_TASK}/accuracy"]
    lines = [json.loads(line) for line in open(tmp_path / "ensemble.jsonl")]
    assert {(line["task"], line["metric"]) for line in lines} == {(testing.TINY_TASK, "accuracy"),
                                                                  (RANK_TASK, "accuracy")}
    assert "| task | metric | prompt_0 | prompt_1 | prompt_2 | average | std | best | ensemble |" in \
        (tmp_path / "ensemble.md").read_text()


def test_ensemble_run_evaluates_during_training_and_from_the_eval_cli(world, tmp_path):
    """PROMPT_ROWS=2: the loop's periodic evaluation reports the ensemble and each prompt; the eval CLI then
    evaluates the run's bank as an ensemble, and ENSEMBLE_PROMPTS files of different lengths likewise."""
    import gin
    from prompt_tuning import eval as eval_cli
    from prompt_tuning.train import loop
    _, _, _, prompts, _ = world
    bank_model = models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=(
        functools.partial(PromptProcessor, length=3, num_prompts=2))))
    gin.clear_config()
    try:
        result = loop.train(model_dir=str(tmp_path / "run"), model=bank_model,
                            train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8,
                                                                 prompt_rows=2),
                            train_steps=2, eval_period=2, model_parallel_size=2)
    finally:
        gin.clear_config()
    last = result.evals[-1]
    assert {f"{testing.TINY_TASK}/accuracy", f"{testing.TINY_TASK}/prompt_0/accuracy",
            f"{testing.TINY_TASK}/prompt_1/accuracy", f"{testing.TINY_TASK}/best/accuracy"} <= set(last)
    assert (tmp_path / "run" / "eval" / "ensemble.md").exists()
    common = dict(model_parallel_size=2, mixture_or_task_name=testing.TINY_TASK,
                  task_feature_lengths=LENGTHS, batch_size=8)
    again = eval_cli.evaluate(model=bank_model, model_dir=str(tmp_path / "eval"),
                              prompt_checkpoint_path=str(tmp_path / "run"), **common)
    for key in ("accuracy", "prompt_0/accuracy", "prompt_1/accuracy"):
        assert again[f"{testing.TINY_TASK}/{key}"] == last[f"{testing.TINY_TASK}/{key}"]
    np.save(tmp_path / "p3.npy", prompts["p3"])
    np.save(tmp_path / "q5.npy", prompts["q5"])
    files = eval_cli.evaluate(model=models.EncoderDecoderModel(Transformer(testing.tiny_config(), (
        functools.partial(PromptProcessor, length=3)))), model_dir=str(tmp_path / "files"),
        ensemble_prompts=[str(tmp_path / "p3.npy"), str(tmp_path / "q5.npy")], **common)
    assert {f"{testing.TINY_TASK}/p3.npy/accuracy", f"{testing.TINY_TASK}/q5.npy/accuracy"} <= set(files)
    assert "p3.npy | q5.npy" in (tmp_path / "files" / "eval" / "ensemble.md").read_text()
