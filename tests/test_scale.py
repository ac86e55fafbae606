"""The scale switches leave the numbers unchanged on 8 simulated devices; a run resumes on another mesh; a
checkpoint loads straight into a 2-D sharded layout."""
import functools
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from prompt_tuning import models, partitioning
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.scripts.demo import ASSET_CHECKPOINT
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, loop, optimizers, params as params_lib, setup, testing
from prompt_tuning.train.checkpointing import read_trainable

LENGTHS = {"inputs": 12, "targets": 4}
# Small, but every sharded axis divides 4 ('model' up to 4, 'data' up to 4): 4 heads, 2+2 layers.
CONFIG = T5Config(vocab_size=264, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64, num_encoder_layers=2,
                  num_decoder_layers=2)
ASSET = ASSET_CHECKPOINT   # the shipped tiny t5x checkpoint


def model_of(config=CONFIG, dropout=0.0):
    return models.EncoderDecoderModel(Transformer(config.replace(dropout_rate=dropout),
                                                  encoder_input_processor_factory=functools.partial(
                                                      PromptProcessor, length=3)))


def stacked(params):
    """An unrolled tree (layers_N) as the scanned model's (layers, stacked on axis 0)."""
    flat, groups = traverse_util.flatten_dict(params), {}
    for key, value in flat.items():
        if len(key) > 1 and key[1].startswith("layers_"):
            groups.setdefault((key[0], "layers") + key[2:], []).append((int(key[1][7:]), value))
        else:
            groups[key] = value
    return traverse_util.unflatten_dict({k: jnp.stack([x for _, x in sorted(v)]) if isinstance(v, list) else v
                                         for k, v in groups.items()})


@pytest.fixture(scope="module")
def setting():
    mesh = partitioning.make_mesh(2)          # 4 data x 2 model
    model = model_of()
    batch = data.to_global(next(data.numpy_batches(data.get_dataset(
        data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8), model.feature_converter))), mesh)
    params, _ = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    return mesh, batch, jax.device_get(params)


def logits_and_prompt_grad(model, params, batch, mesh, parameter_dims=1, activation_dims=0):
    """Teacher-forced logits and the prompt's loss gradient, jitted with the switches' shardings."""
    specs = params_lib.logical_specs(model, model.dummy_batch(LENGTHS))
    shardings = partitioning.param_sharding(specs, mesh, parameter_dims)
    features = model.features(batch)

    def fn(params):
        trainable, frozen = optimizers.split_params(params)

        def loss(tr):
            return model.loss_sums(optimizers.merge_params(tr, frozen), features)["loss"]
        return model.logits(params, features), jax.grad(loss)(trainable)
    step = jax.jit(partitioning.constrained(fn, mesh, activation_dims), in_shardings=(shardings,))
    logits, grads = step(jax.device_put(params, shardings))
    return np.asarray(logits), np.asarray(grads["encoder"]["prompt"]["prompt"]), step, shardings


@pytest.fixture(scope="module")
def plain(setting):
    mesh, batch, params = setting
    return logits_and_prompt_grad(model_of(), params, batch, mesh)[:2]


