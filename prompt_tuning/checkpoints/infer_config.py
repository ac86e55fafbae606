"""Model configuration from a t5x checkpoint's array shapes (t5x checkpoints store no config)."""
import re
from typing import Mapping

from prompt_tuning.checkpoints.base import Shape
from prompt_tuning.errors import UserError
from prompt_tuning.t5.config import T5Config


def _need(shapes: Mapping[str, Shape], key: str, path: str) -> Shape:
    if key not in shapes:
        raise UserError(f"cannot infer the model config of {path}: it has no {key} "
                         "(pass config= or family=/size= explicitly)")
    return shapes[key]


def _num_layers(shapes: Mapping[str, Shape], stack: str) -> int:
    indices = {int(m.group(1)) for key in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", key))}
    if indices != set(range(len(indices))):
        raise UserError(f"{stack} layers are not numbered 0..N-1: found {sorted(indices)}")
    return len(indices)


def infer_config(shapes: Mapping[str, Shape], path: str = "checkpoint", **overrides) -> T5Config:
    """vocab/emb from the embedding, heads/buckets from the relpos table, head_dim from the query
    width, mlp_dim and gating from wi / wi_0+wi_1, tied output when there is no logits_dense."""
    if any(re.match(r"(encoder|decoder)/layers/", key) for key in shapes):
        raise UserError(f"{path} has scanned (stacked) layers; pass config= with scan_layers=True")
    vocab_size, emb_dim = _need(shapes, "token_embedder/embedding", path)
    num_heads, num_buckets = _need(shapes, "encoder/relpos_bias/rel_embedding", path)
    joined = _need(shapes, "encoder/layers_0/attention/query/kernel", path)[1]
    if joined % num_heads:
        raise UserError(f"{path}: query width {joined} is not a multiple of the {num_heads} heads of the relpos table")
    if "encoder/layers_0/mlp/wi/kernel" in shapes:
        mlp_dim, activations = shapes["encoder/layers_0/mlp/wi/kernel"][1], ("relu",)
    else:
        mlp_dim, activations = _need(shapes, "encoder/layers_0/mlp/wi_0/kernel", path)[1], ("gelu", "linear")
    fields = dict(
        vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads, head_dim=joined // num_heads,
        mlp_dim=mlp_dim, mlp_activations=activations,
        num_encoder_layers=_num_layers(shapes, "encoder"), num_decoder_layers=_num_layers(shapes, "decoder"),
        logits_via_embedding="decoder/logits_dense/kernel" not in shapes, relpos_num_buckets=num_buckets)
    fields.update(overrides)
    return T5Config(**fields)
