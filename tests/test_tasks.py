"""seqio tasks: T5 formats, both sources, counts, gold labels through postprocessor + metric, leaderboard."""
import json
import os

import pytest
import seqio

import prompt_tuning.tasks as tasks
from prompt_tuning.scripts import show_tasks
from prompt_tuning.tasks import leaderboard, official_files, registration, sources
from conftest import shared_path
from test_tasks_data import write_all


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    return write_all(str(tmp_path_factory.mktemp("official")))


def _restore_source_after(monkeypatch):
    """The source's environment variables come back as they were after the test (set_source writes them)."""
    for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
        monkeypatch.setenv(name, "")


@pytest.fixture
def files_dir(official_root, monkeypatch):
    """The tiny official files as the active source (restored after the test)."""
    _restore_source_after(monkeypatch)
    tasks.set_source("files", data_dir=official_root)
    return official_root


def text_examples(name, split):
    """Processed examples (before tokenization; no vocabulary needed) as numpy dicts."""
    return list(show_tasks.text_dataset(seqio.get_mixture_or_task(name), split).as_numpy_iterator())


def _as_text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else v


def gold_metrics(name, examples):
    """Every metric of the task with the gold target text fed in as the model's prediction."""
    task = seqio.get_mixture_or_task(name)
    targets, predictions = [], []
    for ex in examples:
        ex = dict(ex, targets_pretokenized=ex["targets"])
        gold = _as_text(ex["targets"])
        if "wsc" in name and int(ex["label"]) == 0:
            gold = "somebody else entirely"  # a negative WSC candidate is not the referent
        targets.append(task.postprocess_fn(_as_text(ex["targets"]), example=ex, is_target=True))
        predictions.append(task.postprocess_fn(gold, example=ex, is_target=False))
    out = {}
    for fn in task.predict_metric_fns:
        out.update(fn(targets, predictions))
    return out


def assert_perfect(name, scores):
    assert scores, f"{name}: no metrics"
    for key, value in scores.items():
        if key.startswith("invalid"):
            assert value == 0, (name, key, value)
        elif "corrcoef" in key and "matthews" not in key:
            assert value == pytest.approx(100, abs=1e-9), (name, key, value)
        else:
            assert value == 100, (name, key, value)


# ------------------------------------------------------------------------------------------- registry


def test_every_task_and_mixture_is_registered():
    names = set(registration.REGISTERED_TASKS)
    for sg in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb", "axg"):
        assert f"super_glue_{sg}_v102" in names and f"taskless_super_glue_{sg}_v102" in names
    for g in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte",
              "wnli", "ax"):
        assert f"glue_{g}_v002" in names and f"taskless_glue_{g}_v002" in names
    for n in ("super_glue_wsc_v102_simple_train", "super_glue_wsc_v102_simple_eval", "glue_mrpc_from_qqp_v002",
              "glue_qqp_from_mrpc_v002", "super_glue_rte_v102_rank", "glue_mnli_v002_rank",
              "taskless_super_glue_cb_v102_rank"):
        assert n in names, n
    assert "super_glue_record_v102_rank" not in names and "glue_stsb_v002_rank" not in names
    for m in ("super_glue_v102_proportional", "taskless_super_glue_v102_proportional", "glue_v002_proportional",
              "super_glue_wsc_and_dev_v102_simple", "glue_mrpc_from_qqp_zeroshot_v002",
              "taskless_glue_qqp_from_mrpc_zeroshot_v002"):
        assert seqio.get_mixture_or_task(m).tasks, m
    rates = {t.name: seqio.get_mixture_or_task("super_glue_v102_proportional").get_rate(t)
             for t in seqio.get_mixture_or_task("super_glue_v102_proportional").tasks}
    assert rates["super_glue_record_v102"] == 138_854 and rates["super_glue_wsc_v102_simple_train"] == 259


