"""Prompt banks: each row trains as its own prompt, rows of a mixed batch, checkpoints, multi-task runs."""
import functools

import jax
import numpy as np
import pytest

from prompt_tuning import models, partitioning
from prompt_tuning.prompts.processor import PromptProcessor
from prompt_tuning.t5.network import Transformer
from prompt_tuning.train import data, optimizers, params as params_lib, setup, testing
from prompt_tuning.train import trainer as trainer_lib

LENGTHS = {"inputs": 12, "targets": 4}
PROMPT = ("encoder", "prompt", "prompt")


def tiny_model(num_prompts=None):
    processor = functools.partial(PromptProcessor, length=3, num_prompts=num_prompts)
    return models.EncoderDecoderModel(Transformer(testing.tiny_config(), encoder_input_processor_factory=processor))


def _trainer(model, params, shardings, mesh, **kwargs):
    tx, schedule = optimizers.make_optimizer()
    banks = setup.prompt_banks(model, model.dummy_batch(LENGTHS))
    if banks:
        tx = optimizers.per_array(tx, banks)
    return trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule, row_arrays=banks, **kwargs)


def _with_prompt(params, prompt):
    return {**params, "encoder": {**params["encoder"], "prompt": {"prompt": prompt}}}


def test_a_bank_trained_together_equals_single_prompt_runs():
    """Two rows, each fed its own stream (with different target lengths), step for step like two single runs."""
    mesh = partitioning.make_mesh(2)
    bank_model = tiny_model(num_prompts=2)
    bank_batch = bank_model.dummy_batch(LENGTHS)
    params, shardings = params_lib.init_params(bank_model, bank_batch, mesh, jax.random.PRNGKey(0))
    bank = _trainer(bank_model, params, shardings, mesh, num_microbatches=2)
    initial = np.asarray(params["encoder"]["prompt"]["prompt"])
    single_model = tiny_model()
    _, single_shardings = params_lib.init_params(single_model, single_model.dummy_batch(LENGTHS), mesh,
                                                 jax.random.PRNGKey(0))
    singles = [_trainer(single_model, _with_prompt(params, jax.numpy.asarray(initial[row])), single_shardings, mesh)
               for row in range(2)]

    converter = single_model.feature_converter
    streams = [data.numpy_batches(data.get_dataset(data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8,
                                                                      seed=seed), converter)) for seed in (1, 2)]
    bank_state, single_states = bank.init_state(), [t.init_state() for t in singles]
    for _ in range(4):
        parts = [next(s) for s in streams]
        for row in range(2):
            single_states[row], _ = singles[row].train_step(single_states[row], data.to_global(parts[row], mesh))
        mixed = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        mixed["prompt_index"] = np.repeat(np.arange(2, dtype=np.int32), 8)
        bank_state, _ = bank.train_step(bank_state, data.to_global(mixed, mesh))
    rows = np.asarray(bank_state.trainable["encoder"]["prompt"]["prompt"])
    for row in range(2):
        single = np.asarray(single_states[row].trainable["encoder"]["prompt"]["prompt"])
        assert np.abs(single - initial[row]).max() > 1e-2  # it trained
        np.testing.assert_allclose(rows[row], single, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- bank runs
TINY_MIXTURE = "pt_tiny_count_twice"


def _register_tiny_mixture():
    import seqio
    if TINY_MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(TINY_MIXTURE, [testing.TINY_TASK, testing.TINY_SCORE_TASK], default_rate=1.0)


def _bank_run(model_dir, steps):
    import gin
    from prompt_tuning.train import loop
    _register_tiny_mixture()
    gin.clear_config()
    gin.bind_parameter("Checkpointer.period", 2)
    try:
        return loop.train(model_dir=str(model_dir), model=tiny_model(num_prompts=2),
                          train_dataset_cfg=data.DatasetConfig(TINY_MIXTURE, LENGTHS, batch_size=8,
                                                               prompt_rows=data.PER_TASK),
                          train_steps=steps, eval_period=steps, model_parallel_size=2)
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("bank")
    return model_dir, _bank_run(model_dir, 4)


def test_bank_run_resumes_exactly_and_names_its_rows(bank_run, tmp_path):
    from prompt_tuning.train.checkpointing import read_meta, read_trainable
    model_dir, result = bank_run
    assert read_meta(str(model_dir))["prompt_rows"] == [testing.TINY_TASK, testing.TINY_SCORE_TASK]
    # Each task is evaluated with its own row, under its own name.
    assert {f"{testing.TINY_TASK}/accuracy", f"{testing.TINY_SCORE_TASK}/mean_score"} <= set(result.evals[-1])
    _bank_run(tmp_path, 2)
    resumed = _bank_run(tmp_path, 4)
    assert resumed.start_step == 2
    np.testing.assert_array_equal(read_trainable(str(tmp_path))["encoder"]["prompt"]["prompt"],
                                  read_trainable(str(model_dir))["encoder"]["prompt"]["prompt"])


def test_extract_one_row_as_npy_and_peft(bank_run, tmp_path):
    from prompt_tuning import prompts
    from prompt_tuning.scripts import extract_prompt
    from prompt_tuning.train.checkpointing import read_trainable
    model_dir, _ = bank_run
    bank = read_trainable(str(model_dir))["encoder"]["prompt"]["prompt"]
    extract_prompt.main([str(model_dir), str(tmp_path / "row.npy"), "--task", testing.TINY_SCORE_TASK])
    np.testing.assert_array_equal(np.load(tmp_path / "row.npy"), bank[1])
    extract_prompt.main([str(model_dir), str(tmp_path / "peft"), "--task", testing.TINY_TASK, "--peft"])
    np.testing.assert_array_equal(prompts.load_peft_prompt(str(tmp_path / "peft")), bank[0])
    with pytest.raises(SystemExit, match="no prompt row for task 'nope'"):
        extract_prompt.main([str(model_dir), str(tmp_path / "x.npy"), "--task", "nope"])


def test_multi_task_prompts_on_inputs_that_do_not_name_their_task(tmp_path):
    """Second and third letter of the SAME bare strings: only each task's bank row tells them apart.

    Each task's prompt in a two-task bank reaches (within 3 points) what a single-task run reaches in the same
    steps; evaluated with the rows swapped, both tasks fall to about chance.
    """
    import gin
    from prompt_tuning.prompts import initializers
    from prompt_tuning.scripts import demo, pretrain_tiny
    from prompt_tuning.tasks import synthetic
    from prompt_tuning.train import loop
    from prompt_tuning.train.evaluation import Evaluator
    lengths, steps = {"inputs": 16, "targets": 4}, 150
    tasks = [synthetic.HELD_OUT_TASK, synthetic.THIRD_LETTER_TASK]

    def model(bank=None):
        return models.EncoderDecoderModel(Transformer(pretrain_tiny.TINY_CONFIG, encoder_input_processor_factory=(
            functools.partial(PromptProcessor, length=20, num_prompts=bank,
                              initializer=initializers.sampled_vocab(population_size=259)))))

    def run(name, bank=None, rows=None):
        gin.clear_config()
        gin.bind_parameter("Checkpointer.period", steps)
        try:
            result = loop.train(model_dir=str(tmp_path / name.replace("/", "_")), model=model(bank),
                                train_dataset_cfg=data.DatasetConfig(name, lengths, batch_size=32, prompt_rows=rows),
                                train_steps=steps, initial_checkpoint_path=demo.ASSET_CHECKPOINT,
                                eval_period=steps, eval_num_examples=128)
        finally:
            gin.clear_config()
        return result.evals[-1]
    single = {task: run(task)[f"{task}/accuracy"] for task in tasks}
    mixed = run(synthetic.HELD_OUT_MIXTURE, bank=2, rows=data.PER_TASK)
    for task in tasks:
        assert mixed[f"{task}/accuracy"] >= single[task] - 3.0, (task, mixed, single)
        assert mixed[f"{task}/accuracy"] >= 90.0, mixed

    trainer, state, rows = setup.load_for_eval(model(bank=2), lengths,
                                               initial_checkpoint_path=demo.ASSET_CHECKPOINT,
                                               prompt_checkpoint_path=str(tmp_path / synthetic.HELD_OUT_MIXTURE))
    assert rows == {tasks[0]: 0, tasks[1]: 1}
    swapped = Evaluator(trainer, synthetic.HELD_OUT_MIXTURE, lengths, 32, num_examples=128,
                        task_rows={tasks[0]: 1, tasks[1]: 0}).evaluate(state, steps)
    for task in tasks:
        assert swapped[f"{task}/accuracy"] < 30.0, swapped  # chance: the majority answer scores about 15%
