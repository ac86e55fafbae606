"""t5x logical-axis rules for the prompt's axes: replicated on every device, as `prompt_tuning.partitioning`."""
import gin

from prompt_tuning import partitioning

PROMPT_AXES = ("prompt", "prompt_embed", "prompt_bank")


@gin.configurable(module="t5x_bridge")
def standard_logical_axis_rules():
    """Rules to pass as `partitioning.standard_logical_axis_rules.additional_rules` (the project's own rules
    for these axes, so both CLIs place the prompt the same way)."""
    return tuple((name, target) for name, target in partitioning.STANDARD_RULES if name in PROMPT_AXES)
