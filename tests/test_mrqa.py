"""MRQA tasks (Table 1): official-file reading, T5's SQuAD format, the official EM/F1, transfer names."""
import gzip
import json

import pytest
import seqio

import prompt_tuning.tasks as tasks
from prompt_tuning.scripts import show_tasks
from prompt_tuning.tasks import mrqa, official_files, sources

HEADER = {"header": {"dataset": "X", "split": "dev"}}


def _context(text, qas):
    return {"id": "c", "context": text, "context_tokens": [], "qas": [
        {"qid": qid, "question": q, "question_tokens": [], "answers": answers,
         "detected_answers": [{"text": answers[0], "char_spans": [[0, 1]], "token_spans": [[0, 0]]}]}
        for qid, q, answers in qas]}


def write_mrqa(path, rows, header=HEADER, compress=None):
    """One MRQA file: the header line, then one context per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in ([header] if header else []) + rows)
    if compress if compress is not None else path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


SQUAD_TRAIN = [_context("  The tower is in Paris.\n", [("s1", " Where is the tower? ", ["Paris", "in Paris"])])]
SQUAD_DEV = [_context("It opened in 1889.", [("s2", "When did it open?", ["1889"]),
                                              ("s3", "What opened?", ["It", "the tower"])])]
TEXTBOOK_DEV = [_context("Plants make sugar by photosynthesis.", [
    ("t1", "How do plants make sugar?", ["photosynthesis", "by photosynthesis"]),
    ("t2", "What do plants make?", ["sugar"])])]


@pytest.fixture(scope="module")
def mrqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("official") / "mrqa"
    write_mrqa(root / "train" / "SQuAD.jsonl.gz", SQUAD_TRAIN)
    write_mrqa(root / "dev" / "SQuAD.jsonl", SQUAD_DEV)  # uncompressed is read too
    for config, name in mrqa.OUT_OF_DOMAIN.items():
        write_mrqa(root / "dev" / f"{name}.jsonl.gz", TEXTBOOK_DEV if config == "textbook_qa" else SQUAD_DEV)
    return str(root.parent)


@pytest.fixture
def files_dir(mrqa_root, monkeypatch):
    for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
        monkeypatch.setenv(name, "")
    tasks.set_source("files", data_dir=mrqa_root)
    return mrqa_root


def text_examples(name, split):
    return list(show_tasks.text_dataset(seqio.get_mixture_or_task(name), split).as_numpy_iterator())


def scores(name, examples, predictions):
    """The task's metrics on `predictions` (strings), through its own postprocessor."""
    task = seqio.get_mixture_or_task(name)
    targets = [task.postprocess_fn(e["targets"].decode(), example=e, is_target=True) for e in examples]
    preds = [task.postprocess_fn(p, example=e) for p, e in zip(predictions, examples)]
    out = {}
    for fn in task.predict_metric_fns:
        out.update(fn(targets, preds))
    return out


def test_names_and_splits():
    for config in mrqa.OUT_OF_DOMAIN:
        assert seqio.get_mixture_or_task(f"mrqa_{config}").source.splits == ("validation",)
        transfer = seqio.get_mixture_or_task(f"mrqa_squad_to_{config}")
        assert list(transfer.source.splits) == ["train", "validation"]
    assert set(mrqa.OUT_OF_DOMAIN) == {"textbook_qa", "bio_asq", "race", "relation_extraction", "duo_rc", "drop"}
    mixture = seqio.get_mixture_or_task(mrqa.TRANSFER_MIXTURE)
    assert {t.name for t in mixture.tasks} == {"mrqa_squad"} | {f"mrqa_{c}" for c in mrqa.OUT_OF_DOMAIN}


def test_tfds_source_names_each_split_as_tfds_does(monkeypatch):
    for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
        monkeypatch.setenv(name, "")
    tasks.set_source("tfds")
    squad = seqio.get_mixture_or_task("mrqa_squad").source.active()
    assert squad.tfds_dataset.name == "mrqa/squad:1.0.0"
    assert squad.tfds_dataset._split_map == {"train": "train", "validation": "validation"}
    ood = seqio.get_mixture_or_task("mrqa_bio_asq").source.active()
    assert ood.tfds_dataset.name == "mrqa/bio_asq:1.0.0" and ood.tfds_dataset._split_map == {"validation": "test"}


def test_t5_squad_format_from_official_files(files_dir):
    (train,) = text_examples("mrqa_squad", "train")
    # Question and context stripped (as TFDS), no punctuation padding, target = first answer.
    assert train["inputs"].decode() == "question: Where is the tower? context: The tower is in Paris."
    assert train["targets"].decode() == "Paris" and list(train["answers"]) == [b"Paris", b"in Paris"]
    transfer = text_examples("mrqa_squad_to_textbook_qa", "validation")
    assert [e["inputs"].decode() for e in transfer] == [
        "question: How do plants make sugar? context: Plants make sugar by photosynthesis.",
        "question: What do plants make? context: Plants make sugar by photosynthesis."]
    assert [e["qid"] for e in transfer] == [b"t1", b"t2"]
    assert text_examples("mrqa_squad_to_textbook_qa", "train")[0]["inputs"] == train["inputs"]
    assert seqio.get_mixture_or_task("mrqa_squad_to_textbook_qa").num_input_examples("validation") == 2


