"""Rank classification that encodes each input once: `score_candidates` equals per-row scoring, and the
evaluator's `_rank` path (runs of candidate rows) gives the per-row scores and metrics."""
import functools

import jax
import jax.extend
import numpy as np
import pytest
import seqio

from prompt_tuning import models, partitioning
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import evaluation, optimizers, params as params_lib, testing
from prompt_tuning.train import trainer as trainer_lib

LENGTHS = {"inputs": 12, "targets": 4}
LABELS = ("yes", "no", "maybe")
RANK_TASK = "pt_tiny_count_rank3"


def _register():
    from prompt_tuning.tasks import metrics, postprocessors, preprocessors
    if RANK_TASK not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            RANK_TASK, source=seqio.get_mixture_or_task(testing.TINY_TASK).source,
            preprocessors=[functools.partial(preprocessors.rank_classification, label_names=LABELS),
                           seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=testing.OUTPUT_FEATURES, postprocess_fn=postprocessors.rank_classification,
            metric_fns=[metrics.rank_classification([testing.accuracy])])


@pytest.fixture(scope="module")
def world():
    """A random tiny model with a bank of two prompts of lengths 2 and 5, on a 2-way data-parallel mesh."""
    _register()
    mesh = partitioning.make_mesh(2)
    cfg = testing.tiny_config()
    processor = functools.partial(PromptProcessor, length=5, num_prompts=2, lengths=(2, 5))
    model = models.EncoderDecoderModel(Transformer(cfg, encoder_input_processor_factory=processor))
    batch = dict(model.dummy_batch(LENGTHS), prompt_index=np.zeros((1,), np.int32))
    params, shardings = params_lib.init_params(model, batch, mesh, jax.random.PRNGKey(3))
    tx, schedule = optimizers.make_optimizer()
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule)
    return model, params, trainer


def test_score_candidates_equals_each_row_scored_alone(world):
    """4 inputs (each with its own bank row) x 3 candidate targets of different lengths, some all padding."""
    model, params, _ = world
    rng = np.random.RandomState(0)
    inputs = rng.randint(3, 200, (4, 12)).astype(np.int32)
    inputs[0, 7:] = 0
    inputs[2, 3:] = 0
    targets = rng.randint(3, 200, (4, 3, 4)).astype(np.int32)
    targets[:, 0, 2:] = 0
    targets[1, 2] = 0                                         # a missing candidate scores 0
    decoder_inputs = np.concatenate([np.zeros((4, 3, 1), np.int32), targets[..., :-1]], axis=-1)
    prompt_index = np.array([0, 1, 1, 0], np.int32)
    batch = {"encoder_input_tokens": inputs, "prompt_index": prompt_index, "decoder_input_tokens": decoder_inputs,
             "decoder_target_tokens": targets}
    shared = np.asarray(model.score_candidates(params, batch))
    rows = {"encoder_input_tokens": np.repeat(inputs, 3, axis=0), "prompt_index": np.repeat(prompt_index, 3),
            "decoder_input_tokens": decoder_inputs.reshape(12, 4), "decoder_target_tokens": targets.reshape(12, 4)}
    alone = np.asarray(model.score_batch(params, rows)).reshape(4, 3)
    assert shared.shape == (4, 3)
    np.testing.assert_allclose(shared, alone, atol=1e-5, rtol=0)
    assert shared[1, 2] == 0.0 and np.all(shared[np.arange(4) != 1] < 0)
    # The generic path (BaseModel's: repeat the inputs) agrees too.
    np.testing.assert_allclose(models.BaseModel.score_candidates(model, params, batch), alone, atol=1e-5, rtol=0)


