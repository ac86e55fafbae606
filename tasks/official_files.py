"""Readers for the official SuperGLUE (*.jsonl) and GLUE (*.tsv, msr_paraphrase_*.txt) files.

Each reader yields examples with exactly the features, dtypes and values TFDS's `super_glue/*` and
`glue/*` builders produce (tensorflow_datasets/text/{super_glue,glue}.py), so the same preprocessors
serve both sources.  A malformed row raises `MalformedRowError` naming the file and line.
"""
import dataclasses
import gzip
import json
import os
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf


class MalformedRowError(ValueError):
    """A row of an official data file that cannot be read; the message names file and line."""

    def __init__(self, path: str, line: int, why: str):
        super().__init__(f"{path}:{line}: {why}")
        self.path, self.line = path, line


_STR = tf.TensorSpec([], tf.string)
_I32 = tf.TensorSpec([], tf.int32)
_I64 = tf.TensorSpec([], tf.int64)
_F32 = tf.TensorSpec([], tf.float32)
_STRS = tf.TensorSpec([None], tf.string)


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """How to read one benchmark config from official files."""

    dirnames: Tuple[str, ...]  # candidate task directory names (matched case-insensitively)
    split_files: Dict[str, str]  # seqio split -> file name inside the task directory
    reader: Callable[[str, str], Iterator[dict]]  # (path, split) -> examples
    signature: Dict[str, object]  # tf.data output signature (as TFDS features)


# ------------------------------------------------------------------ SuperGLUE


def _lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, text) of a .jsonl or .jsonl.gz file; a truncated or corrupt gzip names the line."""
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise MalformedRowError(path, lineno + 1, f"unreadable ({type(e).__name__}: {e})") from None


def jsonl_rows(path: str) -> Iterator[Tuple[int, dict]]:
    """(line number, object) of each non-blank line of a .jsonl(.gz) file; bad lines name file and line."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MalformedRowError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise MalformedRowError(path, lineno, f"expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def _get(row: dict, key: str, path: str, lineno: int, types=None):
    if key not in row:
        raise MalformedRowError(path, lineno, f"missing field {key!r}")
    value = row[key]
    if types is not None and not isinstance(value, types):
        raise MalformedRowError(path, lineno, f"field {key!r} has type {type(value).__name__}")
    return value


def _class_index(label, classes: Sequence[str], path: str, lineno: int) -> int:
    """As TFDS: bools become 'True'/'False', then the index into the ClassLabel names."""
    if isinstance(label, bool):
        label = "True" if label else "False"
    elif isinstance(label, int):
        if label not in (0, 1):
            raise MalformedRowError(path, lineno, f"label {label!r} is not 0 or 1")
        label = str(label)
    if not isinstance(label, str) or label not in classes:
        # TFDS ClassLabel also accepts the integer given as a string.
        if isinstance(label, str) and label.isdigit() and int(label) < len(classes):
            return int(label)
        raise MalformedRowError(path, lineno, f"label {label!r} not in {list(classes)}")
    return classes.index(label)


def _superglue_simple(features: Sequence[str], classes: Sequence[str], int_features: Sequence[str] = (),
                      rekey_label: Optional[Callable] = None, fix: Optional[Callable] = None):
    def read(path: str, split: str) -> Iterator[dict]:
        for lineno, row in jsonl_rows(path):
            if "target" in row and isinstance(row["target"], dict):  # WSC keeps spans under 'target'
                row = {**row, **row["target"]}
            ex = {}
            for k in features:
                ex[k] = _get(row, k, path, lineno, str)
            for k in int_features:
                ex[k] = np.int32(_get(row, k, path, lineno, int))
            if fix is not None:
                try:
                    ex = fix(ex)
                except (AssertionError, IndexError) as e:
                    raise MalformedRowError(path, lineno, f"cannot fix WSC spans ({e!r})") from None
            ex["idx"] = np.int32(_get(row, "idx", path, lineno, int))
            if "label" in row:
                label = row["label"]
                if rekey_label is not None:
                    label = rekey_label(label)
                ex["label"] = np.int64(_class_index(label, classes, path, lineno))
            elif split == "test":
                ex["label"] = np.int64(-1)
            else:
                raise MalformedRowError(path, lineno, "missing field 'label' (only test files may omit it)")
            yield ex

    return read


