"""Trainer, optimizer, checkpoints, resume and evaluation on a tiny T5 and a tiny in-memory seqio task."""
import functools
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import losses, models, partitioning
from prompt_tuning.errors import UserError
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.decoder_only import DecoderOnly
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, loop, optimizers, params as params_lib, setup, testing
from prompt_tuning.train import trainer as trainer_lib
from prompt_tuning.train.checkpointing import read_trainable
from prompt_tuning.train.evaluation import Evaluator

LENGTHS = {"inputs": 12, "targets": 4}
PROMPT_PATH = ("encoder", "prompt", "prompt")


def tiny_model(dropout=0.0):
    return models.EncoderDecoderModel(Transformer(testing.tiny_config(dropout_rate=dropout),
                                                  encoder_input_processor_factory=functools.partial(PromptProcessor,
                                                                                                    length=3)))


CONVERTER = tiny_model().feature_converter  # data.get_dataset takes the factory


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh(2)   # 4 data x 2 model over the 8 simulated devices


@pytest.fixture(scope="module")
def batch(mesh):
    ds = data.get_dataset(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8), CONVERTER)
    return data.to_global(next(data.numpy_batches(ds)), mesh)


def make_trainer(mesh, **kwargs):
    model = tiny_model()
    params, shardings = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    tx, schedule = optimizers.make_optimizer()
    return trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, **kwargs)


@pytest.fixture(scope="module")
def trained(mesh, batch):
    """A trainer and the states before / after 8 steps on one fixed batch (compiled once for the module)."""
    trainer = make_trainer(mesh)
    state0 = trainer.init_state()
    initial = jax.device_get(state0.trainable)
    state, losses_seen = state0, []
    for _ in range(8):
        state, metrics = trainer.train_step(state, batch)
        losses_seen.append(float(metrics["loss"]))
    return trainer, initial, state, losses_seen


# ---------------------------------------------------------------------------------------------- optimizer
def test_adafactor_matches_t5x_update_by_hand():
    """One step of t5x's Adafactor (unfactored, no parameter scale, clip 1, decay not scaled by lr)."""
    p = {"prompt": jnp.array([[0.5, -1.0], [2.0, 0.25]])}
    g = {"prompt": jnp.array([[0.1, -0.2], [0.3, 0.0]])}
    tx = optimizers.adafactor(learning_rate=0.3, weight_decay_rate=1e-5)
    updates, _ = tx.update(g, tx.init(p), p)
    decay = 1.0 - 1.0 ** -0.8                            # step 0: t5x's 1 - (step+1)^-0.8 = 0
    v = decay * 0 + (1 - decay) * (np.square(g["prompt"]) + 1e-30)
    y = g["prompt"] / np.sqrt(v)
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
    expected = (1 - 1e-5) * p["prompt"] - 0.3 * y
    np.testing.assert_allclose(p["prompt"] + updates["prompt"], expected, rtol=1e-6)


