"""Hugging Face T5 directories (`config.json` + safetensors), mapped onto t5x's parameter tree.

torch Linear weights are [out, in]; t5x kernels are [in, out], so q/k/v/o, wi*, wo and lm_head are
transposed, and `relative_attention_bias` [buckets, heads] becomes `rel_embedding` [heads, buckets].
Safetensors files are memory-mapped and sliced lazily (any dtype, bfloat16 included, via ml_dtypes),
so a sharded load reads only each device's block.  `pytorch_model.bin` (a pickle) is never opened.
"""
import json
import os
import re
from typing import Dict, Tuple

import ml_dtypes
import numpy as np

from prompt_tuning.checkpoints.base import ArraySource
from prompt_tuning.errors import UserError
from prompt_tuning.t5.config import T5Config

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

_ACTIVATIONS = {"relu": ("relu",), "gated-gelu": ("gelu", "linear"), "gated-gelu_new": ("gelu", "linear"),
                "gated-relu": ("relu", "linear"), "gated-silu": ("silu", "linear")}

# HF name -> t5x key template; True where the array is transposed.
_RULES = [
    (r"shared\.weight", "token_embedder/embedding", False),
    (r"(encoder|decoder)\.final_layer_norm\.weight", "{0}/{0}_norm/scale", False),
    (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
     "{0}/relpos_bias/rel_embedding", True),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", "encoder/layers_{0}/attention/{1}/kernel",
     True),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", "encoder/layers_{0}/pre_attention_layer_norm/scale",
     False),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight",
     "encoder/layers_{0}/mlp/{1}/kernel", True),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", "encoder/layers_{0}/pre_mlp_layer_norm/scale", False),
    (r"decoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight",
     "decoder/layers_{0}/self_attention/{1}/kernel", True),
    (r"decoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight",
     "decoder/layers_{0}/pre_self_attention_layer_norm/scale", False),
    (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.([qkvo])\.weight",
     "decoder/layers_{0}/encoder_decoder_attention/{1}/kernel", True),
    (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight",
     "decoder/layers_{0}/pre_cross_attention_layer_norm/scale", False),
    (r"decoder\.block\.(\d+)\.layer\.2\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight",
     "decoder/layers_{0}/mlp/{1}/kernel", True),
    (r"decoder\.block\.(\d+)\.layer\.2\.layer_norm\.weight", "decoder/layers_{0}/pre_mlp_layer_norm/scale", False),
    (r"lm_head\.weight", "decoder/logits_dense/kernel", True),
]
_QKVO = {"q": "query", "k": "key", "v": "value", "o": "out"}
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # copies of shared.weight


def _t5x_key(name: str):
    for pattern, template, transpose in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            groups = [_QKVO.get(g, g) for g in match.groups()]
            return template.format(*groups), transpose
    return None, False


