"""Length buckets and length-grouped batching: a bucketed batch's step, scores and decodes equal the
full-length batch's (every placement of the prompt); grouping keeps each window's examples and is seeded."""
import functools
import os

import gin
import jax
import numpy as np
import pytest

from prompt_tuning import models, partitioning
from prompt_tuning.errors import UserError
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, identity, loop, optimizers, params as params_lib, testing
from prompt_tuning.train import trainer as trainer_lib
from prompt_tuning.train.checkpointing import read_trainable

LENGTHS = {"inputs": 40, "targets": 8}          # tiny inputs are 4-10 tokens: most of 40 is padding
BUCKETS = {"inputs": (8, 16, 24), "targets": (4,)}
GROUPS = models.EncoderDecoderModel.LENGTH_GROUPS


def _model(placement):
    return models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=(
        functools.partial(PromptProcessor, length=3, placement=placement))))


def _numpy_batch(**cfg):
    ds = data.get_dataset(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8, **cfg),
                          _model("prefix").feature_converter)
    return next(data.numpy_batches(ds))


def test_trim_to_buckets_picks_the_smallest_length_that_keeps_every_token():
    batch = {"encoder_input_tokens": np.zeros((2, 40), np.int32), "decoder_target_tokens": np.zeros((2, 8), np.int32),
             "decoder_input_tokens": np.zeros((2, 8), np.int32), "decoder_loss_weights": np.zeros((2, 8), np.int32)}
    batch["encoder_input_tokens"][0, :9] = 5
    batch["decoder_target_tokens"][1, :3] = 7
    out = data.trim_to_buckets(batch, GROUPS, BUCKETS)
    assert out["encoder_input_tokens"].shape == (2, 16)
    assert {out[k].shape for k in GROUPS["targets"] if k in out} == {(2, 4)}   # the group is cut together
    batch["encoder_input_tokens"][1, 30] = 5                            # longer than every bucket: full length
    assert data.trim_to_buckets(batch, GROUPS, BUCKETS)["encoder_input_tokens"].shape == (2, 40)
    assert data.trim_to_buckets(batch, GROUPS, None) is batch
    assert data.trim_to_buckets(batch, GROUPS, {"inputs": (64,)})["encoder_input_tokens"].shape == (2, 40)
    assert data.used_length(np.zeros((3, 2, 5))) == 0                   # [B, C, T] candidates too
    with pytest.raises(UserError, match=r"unknown \['input'\]; this model's length groups are \['inputs', 'targets'\]"):
        data.check_length_buckets({"input": (8,)}, GROUPS)
    with pytest.raises(UserError, match="positive lengths"):
        data.check_length_buckets({"inputs": ()}, GROUPS)


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_a_bucketed_step_scores_and_decodes_as_the_full_batch(placement):
    mesh = partitioning.make_mesh(1)
    model = _model(placement)
    params, shardings = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    tx, schedule = optimizers.make_optimizer()
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule)
    full = _numpy_batch()
    short = data.trim_to_buckets(full, GROUPS, BUCKETS)
    assert short["encoder_input_tokens"].shape[1] < full["encoder_input_tokens"].shape[1]
    outs = []
    for batch in (full, short):
        batch, state = data.to_global(batch, mesh), trainer.init_state()
        tokens, _ = trainer.predict_batch(state, batch, max_decode_len=4)
        scores = np.asarray(trainer.score_batch(state, batch))
        state, metrics = trainer.train_step(state, batch)   # donates the state it is given
        outs.append((float(metrics["loss"]), jax.device_get(state.trainable), scores, np.asarray(tokens)))
    (loss_a, prompt_a, score_a, tokens_a), (loss_b, prompt_b, score_b, tokens_b) = outs
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), prompt_a, prompt_b)
    np.testing.assert_allclose(score_b, score_a, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(tokens_b, tokens_a)


def test_microbatch_positions_split_each_length_by_its_positions_and_keep_the_step():
    """MICROBATCH_POSITIONS: the fewest microbatches whose rows fit the budget, per batch shape; same step."""
    mesh = partitioning.make_mesh(1, jax.devices()[:2])   # 2-way 'data': 4 of the 8 rows on each device
    model = _model("prefix")
    params, shardings = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    tx, schedule = optimizers.make_optimizer()
    whole = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule)
    budget = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, microbatch_positions=75)

    def shapes(inputs, targets, candidates=()):
        dec = jax.ShapeDtypeStruct((8, *candidates, targets), np.int32)
        return {"encoder_input_tokens": jax.ShapeDtypeStruct((8, inputs), np.int32), "decoder_input_tokens": dec,
                "decoder_target_tokens": dec, "decoder_loss_weights": dec}
    assert model.positions_per_row(shapes(16, 4)) == 16 + 4 + 3          # inputs + targets + the prompt's 3
    assert model.positions_per_row(shapes(16, 4, candidates=(3,))) == 16 + 3 * 4 + 3
    # Per device, 4 rows of 15 positions fit 75 whole; of 23, in 2 microbatches; of 51 (the full length), in 4.
    assert [budget.microbatches(shapes(*s)) for s in ((8, 4), (16, 4), (40, 8))] == [1, 2, 4]
    assert budget.microbatches(shapes(400, 8)) == 4                     # over budget even alone: a row a device
    assert whole.microbatches(shapes(400, 8)) == 1
    outs = []
    for trainer in (whole, budget):
        batch, state = data.to_global(_numpy_batch(), mesh), trainer.init_state()
        scores = np.asarray(trainer.score_batch(state, batch))
        state, metrics = trainer.train_step(state, batch)
        outs.append((float(metrics["loss"]), jax.device_get(state.trainable), scores))
    (loss_a, prompt_a, score_a), (loss_b, prompt_b, score_b) = outs
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), prompt_a, prompt_b)
    np.testing.assert_allclose(score_b, score_a, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="num_microbatches=2 and microbatch_positions=75: give a count or a position"):
        trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, num_microbatches=2, microbatch_positions=75)
    with pytest.raises(UserError, match="microbatch_positions=0: use a positive int"):
        trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, microbatch_positions=0)


