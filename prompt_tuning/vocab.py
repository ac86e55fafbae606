"""The vocabularies of the T5 families, as seqio vocabularies (what t5x's gin files use).

The default paths are the public t5-data files; pass a local copy when GCS is not reachable.
"""
import seqio

# T5 / T5 1.1 / Flan-T5: 32000 SentencePiece pieces + 100 sentinels (checkpoints pad the table to 32128).
DEFAULT_T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
T5_EXTRA_IDS = 100
# mT5: 250000 pieces whose model already contains its 100 sentinels.
DEFAULT_MT5_SPM_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


def t5_vocabulary(path: str = DEFAULT_T5_SPM_PATH, extra_ids: int = T5_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
    """T5's SentencePiece vocabulary with its 100 sentinels <extra_id_0> = 32099 ... <extra_id_99> = 32000."""
    return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)


def mt5_vocabulary(path: str = DEFAULT_MT5_SPM_PATH) -> seqio.SentencePieceVocabulary:
    return seqio.SentencePieceVocabulary(str(path))


def byte_vocabulary() -> seqio.ByteVocabulary:
    """ByT5's vocabulary: UTF-8 bytes shifted by 3 (pad 0, eos 1, unk 2)."""
    return seqio.ByteVocabulary()


def vocabulary_for_family(family: str, path: str = None) -> seqio.Vocabulary:
    """The vocabulary a T5 family was trained with (families as in prompt_tuning.t5.config.FAMILIES)."""
    if family == "byt5":
        return byte_vocabulary()
    if family == "mt5":
        return mt5_vocabulary(path or DEFAULT_MT5_SPM_PATH)
    if family in ("t5_1_0", "t5_1_1", "t5_1_1_lm_adapted", "flan_t5"):
        return t5_vocabulary(path or DEFAULT_T5_SPM_PATH)
    raise ValueError(f"no vocabulary known for T5 family {family!r}")