def _open_safetensors(file: str) -> Dict[str, np.ndarray]:
    """Memory-mapped arrays of one safetensors file (header: 8-byte length + JSON)."""
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise UserError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arrays[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return arrays


def refuse_pickle(path: str) -> None:
    raise UserError(
        f"{path} holds only pytorch_model.bin (a pickle, which this loader never opens); convert it once with "
        f"python -c \"import transformers as t; t.T5ForConditionalGeneration.from_pretrained('{path}')"
        f".save_pretrained('{path}', safe_serialization=True)\"")


def hf_config(raw: dict) -> Tuple[T5Config, bool]:
    """T5Config from a transformers 4.x or 5.x `config.json`, and whether decoder outputs are scaled.

    4.x: `tie_word_embeddings` (default True) means 'tied head, outputs scaled by d_model**-0.5'.
    5.x records the scaling separately as `scale_decoder_outputs`.
    """
    missing = [k for k in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers") if k not in raw]
    if missing:
        raise UserError(f"config.json lacks {', '.join(missing)} (not a complete T5 config)")
    proj = raw.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise UserError(f"config.json: feed_forward_proj {proj!r} is not supported (known: {', '.join(_ACTIVATIONS)})")
    eps = raw.get("layer_norm_epsilon", 1e-6)
    if abs(eps - 1e-6) > 1e-12:
        raise UserError(f"config.json: layer_norm_epsilon {eps} is not supported (T5 uses 1e-6)")
    scaled = raw.get("scale_decoder_outputs", raw.get("tie_word_embeddings", True))
    config = T5Config(
        vocab_size=raw["vocab_size"], emb_dim=raw["d_model"], num_heads=raw["num_heads"], head_dim=raw["d_kv"],
        mlp_dim=raw["d_ff"], num_encoder_layers=raw["num_layers"],
        num_decoder_layers=raw.get("num_decoder_layers") or raw["num_layers"],
        mlp_activations=_ACTIVATIONS[proj],
        relpos_num_buckets=raw.get("relative_attention_num_buckets", 32),
        relpos_max_distance=raw.get("relative_attention_max_distance", 128))
    return config, bool(scaled)


class HuggingFaceSource(ArraySource):
    """A transformers T5 directory as t5x parameters.

    Output layer: a tied head with scaled outputs is t5x's `logits_via_embedding`; any other
    combination becomes an explicit `decoder/logits_dense/kernel` (the embedding or lm_head,
    transposed, times d_model**-0.5 when scaled), so every HF variant maps exactly.
    """

    def __init__(self, path: str):
        self.path = path
        config_file = os.path.join(path, "config.json")
        with open(config_file) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{config_file}: not valid JSON ({e})") from None
        if raw.get("model_type", "t5") not in ("t5", "mt5"):
            raise UserError(f"{config_file}: model_type {raw.get('model_type')!r} is not a T5 model")
        try:
            config, scaled = hf_config(raw)
        except ValueError as e:
            raise UserError(f"{path}/{e}") from None
        self.tensors = self._tensors(path)
        self._map: Dict[str, Tuple[str, bool]] = {}  # t5x key -> (HF name, transpose)
        unknown = []
        for name in self.tensors:
            key, transpose = _t5x_key(name)
            if key is None:
                if name not in _ALIASES:
                    unknown.append(name)
                continue
            self._map[key] = (name, transpose)
        if unknown:
            raise UserError(f"{path}: unexpected tensors with no T5 counterpart: {', '.join(sorted(unknown))}")
        self._scale = 1.0
        head = self._map.get("decoder/logits_dense/kernel")
        tied = head is None or self._same(head[0], "shared.weight")
        if tied and scaled:
            self._map.pop("decoder/logits_dense/kernel", None)
            config = config.replace(logits_via_embedding=True)
        else:
            if tied:
                self._map["decoder/logits_dense/kernel"] = ("shared.weight", True)
            if scaled:
                self._scale = raw["d_model"] ** -0.5
        self.config = config
        self.shapes = {}
        for key, (name, transpose) in self._map.items():
            shape = self.tensors[name].shape
            self.shapes[key] = tuple(reversed(shape)) if transpose else tuple(shape)

    @staticmethod
    def _tensors(path: str) -> Dict[str, np.ndarray]:
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            files = ["model.safetensors"]
        elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            refuse_pickle(path)
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
        tensors = {}
        for file in files:
            tensors.update(_open_safetensors(os.path.join(path, file)))
        return tensors

    def _same(self, a: str, b: str) -> bool:
        x, y = self.tensors.get(a), self.tensors.get(b)
        return x is not None and y is not None and x.shape == y.shape and np.array_equal(x, y)

    def origin(self, key: str) -> str:
        return f"{key} (from {self._map[key][0]})" if key in self._map else key

    def read(self, key: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        name, transpose = self._map[key]
        array = self.tensors[name]
        if transpose:
            array = array.T
        block = np.array(array[index])
        if key == "decoder/logits_dense/kernel" and self._scale != 1.0:
            block = (block.astype(np.float32) * np.float32(self._scale))
        return block