def test_source_choice_comes_from_the_environment(tmp_path, monkeypatch):
    _restore_source_after(monkeypatch)
    monkeypatch.setenv(sources.SOURCE_ENV, "files")
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
    src = seqio.get_mixture_or_task("super_glue_rte_v102").source.active()
    assert isinstance(src, sources.OfficialFilesSource) and src.data_dir == str(tmp_path)
    tasks.set_source(None)
    assert isinstance(seqio.get_mixture_or_task("super_glue_rte_v102").source.active(), seqio.TfdsDataSource)
    with pytest.raises(ValueError, match=sources.DATA_DIR_ENV):
        tasks.set_source("files")


def test_tasks_module_defines_no_gin_configurable():
    """t5x refuses a MIXTURE_OR_TASK_MODULE that registers gin configurables (they must precede flag parsing)."""
    import subprocess
    import sys
    # t5x imports the module after gin is locked; a new configurable then raises (t5x.utils.import_module).
    code = "import gin; gin.finalize(); import prompt_tuning.tasks"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


# ------------------------------------------------------------------------------ T5 formats, tiny files


@pytest.mark.parametrize("name,split,index,inputs,targets", [
    ("super_glue_rte_v102", "validation", 0, "rte hypothesis: An animal runs. premise: A dog runs.", "entailment"),
    ("taskless_super_glue_rte_v102", "validation", 0, "hypothesis: An animal runs. premise: A dog runs.",
     "entailment"),
    ("super_glue_boolq_v102", "train", 0, "boolq passage: It is. question: is it true", "True"),
    ("super_glue_cb_v102", "validation", 2, "cb hypothesis: H2 premise: P2", "neutral"),
    ("super_glue_copa_v102", "validation", 0,
     "copa choice1: A. choice2: B. premise: The man turned on the faucet. question: effect", "choice2"),
    ("super_glue_multirc_v102", "validation", 0, "multirc question: Q0? answer: a0 paragraph: Para one. Two.",
     "False"),
    ("super_glue_wic_v102", "validation", 1, "wic sentence1: S3. sentence2: S4. word: bank", "True"),
    ("super_glue_axb_v102", "test", 0, "rte hypothesis: S2. premise: S1.", "entailment"),
    ("super_glue_axg_v102", "test", 1, "rte hypothesis: H2. premise: P2.", "not_entailment"),
    ("super_glue_record_v102", "validation", 0,
     "record query: @placeholder met Bob entities: Alice, Bob passage: Alice met Bob. Bob left", "Alice"),
    ("super_glue_record_v102", "test", 0,
     "record query: @placeholder met Bob entities: Alice, Bob passage: Alice met Bob. Bob left", "<unk>"),
    ("super_glue_wsc_v102_simple_eval", "validation", 0,
     "wsc: Mark told Pete many lies about himself , which Pete included in *his* book .", "Mark"),
    ("taskless_super_glue_wsc_v102_simple_train", "train", 0,
     "Mark told Pete many lies about himself , which Pete included in *his* book .", "Pete"),
    ("glue_cola_v002", "validation", 0, "cola sentence: The sailors rode the breeze clear of the rocks.",
     "acceptable"),
    ("glue_cola_v002", "test", 0, "cola sentence: Bill whistled.", "<unk>"),
    ("glue_sst2_v002", "train", 1, "sst2 sentence: bad", "negative"),
    ("glue_mrpc_v002", "train", 0, 'mrpc sentence1: He said "yes". sentence2: "Yes," he said.', "equivalent"),
    ("glue_mrpc_v002", "validation", 0, "mrpc sentence1: A b. sentence2: C d.", "not_equivalent"),
    ("glue_qqp_v002", "validation", 0, "qqp question1: How? question2: How so?", "duplicate"),
    ("glue_qqp_v002", "test", 0, "qqp question1: A? question2: B?", "<unk>"),
    ("glue_stsb_v002", "validation", 0, "stsb sentence1: A plane. sentence2: An air plane.", "5.0"),
    ("glue_stsb_v002", "validation", 1, "stsb sentence1: A man. sentence2: A cat.", "0.4"),  # 2.5 -> 2 (even)
    ("glue_stsb_v002", "validation", 2, "stsb sentence1: X. sentence2: Y.", "3.2"),  # float32 3.3*5 < 16.5
    ("glue_mnli_v002", "validation_mismatched", 0, "mnli hypothesis: H0. premise: P0.", "neutral"),
    ("glue_mnli_matched_v002", "validation", 2, "mnli hypothesis: H2. premise: P2.", "contradiction"),
    ("glue_qnli_v002", "validation", 1, "qnli question: Who? sentence: No one.", "not_entailment"),
    ("glue_rte_v002", "validation", 0, "rte sentence1: S1. sentence2: S2.", "entailment"),
    ("glue_wnli_v002", "validation", 0, "wnli sentence1: S1. sentence2: S2.", "entailment"),
    ("glue_ax_v002", "test", 0, "mnli hypothesis: A cat sat. premise: The cat sat.", "<unk>"),
    ("taskless_glue_ax_v002", "test", 0, "hypothesis: A cat sat. premise: The cat sat.", "<unk>"),
])
def test_t5_text_format(files_dir, name, split, index, inputs, targets):
    ex = text_examples(name, split)[index]
    assert (_as_text(ex["inputs"]), _as_text(ex["targets"])) == (inputs, targets)


