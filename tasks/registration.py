"""Registers a task in its variants: T5 format, 'taskless' (no task-name word) and rank classification."""
import functools
from typing import Callable, List, Optional, Sequence

import seqio

from prompt_tuning.tasks import metrics as metrics_lib
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks.vocab import OUTPUT_FEATURES

TASKLESS_PREFIX = "taskless_"
RANK_SUFFIX = "_rank"

# Every registered name, by kind, for listing (show_tasks) and tests.
REGISTERED_TASKS: List[str] = []
REGISTERED_MIXTURES: List[str] = []


def token_preprocessors() -> list:
    """T5's tail: tokenize, cache point, EOS after trimming."""
    return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]


def add_task(name: str, source: seqio.DataSource, text_preprocessors: Sequence[Callable],
             postprocess_fn: Optional[Callable] = None, metric_fns: Sequence[Callable] = ()) -> str:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=list(text_preprocessors) + token_preprocessors(),
                           output_features=OUTPUT_FEATURES, postprocess_fn=postprocess_fn,
                           metric_fns=list(metric_fns))
    REGISTERED_TASKS.append(name)
    return name


def add_mixture(name: str, tasks, default_rate=None) -> str:
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
    REGISTERED_MIXTURES.append(name)
    return name


def add_task_variants(base_name: str, source: seqio.DataSource, text_preprocessors: Sequence[Callable],
                      postprocess_fn: Optional[Callable], metric_fns: Sequence[Callable],
                      label_names: Optional[Sequence[str]] = None, grouped: bool = False) -> None:
    """base_name and taskless_<base_name>; with label_names also <..>_rank variants scoring each label."""
    for prefix, extra in (("", []), (TASKLESS_PREFIX, [preprocessors.remove_first_text_token])):
        name = prefix + base_name
        add_task(name, source, list(text_preprocessors) + extra, postprocess_fn, metric_fns)
        if label_names:
            scored = [fn for fn in metric_fns if fn is not metrics_lib.invalid_count]
            add_task(name + RANK_SUFFIX, source,
                     list(text_preprocessors) + extra
                     + [functools.partial(preprocessors.rank_classification, label_names=tuple(label_names))],
                     postprocessors.rank_classification,
                     [metrics_lib.rank_classification(scored, grouped=grouped)])
