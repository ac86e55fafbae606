"""Model output string -> value the metrics take (t5/data/postprocessors.py semantics).

seqio calls `postprocess_fn(text, example=..., is_target=...)`; strings inside `example` are bytes.
An output that is not a valid label becomes -1 (INVALID), which every metric scores as wrong.
"""
from typing import Mapping, Sequence

INVALID = -1


def _text(s) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def string_to_float(string, default: float = -1.0, **unused_kwargs) -> float:
    """STS-B: the generated number, or `default` when it does not parse."""
    try:
        return float(_text(string))
    except ValueError:
        return default


def string_label_to_class_id(string_label, label_classes: Sequence[str], default: int = INVALID,
                             **unused_kwargs) -> int:
    """Index of the label word in label_classes (exact match), else `default`."""
    s = _text(string_label)
    return list(label_classes).index(s) if s in label_classes else default


def multirc(string_label, example=None, is_target=False):
    """{'value': 0/1/-1} plus, for targets, the question id that groups answers for exact match."""
    res = {"value": string_label_to_class_id(string_label, label_classes=("False", "True"))}
    if is_target:
        res["group"] = example["idx/question"]
    return res


def record(answer, example=None, is_target=False):
    """Prediction {'value': text}; target {'value': all gold answers, 'group': (passage, query)}."""
    if is_target:
        return {"value": [_text(a) for a in example["answers"]],
                "group": (int(example["idx/passage"]), int(example["idx/query"]))}
    return {"value": _text(answer)}


_WSC_DETERMINERS = frozenset({"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some",
                              "that", "the", "their", "these", "this", "those", "which", "whose", "your"})


def _wsc_clean(s) -> str:
    s = _text(s).strip().lower()
    return " ".join(w for w in s.split(" ") if w not in _WSC_DETERMINERS)


def wsc_simple(prediction, example=None, is_target=False):
    """1 if the generated referent matches the candidate (word-set inclusion, determiners ignored), else 0.

    Targets are the example's label; an empty prediction is INVALID (never matches a 0 label).
    """
    if is_target:
        return int(example["label"])
    prediction = _wsc_clean(prediction)
    if not prediction:
        return INVALID
    referent = _wsc_clean(example["targets_pretokenized"])
    if ("'" in prediction) != ("'" in referent):
        return 0  # "Bob" must not match "Bob's hat"
    p, r = set(prediction.split(" ")), set(referent.split(" "))
    return int(p.issubset(r) or r.issubset(p))


def translate_labels(mapping: Mapping[str, str]):
    """A postprocessor rewriting one label vocabulary into another (exact word match), e.g. QQP -> MRPC."""
    def translate(output, **unused_kwargs):
        s = _text(output)
        return mapping.get(s, s)

    return translate


def sequential(*fns):
    """Applies postprocessors in order, each getting the same keyword arguments (example, is_target)."""
    def run(output, **kwargs):
        for fn in fns:
            output = fn(output, **kwargs)
        return output

    return run


def rank_classification(score, example=None, is_target=False):
    """Rank-classification eval: targets -> per-choice record; predictions (scores) pass through."""
    if not is_target:
        return score
    target = {"idx": (int(example["idx"][0]), int(example["idx"][1])),
              "is_correct": bool(example["is_correct"]), "label": int(example["label"])}
    if "group" in example:
        target["group"] = int(example["group"])
    return target
