"""The tasks' vocabulary (found through $PROMPT_TUNING_VOCAB) against seqio's own ids for the real T5 model."""
import json

import pytest

from prompt_tuning.tasks import vocab
from conftest import shared_path


@pytest.fixture(scope="module")
def reference():
    return json.loads(shared_path("fixtures", "t5_tokenization.json").read_text())


@pytest.fixture(scope="module")
def t5_vocab():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vocab.VOCAB_ENV, str(shared_path("vocab", "t5_spiece.model")))
        assert vocab.vocabulary_path().endswith("t5_spiece.model")
        yield vocab.VOCABULARY


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


def test_path_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(vocab.VOCAB_ENV, raising=False)
    assert vocab.vocabulary_path() == vocab.T5_DEFAULT_SPM_PATH
    vocab.set_vocabulary_path("/elsewhere/spm.model")
    assert vocab.vocabulary_path() == "/elsewhere/spm.model"
    vocab.set_vocabulary_path(None)
    assert vocab.vocabulary_path() == vocab.T5_DEFAULT_SPM_PATH
