"""Synthetic text-to-text tasks: the README's main job runs on these, offline, in minutes.

A tiny T5 is pretrained by `prompt_tuning.scripts.pretrain_tiny` on `synthetic_pretrain`, a mixture of
string skills over the letters a-h, each selected by a text prefix ("reverse: ...", "contains c: ...").
Prompt tuning then learns `synthetic_contains_g`, a task the model never saw: inputs come with no prefix,
and the answer is whether the letter 'g' occurs ('contains g' is held out of pretraining, every other
letter is not).  Examples are generated from fixed seeds, so every split is deterministic.
"""
import random
from typing import Callable, Dict, List, Tuple

import seqio
import tensorflow as tf

ALPHABET = "abcdefgh"
HELD_OUT_LETTER = "g"
LABELS = ("no", "yes")
VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
_SPLIT_SIZES = {"train": 50_000, "validation": 512}
_SPLIT_SEEDS = {"train": 0, "validation": 1}


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(4, 12)))


def _contains(letter: str) -> Callable[[random.Random], Tuple[str, str]]:
    """'contains L: ...' -> yes/no, balanced: the letter is removed from or inserted into half each."""

    def make(rng):
        text = _letters(rng).replace(letter, "")
        present = rng.random() < 0.5
        if present:
            at = rng.randint(0, len(text))
            text = text[:at] + letter + text[at:]
        while len(text) < 4:
            text += rng.choice(ALPHABET.replace(letter, ""))
        return f"contains {letter}: {text}", LABELS[present]

    return make


def _skill(name: str, fn: Callable[[str], str]) -> Callable[[random.Random], Tuple[str, str]]:
    def make(rng):
        text = _letters(rng)
        return f"{name}: {text}", fn(text)

    return make


PRETRAINING_SKILLS = [
    _skill("copy", lambda s: s),
    _skill("reverse", lambda s: s[::-1]),
    _skill("sort", lambda s: "".join(sorted(s))),
    _skill("first", lambda s: s[0]),
    _skill("last", lambda s: s[-1]),
    _skill("count a", lambda s: str(s.count("a"))),
] + [_contains(letter) for letter in ALPHABET if letter != HELD_OUT_LETTER]


def _pretrain_example(rng: random.Random) -> Tuple[str, str]:
    return rng.choice(PRETRAINING_SKILLS)(rng)


def _held_out_example(rng: random.Random) -> Tuple[str, str]:
    inputs, target = _contains(HELD_OUT_LETTER)(rng)
    return inputs.split(": ", 1)[1], target  # No prefix: the prompt has to stand in for it.


def _dataset_fn(make_example: Callable[[random.Random], Tuple[str, str]]):
    def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
        del shuffle_files, seed  # Deterministic by construction.
        rng = random.Random(_SPLIT_SEEDS[split])
        pairs: List[Tuple[str, str]] = [make_example(rng) for _ in range(_SPLIT_SIZES[split])]
        inputs, targets = zip(*pairs)
        return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})

    return dataset_fn


def _register(name: str, make_example, metrics) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn(make_example), splits=list(_SPLIT_SIZES),
                                        num_input_examples=_SPLIT_SIZES),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES,
        metric_fns=metrics,
    )


def accuracy(targets, predictions) -> Dict[str, float]:
    """Percent of exact string matches (seqio metric_fn signature)."""
    correct = sum(t == p for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * correct / max(len(targets), 1)}


PRETRAIN_TASK = "synthetic_pretrain"
HELD_OUT_TASK = "synthetic_contains_g"
_register(PRETRAIN_TASK, _pretrain_example, [accuracy])
_register(HELD_OUT_TASK, _held_out_example, [accuracy])
