"""SuperGLUE v1.0.2 tasks in T5's formats: super_glue_<name>_v102 (+ taskless_, _rank) and mixtures.

WSC is T5's/the paper's 'simple' WSC: train on positive examples only, generating the referent
(super_glue_wsc_v102_simple_train), evaluate on all (super_glue_wsc_v102_simple_eval).
"""
import functools
from typing import Dict, Sequence

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks.registration import TASKLESS_PREFIX, add_mixture, add_task, add_task_variants
from prompt_tuning.tasks.sources import BenchmarkSource

VERSION = "1.0.2"
SPLITS = ("train", "validation", "test")

# name -> (label classes (TFDS ClassLabel order), feature order in the inputs, benchmark word)
LABELS: Dict[str, Sequence[str]] = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
FEATURES = {"multirc": ("question", "answer", "paragraph"), "wic": ("sentence1", "sentence2", "word")}
BENCHMARK_WORD = {"axb": "rte", "axg": "rte"}  # diagnostics are cast as RTE

METRICS = {
    "boolq": [metrics.accuracy],
    "cb": [metrics.mean_multiclass_f1(3), metrics.accuracy],
    "copa": [metrics.accuracy],
    "multirc": [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match],
    "record": [metrics.record_metric],
    "rte": [metrics.accuracy],
    "wic": [metrics.accuracy],
    # T5 has none (test only); the AX files carry labels, scored as the leaderboard does.
    "axb": [metrics.matthews_corrcoef],
    "axg": [metrics.accuracy],
}

# T5's SUPER_GLUE_WEIGHT_MAPPING (training-set sizes); DPR is omitted (no official-file source).
WEIGHTS = {
    "super_glue_wsc_v102_simple_train": 259.,
    "super_glue_wsc_v102_simple_eval": 0.,
    "super_glue_boolq_v102": 9_427.,
    "super_glue_cb_v102": 250.,
    "super_glue_copa_v102": 400.,
    "super_glue_multirc_v102": 27_243.,
    "super_glue_record_v102": 138_854.,
    "super_glue_rte_v102": 2_490.,
    "super_glue_wic_v102": 5_428.,
    "super_glue_axb_v102": 0.,
    "super_glue_axg_v102": 0.,
}


def source(config: str, splits=SPLITS) -> BenchmarkSource:
    return BenchmarkSource("super_glue", config, VERSION, splits)


def _text_preprocessors(name: str):
    if name == "record":
        return [preprocessors.record]
    pre = []
    if name == "axb":
        pre.append(functools.partial(preprocessors.rekey, key_map={
            "premise": "sentence1", "hypothesis": "sentence2", "label": "label", "idx": "idx"}))
    pre.append(functools.partial(preprocessors.glue, benchmark_name=BENCHMARK_WORD.get(name, name),
                                 label_names=tuple(LABELS[name]), feature_names=FEATURES.get(name)))
    return pre


def _postprocess_fn(name: str):
    if name == "multirc":
        return postprocessors.multirc
    if name == "record":
        return postprocessors.record
    return functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(LABELS[name]))


def register() -> None:
    for name in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb", "axg"):
        splits = ("test",) if name in ("axb", "axg") else SPLITS
        metric_fns = METRICS[name] + ([] if name == "record" else [metrics.invalid_count])
        add_task_variants(f"super_glue_{name}_v102", source(name, splits), _text_preprocessors(name),
                          _postprocess_fn(name), metric_fns, label_names=LABELS.get(name),
                          grouped=name == "multirc")

    for prefix, extra in (("", []), (TASKLESS_PREFIX, [preprocessors.remove_first_text_token])):
        train = add_task(f"{prefix}super_glue_wsc_v102_simple_train", source("wsc.fixed", ("train",)),
                         [functools.partial(preprocessors.wsc_simple, correct_referent_only=True)] + extra)
        evaluate = add_task(f"{prefix}super_glue_wsc_v102_simple_eval", source("wsc.fixed", ("validation", "test")),
                            [functools.partial(preprocessors.wsc_simple, correct_referent_only=False)] + extra,
                            postprocessors.wsc_simple, [metrics.accuracy, metrics.invalid_count])
        add_mixture(f"{prefix}super_glue_wsc_and_dev_v102_simple", [train, evaluate], default_rate=1.0)
        add_mixture(f"{prefix}super_glue_v102_proportional", [(prefix + k, w) for k, w in WEIGHTS.items()])


register()
