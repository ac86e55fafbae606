"""`python -m prompt_tuning.scripts.plan` on a scaled-down T5 1.1 (base width, 2+2 layers) on 8 simulated
devices: frozen kernels are split on 'model' (and on 'data' with 2-D sharding), the rest stays replicated, and
the compiled train step holds no frozen-weight gradient (its buffer list, from XLA's dump)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
BASE = ["--num_devices=8", f"--gin_search_paths={GIN}", "--gin_file=models/t5_1_1_lm_adapted_base_prompt.gin",
        "--gin_file=runs/prompt_finetune.gin", "--gin.MODEL_PARALLEL_SIZE=2", "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}", "--gin.PROMPT_LENGTH=10",
        "--gin.config.get_config.num_encoder_layers=2", "--gin.config.get_config.num_decoder_layers=2",
        "--phases=train", "--device_memory_gib=0.01"]
VARIANTS = {"1d": [], "2d": ["--gin.PARAMETER_PARTITIONING_DIMS=2"], "full": ["--gin.TRAINABLE_REGEX='.*'"]}


@pytest.fixture(scope="module")
def reports():
    """The three plans, run side by side (each is its own process: it sets its device count)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "prompt_tuning.scripts.plan", *BASE, *extra],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name, extra in VARIANTS.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-2000:]
        out[name] = (json.loads(stdout.strip().splitlines()[-1]), stdout)
    return out


def _groups(report):
    return {row["group"]: row for row in report["parameters"]}


def _share(row):
    return np.prod(row["per_device"]) / np.prod(row["shape"])


def test_last_line_is_the_json_summary(reports):
    report, text = reports["1d"]
    for key in ("num_devices", "model_parallel_size", "per_device_total_bytes", "per_device_argument_bytes",
                "per_device_temp_bytes", "flops_per_step", "compile_seconds"):
        assert key in report
    assert (report["num_devices"], report["model_parallel_size"], report["data_parallel_size"]) == (8, 2, 4)
    assert report["flops_per_step"] > 0 and report["per_device_temp_bytes"] > 0
    # The compiled program's arguments are the sharded parameters (plus the tiny state and batch).
    params = report["per_device_frozen_param_bytes"] + report["per_device_trainable_param_bytes"]
    assert params <= report["per_device_argument_bytes"] < 1.05 * params
    assert "DOES NOT FIT 0.01 GiB" in text and "largest buffers:" in text and report["fits"] is False


def test_frozen_kernels_split_on_model_rest_replicated(reports):
    groups = _groups(reports["1d"][0])
    kernels = [g for g in groups if g.endswith("kernel") and ("mlp" in g or "attention" in g)]
    assert len(kernels) == 3 + 3 + 4 + 4 + 4   # enc mlp + dec mlp + enc attn + dec self + dec cross
    for g in kernels + ["token_embedder/embedding", "decoder/logits_dense/kernel"]:
        assert _share(groups[g]) == pytest.approx(1 / 2), g      # 1/model-parallel of each, on 'model'
        assert "model" in groups[g]["spec"] and not groups[g]["trainable"]
    for g in ("encoder/layers_*/pre_mlp_layer_norm/scale", "decoder/decoder_norm/scale", "encoder/prompt/prompt"):
        assert _share(groups[g]) == 1, g
    assert groups["encoder/prompt/prompt"]["trainable"]


def test_2d_sharding_divides_kernels_by_data_too(reports):
    one, two = _groups(reports["1d"][0]), _groups(reports["2d"][0])
    for g, row in two.items():
        if g.endswith(("kernel", "token_embedder/embedding")):
            assert _share(row) == pytest.approx(1 / 8), g        # model 2 x data 4
            assert "data" in row["spec"] and "model" in row["spec"]
        else:   # layer norms, relative-position tables and the prompt as in 1-D
            assert row["spec"] == one[g]["spec"], g
    assert reports["2d"][0]["per_device_argument_bytes"] < 0.3 * reports["1d"][0]["per_device_argument_bytes"]


def test_no_frozen_weight_gradient_buffer(reports):
    for name in ("1d", "2d"):
        assert reports[name][0]["frozen_gradient_buffers"] == 0, reports[name][0]["phases"]["train"]
        assert reports[name][0]["weight_shaped_backward_buffers"] == 0
    # The same check finds the weights' gradients when the whole model is trained.
    assert reports["full"][0]["weight_shaped_backward_buffers"] >= 18


def test_matmul_flops_count_each_loop_iteration():
    """XLA's cost analysis counts a while body once; hlo_flops counts it trip-count times."""
    import jax
    import jax.numpy as jnp
    from prompt_tuning import hlo_flops

    def f(w, x):
        return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0].sum()
    compiled = jax.jit(jax.grad(f)).lower(jax.ShapeDtypeStruct((6, 64, 64), jnp.float32),
                                          jax.ShapeDtypeStruct((8, 64), jnp.float32)).compile()
    assert hlo_flops.matmul_flops(compiled.as_text()) == 2 * 8 * 64 * 64 * 6 * 3   # forward + two backward dots
