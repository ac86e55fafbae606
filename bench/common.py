"""The W-small workload and the project's side of it, shared by every bench script.

W-small: T5 1.1 small dimensions (vocab 32128, d_model 512, 6 heads of 64, d_ff 1024, 8+8 layers, gated-gelu,
untied head), batch 8, 412 input tokens + 100 prompt tokens, 8 target tokens, float32 on CPU, random weights.
Our side goes through public APIs only: the model, `Trainer.train_step` / `score_batch` / `predict_batch` and
their `lower_*` twins for compile-time analyses.

Also the measurement helpers every script uses: each measurement runs in a child process of its own
(`run_child`), so its peak memory is its own, and times the calls after a warm-up (`time_calls`).
"""
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Optional

BATCH, INPUT_LEN, PROMPT_LEN, TARGET_LEN = 8, 412, 100, 8
VOCAB = 32128


def make_batch(seed: int = 0, batch: int = BATCH, input_len: int = INPUT_LEN):
    """Full-length random inputs (no padding) ending in EOS; targets of 8 real tokens ending in EOS."""
    import numpy as np
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, VOCAB, (batch, input_len), dtype=np.int32)
    inputs[:, -1] = 1
    targets = rng.integers(3, VOCAB, (batch, TARGET_LEN), dtype=np.int32)
    targets[:, -1] = 1
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets, np.float32)}


@dataclasses.dataclass
class Ours:
    trainer: Any   # prompt_tuning.train.trainer.Trainer
    state: Any     # its TrainState
    batch: dict    # the W-small batch as global arrays on the trainer's mesh


def ours_setup(microbatches: int = 1, bf16: bool = False, f32_frozen: bool = False, remat: str = "none",
               model_tuning: bool = False, microbatch_positions: Optional[int] = None) -> Ours:
    """The real Trainer on W-small (bf16: bfloat16 activations and, unless f32_frozen, frozen weights).

    model_tuning: every parameter trainable with runs/model_finetune.gin's optimizer (t5x's default Adafactor,
    constant 1e-3) instead of the prompt with the paper's prompt-tuning Adafactor; same model, prompt and batch.
    """
    import functools

    import jax

    from prompt_tuning import models, partitioning
    from prompt_tuning.prompts import PromptProcessor, initializers
    from prompt_tuning.t5 import config as t5config
    from prompt_tuning.t5 import network
    from prompt_tuning.train import optimizers, params as tparams, trainer as ttrainer

    overrides = {"dtype": "bfloat16"} if bf16 else {}
    if remat != "none":
        overrides["remat_policy"] = remat
    cfg = t5config.get_config("t5_1_1", "small", **overrides)
    processor = functools.partial(PromptProcessor, length=PROMPT_LEN, initializer=initializers.uniform())
    model = models.EncoderDecoderModel(network.Transformer(config=cfg, encoder_input_processor_factory=processor))
    mesh = partitioning.make_mesh()
    batch = model.dummy_batch({"inputs": INPUT_LEN, "targets": TARGET_LEN}, batch_size=BATCH)
    params, shardings = tparams.init_params(model, batch, mesh, jax.random.PRNGKey(0))
    if model_tuning:
        lr, regex = 1e-3, ".*"
        tx = optimizers.adafactor(learning_rate=lr, multiply_by_parameter_scale=True, weight_decay_rate=0.0)
    else:
        lr, regex = 0.3, optimizers.DEFAULT_TRAINABLE_REGEX
        tx = optimizers.adafactor(learning_rate=lr)
    trainer = ttrainer.Trainer(model=model, params=params, param_shardings=shardings, mesh=mesh,
                               optimizer=tx, learning_rate_fn=lambda step: lr, trainable_regex=regex,
                               num_microbatches=microbatches, microbatch_positions=microbatch_positions,
                               frozen_dtype="bfloat16" if bf16 and not f32_frozen
                               else None, z_loss=1e-4)
    del params
    # jax.device_put with the trainer's batch sharding = data.to_global on one process, without importing
    # tensorflow/seqio (which would add ~0.5 GB of RSS that PEFT does not pay).
    batch = {k: jax.device_put(v, trainer.batch_sharding) for k, v in make_batch().items()}
    return Ours(trainer, trainer.init_state(), batch)


def torch_t5(vocab: int = VOCAB, d_model: int = 512, heads: int = 6, head_dim: int = 64, d_ff: int = 1024,
             layers: int = 8, threads: int = 0, seed: int = 0):
    """The PyTorch peer's model: transformers' T5 1.1 (gated-gelu, untied head, no dropout) of these
    dimensions (default W-small), random weights from `seed`, torch using `threads` threads (0: all cores)."""
    import torch
    import transformers
    torch.manual_seed(seed)
    torch.set_num_threads(threads or os.cpu_count())
    cfg = transformers.T5Config(vocab_size=vocab, d_model=d_model, d_kv=head_dim, d_ff=d_ff, num_layers=layers,
                                num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
                                pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg)


# --------------------------------------------------------------------------------------------------- measuring
def vm_hwm_bytes() -> int:
    """This process's peak resident memory since the last `reset_hwm` (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    """This process's peak resident memory over its whole life (setup, compile and calls)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_calls(fn, warmup: int, steps: int):
    """Wall times of `steps` calls after `warmup` untimed ones; also their CPU seconds and the calls' peak RSS."""
    for _ in range(warmup):
        fn()
    reset_ok = reset_hwm()
    times, cpu = [], []
    for _ in range(steps):
        c0, t0 = cpu_s(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_s() - c0)
    return times, cpu, (vm_hwm_bytes() if reset_ok else None)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def wait_for_load(limit: float, timeout_s: float = 600.0):
    """Wait (up to timeout_s) until the 1-minute load average is below limit; limit <= 0 waits for nothing."""
    if limit <= 0:
        return
    t0 = time.time()
    while float(loadavg()[0]) >= limit and time.time() - t0 < timeout_s:
        time.sleep(5)


def gb(x):
    return "-" if x is None else f"{x / 2**30:.2f}"


def report(result: dict) -> None:
    """A worker's last words: one RESULT line that `run_child` reads back."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(script: str, worker_args, label: str, wait_load: float = 0.0, env=None):
    """Run `script --worker ...` in a fresh process; its RESULT dict with the load average before and after,
    or None (with the child's stderr tail printed) if it failed."""
    wait_for_load(wait_load)
    load_before = " ".join(loadavg())
    cmd = [sys.executable, os.path.abspath(script), "--worker", *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"{label} FAILED (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    r = json.loads(line[-1][len("RESULT "):])
    r["load_before"], r["load_after"] = load_before, " ".join(loadavg())
    return r


def have_torch_peers() -> bool:
    """Whether torch, transformers and peft are installed, found without importing them: a child inherits
    its parent's peak RSS (ru_maxrss survives exec), so the driver must stay small."""
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "peft"))


def append_json(path, result: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


def alternate(items, round_index: int):
    """The systems of one round, in reverse order every other round, so no system always runs first."""
    return list(items) if round_index % 2 == 0 else list(items)[::-1]
