"""Checkpoint readers: t5x legacy / Orbax / Hugging Face, config inference, and loud errors."""
import json
import os
import shutil

import jax
import msgpack
import numpy as np
import pytest
import safetensors.numpy
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import shared_path
from prompt_tuning import partitioning
from prompt_tuning.checkpoints import (HuggingFaceSource, LegacyT5xSource, OrbaxT5xSource, check_shapes,
                                       detect_format, flatten, hf_config, infer_config, read_params)
from prompt_tuning.t5.config import T5Config

TINY = T5Config(vocab_size=128, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128, num_encoder_layers=2,
                num_decoder_layers=2, mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def _expected_shapes():
    """The 52 parameters of fixtures README section A, written out independently of any reader."""
    e, h, m, v = 64, 64, 128, 128
    shapes = {"token_embedder/embedding": (v, e), "decoder/logits_dense/kernel": (e, v),
              "encoder/relpos_bias/rel_embedding": (4, 32), "decoder/relpos_bias/rel_embedding": (4, 32),
              "encoder/encoder_norm/scale": (e,), "decoder/decoder_norm/scale": (e,)}
    attention = {"query": (e, h), "key": (e, h), "value": (e, h), "out": (h, e)}
    mlp = {"wi_0": (e, m), "wi_1": (e, m), "wo": (m, e)}
    for i in range(2):
        enc, dec = f"encoder/layers_{i}", f"decoder/layers_{i}"
        for norm in ("pre_attention_layer_norm", "pre_mlp_layer_norm"):
            shapes[f"{enc}/{norm}/scale"] = (e,)
        for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"):
            shapes[f"{dec}/{norm}/scale"] = (e,)
        for name, shape in attention.items():
            shapes[f"{enc}/attention/{name}/kernel"] = shape
            shapes[f"{dec}/self_attention/{name}/kernel"] = shape
            shapes[f"{dec}/encoder_decoder_attention/{name}/kernel"] = shape
        for name, shape in mlp.items():
            shapes[f"{enc}/mlp/{name}/kernel"] = shape
            shapes[f"{dec}/mlp/{name}/kernel"] = shape
    return shapes


EXPECTED = _expected_shapes()


@pytest.fixture(scope="module")
def legacy_dir():
    return str(shared_path("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0"))


@pytest.fixture(scope="module")
def hf_dir():
    return str(shared_path("fixtures", "hf_t5_1_1_tiny"))


@pytest.fixture(scope="module")
def legacy_params(legacy_dir):
    return flatten(read_params(legacy_dir))


def test_legacy_reads_52_params_with_readme_shapes(legacy_params):
    assert len(EXPECTED) == 52
    assert {k: v.shape for k, v in legacy_params.items()} == EXPECTED
    assert all(v.dtype == np.float32 for v in legacy_params.values())
    # t5x initialises the norms to one; kernels are random (not a zero/placeholder read).
    assert np.all(legacy_params["encoder/encoder_norm/scale"] == 1.0)
    assert np.std(legacy_params["token_embedder/embedding"]) > 0.1


def test_orbax_is_bit_identical_to_legacy(legacy_params):
    path = str(shared_path("fixtures", "t5x_t5_1_1_tiny", "orbax", "checkpoint_0"))
    assert detect_format(path) == "t5x_orbax"
    orbax = flatten(read_params(path))
    assert orbax.keys() == legacy_params.keys()
    for key, value in orbax.items():
        assert value.dtype == legacy_params[key].dtype
        np.testing.assert_array_equal(value, legacy_params[key], err_msg=key)


def test_infer_config_gives_fixture_config(legacy_dir):
    assert detect_format(legacy_dir) == "t5x_legacy"
    assert infer_config(LegacyT5xSource(legacy_dir).shapes) == TINY


def test_original_gfile_multichunk_checkpoint():
    path = str(shared_path("original_prompt_tuning", "test_data", "test_t5_1_1_tiny", "checkpoint_3"))
    source = LegacyT5xSource(path)
    assert len(source.shapes) == 52
    config = infer_config(source.shapes)
    assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (32128, 4, 2, 2, 8)
    assert (config.num_encoder_layers, config.num_decoder_layers, config.logits_via_embedding) == (2, 2, False)
    # The embedding is stored as 8 chunks of 4096 rows: a read across a chunk border equals the full read.
    full = source.read("token_embedder/embedding")
    assert full.shape == (32128, 4) and np.isfinite(full).all()
    np.testing.assert_array_equal(source.read("token_embedder/embedding", (slice(4090, 4100),)), full[4090:4100])
    assert len({tuple(row) for row in full[::4096]}) == 8  # chunks differ: not one chunk repeated


def _copy_with_target(src, dst, edit):
    """Copy a legacy checkpoint dir and rewrite its msgpack target with `edit(target)`."""
    shutil.copytree(src, dst)
    os.chmod(dst, 0o755)
    index = os.path.join(dst, "checkpoint")
    os.chmod(index, 0o644)
    with open(index, "rb") as f:
        state = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
    edit(state["optimizer"]["target"])
    with open(index, "wb") as f:
        f.write(msgpack.packb(state))
    return dst


def test_check_shapes_names_missing_unexpected_and_misshaped(legacy_dir, tmp_path):
    def edit(target):
        del target["decoder"]["layers_0"]["mlp"]["wo"]
        target["encoder"]["extra"] = {"kernel": target["encoder"]["encoder_norm"]["scale"]}

    broken = LegacyT5xSource(_copy_with_target(legacy_dir, str(tmp_path / "ckpt"), edit))
    expected = dict(EXPECTED, **{"encoder/layers_0/mlp/wi_0/kernel": (64, 256)})
    with pytest.raises(ValueError) as err:
        check_shapes(broken, expected)
    message = str(err.value)
    assert "1 missing: decoder/layers_0/mlp/wo/kernel (model expects shape (128, 64))" in message
    assert "1 unexpected: encoder/extra/kernel (shape (64,)" in message
    assert ("1 mis-shaped: encoder/layers_0/mlp/wi_0/kernel: checkpoint shape (64, 128), "
            "model expects (64, 256)") in message
    check_shapes(LegacyT5xSource(legacy_dir), EXPECTED)  # the intact checkpoint passes


def test_missing_array_directory_is_named(legacy_dir, tmp_path):
    path = _copy_with_target(legacy_dir, str(tmp_path / "ckpt"), lambda target: None)
    shutil.rmtree(os.path.join(path, "target.decoder.layers_1.mlp.wo.kernel"))
    with pytest.raises(FileNotFoundError, match="decoder/layers_1/mlp/wo/kernel"):
        LegacyT5xSource(path)


def test_gcs_written_specs_read_from_local_copy(legacy_dir, legacy_params, tmp_path):
    def to_gcs(node):
        for value in node.values():
            if isinstance(value, dict) and "kvstore" in value:
                name = value["kvstore"]["path"]
                value["kvstore"] = {"driver": "gcs", "bucket": "my-bucket", "path": f"runs/x/checkpoint_0/{name}"}
            elif isinstance(value, dict):
                to_gcs(value)

    source = LegacyT5xSource(_copy_with_target(legacy_dir, str(tmp_path / "checkpoint_0"), to_gcs))
    for key, value in source.load().items():
        np.testing.assert_array_equal(value, legacy_params[key], err_msg=key)


def test_inconsistent_layer_numbering_is_an_error(legacy_dir):
    shapes = dict(EXPECTED)
    for key in [k for k in shapes if k.startswith("decoder/layers_1/")]:
        shapes[key.replace("layers_1", "layers_2")] = shapes.pop(key)
    with pytest.raises(ValueError, match=r"decoder layers are not numbered 0..N-1: found \[0, 2\]"):
        infer_config(shapes)


# ---------------------------------------------------------------- Hugging Face

def test_hf_maps_names_and_layouts(hf_dir, legacy_params):
    source = HuggingFaceSource(hf_dir)
    assert source.config == TINY.replace(relpos_max_distance=128)
    assert source.shapes == EXPECTED
    raw = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    params = source.load()
    np.testing.assert_array_equal(params["encoder/layers_1/attention/out/kernel"],
                                  raw["encoder.block.1.layer.0.SelfAttention.o.weight"].T)
    np.testing.assert_array_equal(params["decoder/layers_0/mlp/wo/kernel"],
                                  raw["decoder.block.0.layer.2.DenseReluDense.wo.weight"].T)
    np.testing.assert_array_equal(params["decoder/relpos_bias/rel_embedding"],
                                  raw["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T)
    np.testing.assert_array_equal(params["decoder/logits_dense/kernel"], raw["lm_head.weight"].T)
    np.testing.assert_array_equal(params["token_embedder/embedding"], raw["shared.weight"])


def _write_hf(path, tensors, config):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"))
    return str(path)


@pytest.fixture(scope="module")
def hf_raw(hf_dir):
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    return safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors")), config


def test_hf_sharded_index_reads_same(hf_raw, tmp_path, legacy_params, hf_dir):
    tensors, config = hf_raw
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[:20], "model-00002-of-00002.safetensors": names[20:]}
    for file, part in parts.items():
        safetensors.numpy.save_file({n: tensors[n] for n in part}, str(tmp_path / file))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": {n: f for f, part in parts.items() for n in part}}, f)
    assert detect_format(str(tmp_path)) == "huggingface"
    sharded, single = HuggingFaceSource(str(tmp_path)).load(), HuggingFaceSource(hf_dir).load()
    assert sharded.keys() == single.keys()
    for key in single:
        np.testing.assert_array_equal(sharded[key], single[key])


def test_hf_bfloat16_is_read_and_upcast(hf_raw, tmp_path):
    import ml_dtypes
    tensors, config = hf_raw
    bf16 = {n: t.astype(ml_dtypes.bfloat16) for n, t in tensors.items()}
    params = HuggingFaceSource(_write_hf(tmp_path, bf16, config)).load()
    assert params["token_embedder/embedding"].dtype == np.float32
    np.testing.assert_array_equal(params["token_embedder/embedding"],
                                  tensors["shared.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("tie,scale,with_head,expect", [
    (True, None, False, "via_embedding"),     # transformers 4.x, T5 1.0: tied and scaled
    (False, None, True, "lm_head"),           # transformers 4.x, T5 1.1
    (True, True, False, "via_embedding"),     # transformers 5.x, T5 1.0
    (True, False, True, "lm_head"),           # 5.x save of an untied model: tie forced True, no scaling
    (False, False, True, "lm_head"),          # the fixture's config.json
    (True, False, False, "shared"),           # tied but unscaled: explicit kernel = embedding.T
    (False, True, True, "lm_head_scaled"),    # untied but scaled: scale folded into the kernel
])
def test_hf_output_layer_variants(hf_raw, tmp_path, tie, scale, with_head, expect):
    tensors, config = hf_raw
    config = {k: v for k, v in config.items() if k not in ("tie_word_embeddings", "scale_decoder_outputs")}
    config["tie_word_embeddings"] = tie
    if scale is not None:
        config["scale_decoder_outputs"] = scale
    tensors = {n: t for n, t in tensors.items() if with_head or n != "lm_head.weight"}
    source = HuggingFaceSource(_write_hf(tmp_path, tensors, config))
    assert source.config.logits_via_embedding == (expect == "via_embedding")
    if expect == "via_embedding":
        assert "decoder/logits_dense/kernel" not in source.shapes
        return
    kernel = source.read("decoder/logits_dense/kernel")
    want = {"lm_head": tensors.get("lm_head.weight", tensors["shared.weight"]).T, "shared": tensors["shared.weight"].T,
            "lm_head_scaled": tensors.get("lm_head.weight", tensors["shared.weight"]).T * np.float32(64 ** -0.5)}
    np.testing.assert_allclose(kernel, want[expect], rtol=1e-6)


def test_hf_config_activations_and_4x_defaults():
    raw = dict(vocab_size=32128, d_model=512, num_heads=8, d_kv=64, d_ff=2048, num_layers=6)
    config, scaled = hf_config(raw)  # 4.x T5 1.0 config: relu, tied (default) and scaled
    assert config.mlp_activations == ("relu",) and scaled and config.num_decoder_layers == 6
    config, scaled = hf_config(dict(raw, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                    num_decoder_layers=4))
    assert config.mlp_activations == ("gelu", "linear") and not scaled and config.num_decoder_layers == 4
    with pytest.raises(ValueError, match="feed_forward_proj 'swish'"):
        hf_config(dict(raw, feed_forward_proj="swish"))


def test_hf_unexpected_tensor_is_named(hf_raw, tmp_path):
    tensors, config = hf_raw
    extra = dict(tensors, **{"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensors .*encoder\.block\.0\.layer\.0\.SelfAttention\.q\.bias"):
        HuggingFaceSource(_write_hf(tmp_path, extra, config))


def test_hf_missing_tensor_is_named(hf_raw, tmp_path):
    tensors, config = hf_raw
    fewer = {n: t for n, t in tensors.items() if n != "decoder.block.1.layer.1.EncDecAttention.v.weight"}
    source = HuggingFaceSource(_write_hf(tmp_path, fewer, config))
    with pytest.raises(ValueError, match=r"1 missing: decoder/layers_1/encoder_decoder_attention/value/kernel"):
        check_shapes(source, EXPECTED)


def test_pytorch_bin_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle: opening it would fail loudly")
    with pytest.raises(ValueError) as err:
        detect_format(str(tmp_path))
    message = str(err.value)
    assert "pytorch_model.bin" in message and "save_pretrained" in message and "safe_serialization=True" in message
    assert "\n" not in message


def test_unknown_directory_is_refused(tmp_path):
    (tmp_path / "checkpoint_100").mkdir()
    with pytest.raises(ValueError, match="pick one of its step directories: checkpoint_100"):
        detect_format(str(tmp_path))


# ---------------------------------------------------------------- sharded reads, no model needed

@pytest.mark.parametrize("reader", ["legacy", "orbax", "hf"])
def test_sources_load_blocks_into_shardings(reader, legacy_params, hf_dir):
    mesh = partitioning.make_mesh(4)
    paths = {"legacy": ("fixtures", "t5x_t5_1_1_tiny", "checkpoint_0"),
             "orbax": ("fixtures", "t5x_t5_1_1_tiny", "orbax", "checkpoint_0")}
    source = HuggingFaceSource(hf_dir) if reader == "hf" else (
        LegacyT5xSource if reader == "legacy" else OrbaxT5xSource)(str(shared_path(*paths[reader])))
    specs = {k: P("model", None) if len(s) == 2 else P() for k, s in source.shapes.items()}
    specs["encoder/layers_0/mlp/wi_0/kernel"] = P(None, "model")
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    loaded = source.load(shardings)
    reference = legacy_params if reader != "hf" else source.load()
    for key, array in loaded.items():
        assert isinstance(array, jax.Array) and array.sharding == shardings[key], key
        np.testing.assert_array_equal(np.asarray(array), reference[key], err_msg=key)
    blocks = loaded["encoder/layers_0/mlp/wi_0/kernel"].addressable_shards
    assert {s.data.shape for s in blocks} == {(64, 32)}