def test_a_model_and_its_variables_from_arrays_import_neither_seqio_nor_tensorflow():
    """A process that builds a model, its batch shapes and its variables (the benchmarks, a serving process)
    does not pay the ~0.6 GB of seqio + TensorFlow; they load with the first feature converter."""
    import subprocess
    import sys
    code = ("import sys, jax; from prompt_tuning import models; from prompt_tuning.train import trainer; "
            "from prompt_tuning.t5.config import T5Config; from prompt_tuning.t5.network import Transformer; "
            # A config of its own: train.testing's tiny_config registers seqio tasks on import.
            "model = models.EncoderDecoderModel(Transformer(T5Config(vocab_size=264, emb_dim=8, num_heads=2, "
            "head_dim=4, mlp_dim=8, num_encoder_layers=1, num_decoder_layers=1))); "
            "model.init(jax.random.PRNGKey(0), model.dummy_batch({'inputs': 4, 'targets': 2})); "
            "heavy = sorted({'seqio', 'tensorflow'} & set(sys.modules)); assert not heavy, heavy; "
            "model.feature_converter(); assert 'tensorflow' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_model_feature_lengths_are_the_converters():
    lengths = {"inputs": 7, "targets": 3}
    for model in (models.EncoderDecoderModel(Transformer(testing.tiny_config())),
                  models.DecoderOnlyModel(DecoderOnly(testing.tiny_config()))):
        assert model.model_feature_lengths(lengths) == dict(
            model.feature_converter().get_model_feature_lengths(lengths)), type(model).__name__
        with pytest.raises(UserError, match="lacks \\['targets'\\]"):
            model.model_feature_lengths({"inputs": 7})


def test_split_merge_and_regex():
    params = {"encoder": {"prompt": {"prompt": 1}, "layers_0": {"pre_attention_layer_norm": {"scale": 2}}},
              "decoder": {"logits_dense": {"kernel": 3}}}
    trainable, frozen = optimizers.split_params(params)
    assert traverse_util.flatten_dict(trainable, sep="/") == {"encoder/prompt/prompt": 1}
    assert optimizers.merge_params(trainable, frozen) == params
    both, _ = optimizers.split_params(params, ".*prompt.*|.*layer_norm.*")
    assert len(traverse_util.flatten_dict(both)) == 2
    with pytest.raises(ValueError, match="matches no parameter"):
        optimizers.split_params(params, "nothing")


def test_loss_normalisation():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    targets = jnp.array([[1, 2, 0], [3, 0, 0]])
    weights = (targets > 0).astype(jnp.float32)
    sums = losses.loss_sums(logits, targets, weights)
    per_token = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["loss"], jnp.sum(per_token * weights), rtol=1e-6)
    assert float(losses.normalizer(sums, losses.NUM_REAL_TARGET_TOKENS)) == 3.0
    assert float(losses.normalizer(sums, None)) == 1.0
    z = losses.loss_sums(logits, targets, weights, z_loss=1e-4)["z_loss"]
    np.testing.assert_allclose(z, 1e-4 * jnp.sum(jnp.square(jax.nn.logsumexp(logits, -1)) * weights), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- train step
def test_only_the_prompt_has_state_and_changes(trained):
    trainer, initial, state, losses_seen = trained
    assert list(traverse_util.flatten_dict(state.trainable)) == [PROMPT_PATH]
    # Optimizer state exists for the prompt only: no leaf has a frozen weight's shape.
    frozen_shapes = {x.shape for x in jax.tree_util.tree_leaves(trainer.frozen)} - {(3, 16), (16,)}
    assert not any(x.shape in frozen_shapes for x in jax.tree_util.tree_leaves(state.opt_state))
    assert not np.allclose(initial["encoder"]["prompt"]["prompt"], state.trainable["encoder"]["prompt"]["prompt"])
    assert losses_seen[-1] < losses_seen[0]


def test_frozen_weights_untouched_and_placed(trained, mesh):
    trainer, _, _, _ = trained
    model = tiny_model()
    fresh, _ = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    _, fresh_frozen = optimizers.split_params(fresh)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(fresh_frozen),
                           jax.device_get(trainer.frozen))
    embedding = trainer.frozen["token_embedder"]["embedding"]
    assert embedding.sharding.spec == jax.sharding.PartitionSpec("model", None)   # ('vocab', 'embed') rules


