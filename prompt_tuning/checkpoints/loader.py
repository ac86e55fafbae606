"""`load_pretrained`: one entry point for t5x legacy, t5x Orbax and Hugging Face T5 checkpoints."""
import os
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.checkpoints.base import ArraySource, StackedLayers, check_shapes, flatten, unflatten
from prompt_tuning.checkpoints.huggingface import HuggingFaceSource, refuse_pickle
from prompt_tuning.checkpoints.infer_config import infer_config
from prompt_tuning.checkpoints.t5x_legacy import LegacyT5xSource
from prompt_tuning.checkpoints.t5x_orbax import OrbaxT5xSource, orbax_state_dir
from prompt_tuning.errors import UserError
from prompt_tuning.t5.config import T5Config, get_config


def detect_format(path: str) -> str:
    """'t5x_legacy', 't5x_orbax' or 'huggingface'; a clear error for anything else."""
    path = os.fspath(path)
    if os.path.basename(path) == "checkpoint" and os.path.isfile(path):
        return "t5x_legacy"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if os.path.isfile(os.path.join(path, "checkpoint")):
        return "t5x_legacy"
    if orbax_state_dir(path):
        return "t5x_orbax"
    if os.path.isfile(os.path.join(path, "config.json")):
        if any(os.path.isfile(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json")):
            return "huggingface"
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            refuse_pickle(path)
    steps = sorted(f for f in os.listdir(path) if f.startswith("checkpoint_"))
    hint = f"; pick one of its step directories: {', '.join(steps)}" if steps else ""
    raise UserError(f"{path} is not a t5x checkpoint (no 'checkpoint' file or state/_METADATA) nor a Hugging Face "
                     f"T5 directory (config.json + model.safetensors){hint}")


def open_checkpoint(path: str) -> ArraySource:
    """The reader of the checkpoint at `path` (arrays keyed by t5x parameter path)."""
    readers = {"t5x_legacy": LegacyT5xSource, "t5x_orbax": OrbaxT5xSource, "huggingface": HuggingFaceSource}
    return readers[detect_format(path)](os.fspath(path))


def read_params(path: str) -> dict:
    """Nested dict of numpy float32 parameters of any supported checkpoint (no model built)."""
    return unflatten(open_checkpoint(path).load())


def _abstract_params(module: nn.Module):
    """Shapes and logical PartitionSpecs of `module`'s parameters, without allocating them."""
    tokens = jnp.ones((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens))["params"]
    shapes = {k: tuple(v.shape) for k, v in flatten(nn.unbox(abstract)).items()}
    return shapes, nn.get_partition_spec(abstract)


def load_pretrained(path: str, *, config: Optional[T5Config] = None, family: Optional[str] = None,
                    size: Optional[str] = None, mesh: Optional[jax.sharding.Mesh] = None,
                    rules: partitioning.LogicalRules = partitioning.STANDARD_RULES,
                    dtype=None) -> Tuple[nn.Module, dict]:
    """Read a pretrained T5 and build the matching `Transformer`; returns (module, params).

    Config: `config`, else `family`/`size` (prompt_tuning.t5.config.get_config), else Hugging Face's
    config.json, else inferred from the t5x arrays.  `dtype` overrides the activation dtype
    (parameters stay float32).  A config with `scan_layers` gets `layers_N` stacked on a leading axis.
    With `mesh`, every array is read block by block into its NamedSharding from the parameters'
    logical axes and `rules`.  With a prompt: `prompt_tuning.pretrained.load_pretrained`.
    """
    from prompt_tuning.t5.network import Transformer  # imported late: the model module is heavy

    source = open_checkpoint(path)
    if config is None and family is not None:
        config = get_config(family, size or "base")
    if config is None:
        config = source.config if isinstance(source, HuggingFaceSource) else infer_config(source.shapes, source.path)
    if dtype is not None:
        config = config.replace(dtype=jnp.dtype(dtype).name)
    # The bare pretrained model: explicitly no prompt, even when gin injects one into Transformer.
    module = Transformer(config, encoder_input_processor_factory=None)
    shapes, logical_specs = _abstract_params(module)
    shardings = None
    if mesh is not None:
        shardings = partitioning.logical_to_sharding(logical_specs, mesh, rules)
    params = read_arrays(source, shapes, shardings)
    if mesh is None:
        params = jax.tree.map(jnp.asarray, params)
    return module, params


def read_arrays(source, shapes, shardings=None) -> dict:
    """The parameter tree a model with these `shapes` ({'a/b': shape}) needs, read from `source` (a path or
    an ArraySource) and checked against them; with `shardings` (a tree of them) each array is read block by
    block into its placement.  A scanned model ('/layers/' keys) reads an unrolled checkpoint's layers_N."""
    source = open_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if any("/layers/" in k for k in shapes) and not any("/layers/" in k for k in source.shapes):
        source = StackedLayers(source)
    check_shapes(source, shapes)
    if shardings is not None:
        shardings = flatten(shardings, is_leaf=lambda node: isinstance(node, jax.sharding.Sharding))
    return unflatten(source.load(shardings, dtype=np.float32))
