"""The "span corruption + sentinel" task option: targets gain '<extra_id_0> ', postprocessing removes it."""
import pytest
import seqio

import prompt_tuning.tasks as tasks
from prompt_tuning.scripts import show_tasks
from prompt_tuning.tasks import registration, sentinel, sources
from test_tasks_data import write_all


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory):
    root = write_all(str(tmp_path_factory.mktemp("official")))
    with pytest.MonkeyPatch.context() as patch:
        for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
            patch.setenv(name, "")  # restored after the module
        tasks.set_source("files", data_dir=root)
        yield root


def text_examples(name, split):
    return list(show_tasks.text_dataset(seqio.get_mixture_or_task(name), split).as_numpy_iterator())


def _text(s):
    return s.decode() if isinstance(s, bytes) else s


def metrics_of(name, examples, predictions):
    task = seqio.get_mixture_or_task(name)
    # As seqio's evaluator: the target text (str) and the example (bytes) with its targets_pretokenized.
    examples = [dict(e, targets_pretokenized=e["targets"]) for e in examples]
    targets = [task.postprocess_fn(e["targets"].decode(), example=e, is_target=True) for e in examples]
    preds = [task.postprocess_fn(_text(p), example=e) for p, e in zip(predictions, examples)]
    out = {}
    for fn in task.predict_metric_fns:
        out.update(fn(targets, preds))
    return out


def test_remove_sentinel_keeps_type_and_only_a_leading_sentinel():
    assert sentinel.remove_sentinel("<extra_id_0> entailment") == "entailment"
    assert sentinel.remove_sentinel(b"<extra_id_0>True") == b"True"  # T5's decode may drop the space
    assert sentinel.remove_sentinel("True <extra_id_0>") == "True <extra_id_0>"
    assert sentinel.remove_sentinel("<extra_id_1> x") == "<extra_id_1> x"


def test_variants_are_registered():
    names = set(sentinel.VARIANTS)
    for base in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic"):
        assert f"taskless_super_glue_{base}_v102_sentinel" in names
    assert {"taskless_super_glue_wsc_v102_simple_train_sentinel", "taskless_super_glue_wsc_v102_simple_eval_sentinel",
            "synthetic_second_letter_sentinel"} <= names
    assert not any(n.endswith("_rank_sentinel") for n in names)  # scoring label strings needs no sentinel
    assert "taskless_super_glue_rte_v102_sentinel" in registration.REGISTERED_TASKS  # listed by show_tasks
    assert "synthetic_second_letter_sentinel" not in registration.REGISTERED_TASKS  # as its base task


def test_synthetic_variant_prefixes_targets_only():
    base = text_examples("synthetic_second_letter", "validation")[:5]
    variant = text_examples("synthetic_second_letter_sentinel", "validation")[:5]
    assert [v["inputs"] for v in variant] == [b["inputs"] for b in base]
    assert [v["targets"].decode() for v in variant] == [f"<extra_id_0> {b['targets'].decode()}" for b in base]
    task = seqio.get_mixture_or_task("synthetic_second_letter_sentinel")
    assert task.output_features["targets"].vocabulary == seqio.ByteVocabulary()  # the base task's features


def test_gold_with_sentinel_scores_100_and_without_scores_as_is():
    examples = text_examples("synthetic_second_letter_sentinel", "validation")[:8]
    gold = [e["targets"].decode() for e in examples]
    assert metrics_of("synthetic_second_letter_sentinel", examples, gold) == {"accuracy": 100.0}
    bare = [g.split(" ", 1)[1] for g in gold]  # the answer letter without the sentinel
    assert metrics_of("synthetic_second_letter_sentinel", examples, bare) == {"accuracy": 100.0}
    wrong = ["<extra_id_0> z"] * 4 + gold[4:]
    assert metrics_of("synthetic_second_letter_sentinel", examples, wrong) == {"accuracy": 50.0}


def test_superglue_variants_score_like_their_base(files_dir):
    rte = text_examples("taskless_super_glue_rte_v102_sentinel", "validation")
    assert rte[0]["targets"] == b"<extra_id_0> entailment"
    assert rte[0]["inputs"] == text_examples("taskless_super_glue_rte_v102", "validation")[0]["inputs"]
    assert metrics_of("taskless_super_glue_rte_v102_sentinel", rte, [e["targets"] for e in rte]) == {
        "accuracy": 100.0, "invalid_predictions": 0.0, "invalid_percent": 0.0}
    # WSC's postprocessor compares the generation with the example's target text, so that text must lose the
    # sentinel too: "Pete himself" matches the candidate "Pete" only by word-set inclusion of the bare name.
    wsc = text_examples("taskless_super_glue_wsc_v102_simple_eval_sentinel", "validation")
    assert [(e["targets"], int(e["label"])) for e in wsc] == [(b"<extra_id_0> Mark", 0), (b"<extra_id_0> Pete", 1)]
    predictions = ["<extra_id_0> Pete", "<extra_id_0> Pete himself"]
    assert metrics_of("taskless_super_glue_wsc_v102_simple_eval_sentinel", wsc, predictions)["accuracy"] == 100.0
    record = text_examples("taskless_super_glue_record_v102_sentinel", "validation")
    assert metrics_of("taskless_super_glue_record_v102_sentinel", record, [e["targets"] for e in record]) == {
        "em": 100.0, "f1": 100.0}


def test_mixture_variants_keep_rates():
    for name in sentinel.MIXTURE_VARIANTS:
        base = seqio.get_mixture_or_task(name[:-len(sentinel.SUFFIX)])
        variant = seqio.get_mixture_or_task(name)
        assert {t.name + sentinel.SUFFIX: base.get_rate(t) for t in base.tasks} == {
            t.name: variant.get_rate(t) for t in variant.tasks}
