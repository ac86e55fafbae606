"""The published T5 configurations and the device mesh."""
import jax
import pytest

from prompt_tuning import partitioning
from prompt_tuning.t5 import config


def test_published_dimensions():
    small = config.get_config("t5_1_1", "small")
    assert (small.emb_dim, small.mlp_dim, small.num_heads, small.num_encoder_layers) == (512, 1024, 6, 8)
    assert small.mlp_activations == ("gelu", "linear") and not small.logits_via_embedding
    t5_base = config.get_config("t5_1_0", "base")
    assert (t5_base.emb_dim, t5_base.mlp_dim, t5_base.mlp_activations) == (768, 3072, ("relu",))
    assert t5_base.logits_via_embedding
    assert config.get_config("mt5", "xl").vocab_size == 250112
    byt5 = config.get_config("byt5", "small")
    assert (byt5.vocab_size, byt5.num_encoder_layers, byt5.num_decoder_layers) == (384, 12, 4)


def test_overrides_and_unknown_names():
    assert config.get_config("flan_t5", "base", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown T5 family 't6'"):
        config.get_config("t6", "small")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        config.get_config("t5_1_1", "huge")


def test_mesh_spans_all_devices():
    mesh = partitioning.make_mesh(model_parallel_size=2)
    assert mesh.shape == {"data": jax.device_count() // 2, "model": 2}
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.make_mesh(model_parallel_size=3)
