"""seqio feature converters producing the models' batches (`models.BaseModel.feature_converter` picks one).

Kept apart from models.py so that a process holding a model imports seqio and TensorFlow only when it
converts data.
"""
from typing import Optional

import seqio
import tensorflow as tf

PROMPT_INDEX = "prompt_index"   # models.PROMPT_INDEX (models imports this module, not the reverse)


class _WithPromptIndex:
    """Mixed into a seqio converter: every converted example also gets `prompt_index` (one bank row).

    Added after seqio's conversion, whose output validation admits no feature beyond the model's.
    """

    def __init__(self, prompt_index: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.prompt_index = prompt_index

    def __call__(self, ds, task_feature_lengths):
        ds = super().__call__(ds, task_feature_lengths)
        if self.prompt_index is None:
            return ds
        row = tf.constant(self.prompt_index, tf.int32)
        return ds.map(lambda ex: {**ex, PROMPT_INDEX: row})


# The token a packed example's prompt slot holds until the prompt replaces it: nonzero, as seqio's packer
# takes zeros for padding.
PROMPT_SLOT_TOKEN = 1


class EncDecFeatureConverter(_WithPromptIndex, seqio.EncDecFeatureConverter):
    """seqio's converter; with `prompt_slots=P` (and pack=True) every example's inputs start with P slot
    tokens before packing, so each packed example carries the positions of its own prompt (join.fill_slots).
    The encoder features are then P longer than TASK_FEATURE_LENGTHS['inputs'], as unpacked joined rows are."""

    def __init__(self, prompt_slots: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.prompt_slots = prompt_slots

    def _with_slots(self, task_feature_lengths):
        return {**task_feature_lengths, "inputs": task_feature_lengths["inputs"] + self.prompt_slots}

    def _convert_features(self, ds, task_feature_lengths):
        if self.prompt_slots:
            slots = tf.fill([self.prompt_slots], tf.constant(PROMPT_SLOT_TOKEN, tf.int32))
            ds = ds.map(lambda ex: {**ex, "inputs": tf.concat([slots, ex["inputs"]], axis=0)},
                        num_parallel_calls=tf.data.AUTOTUNE)
        return super()._convert_features(ds, self._with_slots(task_feature_lengths))

    def get_model_feature_lengths(self, task_feature_lengths):
        return super().get_model_feature_lengths(self._with_slots(task_feature_lengths))


class PrefixLMFeatureConverter(_WithPromptIndex, seqio.PrefixLMFeatureConverter):
    pass