def test_ids_and_grouping_keys(files_dir):
    multirc = text_examples("super_glue_multirc_v102", "validation")
    assert [(e["idx/paragraph"], e["idx/question"], e["idx/answer"]) for e in multirc] == [(0, 0, 0), (0, 0, 1),
                                                                                          (0, 1, 2)]
    record = text_examples("super_glue_record_v102", "validation")
    assert [(e["idx/passage"], e["idx/query"]) for e in record] == [(0, 5), (0, 6)]  # duplicate "Bob" merged
    assert text_examples("glue_mrpc_v002", "validation")[0]["idx"] == 1  # TFDS: row number in the MSR file


EXPECTED_COUNTS = {  # (task, split): (source examples, processed examples)
    ("super_glue_multirc_v102", "validation"): (3, 3),
    ("super_glue_record_v102", "validation"): (2, 2),
    ("super_glue_wsc_v102_simple_train", "train"): (2, 1),  # positives only
    ("super_glue_wsc_v102_simple_eval", "validation"): (2, 2),
    ("glue_mrpc_v002", "train"): (1, 1),
    ("glue_mrpc_v002", "validation"): (2, 2),
    ("glue_mrpc_v002", "test"): (2, 2),
    ("glue_cola_v002", "train"): (2, 2),
    ("glue_mnli_v002", "test_matched"): (3, 3),
    ("super_glue_cb_v102_rank", "validation"): (3, 9),  # one example per label string
}


@pytest.mark.parametrize("key", sorted(EXPECTED_COUNTS))
def test_counts_match_files(files_dir, key):
    name, split = key
    task = seqio.get_mixture_or_task(name)
    assert (task.num_input_examples(split), len(text_examples(name, split))) == EXPECTED_COUNTS[key]


def _base_eval_tasks():
    for name in registration.REGISTERED_TASKS:
        task = seqio.get_mixture_or_task(name)
        if name.endswith("_rank") or name.startswith("taskless_") or not task.predict_metric_fns:
            continue
        split = next(s for s in ("validation", "validation_matched", "test") if s in task.source.splits)
        yield name, split


def test_every_task_gold_labels_score_100_on_tiny_files(files_dir):
    seen = []
    for name, split in _base_eval_tasks():
        scores = gold_metrics(name, text_examples(name, split))
        assert_perfect(name, scores)
        seen.append(name)
    assert len(seen) >= 20, seen


