"""Vocabularies against seqio's own token ids for the real T5 SentencePiece model."""
import json

import pytest

from prompt_tuning import vocab
from conftest import shared_path


@pytest.fixture(scope="module")
def reference():
    return json.loads(shared_path("fixtures", "t5_tokenization.json").read_text())


@pytest.fixture(scope="module")
def t5_vocab():
    return vocab.t5_vocabulary(shared_path("vocab", "t5_spiece.model"))


def test_t5_vocabulary_sizes_and_special_ids(t5_vocab, reference):
    ref = reference["vocab"]
    assert t5_vocab.vocab_size == ref["vocab_size"] == 32100
    assert (t5_vocab.pad_id, t5_vocab.eos_id, t5_vocab.unk_id) == (ref["pad_id"], ref["eos_id"], ref["unk_id"])
    assert t5_vocab.encode("<extra_id_0>") == [ref["extra_id_0"]]
    assert t5_vocab.encode("<extra_id_99>") == [ref["extra_id_99"]]


def test_t5_encode_decode_matches_seqio_reference(t5_vocab, reference):
    for case in reference["cases"]:
        assert t5_vocab.encode(case["text"]) == case["ids"], case["text"]
        assert t5_vocab.decode(case["ids"]) == case["decoded"], case["text"]
    for case in reference["decode_cases"]:
        assert t5_vocab.decode(case["ids"]) == case["decoded"], case["ids"]


def test_byte_vocabulary():
    v = vocab.byte_vocabulary()
    assert v.encode("hé") == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3]
    assert v.decode(v.encode("hé") + [1, 50]) == "hé"
    assert vocab.vocabulary_for_family("byt5").eos_id == 1


def test_family_lookup_rejects_unknown():
    with pytest.raises(ValueError, match="no vocabulary known"):
        vocab.vocabulary_for_family("gpt2")