@pytest.mark.parametrize("switches", [
    dict(scan_layers=True, remat_policy="full"),
    dict(scan_layers=True, remat_policy="minimal", activation_dims=2, parameter_dims=2),
    dict(remat_policy="minimal", activation_dims=1, parameter_dims=2),
])
def test_switches_leave_logits_and_prompt_gradient_unchanged(setting, plain, switches):
    mesh, batch, params = setting
    switches = dict(switches)
    dims = dict(parameter_dims=switches.pop("parameter_dims", 1), activation_dims=switches.pop("activation_dims", 0))
    config = CONFIG.replace(**switches)
    if config.scan_layers:
        params = stacked(params)
    logits, grad, step, shardings = logits_and_prompt_grad(model_of(config), params, batch, mesh, **dims)
    np.testing.assert_allclose(logits, plain[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, plain[1], rtol=1e-4, atol=1e-7)
    assert np.abs(plain[1]).max() > 0
    flat = traverse_util.flatten_dict(shardings, sep="/")
    prefix = "encoder/layers" if config.scan_layers else "encoder/layers_0"
    wi = flat[f"{prefix}/mlp/wi_0/kernel"].spec
    assert ("model" in wi) and (("data" in wi) == (dims["parameter_dims"] == 2))
    assert "data" not in tuple(flat[f"{prefix}/pre_mlp_layer_norm/scale"].spec)   # layer norms stay replicated
    assert tuple(flat["encoder/prompt/prompt"].spec) in ((), (None, None))
    if dims["activation_dims"]:   # the constraints reach the program (they are no-ops without rules and mesh)
        assert "sharding_constraint" in step.lower(jax.device_put(params, shardings)).as_text()


def test_unknown_logical_axis_is_an_error_not_replication():
    from jax.sharding import PartitionSpec
    with pytest.raises(ValueError, match="'hidden'.*no partitioning rule"):
        partitioning.param_sharding({"w": PartitionSpec("embed", "hidden")}, partitioning.make_mesh(2), 1)


# ---------------------------------------------------------------------------------------------- another mesh
def _run(model_dir, steps, model_parallel_size, num_devices=None):
    gin.clear_config()
    gin.bind_parameter("Checkpointer.period", 3)
    try:
        return loop.train(model_dir=str(model_dir), model=model_of(dropout=0.1),
                          train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8),
                          train_steps=steps, log_every=3, model_parallel_size=model_parallel_size,
                          num_devices=num_devices)
    finally:
        gin.clear_config()


def _prompt(model_dir):
    return read_trainable(os.path.join(model_dir, "checkpoints"))["encoder"]["prompt"]["prompt"]


def test_resume_on_another_mesh_ends_with_the_same_prompt(tmp_path):
    """Checkpointed on 8 devices (model parallelism 2), resumed on 4 devices (1) and on 8 (4)."""
    _run(tmp_path / "whole", 6, 2)
    _run(tmp_path / "first", 3, 2)
    expected = _prompt(tmp_path / "whole")
    for name, mp, n in (("on4_mp1", 1, 4), ("on8_mp4", 4, None)):
        shutil.copytree(tmp_path / "first", tmp_path / name)
        resumed = _run(tmp_path / name, 6, mp, n)
        assert (resumed.start_step, resumed.step) == (3, 6)
        np.testing.assert_allclose(_prompt(tmp_path / name), expected, atol=1e-5, rtol=0)
    assert np.abs(expected - _prompt(tmp_path / "first")).max() > 1e-4   # the last 3 steps moved the prompt


def test_checkpoint_reads_into_2d_shards():
    """The tiny t5x checkpoint read straight into 2-D sharded kernels, equal to the 1-D read."""
    config = T5Config(vocab_size=264, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2,
                      num_decoder_layers=2)
    model, mesh = model_of(config), partitioning.make_mesh(2)
    one_d = setup.load_frozen(str(ASSET), model, LENGTHS, mesh)
    gin.clear_config()
    gin.bind_parameter("partitioning.parameter_partitioning_dims.dims", 2)
    try:
        two_d = setup.load_frozen(str(ASSET), model, LENGTHS, mesh)
    finally:
        gin.clear_config()
    kernel = two_d["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert tuple(kernel.sharding.spec) == ("data", "model")
    assert {s.data.shape for s in kernel.addressable_shards} == {(128 // 4, 256 // 2)}
    assert tuple(two_d["encoder"]["layers_0"]["pre_mlp_layer_norm"]["scale"].sharding.spec) in ((), (None,))
    for a, b in zip(jax.tree_util.tree_leaves(one_d), jax.tree_util.tree_leaves(two_d)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