def _fix_wsc(ex: dict) -> dict:
    """TFDS's `_fix_wst` for wsc.fixed, reproduced exactly (including its no-op 'theyscold' replace)."""
    ex = dict(ex)

    def fix_span(k):
        text, index = ex[k + "_text"], int(ex[k + "_index"])
        if text in ex["text"]:
            return
        if text in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
            return
        if "theyscold" in text:
            ex["span2_index"] = np.int32(10)  # TFDS discards its text.replace(...) result
        first_word = ex["text"].split()[index]
        text = (text[0].lower() if first_word[0].islower() else text[0].upper()) + text[1:]
        text = text.rstrip(".").replace("\n", " ")
        ex[k + "_text"] = text
        assert ex[k + "_text"] in ex["text"], ex

    fix_span("span1")
    fix_span("span2")
    return ex


def _read_multirc(path: str, split: str) -> Iterator[dict]:
    for lineno, row in jsonl_rows(path):
        passage = _get(row, "passage", path, lineno, dict)
        text = _get(passage, "text", path, lineno, str)
        p_idx = _get(row, "idx", path, lineno, int)
        for q in _get(passage, "questions", path, lineno, list):
            for a in _get(q, "answers", path, lineno, list):
                label = a.get("label")
                if label is None and split != "test":
                    raise MalformedRowError(path, lineno, "answer without 'label' outside the test split")
                yield {
                    "paragraph": text,
                    "question": _get(q, "question", path, lineno, str),
                    "answer": _get(a, "text", path, lineno, str),
                    "label": np.int64(-1 if label is None else _class_index(bool(label), ("False", "True"),
                                                                            path, lineno)),
                    "idx": {"paragraph": np.int32(p_idx), "question": np.int32(_get(q, "idx", path, lineno, int)),
                            "answer": np.int32(_get(a, "idx", path, lineno, int))},
                }


def _strings(values: Sequence[str]) -> np.ndarray:
    """A 1-D string array tf.data accepts even when empty."""
    if not values:
        return np.zeros([0], dtype=bytes)
    return np.array([v.encode("utf-8") for v in values], dtype=object)


def _read_record(path: str, split: str) -> Iterator[dict]:
    for lineno, row in jsonl_rows(path):
        passage = _get(row, "passage", path, lineno, dict)
        text = _get(passage, "text", path, lineno, str)
        try:
            entities = sorted({text[e["start"]:e["end"] + 1] for e in passage["entities"]})
        except (KeyError, TypeError) as e:
            raise MalformedRowError(path, lineno, f"bad 'entities' ({e!r})") from None
        for qa in _get(row, "qas", path, lineno, list):
            answers = sorted({a["text"] for a in qa.get("answers", [])})
            yield {
                "passage": text,
                "query": _get(qa, "query", path, lineno, str),
                "entities": _strings(entities),
                "answers": _strings(answers),
                "idx": {"passage": np.int32(_get(row, "idx", path, lineno, int)),
                        "query": np.int32(_get(qa, "idx", path, lineno, int))},
            }


def _sig(text: Sequence[str], ints: Sequence[str] = (), label=_I64, idx=_I32) -> Dict[str, object]:
    sig = {k: _STR for k in text}
    sig.update({k: _I32 for k in ints})
    sig["idx"] = idx
    if label is not None:
        sig["label"] = label
    return sig


_SG_SPLITS = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
_NLI2 = ("entailment", "not_entailment")

