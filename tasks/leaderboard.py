"""SuperGLUE leaderboard files from test-split predictions: one `<Task>.jsonl` per task, as the server wants.

Label strings as the leaderboard (and jiant's writer) use them: BoolQ/WiC "true"/"false", WSC
"True"/"False", CB/RTE/AX-b/AX-g the label word, COPA 0/1, MultiRC nested passage/question/answer
labels 0/1, ReCoRD the answer text per query id.  A prediction that is not a valid label gets the
task's first label (the file must have a line per example) and is counted in the returned report.
"""
import collections
import json
import os
import re
from typing import Dict, Mapping, Sequence, Tuple

from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import superglue

FILE_NAMES = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "record": "ReCoRD",
              "rte": "RTE", "wic": "WiC", "wsc": "WSC", "axb": "AX-b", "axg": "AX-g"}
_LOWER_BOOL = ("boolq", "wic")
_TASK_RE = re.compile(r"^(?:taskless_)?super_glue_([a-z]+)_v102(?:_simple_eval)?$")


def short_name(task_name: str) -> str:
    """'taskless_super_glue_boolq_v102' -> 'boolq'; 'super_glue_wsc_v102_simple_eval' -> 'wsc'."""
    m = _TASK_RE.match(task_name)
    key = m.group(1) if m else task_name
    if key not in FILE_NAMES:
        raise ValueError(f"no SuperGLUE leaderboard file for task {task_name!r} (known: {sorted(FILE_NAMES)})")
    return key


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def records(task: str, examples: Sequence[Mapping], predictions: Sequence[str]) -> Tuple[list, int]:
    """(leaderboard rows, number of invalid predictions) for one task; examples are the task's
    preprocessed test examples (seqio order) and predictions the decoded model outputs."""
    key = short_name(task)
    if len(examples) != len(predictions):
        raise ValueError(f"{task}: {len(examples)} examples but {len(predictions)} predictions")
    invalid = 0
    if key == "record":
        rows, seen = [], set()
        for ex, pred in zip(examples, predictions):
            q = int(ex["idx/query"])
            if (int(ex["idx/passage"]), q) not in seen:
                seen.add((int(ex["idx/passage"]), q))
                rows.append({"idx": q, "label": _text(pred)})
        return rows, 0
    if key == "multirc":
        passages: Dict[int, Dict[int, list]] = collections.OrderedDict()
        for ex, pred in zip(examples, predictions):
            value = postprocessors.string_label_to_class_id(pred, label_classes=("False", "True"))
            if value == postprocessors.INVALID:
                invalid, value = invalid + 1, 0
            questions = passages.setdefault(int(ex["idx/paragraph"]), collections.OrderedDict())
            questions.setdefault(int(ex["idx/question"]), []).append({"idx": int(ex["idx/answer"]), "label": value})
        rows = [{"idx": p, "passage": {"questions": [{"idx": q, "answers": a} for q, a in qs.items()]}}
                for p, qs in passages.items()]
        return rows, invalid
    rows = []
    for ex, pred in zip(examples, predictions):
        if key == "wsc":
            value = postprocessors.wsc_simple(pred, example=ex)
            if value == postprocessors.INVALID:
                invalid, value = invalid + 1, 0
            label = "True" if value == 1 else "False"
        else:
            classes = superglue.LABELS[key]
            value = postprocessors.string_label_to_class_id(pred, label_classes=classes)
            if value == postprocessors.INVALID:
                invalid, value = invalid + 1, 0
            if key == "copa":
                label = value
            elif key in _LOWER_BOOL:
                label = classes[value].lower()
            else:
                label = classes[value]
        rows.append({"idx": int(ex["idx"]), "label": label})
    return rows, invalid


def write(out_dir: str, results: Mapping[str, Tuple[Sequence[Mapping], Sequence[str]]]) -> Dict[str, dict]:
    """Writes out_dir/<Task>.jsonl for each {task_name: (examples, predictions)}; returns a report
    {file: {'rows': n, 'invalid_predictions': k}}."""
    os.makedirs(out_dir, exist_ok=True)
    report = {}
    for task, (examples, predictions) in results.items():
        rows, invalid = records(task, examples, predictions)
        path = os.path.join(out_dir, FILE_NAMES[short_name(task)] + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        report[path] = {"rows": len(rows), "invalid_predictions": invalid}
    return report
