"""Tiny files in the official SuperGLUE/GLUE formats, written by the tests (helpers only, no tests here)."""
import json
import os

BOM = "\ufeff"


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _tsv(path, header, rows, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if bom:
            f.write(BOM)
        if header is not None:
            f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(str(v) for v in r) + "\n")


def _sg(root, task, split_rows):
    for split, rows in split_rows.items():
        _jsonl(os.path.join(root, "superglue", task, split + ".jsonl"), rows)


def _unlabelled(rows):
    return [{k: v for k, v in r.items() if k != "label"} for r in rows]


def write_superglue(root):
    boolq = [{"question": "is it true", "passage": "It is.", "idx": 0, "label": True},
             {"question": "is it false", "passage": "No.", "idx": 1, "label": False}]
    cb = [{"premise": "P0", "hypothesis": "H0", "label": "entailment", "idx": 0},
          {"premise": "P1", "hypothesis": "H1", "label": "contradiction", "idx": 1},
          {"premise": "P2", "hypothesis": "H2", "label": "neutral", "idx": 2}]
    copa = [{"premise": "The man turned on the faucet.", "choice1": "A.", "choice2": "B.", "question": "effect",
             "label": 1, "idx": 0},
            {"premise": "It rained.", "choice1": "C.", "choice2": "D.", "question": "cause", "label": 0, "idx": 1}]
    multirc = [{"idx": 0, "version": 1.1, "passage": {"text": "Para <b>one</b>.<br>Two.", "questions": [
        {"question": "Q0?", "idx": 0, "answers": [{"text": "a0", "idx": 0, "label": 0},
                                                  {"text": "a1", "idx": 1, "label": 1}]},
        {"question": "Q1?", "idx": 1, "answers": [{"text": "a2", "idx": 2, "label": 1}]}]}}]
    record = [{"idx": 0, "passage": {"text": "Alice met Bob.\n@highlight\nBob left", "entities": [
        {"start": 0, "end": 4}, {"start": 10, "end": 12}, {"start": 26, "end": 28}]},
        "qas": [{"query": "@placeholder met Bob", "idx": 5, "answers": [{"start": 0, "end": 4, "text": "Alice"}]},
                {"query": "@placeholder left", "idx": 6, "answers": [{"start": 10, "end": 12, "text": "Bob"},
                                                                     {"start": 26, "end": 28, "text": "Bob"}]}]}]
    rte = [{"premise": "A dog runs.", "hypothesis": "An animal runs.", "label": "entailment", "idx": 0},
           {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": "not_entailment", "idx": 1}]
    wic = [{"word": "class", "sentence1": "S1.", "sentence2": "S2.", "idx": 0, "label": False, "start1": 0,
            "start2": 1, "end1": 2, "end2": 3, "version": 1.1},
           {"word": "bank", "sentence1": "S3.", "sentence2": "S4.", "idx": 1, "label": True, "start1": 0,
            "start2": 1, "end1": 2, "end2": 3, "version": 1.1}]
    wsc = [{"text": "Mark told Pete many lies about himself , which Pete included in his book .",
            "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 12, "span2_text": "his"},
            "idx": 0, "label": False},
           {"text": "Mark told Pete many lies about himself , which Pete included in his book .",
            "target": {"span1_index": 2, "span1_text": "Pete", "span2_index": 12, "span2_text": "his"},
            "idx": 1, "label": True}]
    for name, rows in (("BoolQ", boolq), ("CB", cb), ("COPA", copa), ("MultiRC", multirc), ("RTE", rte),
                       ("WiC", wic), ("WSC", wsc)):
        _sg(root, name, {"train": rows, "val": rows, "test": _unlabelled(rows) if name != "MultiRC" else [
            {**multirc[0], "passage": {**multirc[0]["passage"], "questions": [
                {"question": "Q0?", "idx": 0, "answers": [{"text": "a0", "idx": 0}]}]}}]})
    test_record = [{**record[0], "qas": [{"query": "@placeholder met Bob", "idx": 5}]}]
    _sg(root, "ReCoRD", {"train": record, "val": record, "test": test_record})
    _jsonl(os.path.join(root, "superglue", "AX-b", "AX-b.jsonl"),
           [{"sentence1": "S1.", "sentence2": "S2.", "label": "entailment", "idx": 0},
            {"sentence1": "S3.", "sentence2": "S4.", "label": "not_entailment", "idx": 1}])
    _jsonl(os.path.join(root, "superglue", "AX-g", "AX-g.jsonl"),
           [{"premise": "P.", "hypothesis": "H.", "label": "entailment", "idx": 0, "pair_id": 1},
            {"premise": "P2.", "hypothesis": "H2.", "label": "not_entailment", "idx": 1, "pair_id": 1}])


def write_glue(root):
    g = os.path.join(root, "glue")
    cola = [("gj04", 1, "", "The sailors rode the breeze clear of the rocks."), ("gj04", 0, "*", "The more.")]
    for split in ("train", "dev"):
        _tsv(os.path.join(g, "CoLA", f"{split}.tsv"), None, cola)
    _tsv(os.path.join(g, "CoLA", "test.tsv"), ["index", "sentence"], [(0, "Bill whistled.")])
    sst = [("it 's a charming journey . ", 1), ("bad", 0)]
    for split in ("train", "dev"):
        _tsv(os.path.join(g, "SST-2", f"{split}.tsv"), ["sentence", "label"], sst)
    _tsv(os.path.join(g, "SST-2", "test.tsv"), ["index", "sentence"], [(0, "fine")])
    # MRPC as MSR's files (BOM, quotes kept literally) plus GLUE's dev_ids.tsv.
    mrpc_header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    mrpc = [(1, 11, 12, 'He said "yes".', '"Yes," he said.'), (0, 21, 22, "A b.", "C d."),
            (1, 31, 32, "E f.", "E f!")]
    _tsv(os.path.join(g, "MRPC", "msr_paraphrase_train.txt"), mrpc_header, mrpc, bom=True)
    _tsv(os.path.join(g, "MRPC", "msr_paraphrase_test.txt"), mrpc_header, mrpc[:2], bom=True)
    _tsv(os.path.join(g, "MRPC", "dev_ids.tsv"), None, [(21, 22), (31, 32)])
    qqp_header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    qqp = [(0, 1, 2, "How?", "How so?", 1), (1, 3, 4, "Why?", "When?", 0)]
    for split in ("train", "dev"):
        _tsv(os.path.join(g, "QQP", f"{split}.tsv"), qqp_header, qqp)
    _tsv(os.path.join(g, "QQP", "test.tsv"), ["id", "question1", "question2"], [(0, "A?", "B?")])
    sts_header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                  "sentence2", "score"]
    sts = [(0, "main", "f", "2012", 1, "none", "none", "A plane.", "An air plane.", "5.000"),
           (1, "main", "f", "2012", 4, "none", "none", "A man.", "A cat.", "0.500"),
           (2, "main", "f", "2012", 5, "none", "none", "X.", "Y.", "3.300")]
    for split in ("train", "dev"):
        _tsv(os.path.join(g, "STS-B", f"{split}.tsv"), sts_header, sts)
    _tsv(os.path.join(g, "STS-B", "test.tsv"), sts_header[:-1], [r[:-1] for r in sts[:1]])
    mnli_header = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    mnli = [(0, 1, "1e", "gov", "P0.", "H0.", "neutral", "neutral"),
            (1, 2, "2e", "gov", "P1.", "H1.", "entailment", "entailment"),
            (2, 3, "3e", "gov", "P2.", "H2.", "contradiction", "contradiction")]
    for f in ("train", "dev_matched", "dev_mismatched"):
        _tsv(os.path.join(g, "MNLI", f"{f}.tsv"), mnli_header, mnli)
    for f in ("test_matched", "test_mismatched"):
        _tsv(os.path.join(g, "MNLI", f"{f}.tsv"), mnli_header[:-2], [r[:-2] for r in mnli])
    qnli = [(0, "What?", "This.", "entailment"), (1, "Who?", "No one.", "not_entailment")]
    for split in ("train", "dev"):
        _tsv(os.path.join(g, "QNLI", f"{split}.tsv"), ["index", "question", "sentence", "label"], qnli)
    _tsv(os.path.join(g, "QNLI", "test.tsv"), ["index", "question", "sentence"], [r[:-1] for r in qnli])
    for task, labels in (("RTE", ("entailment", "not_entailment")), ("WNLI", (1, 0))):
        rows = [(0, "S1.", "S2.", labels[0]), (1, "S3.", "S4.", labels[1])]
        for split in ("train", "dev"):
            _tsv(os.path.join(g, task, f"{split}.tsv"), ["index", "sentence1", "sentence2", "label"], rows)
        _tsv(os.path.join(g, task, "test.tsv"), ["index", "sentence1", "sentence2"], [r[:-1] for r in rows])
    _tsv(os.path.join(g, "diagnostic", "diagnostic.tsv"), ["index", "sentence1", "sentence2"],
         [(0, "The cat sat.", "A cat sat.")])


def write_all(root):
    write_superglue(root)
    write_glue(root)
    return root