def test_invalid_generation_counts_as_wrong_and_is_reported(files_dir):
    task = seqio.get_mixture_or_task("super_glue_rte_v102")
    examples = text_examples("super_glue_rte_v102", "validation")
    targets = [task.postprocess_fn(_as_text(e["targets"]), example=e, is_target=True) for e in examples]
    predictions = [task.postprocess_fn(p, example=e) for p, e in zip(["entailment", "yes"], examples)]
    scores = {}
    for fn in task.predict_metric_fns:
        scores.update(fn(targets, predictions))
    assert scores == {"accuracy": 50.0, "invalid_predictions": 1.0, "invalid_percent": 50.0}


def test_rank_classification_variant(files_dir):
    name = "super_glue_cb_v102_rank"
    task = seqio.get_mixture_or_task(name)
    examples = text_examples(name, "validation")
    assert {_as_text(e["targets"]) for e in examples} == {"entailment", "contradiction", "neutral"}
    targets = [task.postprocess_fn(_as_text(e["targets"]), example=e, is_target=True) for e in examples]
    assert [fn for fn in task.score_metric_fns] and not task.predict_metric_fns
    metric = task.score_metric_fns[0]
    gold_scores = [0.0 if e["is_correct"] else -5.0 for e in examples]
    assert metric(targets, gold_scores) == {"mean_3class_f1": 100.0, "accuracy": 100.0}
    always_first = [0.0 if e["idx"][1] == 0 else -5.0 for e in examples]
    assert metric(targets, always_first)["accuracy"] == pytest.approx(100 / 3)
    multirc = seqio.get_mixture_or_task("super_glue_multirc_v102_rank")
    mex = text_examples("super_glue_multirc_v102_rank", "validation")
    mt = [multirc.postprocess_fn(_as_text(e["targets"]), example=e, is_target=True) for e in mex]
    assert multirc.score_metric_fns[0](mt, [0.0 if e["is_correct"] else -1.0 for e in mex]) == {
        "f1": 100.0, "exact_match": 100.0}


@pytest.mark.parametrize("target,source_vocab", [("mrpc", "qqp"), ("qqp", "mrpc")])
def test_domain_transfer_translates_labels(files_dir, target, source_vocab):
    name = f"glue_{target}_from_{source_vocab}_v002"
    task = seqio.get_mixture_or_task(name)
    examples = text_examples(name, "validation")
    words = {"equivalent": "duplicate", "not_equivalent": "not_duplicate"}
    if source_vocab == "mrpc":
        words = {v: k for k, v in words.items()}
    targets = [task.postprocess_fn(_as_text(e["targets"]), example=e, is_target=True) for e in examples]
    predictions = [task.postprocess_fn(words[_as_text(e["targets"])], example=e) for e in examples]
    assert task.predict_metric_fns[-1](targets, predictions)["invalid_predictions"] == 0
    for fn in task.predict_metric_fns[:-1]:
        assert all(v == 100 for v in fn(targets, predictions).values())
    mixture = seqio.get_mixture_or_task(f"glue_{target}_from_{source_vocab}_zeroshot_v002")
    assert {t.name for t in mixture.tasks} == {f"glue_{source_vocab}_v002", name}


# --------------------------------------------------------------------------------------- malformed rows


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    path = tmp_path / "superglue" / "RTE" / "val.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n{"premise": \n')
    with pytest.raises(official_files.MalformedRowError, match=rf"{path}:2: invalid JSON"):
        official_files.read_examples(str(tmp_path), "super_glue", "rte", "validation")
    path.write_text('{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}\n')
    with pytest.raises(official_files.MalformedRowError, match=rf"{path}:1: label 'maybe'"):
        official_files.read_examples(str(tmp_path), "super_glue", "rte", "validation")


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    path = tmp_path / "QNLI" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("index\tquestion\tsentence\tlabel\n0\tq\ts\tentailment\n1\tq\ts\n")
    with pytest.raises(official_files.MalformedRowError, match=rf"{path}:3: expected 4 tab-separated"):
        official_files.read_examples(str(tmp_path), "glue", "qnli", "validation")
    with pytest.raises(FileNotFoundError, match="glue/qnli split 'train'"):
        official_files.read_examples(str(tmp_path), "glue", "qnli", "train")


