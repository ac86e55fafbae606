"""T5 model configurations: the published families and sizes.

One frozen dataclass describes a model; `get_config(family, size)` returns the
published dimensions.  Field names follow t5x's `network.T5Config` so gin files
written for t5x read naturally here.
"""
import dataclasses
from typing import Tuple

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Dimensions and numerics of a T5 encoder-decoder (t5x field names)."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    # ('relu',) for T5 1.0; ('gelu', 'linear') is the gated-GELU of T5 1.1, mT5, ByT5, Flan-T5.
    mlp_activations: Tuple[str, ...] = ("gelu", "linear")
    # T5 1.0 ties the output layer to the embedding and scales by emb_dim**-0.5.
    logits_via_embedding: bool = False
    dropout_rate: float = 0.0
    # Activation dtype; parameters are always stored in float32.
    dtype: str = "float32"
    float32_attention_logits: bool = True
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    # Rematerialisation of each layer: 'none', 'full' or 'minimal' (save dots).
    remat_policy: str = "none"
    # Scan over layers (one compiled layer; parameters stacked on a 'layers' axis).
    scan_layers: bool = False

    def replace(self, **changes) -> "T5Config":
        return dataclasses.replace(self, **changes)


def _dims(emb_dim, mlp_dim, num_heads, enc, dec, head_dim=64):
    return dict(emb_dim=emb_dim, mlp_dim=mlp_dim, num_heads=num_heads, num_encoder_layers=enc,
                num_decoder_layers=dec, head_dim=head_dim)


# Published dimensions (T5 paper; T5 1.1 / mT5 / ByT5 / Flan-T5 release notes).
_T5_1_0 = {
    "small": _dims(512, 2048, 8, 6, 6),
    "base": _dims(768, 3072, 12, 12, 12),
    "large": _dims(1024, 4096, 16, 24, 24),
    "xl": _dims(1024, 16384, 32, 24, 24, head_dim=128),
    "xxl": _dims(1024, 65536, 128, 24, 24, head_dim=128),
}
_T5_1_1 = {
    "small": _dims(512, 1024, 6, 8, 8),
    "base": _dims(768, 2048, 12, 12, 12),
    "large": _dims(1024, 2816, 16, 24, 24),
    "xl": _dims(2048, 5120, 32, 24, 24),
    "xxl": _dims(4096, 10240, 64, 24, 24),
}
_BYT5 = {
    "small": _dims(1472, 3584, 6, 12, 4),
    "base": _dims(1536, 3968, 12, 18, 6),
    "large": _dims(1536, 3840, 16, 36, 12),
    "xl": _dims(2560, 6720, 32, 36, 12),
    "xxl": _dims(4672, 12352, 64, 36, 12),
}

FAMILIES = {
    "t5_1_0": (_T5_1_0, dict(vocab_size=32128, mlp_activations=("relu",), logits_via_embedding=True)),
    "t5_1_1": (_T5_1_1, dict(vocab_size=32128)),
    "t5_1_1_lm_adapted": (_T5_1_1, dict(vocab_size=32128)),
    "flan_t5": (_T5_1_1, dict(vocab_size=32128)),
    "mt5": (_T5_1_1, dict(vocab_size=250112)),
    "byt5": (_BYT5, dict(vocab_size=384)),
}
SIZES = ("small", "base", "large", "xl", "xxl")


@gin.configurable
def get_config(family: str = "t5_1_1", size: str = "small", **overrides) -> T5Config:
    """The published configuration of `family` at `size`, with optional field overrides."""
    if family not in FAMILIES:
        raise ValueError(f"unknown T5 family {family!r}; known: {', '.join(FAMILIES)}")
    sizes, family_fields = FAMILIES[family]
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for {family}; known: {', '.join(sizes)}")
    return T5Config(**{**family_fields, **sizes[size], **overrides})