SUPERGLUE_FILES: Dict[str, FileSpec] = {
    "boolq": FileSpec(("BoolQ",), _SG_SPLITS, _superglue_simple(("question", "passage"), ("False", "True")),
                      _sig(("question", "passage"))),
    "cb": FileSpec(("CB",), _SG_SPLITS,
                   _superglue_simple(("premise", "hypothesis"), ("entailment", "contradiction", "neutral")),
                   _sig(("premise", "hypothesis"))),
    "copa": FileSpec(("COPA",), _SG_SPLITS,
                     _superglue_simple(("premise", "choice1", "choice2", "question"), ("choice1", "choice2"),
                                       rekey_label=lambda v: "choice2" if v else "choice1"),
                     _sig(("premise", "choice1", "choice2", "question"))),
    "multirc": FileSpec(("MultiRC",), _SG_SPLITS, _read_multirc,
                        {"paragraph": _STR, "question": _STR, "answer": _STR, "label": _I64,
                         "idx": {"paragraph": _I32, "question": _I32, "answer": _I32}}),
    "record": FileSpec(("ReCoRD",), _SG_SPLITS, _read_record,
                       {"passage": _STR, "query": _STR, "entities": _STRS, "answers": _STRS,
                        "idx": {"passage": _I32, "query": _I32}}),
    "rte": FileSpec(("RTE",), _SG_SPLITS, _superglue_simple(("premise", "hypothesis"), _NLI2),
                    _sig(("premise", "hypothesis"))),
    "wic": FileSpec(("WiC",), _SG_SPLITS,
                    _superglue_simple(("word", "sentence1", "sentence2"), ("False", "True"),
                                      int_features=("start1", "start2", "end1", "end2")),
                    _sig(("word", "sentence1", "sentence2"), ("start1", "start2", "end1", "end2"))),
    "wsc.fixed": FileSpec(("WSC",), _SG_SPLITS,
                          _superglue_simple(("text", "span1_text", "span2_text"), ("False", "True"),
                                            int_features=("span1_index", "span2_index"), fix=_fix_wsc),
                          _sig(("text", "span1_text", "span2_text"), ("span1_index", "span2_index"))),
    "axb": FileSpec(("AX-b", "AX_b", "axb"), {"test": "AX-b.jsonl"},
                    _superglue_simple(("sentence1", "sentence2"), _NLI2), _sig(("sentence1", "sentence2"))),
    "axg": FileSpec(("AX-g", "AX_g", "axg"), {"test": "AX-g.jsonl"},
                    _superglue_simple(("premise", "hypothesis"), _NLI2), _sig(("premise", "hypothesis"))),
}

# -------------------------------------------------------------------- GLUE