def test_long_context_is_cut_by_tokens_from_the_end(files_dir):
    """The task's own tokenize + append_eos_after_trim, here with bytes as tokens: the question survives."""
    task = seqio.get_mixture_or_task("mrqa_squad")
    features = {k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True) for k in ("inputs", "targets")}
    assert task.preprocessors[1:] == [seqio.preprocessors.tokenize, task.preprocessors[2],
                                      seqio.preprocessors.append_eos_after_trim]
    ds = seqio.preprocessors.tokenize(show_tasks.text_dataset(task, "train"), output_features=features)
    ds = seqio.preprocessors.append_eos_after_trim(ds, output_features=features,
                                                   sequence_length={"inputs": 48, "targets": 8})
    (ex,) = list(ds.as_numpy_iterator())
    assert len(ex["inputs"]) == 48 and ex["inputs"][-1] == 1  # EOS after the trim
    text = seqio.ByteVocabulary().decode(ex["inputs"][:-1].tolist())
    assert text == "question: Where is the tower? context: The towe"  # 47 bytes: the context's tail is cut


def test_gold_answers_score_exactly_100(files_dir):
    for name in ["mrqa_squad", "mrqa_squad_to_textbook_qa"] + [f"mrqa_{c}" for c in mrqa.OUT_OF_DOMAIN]:
        examples = text_examples(name, "validation")
        assert scores(name, examples, [e["targets"].decode() for e in examples]) == {"em": 100.0, "f1": 100.0}
        # Any gold answer counts (max over answers), not only the first one trained on.
        assert scores(name, examples, [e["answers"][-1].decode() for e in examples]) == {"em": 100.0, "f1": 100.0}


def test_official_normalisation_and_f1_by_hand(tmp_path, monkeypatch):
    rows = [_context("c", [("q1", "?", ["the Eiffel Tower", "Eiffel Tower in Paris"]),
                           ("q2", "?", ["1984"]),
                           ("q3", "?", ["the theater"]),
                           ("q4", "?", ["U.S."])])]
    write_mrqa(tmp_path / "dev" / "TextbookQA.jsonl.gz", rows)
    for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
        monkeypatch.setenv(name, "")
    tasks.set_source("files", data_dir=str(tmp_path))
    examples = text_examples("mrqa_textbook_qa", "validation")
    got = scores("mrqa_textbook_qa", examples, ["Tower of Paris", "In 1984.", "Theater!", "US"])
    # q1: 'tower of paris' vs 'eiffel tower' (F1 2/5) and 'eiffel tower in paris' (2 shared of 3 and 4: 4/7);
    # q2: 'in 1984' vs '1984': P 1/2, R 1 -> 2/3; q3: 'theater' == 'theater' (article dropped as a word
    # only); q4: 'us' == 'us' (punctuation removed, not replaced by a space).
    assert got["f1"] == pytest.approx(100 * (4 / 7 + 2 / 3 + 1 + 1) / 4)
    assert got["em"] == pytest.approx(100 * 2 / 4)


def test_a_question_id_counts_once(tmp_path, monkeypatch):
    rows = [_context("c", [("q1", "?", ["yes"])]), _context("d", [("q1", "?", ["yes"]), ("q2", "?", ["no"])])]
    write_mrqa(tmp_path / "dev" / "DROP.jsonl", rows)
    for name in (sources.SOURCE_ENV, sources.DATA_DIR_ENV, sources.TFDS_DATA_DIR_ENV):
        monkeypatch.setenv(name, "")
    tasks.set_source("files", data_dir=str(tmp_path))
    examples = text_examples("mrqa_drop", "validation")
    assert len(examples) == 3
    assert scores("mrqa_drop", examples, ["yes", "wrong", "no"])["em"] == 100.0  # q1's repeat is not scored


@pytest.mark.parametrize("lines,lineno,why", [
    (['{"header": {}}', json.dumps(SQUAD_DEV[0]), '{"context": "c", "qas": ['], 3, "invalid JSON"),
    ([json.dumps(SQUAD_DEV[0])], 1, "expected the MRQA header line"),
    (['{"header": {}}', '{"qas": []}'], 2, "missing field 'context'"),
    (['{"header": {}}', '{"context": "c", "qas": [{"qid": "a", "question": "q", "answers": []}]}'], 2,
     "qas[0].'answers' must be a non-empty list"),
    (['{"header": {}}', '', '{"context": "c", "qas": [{"qid": 1, "question": "q", "answers": ["a"]}]}'], 3,
     "field qas[0].'qid' has type int"),
])
def test_malformed_line_names_file_and_line(tmp_path, lines, lineno, why):
    path = tmp_path / "mrqa" / "dev" / "RACE.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(official_files.MalformedRowError) as e:
        official_files.read_examples(str(tmp_path), "mrqa", "race", "validation")
    assert str(e.value).startswith(f"{path}:{lineno}: ") and why in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_gzip_and_missing_file_are_clear(tmp_path):
    path = write_mrqa(tmp_path / "dev" / "DROP.jsonl.gz", SQUAD_DEV * 50)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(official_files.MalformedRowError, match=rf"^{path}:\d+: unreadable"):
        official_files.read_examples(str(tmp_path), "mrqa", "drop", "validation")
    with pytest.raises(FileNotFoundError, match=r"mrqa/bio_asq split 'validation'.*dev/BioASQ.jsonl.gz"):
        official_files.read_examples(str(tmp_path), "mrqa", "bio_asq", "validation")
