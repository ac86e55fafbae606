"""Reading pretrained T5 checkpoints: t5x legacy (msgpack + tensorstore), t5x Orbax, Hugging Face."""
from prompt_tuning.checkpoints.base import check_shapes, flatten, unflatten
from prompt_tuning.checkpoints.huggingface import HuggingFaceSource, hf_config
from prompt_tuning.checkpoints.infer_config import infer_config
from prompt_tuning.checkpoints.loader import (detect_format, load_pretrained, open_checkpoint, read_arrays,
                                              read_params)
from prompt_tuning.checkpoints.t5x_legacy import LegacyT5xSource
from prompt_tuning.checkpoints.t5x_orbax import OrbaxT5xSource

__all__ = ["load_pretrained", "read_params", "read_arrays", "open_checkpoint", "detect_format",
           "infer_config", "hf_config", "check_shapes", "flatten", "unflatten", "LegacyT5xSource",
           "OrbaxT5xSource", "HuggingFaceSource"]