def test_bom_and_quotes_are_read_literally(tmp_path):
    path = tmp_path / "MRPC" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\t"Open quote\tx "y"\n',
                    encoding="utf-8")
    _, (ex,) = official_files.read_examples(str(tmp_path), "glue", "mrpc", "validation")
    assert (ex["sentence1"], ex["sentence2"], int(ex["label"])) == ('"Open quote', 'x "y"', 1)


# ------------------------------------------------------------------------------------------- TFDS source


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    _restore_source_after(monkeypatch)
    tasks.set_source("tfds", tfds_data_dir=str(tmp_path))
    task = seqio.get_mixture_or_task("super_glue_rte_v102")
    active = task.source.active()
    assert isinstance(active, seqio.TfdsDataSource)
    assert active.tfds_dataset.data_dir == str(tmp_path) and active.tfds_dataset.name == "super_glue/rte:1.0.2"
    with tfds.testing.mock_data(num_examples=4):
        examples = text_examples("super_glue_rte_v102", "validation")
        glue_examples = text_examples("glue_stsb_v002", "train")
    assert len(examples) == 4 and all(_as_text(e["inputs"]).startswith("rte hypothesis: ") for e in examples)
    assert all(_as_text(e["targets"]) in ("entailment", "not_entailment") for e in examples)
    assert len(glue_examples) == 4 and all(float(e["targets"]) >= 0 for e in glue_examples)


# ------------------------------------------------------------------------------------ leaderboard writer


def test_superglue_leaderboard_files(files_dir, tmp_path):
    results = {}
    for name in ("super_glue_boolq_v102", "super_glue_cb_v102", "super_glue_copa_v102", "super_glue_rte_v102",
                 "taskless_super_glue_wic_v102", "super_glue_axb_v102", "super_glue_axg_v102",
                 "super_glue_multirc_v102", "super_glue_record_v102", "super_glue_wsc_v102_simple_eval"):
        examples = [dict(e, targets_pretokenized=e["targets"]) for e in text_examples(name, "test")]
        if "wsc" in name:
            preds = ["Pete", ""]
        elif "record" in name:
            preds = ["Alice"] * len(examples)
        else:
            labels = leaderboard.superglue.LABELS[leaderboard.short_name(name)]
            preds = [(list(labels) * 3)[i] for i in range(len(examples))]
        results[name] = (examples, preds)
    report = leaderboard.write(str(tmp_path), results)
    read = {os.path.basename(p): [json.loads(line) for line in open(p)] for p in report}
    assert read["BoolQ.jsonl"] == [{"idx": 0, "label": "false"}, {"idx": 1, "label": "true"}]
    assert read["WiC.jsonl"] == [{"idx": 0, "label": "false"}, {"idx": 1, "label": "true"}]
    assert read["CB.jsonl"][2] == {"idx": 2, "label": "neutral"}
    assert read["COPA.jsonl"] == [{"idx": 0, "label": 0}, {"idx": 1, "label": 1}]
    assert read["RTE.jsonl"][1] == {"idx": 1, "label": "not_entailment"}
    assert read["AX-b.jsonl"][0] == {"idx": 0, "label": "entailment"}
    assert read["MultiRC.jsonl"] == [{"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [
        {"idx": 0, "label": 0}]}]}}]
    assert read["ReCoRD.jsonl"] == [{"idx": 5, "label": "Alice"}]
    assert read["WSC.jsonl"] == [{"idx": 0, "label": "False"}, {"idx": 1, "label": "False"}]  # "Pete" != Mark
    assert report[str(tmp_path / "WSC.jsonl")]["invalid_predictions"] == 1  # the empty generation
    with pytest.raises(ValueError, match="leaderboard"):
        leaderboard.short_name("glue_mrpc_v002")


# ------------------------------------------------------------------------------------------- show_tasks


