"""Metric functions against scikit-learn / scipy on random inputs, and the benchmark-specific rules."""
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from prompt_tuning.tasks import metrics, postprocessors


@pytest.fixture(params=range(3))
def rng(request):
    return np.random.default_rng(request.param)


def test_accuracy_and_binary_f1_with_invalid(rng):
    targets = rng.integers(0, 2, 200)
    predictions = rng.integers(-1, 2, 200)  # -1 = invalid generation
    assert metrics.accuracy(targets, predictions)["accuracy"] == pytest.approx(100 * np.mean(targets == predictions))
    flipped = np.where(predictions == -1, 1 - targets, predictions)  # invalid is always the wrong class
    assert metrics.f1_score_with_invalid(targets, predictions)["f1"] == pytest.approx(
        100 * sklearn.metrics.f1_score(targets, flipped))
    assert metrics.invalid_count(targets, list(predictions))["invalid_predictions"] == np.sum(predictions == -1)


def test_cb_macro_f1_over_three_classes(rng):
    targets = rng.integers(0, 3, 100)
    predictions = rng.integers(-1, 3, 100)
    expected = sklearn.metrics.f1_score(targets, predictions, labels=[0, 1, 2], average="macro")
    assert metrics.mean_multiclass_f1(3)(targets, predictions)["mean_3class_f1"] == pytest.approx(100 * expected)
    # An invalid prediction is never credited: replacing it by the gold class can only help.
    fixed = np.where(predictions == -1, targets, predictions)
    assert metrics.mean_multiclass_f1(3)(targets, fixed)["mean_3class_f1"] >= expected * 100


def test_matthews_pearson_spearman(rng):
    t, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
        100 * sklearn.metrics.matthews_corrcoef(t, p))
    x, y = rng.uniform(0, 5, 300), rng.uniform(0, 5, 300)
    assert metrics.pearson_corrcoef(x, y)["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(x, y)[0])
    assert metrics.spearman_corrcoef(x, y)["spearman_corrcoef"] == pytest.approx(
        100 * scipy.stats.spearmanr(x, y)[0])


def test_stsb_postprocessor_marks_unparseable_output():
    assert postprocessors.string_to_float("3.4") == 3.4
    assert postprocessors.string_to_float("three") == -1.0


def test_multirc_f1a_and_exact_match_per_question():
    targets = [{"value": v, "group": g} for v, g in [(1, 0), (0, 0), (1, 1), (1, 2), (0, 2)]]
    preds = [{"value": v} for v in [1, 0, -1, 1, 1]]
    # EM: q0 right, q1 invalid, q2 wrong -> 1/3.
    assert metrics.multirc_exact_match(targets, preds) == {"exact_match": pytest.approx(100 / 3)}
    flat_t, flat_p = [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]  # invalid flipped to wrong
    assert metrics.multirc_f1_over_all_answers(targets, preds)["f1"] == pytest.approx(
        100 * sklearn.metrics.f1_score(flat_t, flat_p))


def test_record_official_normalisation_max_over_answers_and_dedup():
    assert metrics.normalize_squad("The  Eiffel-Tower!") == "eiffeltower"
    targets = [{"value": ["Barack Obama", "Obama"], "group": (0, 1)},
               {"value": ["Barack Obama", "Obama"], "group": (0, 1)},  # same query, second gold answer
               {"value": ["the U.S."], "group": (0, 2)}]
    preds = [{"value": "obama"}, {"value": "ignored duplicate"}, {"value": "U.S. army"}]
    out = metrics.record_metric(targets, preds)
    assert out["em"] == 50.0
    assert out["f1"] == pytest.approx(100 * (1.0 + 2 * (1 / 2) * 1 / (1 / 2 + 1)) / 2)  # "us army" vs "us"


def test_wsc_postprocessor_rules():
    ex = {"targets_pretokenized": b"the fuzzy bunny", "label": 1}
    assert postprocessors.wsc_simple("Bunny", example=ex) == 1  # subset, determiners/case ignored
    assert postprocessors.wsc_simple("the fuzzy bunny 's hat", example=ex) == 0  # possessive mismatch
    assert postprocessors.wsc_simple("  ", example=ex) == postprocessors.INVALID
    assert postprocessors.wsc_simple("x", example=ex, is_target=True) == 1


def test_label_postprocessor_exact_match_only():
    classes = ("not_equivalent", "equivalent")
    assert postprocessors.string_label_to_class_id("equivalent", label_classes=classes) == 1
    assert postprocessors.string_label_to_class_id(b"not_equivalent", label_classes=classes) == 0
    assert postprocessors.string_label_to_class_id("Equivalent", label_classes=classes) == -1
