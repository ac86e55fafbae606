"""Synthetic text-to-text tasks: the README's main job runs on these, offline, in minutes.

A tiny T5 is pretrained by `prompt_tuning.scripts.pretrain_tiny` on `synthetic_pretrain`, a mixture of
string skills over the letters a-h, each selected by a text prefix: "first: ...", "last: ..." and
"contains L: ..." for every letter L.  Prompt tuning then learns `synthetic_second_letter`, a skill the
model never saw, in a format it never saw: a bare string (no prefix), answered by its second letter.
Examples are generated from fixed seeds, so every split is deterministic.
"""
import collections
import random
from typing import Callable, List, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics

ALPHABET = "abcdefgh"
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


# Skills a 2-layer T5 learns in minutes (copying or reversing whole strings needs absolute positions,
# which T5's relative attention makes slow to learn at this size).
PRETRAINING_SKILLS = [
    _skill("first", lambda s: s[0]),
    _skill("last", lambda s: s[-1]),
] + [_contains(letter) for letter in ALPHABET]


def _pretrain_example(rng: random.Random) -> Tuple[str, str]:
    return rng.choice(PRETRAINING_SKILLS)(rng)


def _held_out(position: int) -> Callable[[random.Random], Tuple[str, str]]:
    """Bare strings (no prefix: the prompt has to stand in for one) answered by the letter at `position`."""

    def make(rng):
        text = _letters(rng)
        return text, text[position]

    return make


_held_out_example = _held_out(1)


def examples(make_example: Callable[[random.Random], Tuple[str, str]], split: str) -> List[Tuple[str, str]]:
    """The (inputs, targets) pairs of `split`, the same on every call."""
    rng = random.Random(_SPLIT_SEEDS[split])
    return [make_example(rng) for _ in range(_SPLIT_SIZES[split])]


def _dataset_fn(make_example: Callable[[random.Random], Tuple[str, str]]):
    def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
        del shuffle_files, seed  # Deterministic by construction.
        inputs, targets = zip(*examples(make_example, split))
        return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})

    return dataset_fn


def held_out_majority_baseline(split: str = "validation") -> float:
    """Accuracy (%) of always answering the held-out task's most frequent label on `split`."""
    labels = collections.Counter(target for _, target in examples(_held_out_example, split))
    return 100.0 * max(labels.values()) / sum(labels.values())


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


PRETRAIN_TASK = "synthetic_pretrain"
HELD_OUT_TASK = "synthetic_second_letter"
_register(PRETRAIN_TASK, _pretrain_example, [metrics.accuracy])
_register(HELD_OUT_TASK, _held_out_example, [metrics.accuracy])

# Multi-task prompt tuning: held-out skills over the SAME bare strings (each split draws the same texts), so
# nothing in an input tells the tasks apart; only each task's own prompt (its bank row) can.
THIRD_LETTER_TASK = "synthetic_third_letter"
HELD_OUT_MIXTURE = "synthetic_held_out_letters"
_register(THIRD_LETTER_TASK, _held_out(2), [metrics.accuracy])
if HELD_OUT_MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(HELD_OUT_MIXTURE, [HELD_OUT_TASK, THIRD_LETTER_TASK], default_rate=1.0)