def _tsv_rows(path: str, header: bool = True) -> Iterator[Tuple[int, Dict[str, str]]]:
    """Tab-separated rows with no quoting (csv.QUOTE_NONE), BOM stripped; blank lines skipped."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().split("\n")
    columns: Optional[List[str]] = None
    for lineno, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith("\r") else line
        if not line:
            continue
        fields = line.split("\t")
        if header and columns is None:
            columns = fields
            continue
        if columns is not None and len(fields) != len(columns):
            raise MalformedRowError(path, lineno, f"expected {len(columns)} tab-separated fields "
                                                  f"(header {columns}), got {len(fields)}")
        yield lineno, dict(zip(columns, fields)) if columns is not None else {str(i): v for i, v in
                                                                              enumerate(fields)}


def _column(row: Dict[str, str], col: str, path: str, lineno: int) -> str:
    if col not in row:
        raise MalformedRowError(path, lineno, f"missing column {col!r} (have {sorted(row)})")
    return row[col]


def _glue_label(raw: str, classes: Optional[Sequence[str]], path: str, lineno: int):
    if classes is None:  # STS-B similarity score
        try:
            return np.float32(raw)
        except ValueError:
            raise MalformedRowError(path, lineno, f"score {raw!r} is not a number") from None
    if raw in classes:
        return np.int64(classes.index(raw))
    if raw.isdigit() and int(raw) < len(classes):
        return np.int64(int(raw))
    raise MalformedRowError(path, lineno, f"label {raw!r} not in {list(classes)} or 0..{len(classes) - 1}")


def _glue_tsv(text_columns: Dict[str, str], label_column: str, classes: Optional[Sequence[str]]):
    def read(path: str, split: str) -> Iterator[dict]:
        for n, (lineno, row) in enumerate(_tsv_rows(path)):
            ex = {feat: _column(row, col, path, lineno) for feat, col in text_columns.items()}
            ex["idx"] = np.int32(n)
            if label_column in row:
                ex["label"] = _glue_label(row[label_column], classes, path, lineno)
            elif split.startswith("test"):
                ex["label"] = np.float32(-1) if classes is None else np.int64(-1)
            else:
                raise MalformedRowError(path, lineno, f"missing label column {label_column!r}")
            yield ex

    return read


def _read_cola(path: str, split: str) -> Iterator[dict]:
    classes = ("unacceptable", "acceptable")
    if split == "test":  # the only CoLA file with a header
        yield from _glue_tsv({"sentence": "sentence"}, "is_acceptable", classes)(path, split)
        return
    for n, (lineno, row) in enumerate(_tsv_rows(path, header=False)):
        if len(row) != 4:
            raise MalformedRowError(path, lineno, f"expected 4 tab-separated fields, got {len(row)}")
        yield {"sentence": row["3"], "idx": np.int32(n), "label": _glue_label(row["1"], classes, path, lineno)}


def _read_mrpc(path: str, split: str) -> Iterator[dict]:
    """GLUE's train/dev/test.tsv, or (as TFDS) msr_paraphrase_{train,test}.txt with dev_ids.tsv."""
    classes = ("not_equivalent", "equivalent")
    base = os.path.basename(path)
    if base.startswith("msr_paraphrase_"):
        if split == "test":  # GLUE's test labels are hidden; TFDS sets -1
            for n, (lineno, row) in enumerate(_tsv_rows(path)):
                yield {"sentence1": _column(row, "#1 String", path, lineno),
                       "sentence2": _column(row, "#2 String", path, lineno), "label": np.int64(-1),
                       "idx": np.int32(n)}
            return
        ids_path = os.path.join(os.path.dirname(path), "dev_ids.tsv")
        dev_ids = {tuple(r[:2]) for r in (line.rstrip("\r\n").split("\t") for line in
                                          open(ids_path, encoding="utf-8-sig")) if len(r) >= 2}
        for n, (lineno, row) in enumerate(_tsv_rows(path)):
            in_dev = (_column(row, "#1 ID", path, lineno), _column(row, "#2 ID", path, lineno)) in dev_ids
            if in_dev == (split == "validation"):
                yield {"sentence1": row["#1 String"], "sentence2": row["#2 String"],
                       "label": _glue_label(_column(row, "Quality", path, lineno), classes, path, lineno),
                       "idx": np.int32(n)}
        return
    yield from _glue_tsv({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", classes)(path, split)


_GLUE_SPLITS = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_CLASSES = ("entailment", "neutral", "contradiction")
_MNLI_TEXT = {"premise": "sentence1", "hypothesis": "sentence2"}

GLUE_FILES: Dict[str, FileSpec] = {
    "cola": FileSpec(("CoLA",), _GLUE_SPLITS, _read_cola, _sig(("sentence",))),
    "sst2": FileSpec(("SST-2", "SST2"), _GLUE_SPLITS,
                     _glue_tsv({"sentence": "sentence"}, "label", ("negative", "positive")), _sig(("sentence",))),
    # Split files are alternatives, tried in order (see `split_file_candidates`).
    "mrpc": FileSpec(("MRPC",), {"train": "msr_paraphrase_train.txt|train.tsv",
                                 "validation": "msr_paraphrase_train.txt|dev.tsv",
                                 "test": "msr_paraphrase_test.txt|test.tsv"},
                     _read_mrpc, _sig(("sentence1", "sentence2"))),
    "qqp": FileSpec(("QQP",), _GLUE_SPLITS,
                    _glue_tsv({"question1": "question1", "question2": "question2"}, "is_duplicate",
                              ("not_duplicate", "duplicate")), _sig(("question1", "question2"))),
    "stsb": FileSpec(("STS-B", "STSB"), _GLUE_SPLITS,
                     _glue_tsv({"sentence1": "sentence1", "sentence2": "sentence2"}, "score", None),
                     _sig(("sentence1", "sentence2"), label=_F32)),
    "mnli": FileSpec(("MNLI",), {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                                 "validation_mismatched": "dev_mismatched.tsv",
                                 "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"},
                     _glue_tsv(_MNLI_TEXT, "gold_label", _MNLI_CLASSES), _sig(("premise", "hypothesis"))),
    "mnli_matched": FileSpec(("MNLI",), {"validation": "dev_matched.tsv", "test": "test_matched.tsv"},
                             _glue_tsv(_MNLI_TEXT, "gold_label", _MNLI_CLASSES), _sig(("premise", "hypothesis"))),
    "mnli_mismatched": FileSpec(("MNLI",), {"validation": "dev_mismatched.tsv", "test": "test_mismatched.tsv"},
                                _glue_tsv(_MNLI_TEXT, "gold_label", _MNLI_CLASSES),
                                _sig(("premise", "hypothesis"))),
    "qnli": FileSpec(("QNLI",), _GLUE_SPLITS,
                     _glue_tsv({"question": "question", "sentence": "sentence"}, "label", _NLI2),
                     _sig(("question", "sentence"))),
    "rte": FileSpec(("RTE",), _GLUE_SPLITS,
                    _glue_tsv({"sentence1": "sentence1", "sentence2": "sentence2"}, "label", _NLI2),
                    _sig(("sentence1", "sentence2"))),
    "wnli": FileSpec(("WNLI",), _GLUE_SPLITS,
                     _glue_tsv({"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
                               ("not_entailment", "entailment")), _sig(("sentence1", "sentence2"))),
    "ax": FileSpec(("diagnostic", "AX"), {"test": "diagnostic.tsv|AX.tsv"},
                   _glue_tsv(_MNLI_TEXT, "gold_label", _MNLI_CLASSES), _sig(("premise", "hypothesis"))),
}

BENCHMARK_FILES = {"super_glue": SUPERGLUE_FILES, "glue": GLUE_FILES}
# Sub-directories of the user's data dir that may hold each benchmark's task directories.
BENCHMARK_SUBDIRS = {"super_glue": ("", "superglue", "super_glue", "SuperGLUE"),
                     "glue": ("", "glue", "glue_data", "GLUE")}


def _child_ci(parent: str, name: str) -> Optional[str]:
    """parent/name, matching name case-insensitively; None if absent."""
    if not name:
        return parent
    exact = os.path.join(parent, name)
    if os.path.exists(exact):
        return exact
    try:
        for entry in os.listdir(parent):
            if entry.lower() == name.lower():
                return os.path.join(parent, entry)
    except OSError:
        return None
    return None


def split_file_candidates(data_dir: str, benchmark: str, config: str, split: str) -> List[str]:
    """Every path tried, in order, for one split of one config under data_dir."""
    spec = BENCHMARK_FILES[benchmark][config]
    if split not in spec.split_files:
        raise ValueError(f"{benchmark}/{config} has no split {split!r} (splits: {sorted(spec.split_files)})")
    out = []
    for sub in BENCHMARK_SUBDIRS[benchmark]:
        for dirname in spec.dirnames:
            for fname in spec.split_files[split].split("|"):
                out.append(os.path.join(data_dir, sub, dirname, fname))
    return out


def find_split_file(data_dir: str, benchmark: str, config: str, split: str) -> str:
    """The first existing candidate file (directory names matched case-insensitively)."""
    spec = BENCHMARK_FILES[benchmark][config]
    for sub in BENCHMARK_SUBDIRS[benchmark]:
        base = _child_ci(data_dir, sub)
        if base is None:
            continue
        for dirname in spec.dirnames:
            task_dir = _child_ci(base, dirname)
            if task_dir is None or not os.path.isdir(task_dir):
                continue
            for fname in spec.split_files[split].split("|"):
                path = _child_ci(task_dir, fname)
                if path is not None and os.path.isfile(path):
                    return path
    tried = split_file_candidates(data_dir, benchmark, config, split)
    raise FileNotFoundError(f"no official file for {benchmark}/{config} split {split!r} under {data_dir!r}; "
                            f"tried {tried}")


def read_examples(data_dir: str, benchmark: str, config: str, split: str) -> Tuple[str, List[dict]]:
    """(path, all examples) of one split, read eagerly so a malformed row fails here, by file and line."""
    path = find_split_file(data_dir, benchmark, config, split)
    return path, list(BENCHMARK_FILES[benchmark][config].reader(path, split))
