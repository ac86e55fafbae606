"""The vocabulary every task's output features use, with a path chosen late (gin, env or call).

Tasks register at import time, before gin bindings are parsed, so the SentencePiece path is
resolved only when the vocabulary is first used.
"""
import os
from typing import Optional

import gin
import seqio

# T5's default vocabulary (t5.data.DEFAULT_SPM_PATH) with its 100 sentinel ids.
T5_DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_DEFAULT_EXTRA_IDS = 100
# Environment override; handy for offline use (e.g. the copy in ../shared/vocab).
VOCAB_ENV = "PROMPT_TUNING_VOCAB"

_path_override: Optional[str] = None


@gin.configurable
def vocabulary_path(path: Optional[str] = None) -> str:
    """The SentencePiece model path: `set_vocabulary_path` > gin `path` > $PROMPT_TUNING_VOCAB > T5's."""
    if _path_override:
        return _path_override
    return path or os.environ.get(VOCAB_ENV) or T5_DEFAULT_SPM_PATH


def set_vocabulary_path(path: Optional[str]) -> None:
    """Overrides the vocabulary path from code (a CLI flag); None restores the gin/env default."""
    global _path_override
    _path_override = path


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
