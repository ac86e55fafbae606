"""GLUE tasks in T5's formats: glue_<name>_v002 (+ taskless_, _rank) and the proportional mixture."""
import functools
from typing import Dict, Optional, Sequence

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks.registration import add_mixture, add_task_variants
from prompt_tuning.tasks.sources import BenchmarkSource

# TFDS's current glue version (T5 pinned 1.0.0, which differs only in QQP's download location).
VERSION = "2.0.0"
SPLITS = ("train", "validation", "test")

LABELS: Dict[str, Optional[Sequence[str]]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,
    "mnli": ("entailment", "neutral", "contradiction"),
    "mnli_matched": ("entailment", "neutral", "contradiction"),
    "mnli_mismatched": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "ax": ("entailment", "neutral", "contradiction"),
}
TASK_SPLITS = {
    "mnli": ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
    "ax": ("test",),
}

METRICS = {
    "cola": [metrics.matthews_corrcoef],
    "sst2": [metrics.accuracy],
    "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
    "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
    "mnli": [metrics.accuracy],
    "mnli_matched": [metrics.accuracy],
    "mnli_mismatched": [metrics.accuracy],
    "qnli": [metrics.accuracy],
    "rte": [metrics.accuracy],
    "wnli": [metrics.accuracy],
    "ax": [],  # test only, unlabelled
}

# T5's GLUE_WEIGHT_MAPPING (training-set sizes; WNLI left out as T5 does).
WEIGHTS = {
    "glue_cola_v002": 8_551.,
    "glue_sst2_v002": 67_349.,
    "glue_mrpc_v002": 3_668.,
    "glue_qqp_v002": 363_849.,
    "glue_stsb_v002": 5_749.,
    "glue_mnli_v002": 392_702.,
    "glue_qnli_v002": 104_743.,
    "glue_rte_v002": 2_490.,
    "glue_mnli_mismatched_v002": 0.,
    "glue_mnli_matched_v002": 0.,
    "glue_ax_v002": 0.,
}


def source(config: str, splits: Optional[Sequence[str]] = None) -> BenchmarkSource:
    return BenchmarkSource("glue", config, VERSION, splits or TASK_SPLITS.get(config, SPLITS))


def text_preprocessors(name: str):
    if name == "stsb":
        return [preprocessors.stsb]
    word = "mnli" if ("mnli" in name or name == "ax") else name
    return [functools.partial(preprocessors.glue, benchmark_name=word, label_names=tuple(LABELS[name]))]


def postprocess_fn(name: str):
    if name == "stsb":
        return postprocessors.string_to_float
    return functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(LABELS[name]))


def register() -> None:
    for name in LABELS:
        metric_fns = METRICS[name] + ([metrics.invalid_count] if METRICS[name] else [])
        add_task_variants(f"glue_{name}_v002", source(name), text_preprocessors(name), postprocess_fn(name),
                          metric_fns, label_names=LABELS[name])
    for prefix in ("", "taskless_"):
        add_mixture(f"{prefix}glue_v002_proportional", [(prefix + k, w) for k, w in WEIGHTS.items()])


register()