def _dot_operand_shapes(jaxpr):
    """The left operand's shape of every dot_general in a jaxpr, nested jaxprs (jit, custom_vjp) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.invars[0].aval.shape
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _dot_operand_shapes(sub)


def test_candidates_share_the_encoder_keys_and_values(world):
    """The cross-attention keys and values are projected once per input: no dot runs over the encoder output
    repeated per candidate ([B*C, L', emb]), as it did when the encoding was repeated per row."""
    model, params, _ = world
    b, c, length = 4, 3, LENGTHS["inputs"] + 5
    batch = {"encoder_input_tokens": np.ones((b, LENGTHS["inputs"]), np.int32),
             "prompt_index": np.zeros((b,), np.int32),
             "decoder_input_tokens": np.ones((b, c, 4), np.int32), "decoder_target_tokens": np.ones((b, c, 4), np.int32)}
    shapes = list(_dot_operand_shapes(jax.make_jaxpr(model.score_candidates)(params, batch).jaxpr))
    assert (b, c * 4, model.module.config.emb_dim) in shapes      # the grouped cross-attention queries
    assert not [s for s in shapes if s[:2] == (b * c, length)]


def test_decoder_refuses_rows_that_do_not_divide_among_the_inputs(world):
    model, params, _ = world
    tokens, prompt_index = np.ones((2, LENGTHS["inputs"]), np.int32), np.zeros((2,), np.int32)
    encoded = model.module.apply({"params": params}, tokens, prompt_index=prompt_index, method=model.module.encode)
    with pytest.raises(ValueError, match="3 decoder rows for 2 encoded rows"):
        model.module.apply({"params": params}, encoded, tokens, np.ones((3, 4), np.int32), np.ones((3, 4), np.int32),
                           prompt_index=prompt_index, method=model.module.decode)


def test_input_runs():
    tokens = np.array([[1, 2], [1, 2], [1, 2], [3, 4], [3, 4], [1, 2], [1, 2]])
    assert evaluation.input_runs({"t": tokens}, ["t"]) == [(0, 3), (3, 2), (5, 2)]
    # Another bank row is another input, even with the same tokens.
    rows = {"t": tokens, "p": np.array([0, 0, 1, 1, 1, 1, 1])}
    assert evaluation.input_runs(rows, ["t", "p"]) == [(0, 2), (2, 1), (3, 2), (5, 2)]
    assert evaluation.input_runs({"t": tokens[:0]}, ["t"]) == []
    batch = evaluation.candidate_batch({"t": tokens, "y": np.arange(7)}, [(0, 3), (3, 2)], ("t",), size=4, width=3)
    np.testing.assert_array_equal(batch["t"], [[1, 2], [3, 4], [0, 0], [0, 0]])
    np.testing.assert_array_equal(batch["y"], [[0, 1, 2], [3, 4, 0], [0, 0, 0], [0, 0, 0]])


def test_rank_task_scores_once_per_input_and_as_per_row(world, monkeypatch):
    """The `_rank` task through the evaluator's score path: one call per 4 inputs (12 candidate rows), scores
    equal to scoring every row alone; the metric is the per-row path's."""
    model, _, trainer = world
    state = trainer.init_state()
    converter = model.feature_converter(prompt_index=1)
    ds = seqio.get_mixture_or_task(RANK_TASK).get_dataset(LENGTHS, split="validation", shuffle=False)
    ds = converter(ds, LENGTHS).enumerate()

    calls = []
    score_candidates = trainer_lib.Trainer.score_candidates

    def spy(self, state, batch):
        calls.append(np.asarray(jax.device_get(batch["decoder_target_tokens"])).shape)
        return score_candidates(self, state, batch)
    monkeypatch.setattr(trainer_lib.Trainer, "score_candidates", spy)
    shared = evaluation.score_dataset(trainer, state, ds, batch_size=4)
    assert calls == [(4, 3, 4)] * 4                       # 16 examples x 3 labels, 4 inputs a call
    per_row = [(int(i), float(s)) for index, n, batch in evaluation.iterate_global(ds, 4, trainer.mesh)
               for i, s in zip(index, evaluation.gather(trainer.score_batch(state, batch))[:n])]
    assert [i for i, _ in shared] == [i for i, _ in per_row] == list(range(48))
    np.testing.assert_allclose([s for _, s in shared], [s for _, s in per_row], atol=1e-5, rtol=0)

    evaluator = evaluation.Evaluator(trainer, RANK_TASK, LENGTHS, 4, task_rows={RANK_TASK: 1})
    monkeypatch.setattr(evaluation, "score_dataset", lambda *args: per_row)
    expected = evaluator.evaluate(state, 0)
    monkeypatch.undo()
    assert evaluator.evaluate(state, 0) == expected
