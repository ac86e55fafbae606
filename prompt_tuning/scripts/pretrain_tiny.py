"""Pretrains the tiny frozen T5 of the README's main job on `synthetic_pretrain` and saves it as a t5x
Orbax checkpoint (`<out>/state`, parameters under 'target'), which `load_pretrained` reads like any other.

  python -m prompt_tuning.scripts.pretrain_tiny --out=prompt_tuning/assets/synthetic_t5_tiny/checkpoint_0

Every parameter is trained here (full pretraining, Adam); prompt tuning later freezes all of them.
The committed checkpoint was made by this command on 2 CPU cores (a few minutes).
"""
import argparse
import os
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from prompt_tuning import models, partitioning
from prompt_tuning.t5.config import T5Config
from prompt_tuning.t5.network import Transformer
from prompt_tuning.tasks import synthetic
from prompt_tuning.train import data, params as params_lib, trainer as trainer_lib

# T5 1.1-shaped (gated GELU, untied head), byte vocabulary padded to a multiple of 8.
TINY_CONFIG = T5Config(vocab_size=264, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                       num_encoder_layers=2, num_decoder_layers=2)
FEATURE_LENGTHS = {"inputs": 32, "targets": 16}


def pretrain(steps: int, batch_size: int, learning_rate: float, seed: int, log_every: int = 100):
    """Trains every parameter of TINY_CONFIG; returns the parameter tree (numpy) and the last metrics."""
    # No prompt, whatever gin binds.
    model = models.EncoderDecoderModel(Transformer(TINY_CONFIG, encoder_input_processor_factory=None))
    mesh = partitioning.make_mesh(1)
    params, shardings = params_lib.init_params(model, model.dummy_batch(FEATURE_LENGTHS), mesh,
                                               jax.random.PRNGKey(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(500, steps // 10), steps,
                                                  learning_rate / 10)
    trainer = trainer_lib.Trainer(model, params, shardings, mesh, optax.adam(schedule), schedule,
                                  trainable_regex=".*", z_loss=0.0, seed=seed)
    state = trainer.init_state()
    cfg = data.DatasetConfig(synthetic.PRETRAIN_TASK, FEATURE_LENGTHS, "train", batch_size, True, seed)
    batches = data.numpy_batches(data.get_dataset(cfg, model.feature_converter))
    start, scalars = time.time(), {}
    for step in range(1, steps + 1):
        state, metrics = trainer.train_step(state, data.to_global(next(batches), mesh))
        if step % log_every == 0 or step == steps:
            scalars = trainer_lib.get_metrics(metrics)
            print(f"step {step}/{steps}  loss {scalars['loss']:.4f}  token accuracy {scalars['accuracy']:.3f}  "
                  f"({time.time() - start:.0f} s)", flush=True)
    params = jax.device_get(trainer.params_for_eval(state))
    return jax.tree_util.tree_map(np.asarray, params), scalars


def save_t5x_orbax(params, out: str) -> str:
    """Writes `params` as a t5x Orbax checkpoint directory; refuses to overwrite one."""
    state_dir = os.path.join(os.path.abspath(out), "state")
    if os.path.exists(state_dir):
        raise FileExistsError(f"{state_dir} already exists; choose another --out or remove it")
    ocp.PyTreeCheckpointer().save(state_dir, {"target": params})
    return state_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.out, "state")):
        parser.error(f"{args.out}/state already exists; choose another --out or remove it")
    params, _ = pretrain(args.steps, args.batch_size, args.learning_rate, args.seed)
    print("saved", save_t5x_orbax(params, args.out))


if __name__ == "__main__":
    main()