def test_microbatches_give_the_same_step_and_scores(mesh, batch, trained):
    trainer1, _, trained_state, _ = trained
    trainer2 = make_trainer(mesh, num_microbatches=2)
    s1, m1 = trainer1.train_step(trainer1.init_state(), batch)
    s2, m2 = trainer2.train_step(trainer2.init_state(), batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    np.testing.assert_allclose(s1.trainable["encoder"]["prompt"]["prompt"],
                               s2.trainable["encoder"]["prompt"]["prompt"], rtol=1e-4, atol=1e-6)
    # Scoring in 2 slices gives every row its own score, in the batch's order.
    whole = np.asarray(trainer1.score_batch(trained_state, batch))
    sliced = np.asarray(trainer2.score_batch(trained_state, batch))
    assert len(set(np.round(whole, 3))) > 1  # distinct rows, so a reordering would show
    np.testing.assert_allclose(sliced, whole, rtol=1e-5)


def test_frozen_bfloat16(mesh, batch):
    trainer = make_trainer(mesh, frozen_dtype="bfloat16")
    assert {x.dtype for x in jax.tree_util.tree_leaves(trainer.frozen)} == {jnp.dtype("bfloat16")}
    state, metrics = trainer.train_step(trainer.init_state(), batch)
    assert state.trainable["encoder"]["prompt"]["prompt"].dtype == jnp.float32
    assert np.isfinite(float(metrics["loss"]))


# ---------------------------------------------------------------------------------------------- runs
def _run(model_dir, steps, eval_period=0, metric=None, **kwargs):
    gin.clear_config()
    gin.bind_parameter("Checkpointer.period", 2)
    gin.bind_parameter("Checkpointer.keep", 2)
    if metric:
        gin.bind_parameter("Checkpointer.metric", metric)
    try:
        return loop.train(model_dir=str(model_dir), model=tiny_model(dropout=0.1),
                          train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8),
                          train_steps=steps, eval_period=eval_period, log_every=2, model_parallel_size=2, **kwargs)
    finally:
        gin.clear_config()


