"""The paper's "span corruption + sentinel" ablation (Figure 3): every target starts with a sentinel.

A T5 pretrained only on span corruption always answers "<extra_id_0> ...", so the paper also tried
prefixing every downstream target with that sentinel, to make the task look like pretraining.
`add_sentinel` (preprocessor) and `strip_sentinel` (postprocessor wrapper) do this for any task;
`register_variant(name)` registers `<name>_sentinel` with both.  Registered here:
  taskless_super_glue_*_v102_sentinel   every generative taskless SuperGLUE task (the ablation's setting),
                                         and the mixtures taskless_super_glue_wsc_and_dev_v102_simple_sentinel
                                         and taskless_super_glue_v102_proportional_sentinel
  synthetic_second_letter_sentinel      the tiny model's task (byte vocabulary: the sentinel is 12 bytes,
                                         so give TASK_FEATURE_LENGTHS a 'targets' of 16 or more)
Predictions without the sentinel are scored as they are, so a prompt that learned to drop it is not
punished twice.
"""
import functools
import re
from typing import Callable, Optional

import seqio
import tensorflow as tf

from prompt_tuning.tasks import registration
from prompt_tuning.tasks import superglue  # noqa: F401  (registers the tasks that get variants)
from prompt_tuning.tasks import synthetic

SENTINEL = "<extra_id_0>"
SUFFIX = "_sentinel"


def add_sentinel(dataset: tf.data.Dataset, sentinel: str = SENTINEL) -> tf.data.Dataset:
    """targets -> '<sentinel> targets' (before tokenization; T5's vocabulary reads it as one token)."""
    def prefix(x):
        x = dict(x)
        x["targets"] = tf.strings.join([sentinel, x["targets"]], separator=" ")
        return x

    return dataset.map(prefix, num_parallel_calls=tf.data.AUTOTUNE)


def remove_sentinel(text, sentinel: str = SENTINEL):
    """`text` without a leading sentinel and the spaces after it (str or bytes, returned as given)."""
    is_bytes = isinstance(text, bytes)
    s = text.decode("utf-8") if is_bytes else str(text)
    s = re.sub(rf"^\s*{re.escape(sentinel)}\s*", "", s, count=1)
    return s.encode("utf-8") if is_bytes else s


def strip_sentinel(postprocess_fn: Optional[Callable] = None, sentinel: str = SENTINEL) -> Callable:
    """A postprocessor removing the sentinel from the output and from the example's target text, then
    calling `postprocess_fn` (postprocessors such as WSC's read `targets_pretokenized` from the example)."""
    def run(output, example=None, is_target=False):
        output = remove_sentinel(output, sentinel)
        if example is not None and "targets_pretokenized" in example:
            example = dict(example, targets_pretokenized=remove_sentinel(example["targets_pretokenized"], sentinel))
        if postprocess_fn is None:
            return output
        return postprocess_fn(output, example=example, is_target=is_target)

    return run


def _text_preprocessors(task: seqio.Task) -> list:
    """The task's preprocessors before tokenization (the sentinel goes in as text)."""
    pre = list(task.preprocessors)
    if seqio.preprocessors.tokenize not in pre:
        raise ValueError(f"{task.name}: no seqio tokenize step to insert the sentinel before")
    return pre[:pre.index(seqio.preprocessors.tokenize)]


def register_variant(name: str, sentinel: str = SENTINEL) -> str:
    """Registers `<name>_sentinel`: same source, features and metrics, sentinel-prefixed targets."""
    task = seqio.get_mixture_or_task(name)
    pre = _text_preprocessors(task)
    tail = list(task.preprocessors)[len(pre):]
    variant = name + SUFFIX
    if variant in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(variant)
    seqio.TaskRegistry.add(
        variant, source=task.source, output_features=task.output_features,
        preprocessors=pre + [functools.partial(add_sentinel, sentinel=sentinel)] + tail,
        postprocess_fn=strip_sentinel(task.postprocess_fn, sentinel),
        metric_fns=list(task.predict_metric_fns) + list(task.score_metric_fns))
    if name in registration.REGISTERED_TASKS and variant not in registration.REGISTERED_TASKS:
        registration.REGISTERED_TASKS.append(variant)
    return variant


def _superglue_bases():
    for name in list(registration.REGISTERED_TASKS):
        if (name.startswith(registration.TASKLESS_PREFIX + "super_glue_")
                and not name.endswith((registration.RANK_SUFFIX, SUFFIX))):
            yield name


def register_mixture_variant(name: str) -> str:
    """`<name>_sentinel`: the same mixture (and rates) of its tasks' sentinel variants."""
    mixture = seqio.get_mixture_or_task(name)
    return registration.add_mixture(name + SUFFIX, [(t.name + SUFFIX, mixture.get_rate(t)) for t in mixture.tasks])


VARIANTS = [register_variant(name) for name in list(_superglue_bases()) + [synthetic.HELD_OUT_TASK]]
# WSC trains on one task and evaluates on another (superglue.py), so its runs name the mixture.
MIXTURE_VARIANTS = [register_mixture_variant(registration.TASKLESS_PREFIX + name) for name in
                    ("super_glue_wsc_and_dev_v102_simple", "super_glue_v102_proportional")]
