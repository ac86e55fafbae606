"""MRQA 2019 extractive QA for the paper's Table 1: prompt-tune on SQuAD, evaluate on six other domains.

Tasks (each read from TFDS `mrqa/<config>` or the official MRQA files, see sources.py):
  mrqa_squad                 train / validation (SQuAD's MRQA train and dev files)
  mrqa_<set>                 validation only, <set> one of OUT_OF_DOMAIN: TFDS calls it `test`, the
                             official release ships it as a dev file (dev/<Name>.jsonl.gz)
  mrqa_squad_to_<set>        train = SQuAD train, validation = <set>: one domain-transfer run per set
  mrqa_squad_to_out_of_domain (mixture) trains on SQuAD and evaluates SQuAD dev and all six sets at once

Format: T5's SQuAD layout, "question: <question> context: <context>" -> the first gold answer.  T5 also
padded punctuation with spaces; we do not, because the official script scores a prediction against the raw
`answers`, and a copied span of padded text ("U . S .") normalises differently from the gold ("U.S.").
Long contexts are cut by tokens, not characters: seqio trims `inputs` to TASK_FEATURE_LENGTHS['inputs']
(minus the EOS) from the end, so the question, which comes first, always survives and only the tail of
the context is lost (an answer in that tail cannot be copied and scores 0, as it would for T5).

Scoring is the official MRQA evaluation (mrqa_official_eval.py): each question's prediction against its
`answers` (not `detected_answers`), SQuAD normalisation (lowercase, no punctuation, no a/an/the,
whitespace squeezed), EM and token F1 each the max over the answers, averaged over questions (one score
per question id), in percent: metrics `em` and `f1`.

Official files: a header line {"header": {...}}, then one context per line with its `qas`, each question
having `qid`, `question` and `answers` (`detected_answers` is not used).  `.jsonl.gz` or `.jsonl`, under
<data_dir>[/mrqa]/{train,dev}/<Name>.jsonl[.gz].  A malformed line raises MalformedRowError naming file and
line.
"""
from typing import Dict, Iterator, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import official_files
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import registration
from prompt_tuning.tasks.official_files import FileSpec, MalformedRowError
from prompt_tuning.tasks.sources import BenchmarkSource
from prompt_tuning.tasks.vocab import OUTPUT_FEATURES

TFDS_VERSION = "1.0.0"
# TFDS config -> the file name the official MRQA release uses (its dev/ directory for these six).
OUT_OF_DOMAIN = {
    "textbook_qa": "TextbookQA",
    "bio_asq": "BioASQ",
    "race": "RACE",
    "relation_extraction": "RelationExtraction",
    "duo_rc": "DuoRC.ParaphraseRC",
    "drop": "DROP",
}
SQUAD = "squad"
TRANSFER_MIXTURE = "mrqa_squad_to_out_of_domain"

# Task names, for listing and tests.  They stay out of registration.REGISTERED_TASKS on purpose: that list's
# tests read every entry from the tiny GLUE/SuperGLUE files they write, which hold no MRQA file.
TASKS: list = []

_STR = tf.TensorSpec([], tf.string)
SIGNATURE = {"qid": _STR, "question": _STR, "context": _STR, "answers": tf.TensorSpec([None], tf.string)}


# --------------------------------------------------------------------------------------- official files


def _field(row: dict, key: str, types, path: str, lineno: int, where: str = ""):
    if not isinstance(row, dict) or key not in row:
        raise MalformedRowError(path, lineno, f"missing field {where}{key!r}")
    if not isinstance(row[key], types):
        raise MalformedRowError(path, lineno, f"field {where}{key!r} has type {type(row[key]).__name__}")
    return row[key]


def read_mrqa_file(path: str, split: str = "") -> Iterator[dict]:
    """One example per question: {'qid', 'question', 'context', 'answers'}, stripped as TFDS strips them."""
    del split  # every MRQA file has the same layout
    seen_header = False
    for lineno, row in official_files.jsonl_rows(path):
        if not seen_header:
            if "header" not in row:
                raise MalformedRowError(path, lineno, "expected the MRQA header line {\"header\": {...}} first")
            seen_header = True
            continue
        context = _field(row, "context", str, path, lineno).strip()
        for i, qa in enumerate(_field(row, "qas", list, path, lineno)):
            where = f"qas[{i}]."
            answers = _field(qa, "answers", list, path, lineno, where)
            if not answers or not all(isinstance(a, str) for a in answers):
                raise MalformedRowError(path, lineno, f"{where}'answers' must be a non-empty list of strings")
            yield {"qid": _field(qa, "qid", str, path, lineno, where),
                   "question": _field(qa, "question", str, path, lineno, where).strip(),
                   "context": context, "answers": official_files._strings(answers)}
    if not seen_header:
        raise MalformedRowError(path, 1, "empty file (no MRQA header line)")