def test_show_tasks_lists_and_prints_examples(files_dir, capsys):
    assert show_tasks.main([]) == 0
    listing = capsys.readouterr().out
    assert "super_glue_v102_proportional" in listing and "taskless_glue_mrpc_v002" in listing
    assert show_tasks.main(["--task", "glue_wnli_v002", "--split", "train", "-n", "1", "--source", "files",
                            "--data_dir", files_dir]) == 0
    out = capsys.readouterr().out
    assert "inputs: wnli sentence1: S1. sentence2: S2." in out and "--- example 1" not in out


# ---------------------------------------------------------------------------------- real data (../shared)

SHARED_COUNTS = {"BoolQ": 3270, "CB": 56, "COPA": 100, "RTE": 277, "WiC": 638, "WSC": 104}
SHARED_TASKS = {"BoolQ": "boolq", "CB": "cb", "COPA": "copa", "RTE": "rte", "WiC": "wic",
                "MultiRC": "multirc", "WSC": "wsc"}


@pytest.fixture
def shared_data(monkeypatch):
    root = shared_path("data")
    _restore_source_after(monkeypatch)
    tasks.set_source("files", data_dir=str(root))
    return root


@pytest.mark.parametrize("dirname", sorted(SHARED_TASKS))
def test_real_superglue_validation(shared_data, dirname):
    path = shared_data / "superglue" / dirname / "val.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    key = SHARED_TASKS[dirname]
    name = "super_glue_wsc_v102_simple_eval" if key == "wsc" else f"super_glue_{key}_v102"
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    expected = (sum(len(q["answers"]) for r in lines for q in r["passage"]["questions"]) if key == "multirc"
                else len(lines))
    examples = text_examples(name, "validation")
    assert seqio.get_mixture_or_task(name).num_input_examples("validation") == len(examples) == expected
    if dirname in SHARED_COUNTS:
        assert expected == SHARED_COUNTS[dirname]
    assert_perfect(name, gold_metrics(name, examples))


def test_real_mrpc(shared_data):
    if not (shared_data / "mrpc" / "msr_paraphrase_train.txt").exists():
        pytest.skip("MRPC files absent")
    task = seqio.get_mixture_or_task("glue_mrpc_v002")
    assert (task.num_input_examples("train"), task.num_input_examples("validation"),
            task.num_input_examples("test")) == (3668, 408, 1725)
    dev = text_examples("glue_mrpc_v002", "validation")
    assert sum(_as_text(e["targets"]) == "equivalent" for e in dev) == 279
    assert_perfect("glue_mrpc_v002", gold_metrics("glue_mrpc_v002", dev))
    # The GLUE dev.tsv (BOM, stray quotes) holds the same 408 pairs as MSR train + dev_ids.
    _, glue_dev = official_files.read_examples(str(shared_data), "glue", "mrpc", "validation")
    glue_dev_tsv = list(official_files._read_mrpc(str(shared_data / "mrpc" / "dev.tsv"), "validation"))
    assert sorted((e["sentence1"], int(e["label"])) for e in glue_dev) == sorted(
        (e["sentence1"], int(e["label"])) for e in glue_dev_tsv)
    assert_perfect("glue_mrpc_from_qqp_v002", gold_metrics("glue_mrpc_v002", dev))


def test_real_vocab_tokenizes_with_eos(shared_data, monkeypatch):
    monkeypatch.setenv(tasks.vocab.VOCAB_ENV, str(shared_path("vocab", "t5_spiece.model")))
    ds = seqio.get_mixture_or_task("taskless_super_glue_cb_v102").get_dataset(
        {"inputs": 64, "targets": 8}, split="validation", shuffle=False)
    ex = next(ds.as_numpy_iterator())
    assert ex["targets"].tolist() == tasks.vocab.VOCABULARY.encode("contradiction") + [1]
    assert ex["inputs"][-1] == 1 and len(ex["inputs"]) <= 64