def test_group_by_length_keeps_each_window_and_sorts_its_batches():
    cfg = dict(shuffle=False)
    plain = data.get_dataset(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8, **cfg),
                             _model("prefix").feature_converter, num_epochs=1)
    grouped = data.get_dataset(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8, group_by_length=4, **cfg),
                               _model("prefix").feature_converter, num_epochs=1)
    plain, grouped = list(data.numpy_batches(plain)), list(data.numpy_batches(grouped))
    assert len(plain) == len(grouped) == 8
    rows = lambda batches: sorted(map(bytes, np.concatenate([b["encoder_input_tokens"] for b in batches])))  # noqa
    for w in range(2):                                   # each window of 4 batches holds the same examples
        assert rows(plain[4 * w:4 * w + 4]) == rows(grouped[4 * w:4 * w + 4])
    lengths = [np.max([np.count_nonzero(b[k], axis=1) for k in b if k.endswith("_tokens")], axis=0)
               for b in grouped[:4]]
    spans = sorted((lo.min(), lo.max()) for lo in lengths)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))   # the sorted window, cut into batches
    again = list(data.numpy_batches(data.get_dataset(
        data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8, group_by_length=4, **cfg),
        _model("prefix").feature_converter, num_epochs=1)))
    assert all(np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"]) for a, b in zip(grouped, again))


def test_identity_records_grouping_but_not_buckets():
    mesh = partitioning.make_mesh(1)
    model = _model("prefix")
    params, shardings = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    tx, schedule = optimizers.make_optimizer()
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule)
    base = identity.run_identity(trainer, data.DatasetConfig(testing.TINY_TASK, LENGTHS))
    bucketed = identity.run_identity(trainer, data.DatasetConfig(testing.TINY_TASK, LENGTHS, length_buckets=BUCKETS))
    grouped = identity.run_identity(trainer, data.DatasetConfig(testing.TINY_TASK, LENGTHS, group_by_length=4))
    assert identity.differences(base, bucketed) == []
    assert identity.differences(base, grouped) == ["data.group_by_length: 0 -> 4"]


def test_a_bucketed_run_trains_and_evaluates_as_the_padded_one(tmp_path):
    """loop.train with LENGTH_BUCKETS: the same final prompt and the same evaluation as without, also when
    MICROBATCH_POSITIONS splits the longer batches (4 rows a device, 3 prompt positions and 8 targets each:
    the steps' 8-token inputs fill 76 positions and run whole, their 16-token ones fill 108 and split)."""
    results = []
    for name, buckets, split in (("padded", None, {}),
                                 ("bucketed", BUCKETS, dict(num_devices=2, microbatch_positions=80))):
        gin.clear_config()
        result = loop.train(model_dir=str(tmp_path / name), model=_model("prefix"),
                            train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8,
                                                                 length_buckets=buckets),
                            train_steps=3, eval_period=3, log_every=3, **split)
        results.append((result, read_trainable(os.path.join(result.model_dir, "checkpoints"))))
    (padded, prompt_a), (bucketed, prompt_b) = results
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), prompt_a, prompt_b)
    assert bucketed.evals == padded.evals and padded.evals
