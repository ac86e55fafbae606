"""What bfloat16 costs in precision: logits and scores with bfloat16 activations against float32, on the
shared reference checkpoints (t5x's tiny T5 1.1 and its reference batch; see ../shared/fixtures/README.md).

    python bench/bf16_precision.py

Ours: the same checkpoint loaded with `dtype='bfloat16'` (activations in bfloat16, parameters float32, logits
float32), and again with the frozen weights cast to bfloat16 as `FROZEN_DTYPE='bfloat16'` does.  Torch:
transformers' T5 on the Hugging Face fixture under `torch.autocast('cpu', bfloat16)` against its own float32.
Prints the largest absolute logit difference, the largest score (summed log-likelihood) difference, and
whether the argmax token changes anywhere.
"""
import os
import sys

import numpy as np

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures"))


def _report(name, ref_logits, logits, ref_scores, scores):
    argmax = np.mean(np.argmax(ref_logits, -1) != np.argmax(logits, -1))
    print(f"{name:32s} max |logit diff| {np.max(np.abs(ref_logits - logits)):.3e}  "
          f"(logit scale {np.max(np.abs(ref_logits)):.2f})  max |score diff| {np.max(np.abs(ref_scores - scores)):.3e}  "
          f"argmax changed at {argmax:.1%} of positions")


def ours():
    import jax

    from prompt_tuning import models
    from prompt_tuning.checkpoints import load_pretrained
    path = os.path.join(SHARED, "t5x_t5_1_1_tiny", "checkpoint_0")
    ref = np.load(os.path.join(SHARED, "t5x_t5_1_1_tiny", "reference.npz"))
    batch = {k: ref[k] for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                                 "decoder_loss_weights")}
    out = {}
    for name, dtype, frozen in (("float32", None, None), ("bf16 activations", "bfloat16", None),
                                ("bf16 activations + weights", "bfloat16", "bfloat16")):
        module, params = load_pretrained(path, dtype=dtype)
        if frozen:
            params = jax.tree_util.tree_map(lambda x: x.astype(frozen), params)
        model = models.EncoderDecoderModel(module)
        out[name] = (np.asarray(model.logits(params, batch), np.float32), np.asarray(model.score_batch(params, batch)))
    f32 = out.pop("float32")
    np.testing.assert_allclose(f32[0], ref["logits"], atol=1e-4)   # the float32 path is t5x's
    for name, (logits, scores) in out.items():
        _report(f"ours, {name}", f32[0], logits, f32[1], scores)


def torch_autocast():
    try:
        import torch
        import transformers
    except ImportError:
        print("torch/transformers not installed: no torch comparison")
        return
    path = os.path.join(SHARED, "hf_t5_1_1_tiny")
    ref = np.load(os.path.join(path, "reference.npz"))
    model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
    ids = {k: torch.from_numpy(ref[k]).long() for k in ("input_ids", "decoder_input_ids", "labels") if k in ref}
    if len(ids) < 3:
        print(f"{path}/reference.npz lacks input_ids/decoder_input_ids/labels; keys: {sorted(ref)}")
        return
    out = {}
    for name, autocast in (("float32", False), ("bf16 autocast", True)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids["input_ids"], attention_mask=torch.from_numpy(ref["attention_mask"]).long(),
                           decoder_input_ids=ids["decoder_input_ids"]).logits.float()
        logp = torch.log_softmax(logits, -1)
        labels = ids["labels"].clamp(min=0)
        scores = (logp.gather(-1, labels[..., None])[..., 0] * (ids["labels"] > 0)).sum(-1)
        out[name] = (logits.numpy(), scores.numpy())
    _report("torch, bf16 autocast", out["float32"][0], out["bf16 autocast"][0], out["float32"][1],
            out["bf16 autocast"][1])


if __name__ == "__main__":
    if not os.path.isdir(SHARED):
        sys.exit(f"{SHARED} is absent: this script compares on the shared reference checkpoints")
    ours()
    torch_autocast()
