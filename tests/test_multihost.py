"""MULTI-HOST test: 2 local CPU processes (jax.distributed, 4 devices each) against one process with 8 devices.

The two processes each read their own shard of the data (seqio ShardInfo) and run the real training loop
(`loop.train`, with checkpoints and evaluation); the single-process reference builds the same global batches
by concatenating the two shards and steps the Trainer directly.  Losses must agree within float tolerance.
Run alone: `python -m pytest -q tests/test_multihost.py`.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

STEPS = 3
WORKER_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
              "TF_CPP_MIN_LOG_LEVEL": "3"}


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def worker(process_id: int, port: int, model_dir: str):
    import jax
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import gin
    from prompt_tuning.train import data, loop, testing
    from prompt_tuning.train.checkpointing import read_trainable
    from test_train import LENGTHS, tiny_model
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    gin.bind_parameter("Checkpointer.period", STEPS)
    loop.train(model_dir=model_dir, model=tiny_model(dropout=0.1),
               train_dataset_cfg=data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8),
               train_steps=STEPS, eval_period=STEPS, log_every=1, model_parallel_size=2)
    prompt = read_trainable(os.path.join(model_dir, "checkpoints"))["encoder"]["prompt"]["prompt"]
    np.save(os.path.join(model_dir, f"prompt_process{process_id}.npy"), prompt)


def test_two_processes_match_one(tmp_path):
    import jax
    import seqio
    from prompt_tuning import partitioning
    from prompt_tuning.train import data, testing
    from test_train import CONVERTER, LENGTHS, tiny_model
    from prompt_tuning.train import optimizers, params as params_lib, trainer as trainer_lib

    port, model_dir = _free_port(), str(tmp_path / "run")
    env = dict(os.environ, **WORKER_ENV, PYTHONPATH=os.path.dirname(__file__) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), model_dir], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    # Single-process reference over the same 8-device mesh shape, with the two shards concatenated.
    mesh = partitioning.make_mesh(2)
    cfg = data.DatasetConfig(testing.TINY_TASK, LENGTHS, batch_size=8)
    shards = [data.numpy_batches(data.get_dataset(cfg, CONVERTER, shard_info=seqio.ShardInfo(i, 2)))
              for i in range(2)]
    model = tiny_model(dropout=0.1)
    params, shardings = params_lib.init_params(model, model.dummy_batch(LENGTHS), mesh, jax.random.PRNGKey(0))
    tx, schedule = optimizers.make_optimizer()
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, tx, schedule)
    state, expected = trainer.init_state(), []
    for _ in range(STEPS):
        parts = [next(s) for s in shards]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, metrics = trainer.train_step(state, data.to_global(batch, mesh))
        expected.append(float(metrics["loss"]))

    with open(os.path.join(model_dir, "train", "scalars.jsonl")) as f:
        got = [json.loads(line)["loss"] for line in f]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    prompts = [np.load(os.path.join(model_dir, f"prompt_process{i}.npy")) for i in range(2)]
    np.testing.assert_array_equal(prompts[0], prompts[1])
    np.testing.assert_allclose(prompts[0], np.asarray(state.trainable["encoder"]["prompt"]["prompt"]), atol=1e-5)
    # Written once: one checkpoint, one .npy, one eval line.
    assert os.listdir(os.path.join(model_dir, "checkpoints")) == [str(STEPS)]
    assert len(open(os.path.join(model_dir, "eval", "metrics.jsonl")).readlines()) == 1


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