def _files(name: str, splits: Dict[str, str]) -> FileSpec:
    """split -> directory of the release (train/ or dev/); either compressed or not."""
    return FileSpec(dirnames=("",),
                    split_files={s: f"{d}/{name}.jsonl.gz|{d}/{name}.jsonl" for s, d in splits.items()},
                    reader=read_mrqa_file, signature=SIGNATURE)


MRQA_FILES = {SQUAD: _files("SQuAD", {"train": "train", "validation": "dev"})}
MRQA_FILES.update({config: _files(name, {"validation": "dev"}) for config, name in OUT_OF_DOMAIN.items()})
# Plug MRQA into the official-files source (sources.OfficialFilesSource looks benchmarks up here).
official_files.BENCHMARK_FILES["mrqa"] = MRQA_FILES
official_files.BENCHMARK_SUBDIRS["mrqa"] = ("", "mrqa", "MRQA")


# ---------------------------------------------------------------------------------------------- sources


def source(config: str) -> BenchmarkSource:
    if config == SQUAD:
        return BenchmarkSource("mrqa", SQUAD, TFDS_VERSION, ("train", "validation"))
    return BenchmarkSource("mrqa", config, TFDS_VERSION, ("validation",), tfds_splits={"validation": "test"})


class SplitsSource(seqio.DataSource):
    """Each split read from another source's split: a transfer task trains on one set, evaluates on another."""

    def __init__(self, splits: Dict[str, tuple]):
        self._parts = dict(splits)  # split -> (source, its split)
        super().__init__(splits=list(self._parts))

    def _part(self, split: str):
        if split not in self._parts:
            raise ValueError(f"no split {split!r} (splits: {list(self._parts)})")
        return self._parts[split]

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return all(src.supports_arbitrary_sharding for src, _ in self._parts.values())

    def list_shards(self, split: str) -> Sequence[str]:
        src, inner = self._part(split)
        return src.list_shards(inner)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        src, inner = self._part(split)
        return src.get_dataset(split=inner, shuffle=shuffle, seed=seed, shard_info=shard_info)

    def num_input_examples(self, split: str) -> Optional[int]:
        src, inner = self._part(split)
        return src.num_input_examples(inner)


# ------------------------------------------------------------------------------ preprocess, postprocess


@seqio.map_over_dataset
def preprocess(x):
    """'question: Q context: C' -> first answer; keeps qid and all answers for the official scoring."""
    inputs = tf.strings.join(["question:", x["question"], "context:", x["context"]], separator=" ")
    return {"inputs": inputs, "targets": x["answers"][0], "qid": x["qid"], "answers": x["answers"]}


def postprocess(output, example=None, is_target=False):
    """Prediction {'value': text}; target {'value': every gold answer, 'group': question id}."""
    if is_target:
        return {"value": [postprocessors._text(a) for a in example["answers"]],
                "group": postprocessors._text(example["qid"])}
    return {"value": postprocessors._text(output)}


# One score per question id, as the official script (it keys answers and predictions by qid).
official_metric = metrics.deduplicate_metric(metrics.squad)


def _add(name: str, src: seqio.DataSource) -> str:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=src, preprocessors=[preprocess] + registration.token_preprocessors(),
                           output_features=OUTPUT_FEATURES, postprocess_fn=postprocess,
                           metric_fns=[official_metric])
    TASKS.append(name)
    return name


def register() -> None:
    squad = _add(f"mrqa_{SQUAD}", source(SQUAD))
    evals = []
    for config in OUT_OF_DOMAIN:
        evals.append(_add(f"mrqa_{config}", source(config)))
        _add(f"mrqa_{SQUAD}_to_{config}", SplitsSource({"train": (source(SQUAD), "train"),
                                                        "validation": (source(config), "validation")}))
    # The out-of-domain tasks have no train split, so training samples SQuAD alone.
    registration.add_mixture(TRANSFER_MIXTURE, [squad] + evals, default_rate=1.0)


register()
