"""PEFT adapter files: import (incl. the seq2seq 2 x n table), export, round trip, PEFT loading ours."""
import json

import numpy as np
import pytest

from conftest import shared_path
from prompt_tuning.prompts import peft


@pytest.fixture(scope="module")
def fixture_dir():
    return shared_path("fixtures", "hf_t5_1_1_tiny")


def test_import_uses_first_n_rows(fixture_dir):
    prompt = peft.load_peft_prompt(str(fixture_dir / "peft_prompt"))
    ref = np.load(fixture_dir / "peft_reference.npz")
    assert prompt.shape == (5, 64) and prompt.dtype == np.float32
    np.testing.assert_array_equal(prompt, ref["prompt_embedding"])
    np.testing.assert_array_equal(prompt, ref["prompt_table_full"][:5])


def test_export_round_trip_and_config_matches_peft(tmp_path, fixture_dir):
    prompt = np.random.RandomState(0).randn(5, 64).astype(np.float32)
    peft.save_peft_prompt(str(tmp_path), prompt, num_layers=2, num_attention_heads=4)
    np.testing.assert_array_equal(peft.load_peft_prompt(str(tmp_path)), prompt)
    ours = json.loads((tmp_path / "adapter_config.json").read_text())
    theirs = json.loads((fixture_dir / "peft_prompt" / "adapter_config.json").read_text())
    assert ours == theirs  # same fields and values for the same shapes


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        peft.load_peft_prompt(str(tmp_path))
    peft.save_peft_prompt(str(tmp_path), np.zeros((5, 8)))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(config, num_virtual_tokens=4)))
    with pytest.raises(ValueError, match=r"shape \(10, 8\), config implies \[8, 8\]"):
        peft.load_peft_prompt(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps(dict(config, peft_type="LORA")))
    with pytest.raises(ValueError, match="only PROMPT_TUNING"):
        peft.load_peft_prompt(str(tmp_path))


def test_peft_itself_loads_our_export(tmp_path, fixture_dir):
    torch = pytest.importorskip("torch", reason="torch is not installed (parity with PyTorch PEFT needs it)")
    pytest.importorskip("peft", reason="peft is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    from peft import PeftModel
    prompt = np.random.RandomState(1).randn(5, 64).astype(np.float32)
    peft.save_peft_prompt(str(tmp_path), prompt, num_layers=2, num_attention_heads=4)
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(fixture_dir))
    loaded = PeftModel.from_pretrained(model, str(tmp_path))
    table = loaded.prompt_encoder["default"].embedding.weight.detach().numpy()
    np.testing.assert_array_equal(table[:5], prompt)
    # And PEFT's forward prepends exactly these rows: compare with an explicit inputs_embeds forward.
    ref = np.load(fixture_dir / "peft_reference.npz")
    ids, mask, labels = (torch.tensor(ref[k]) for k in ("input_ids", "attention_mask", "labels"))
    with torch.no_grad():
        via_peft = loaded(input_ids=ids, attention_mask=mask, labels=labels).logits
        embeds = torch.cat([torch.tensor(prompt)[None].expand(4, -1, -1), model.shared(ids)], 1)
        full_mask = torch.cat([torch.ones(4, 5, dtype=mask.dtype), mask], 1)
        direct = model(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).logits
    np.testing.assert_allclose(via_peft.numpy(), direct.numpy(), atol=1e-5)
