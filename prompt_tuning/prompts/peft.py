"""Move soft prompts to and from PyTorch PEFT prompt-tuning adapters (no torch needed).

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` with one tensor
`prompt_embeddings` [num_transformer_submodules * num_virtual_tokens, token_dim].  For
SEQ_2_SEQ_LM PEFT allocates 2 x n rows but only rows [0:n] ever reach the encoder.
"""
import json
import os
from typing import Optional

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from prompt_tuning.errors import UserError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSOR = "prompt_embeddings"
PEFT_VERSION = "0.21.2"


def load_peft_prompt(path: str) -> np.ndarray:
    """The [num_virtual_tokens, token_dim] float32 prompt that PEFT prepends to the encoder input."""
    config_path, weights_path = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    for needed in (config_path, weights_path):
        if not os.path.exists(needed):
            raise FileNotFoundError(f"{needed}: missing; a PEFT adapter directory needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("peft_type") != "PROMPT_TUNING":
        raise UserError(f"{config_path}: peft_type is {config.get('peft_type')!r}, only PROMPT_TUNING is supported")
    n, dim = int(config["num_virtual_tokens"]), config.get("token_dim")
    with safe_open(weights_path, "np") as f:
        if TENSOR not in f.keys():
            raise UserError(f"{weights_path}: no tensor {TENSOR!r} (has {sorted(f.keys())})")
        table = f.get_tensor(TENSOR)
    rows = n * int(config.get("num_transformer_submodules") or 1)
    if table.ndim != 2 or table.shape[0] != rows or (dim is not None and table.shape[1] != dim):
        raise UserError(f"{weights_path}: {TENSOR} has shape {table.shape}, config implies [{rows}, {dim}]")
    return np.asarray(table[:n], np.float32)


def save_peft_prompt(path: str, prompt, *, task_type: str = "SEQ_2_SEQ_LM", num_layers: Optional[int] = None,
                     num_attention_heads: Optional[int] = None,
                     base_model_name_or_path: Optional[str] = None) -> str:
    """Write `prompt` [n, dim] as a PEFT adapter that PeftModel.from_pretrained loads.

    SEQ_2_SEQ_LM gets PEFT's 2 x n table; the unused second half repeats the prompt.
    """
    prompt = np.asarray(prompt, np.float32)
    if prompt.ndim != 2:
        raise UserError(f"PEFT export takes one prompt [length, embed], got shape {prompt.shape}")
    n, dim = prompt.shape
    submodules = 2 if task_type == "SEQ_2_SEQ_LM" else 1
    config = {
        "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        "modules_to_save": None, "num_attention_heads": num_attention_heads, "num_layers": num_layers,
        "num_transformer_submodules": submodules, "num_virtual_tokens": n, "peft_type": "PROMPT_TUNING",
        "peft_version": PEFT_VERSION, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
        "revision": None, "task_type": task_type, "token_dim": dim, "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file({TENSOR: np.ascontiguousarray(np.tile(prompt, (submodules, 1)))},
              os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def is_peft_adapter(path) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))
