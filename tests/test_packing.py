"""Prompt-aware packing: several examples per row, each with its own copy of its prompt.  Every example's
logits in a packed row equal those of its unpacked row, and a packed step trains as its examples unpacked."""
import dataclasses
import functools

import gin
import jax
import numpy as np
import pytest
import seqio

from prompt_tuning import models
from prompt_tuning.errors import UserError
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.decoder_only import DecoderOnly
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, identity, loop, testing

LENGTHS = {"inputs": 30, "targets": 8}   # tiny inputs are 4-10 tokens + 3 prompt slots: 2-5 per packed row
PACKED = ["encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions"]


def _model(**prompt):
    return models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=(
        functools.partial(PromptProcessor, length=3, **prompt))))


@functools.lru_cache(maxsize=None)
def _setup(bank: bool):
    """(model, params with a random prompt, the prompt_index the rows use)."""
    model = _model(num_prompts=2, lengths=(3, 2)) if bank else _model()
    params = model.init(jax.random.PRNGKey(0), model.dummy_batch(LENGTHS))["params"]
    params = jax.tree_util.tree_map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                                    is_leaf=lambda x: hasattr(x, "unbox"))
    prompt = params["encoder"]["prompt"]["prompt"]
    params["encoder"]["prompt"]["prompt"] = jax.random.normal(jax.random.PRNGKey(1), prompt.shape)
    # Row 1 of the bank is 2 long: its slot's first position stays unused (right-aligned, as unpacked).
    return model, params, (1 if bank else None)


def _converted(model, row, pack: bool, n: int = 24):
    task = seqio.get_mixture_or_task(testing.TINY_TASK)
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1).take(n)
    examples = model.feature_converter(prompt_index=row, pack=pack)(ds, LENGTHS)
    return {k: np.stack([ex[k] for ex in examples.as_numpy_iterator()])
            for k in next(examples.as_numpy_iterator())}


_logits = jax.jit(lambda model, params, batch: model.logits(params, batch), static_argnums=0)


@pytest.mark.parametrize("bank", [False, True], ids=["one_prompt", "bank_row_of_shorter_length"])
def test_each_packed_example_has_the_logits_of_its_unpacked_row(bank):
    model, params, row = _setup(bank)
    unpacked, packed = _converted(model, row, pack=False), _converted(model, row, pack=True)
    n = len(unpacked["decoder_target_tokens"])
    assert len(packed["decoder_target_tokens"]) <= n // 2            # really packed
    assert packed["encoder_input_tokens"].shape[1] == unpacked["encoder_input_tokens"].shape[1] + 3
    assert set(PACKED) <= set(packed)
    want, got = np.asarray(_logits(model, params, unpacked)), np.asarray(_logits(model, params, packed))
    i = 0
    for r, segments in enumerate(packed["decoder_segment_ids"]):
        for s in range(1, segments.max() + 1):
            at = np.flatnonzero(segments == s)
            targets = unpacked["decoder_target_tokens"][i]
            np.testing.assert_array_equal(packed["decoder_target_tokens"][r, at], targets[targets > 0])
            np.testing.assert_allclose(got[r, at], want[i, :len(at)], atol=1e-5, rtol=0)
            i += 1
    assert i == n                                                     # every example, in order


def test_a_packed_batch_has_the_loss_and_prompt_gradient_of_its_examples_unpacked():
    model, params, row = _setup(False)
    unpacked, packed = _converted(model, row, pack=False), _converted(model, row, pack=True)

    def sums(p, batch):
        out = model.loss_sums(p, batch, z_loss=1e-4)
        return out["loss"], out

    grad_fn = jax.jit(jax.grad(sums, has_aux=True))
    (grads_a, sums_a), (grads_b, sums_b) = grad_fn(params, unpacked), grad_fn(params, packed)
    for k in ("loss", "z_loss", "weight"):
        np.testing.assert_allclose(sums_b[k], sums_a[k], rtol=1e-5)
    np.testing.assert_allclose(grads_b["encoder"]["prompt"]["prompt"], grads_a["encoder"]["prompt"]["prompt"],
                               atol=1e-5, rtol=1e-4)


def test_packing_is_refused_where_an_example_would_not_get_its_own_prompt():
    with pytest.raises(UserError, match="PACK=True needs the 'prefix' prompt placement.*'suffix'"):
        _model(placement="suffix").feature_converter(pack=True)
    decoder_only = models.DecoderOnlyModel(DecoderOnly(testing.tiny_config()))
    with pytest.raises(UserError, match="PACK=True: DecoderOnlyModel cannot pack"):
        decoder_only.feature_converter(pack=True)
    model, params, _ = _setup(False)
    # t5x's own packed rows (no prompt slots) would share one prompt between examples.
    batch = _converted(model, None, pack=True)
    with pytest.raises(ValueError, match="packed inputs are not supported with a soft prompt"):
        model.module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                           batch["decoder_target_tokens"], **{k: batch[k] for k in PACKED})


def test_a_packed_run_trains_evaluates_and_is_not_resumed_unpacked(tmp_path):
    gin.clear_config()
    cfg = data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8, pack=True)
    result = loop.train(model_dir=str(tmp_path), model=_model(), train_dataset_cfg=cfg, train_steps=2,
                        eval_period=2, log_every=2)
    assert result.step == 2 and np.isfinite(result.last_train["loss"])
    assert result.evals and "pt_tiny_count/accuracy" in result.evals[-1]   # evaluation scores examples unpacked
    with pytest.raises(loop.ResumeMismatchError, match="differs in data.pack: true -> false"):
        loop.train(model_dir=str(tmp_path), model=_model(), train_steps=4, eval_period=0,
                   train_dataset_cfg=dataclasses.replace(cfg, pack=False))


def test_a_checkpoint_from_before_packing_resumes_unpacked():
    """Identities recorded before `pack` (and `group_by_length`) existed match runs that keep the defaults."""
    current = {"data": {"batch_size": 8, "group_by_length": 0, "pack": False}}
    older = {"data": {"batch_size": 8}}
    assert identity.differences(older, current) == []
    assert identity.differences(older, {"data": dict(current["data"], pack=True)}) == ["data.pack: false -> true"]
