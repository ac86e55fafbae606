"""t5x's EncoderDecoderModel around this project's `t5.network.Transformer` (with its soft prompt).

The network already takes t5x's call signature (positions, segment ids, `decode`, `max_decode_length`); what
t5x still needs is the `params_axes` collection: t5x's partitioner and its Adafactor read each parameter's
logical axes from it (flaxformer's `param_with_axes`), while our layers box the parameters with
`nn.with_logical_partitioning`.  `get_initial_variables` converts one into the other.
"""
from typing import Mapping, Optional

import flax
import flax.linen as nn
import gin
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
from t5x import models as t5x_models


def params_axes(boxed_params) -> dict:
    """The `params_axes` collection of boxed params: `<name>_axes: AxisMetadata(names)` beside each leaf."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(boxed_params),
                                      is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
    axes = {}
    for path, leaf in flat.items():
        if not isinstance(leaf, nn.Partitioned):
            raise ValueError(f"parameter {'/'.join(path)} has no logical axes (create it with "
                             "nn.with_logical_partitioning); t5x's partitioner needs them")
        axes[path[:-1] + (path[-1] + "_axes",)] = flax_partitioning.AxisMetadata(names=tuple(leaf.names))
    return traverse_util.unflatten_dict(axes)


@gin.configurable(module="t5x_bridge")
class PromptEncoderDecoderModel(t5x_models.EncoderDecoderModel):
    """t5x's EncoderDecoderModel whose initial variables carry `params_axes` (from our boxed params)."""

    def get_initial_variables(self, rng, input_shapes: Mapping[str, tuple],
                              input_types: Optional[Mapping[str, object]] = None):
        variables = flax.core.unfreeze(super().get_initial_variables(rng, input_shapes, input_types))
        boxed = variables.pop("params")
        variables["params"] = nn.unbox(boxed)
        variables["params_axes"] = params_axes(boxed)
        return flax.core.freeze(variables)


@gin.configurable(module="t5x_bridge")
def tasks_vocabulary():
    """The vocabulary the project's T5 tasks use (t5x checks that the model's equals the task's)."""
    from prompt_tuning.tasks.vocab import VOCABULARY
    return VOCABULARY
