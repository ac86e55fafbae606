"""Benchmark metrics, as T5 defines them (t5/evaluation/metrics.py), on postprocessed values; all in percent.

Invalid generations (postprocessed to -1) count as wrong in every metric, and `invalid_count` reports how
many there were.  Metric functions take (targets, predictions) or, for rank classification,
(targets, scores), as seqio requires.
"""
import collections
import re
import string
from typing import Callable, Dict, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

from prompt_tuning.tasks.postprocessors import INVALID

MetricFn = Callable[..., Dict[str, float]]


def accuracy(targets, predictions):
    return {"accuracy": 100 * sklearn.metrics.accuracy_score(targets, predictions)}


def f1_score_with_invalid(targets, predictions):
    """Binary F1 of class 1; a prediction other than 0/1 is set to the opposite of its target."""
    targets, predictions = np.asarray(targets), np.array(predictions)
    invalid = np.logical_and(predictions != 0, predictions != 1)
    predictions[invalid] = 1 - targets[invalid]
    return {"f1": 100 * sklearn.metrics.f1_score(targets, predictions)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
    """Unweighted mean of per-class F1 over classes 0..num_classes-1 (CB: 3); invalid never matches."""
    def mean_f1(targets, predictions):
        return {f"mean_{num_classes}class_f1": 100 * sklearn.metrics.fbeta_score(
            targets, predictions, beta=1, labels=range(num_classes), average="macro")}

    return mean_f1


def matthews_corrcoef(targets, predictions):
    """CoLA (and AX-b): Matthews correlation; -1 predictions act as an extra, always wrong class."""
    return {"matthews_corrcoef": 100 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def pearson_corrcoef(targets, predictions):
    return {"pearson_corrcoef": 100 * scipy.stats.pearsonr(targets, predictions)[0]}


def spearman_corrcoef(targets, predictions):
    return {"spearman_corrcoef": 100 * scipy.stats.spearmanr(targets, predictions)[0]}


def invalid_count(targets, predictions):
    """How many predictions were not a valid label (postprocessed to -1), and their share in percent."""
    del targets
    values = [p["value"] if isinstance(p, dict) else p for p in predictions]
    n = sum(1 for v in values if not isinstance(v, str) and v == INVALID)
    return {"invalid_predictions": float(n), "invalid_percent": 100.0 * n / max(len(values), 1)}


def all_match(targets, predictions):
    return {"exact_match": 100 * float(np.array_equal(targets, predictions))}


def mean_group_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """Averages metric_fn over groups of (target, prediction) dicts (MultiRC: answers of one question)."""
    def group_metric(targets, predictions):
        grouped = collections.defaultdict(lambda: ([], []))
        for t, p in zip(targets, predictions):
            grouped[t[group_key]][0].append(t[value_key])
            grouped[t[group_key]][1].append(p[value_key])
        scores = collections.defaultdict(list)
        for ts, ps in grouped.values():
            for name, score in metric_fn(ts, ps).items():
                scores[name].append(score)
        return {name: float(np.mean(s)) for name, s in scores.items()}

    return group_metric


def multirc_f1_over_all_answers(targets, predictions):
    """MultiRC F1a: binary F1 over every answer option (invalid counted wrong)."""
    return f1_score_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def normalize_squad(text: str) -> str:
    """The official SQuAD/ReCoRD normalization: lower, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    p, t = prediction.split(), target.split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]):
    """EM and token F1, each maximised over the gold answers of an example."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    targets = [[normalize_squad(t) for t in ts] for ts in targets]
    predictions = [normalize_squad(p) for p in predictions]
    em = np.mean([max(float(t == p) for t in ts) for ts, p in zip(targets, predictions)])
    f1 = np.mean([max(_token_f1(t, p) for t in ts) for ts, p in zip(targets, predictions)])
    return {"em": 100 * float(em), "f1": 100 * float(f1)}


def deduplicate_metric(metric_fn: MetricFn, group_key: str = "group", value_key: str = "value") -> MetricFn:
    """Scores the first example of each group only (ReCoRD repeats a query once per gold answer)."""
    def dedup(targets, predictions):
        seen, ts, ps = set(), [], []
        for t, p in zip(targets, predictions):
            if t[group_key] in seen:
                continue
            seen.add(t[group_key])
            ts.append(t[value_key])
            ps.append(p[value_key])
        return metric_fn(ts, ps)

    return dedup


record_metric = deduplicate_metric(squad)
multirc_exact_match = mean_group_metric(all_match)


def rank_classification(metric_fns: Sequence[MetricFn], grouped: bool = False) -> MetricFn:
    """Metric over per-choice log-likelihood scores: the best-scoring label string is the prediction.

    targets are postprocessors.rank_classification records, scores one float per (example, choice);
    the class ids (and, if grouped, MultiRC {'value','group'} dicts) then go to the task's own metrics.
    """
    def rank_metric(targets, scores):
        by_example = collections.OrderedDict()
        for t, s in zip(targets, scores):
            ex, choice = t["idx"]
            entry = by_example.setdefault(ex, {"scores": {}, "label": t["label"], "group": t.get("group")})
            entry["scores"][choice] = float(np.asarray(s).sum())
        golds, preds = [], []
        for entry in by_example.values():
            best = max(entry["scores"], key=entry["scores"].get)
            if grouped:
                golds.append({"value": entry["label"], "group": entry["group"]})
                preds.append({"value": best})
            else:
                golds.append(entry["label"])
                preds.append(best)
        out = {}
        for fn in metric_fns:
            out.update(fn(golds, preds))
        return out

    return rank_metric
