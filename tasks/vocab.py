"""The vocabulary every task's output features use, its SentencePiece model found when first used.

Tasks register at import time, before flags or gin files are parsed, so the path is read late, from the
environment ($PROMPT_TUNING_VOCAB, e.g. the copy in ../shared/vocab when GCS is unreachable), else T5's
public file.  `set_vocabulary_path` writes the variable from code.
"""
import os
from typing import Optional

import seqio

# T5's default vocabulary (t5.data.DEFAULT_SPM_PATH) with its 100 sentinel ids.
T5_DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_DEFAULT_EXTRA_IDS = 100
VOCAB_ENV = "PROMPT_TUNING_VOCAB"


def vocabulary_path() -> str:
    """The SentencePiece model path: $PROMPT_TUNING_VOCAB, else T5's."""
    return os.environ.get(VOCAB_ENV) or T5_DEFAULT_SPM_PATH


def set_vocabulary_path(path: Optional[str]) -> None:
    """Sets $PROMPT_TUNING_VOCAB (this process and those it starts); None unsets it."""
    if path is None:
        os.environ.pop(VOCAB_ENV, None)
    else:
        os.environ[VOCAB_ENV] = str(path)


class ConfigurableSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """SentencePieceVocabulary whose model file is looked up (via `vocabulary_path`) on each use."""

    def __init__(self, extra_ids: int = T5_DEFAULT_EXTRA_IDS):
        super().__init__("<resolved lazily>", extra_ids=extra_ids)

    @property
    def _sentencepiece_model_file(self) -> str:
        return vocabulary_path()

    @_sentencepiece_model_file.setter
    def _sentencepiece_model_file(self, value) -> None:
        del value  # set by the base constructor; the path always comes from vocabulary_path()


VOCABULARY = ConfigurableSentencePieceVocabulary()

# As T5's DEFAULT_OUTPUT_FEATURES: EOS appended to both; inputs not required (decoder-only models).
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True, required=False),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}