def _prompt(result: loop.TrainResult):
    """The run's newest saved prompt (the final one)."""
    return read_trainable(os.path.join(result.model_dir, "checkpoints"))["encoder"]["prompt"]["prompt"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("full")
    return model_dir, _run(model_dir, 6, eval_period=3, metric=f"{testing.TINY_TASK}/accuracy")


def test_interrupted_and_resumed_run_ends_with_the_same_prompt(full_run, tmp_path):
    _, history = full_run
    first = _run(tmp_path, 3)        # "preempted" after step 3 (the last step's checkpoint is forced)
    assert (first.step, first.start_step) == (3, 0)
    resumed = _run(tmp_path, 6)
    assert (resumed.step, resumed.start_step) == (6, 3)
    np.testing.assert_array_equal(_prompt(history), _prompt(resumed))   # same data, same dropout rng


def test_checkpoint_files(full_run):
    model_dir, history = full_run
    steps = sorted(int(d) for d in os.listdir(model_dir / "checkpoints"))
    assert steps == [4, 6]                          # keep=2
    size = sum(f.stat().st_size for f in (model_dir / "checkpoints" / "6").rglob("*") if f.is_file())
    assert size < 200_000                           # prompt + optimizer state only, no frozen model
    npy = np.load(model_dir / "numpy_checkpoints" / "checkpoint_6" / "encoder.prompt.prompt.npy")
    np.testing.assert_array_equal(npy, _prompt(history))
    assert not [p for p in (model_dir / "numpy_checkpoints").rglob("*tmp*")]
    assert history.best_step in (3, 6) and os.listdir(model_dir / "best")
    assert [e["step"] for e in history.evals] == [3, 6] and history.last_train["loss"] > 0
    assert history.plot and history.stop_reason is None
    assert (model_dir / "training_curves.png").stat().st_size > 1000
    lines = [json.loads(x) for x in open(model_dir / "eval" / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [3, 6] and f"{testing.TINY_TASK}/accuracy" in lines[0]
    assert list((model_dir / "train").glob("events.out.tfevents*"))


def test_extract_prompt(full_run, tmp_path):
    from prompt_tuning.scripts import extract_prompt
    model_dir, history = full_run
    out = tmp_path / "p.npy"
    extract_prompt.main([str(model_dir / "checkpoints"), str(out)])
    np.testing.assert_array_equal(np.load(out), _prompt(history))
    extract_prompt.main([str(model_dir / "checkpoints"), str(out), "--step", "4"])
    np.testing.assert_array_equal(
        np.load(out), np.load(model_dir / "numpy_checkpoints" / "checkpoint_4" / "encoder.prompt.prompt.npy"))


def test_restore_trainable_for_eval(full_run):
    model_dir, history = full_run
    trainer, state, rows = setup.load_for_eval(tiny_model(), LENGTHS, model_parallel_size=2,
                                               prompt_checkpoint_path=str(model_dir / "checkpoints"))
    assert rows is None
    np.testing.assert_array_equal(np.asarray(state.trainable["encoder"]["prompt"]["prompt"]), _prompt(history))
    best_step = str(history.best_step)
    _, best, _ = setup.load_for_eval(tiny_model(), LENGTHS, prompt_checkpoint_path=str(model_dir))  # best/ wins
    np.testing.assert_array_equal(
        np.asarray(best.trainable["encoder"]["prompt"]["prompt"]),
        read_trainable(str(model_dir / "best" / best_step))["encoder"]["prompt"]["prompt"])


def test_score_evaluation_matches_direct_scores(trained, tmp_path):
    trainer, _, state, _ = trained
    evaluator = Evaluator(trainer, testing.TINY_SCORE_TASK, LENGTHS, batch_size=8, output_dir=str(tmp_path))
    metrics = evaluator.evaluate(state, step=8)
    # Direct: the same 16 validation examples scored with the loss function's log-likelihoods.
    ds = data.get_dataset(data.DatasetConfig(testing.TINY_SCORE_TASK, LENGTHS, split="validation", batch_size=16,
                                             shuffle=False), CONVERTER, num_epochs=1)
    batch = next(data.numpy_batches(ds))
    logits = trainer.model.logits(trainer.params_for_eval(state), batch)
    direct = losses.token_log_probs(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]).sum(-1)
    np.testing.assert_allclose(metrics[f"{testing.TINY_SCORE_TASK}/mean_score"], float(jnp.mean(direct)),
                               rtol=1e-5)


def test_trainer_and_model_give_the_same_scores_and_decodes(trained, batch):
    """One implementation: the trainer's jitted, sliced scoring is the model's, as is its decoding."""
    trainer, _, state, _ = trained
    params = trainer.params_for_eval(state)
    host = {k: np.asarray(v) for k, v in batch.items()}
    np.testing.assert_allclose(np.asarray(trainer.score_batch(state, batch)),
                               np.asarray(trainer.model.score_batch(params, host)), rtol=1e-5, atol=1e-5)
    tokens, scores = trainer.predict_batch(state, batch, max_decode_len=3)
    direct_tokens, direct_scores = trainer.model.predict_batch(params, host, max_decode_len=3)
    np.testing.assert_array_equal(tokens, direct_tokens)
    np.testing.assert_allclose(scores, direct_scores, rtol=1e-5, atol=1e-5)


def test_lowered_steps_compile_from_abstract_inputs(trained, batch):
    trainer, _, state, _ = trained
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in batch.items()}
    compiled = trainer.lower_train_step(trainer.abstract_state(), abstract_batch).compile()
    assert compiled.memory_analysis().temp_size_in_bytes > 0
    assert trainer.lower_score_batch(state, abstract_batch).compile().cost_analysis()["flops"] > 0


def test_early_stopping_stops_and_a_resume_keeps_the_count(tmp_path):
    metric = f"{testing.TINY_TASK}/accuracy"
    stopper = loop._EarlyStopping(metric, patience=2)
    assert [stopper.update(s, {metric: v}) is None for s, v in ((1, 50.0), (2, 60.0), (3, 55.0))] == [True] * 3
    assert "has not improved for 2 evaluations" in stopper.update(4, {metric: 60.0})
    # A real run: the tiny task's accuracy plateaus, so patience 1 ends it before TRAIN_STEPS.
    result = _run(tmp_path, 40, eval_period=2, early_stopping_metric=metric, early_stopping_patience=1)
    assert result.stop_reason and result.step < 40 and "early stopping" in result.stop_reason
    again = _run(tmp_path, 40, eval_period=2, early_stopping_metric=metric, early_stopping_patience=1)
    assert (again.step, again.stop_reason) == (result.step, result.stop_reason)  # nothing more trained
