"""Interpret a soft prompt: each position's nearest vocabulary tokens in the frozen model's embedding table.

  python -m prompt_tuning.scripts.nearest_tokens PROMPT --checkpoint MODEL [-k 5] [--vocab SPM_PATH | byte]
      [--labels entailment,not_entailment]

PROMPT: a .npy file, or anything `prompt_tuning.prompts.read_prompt` reads (a training run's MODEL_DIR, one
of its checkpoints, a PEFT adapter directory).  MODEL: the frozen checkpoint the prompt was trained with
(t5x legacy / Orbax or Hugging Face); only its token embedding table is read.  Similarity is cosine, as in
the paper's Section 7 ("Interpretability"); ids past the vocabulary (the table's padding rows) are never
neighbours.  --vocab: a SentencePiece model (default: the tasks' vocabulary, $PROMPT_TUNING_VOCAB or T5's) or
'byte' (ByT5 and the project's synthetic tiny model).  The summary counts the positions with a class label
token (--labels, tokenized with the same vocabulary) among their neighbours, and lists the tokens that are
neighbours of several positions.
"""
import argparse
import collections
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import seqio

EMBEDDING_KEY = "token_embedder/embedding"
_BYTE_SPECIALS = ("<pad>", "</s>", "<unk>")


def load_vocabulary(spec: Optional[str]) -> seqio.Vocabulary:
    if spec == "byte":
        return seqio.ByteVocabulary()
    if spec is None:
        from prompt_tuning.tasks.vocab import vocabulary_path
        spec = vocabulary_path()
    return seqio.SentencePieceVocabulary(spec, extra_ids=100)


def token_text(vocab: seqio.Vocabulary, token_id: int) -> str:
    """How a token is shown: SentencePiece pieces as stored ('▁' marks a word start); bytes printable or <0xNN>."""
    if isinstance(vocab, seqio.ByteVocabulary):
        if token_id < len(_BYTE_SPECIALS):
            return _BYTE_SPECIALS[token_id]
        byte = token_id - len(_BYTE_SPECIALS)
        return chr(byte) if 32 < byte < 127 else f"<0x{byte:02X}>"
    return vocab.tokenizer.id_to_piece(int(token_id))


def read_embedding(checkpoint: str, key: str = EMBEDDING_KEY) -> np.ndarray:
    """Only the embedding table of the checkpoint, as float32."""
    from prompt_tuning.checkpoints import open_checkpoint
    source = open_checkpoint(checkpoint)
    if key not in source.shapes:
        near = [k for k in source.shapes if "embed" in k]
        raise ValueError(f"{checkpoint}: no array {key!r} (embedding-like arrays: {near or 'none'})")
    return np.asarray(source.read(key), np.float32)


def read_prompt_array(prompt: str, bank_index: Optional[int] = None) -> np.ndarray:
    from prompt_tuning.prompts import read_prompt
    value = read_prompt(prompt)
    if value.ndim == 3:
        if bank_index is None:
            raise ValueError(f"{prompt}: a bank of {value.shape[0]} prompts; pass --bank_index")
        value = value[bank_index]
    elif bank_index is not None:
        raise ValueError(f"{prompt}: a single prompt; --bank_index applies to banks only")
    return value


def nearest(prompt: np.ndarray, table: np.ndarray, k: int):
    """(ids [length, k], cosine similarities [length, k]), most similar first."""
    if prompt.shape[-1] != table.shape[-1]:
        raise ValueError(f"prompt width {prompt.shape[-1]} != embedding width {table.shape[-1]}")

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    sims = unit(prompt) @ unit(table).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sims, ids, axis=1)


def interpret(prompt: np.ndarray, table: np.ndarray, vocab: seqio.Vocabulary, k: int = 5,
              labels: Sequence[str] = ()) -> Dict[str, object]:
    """Neighbours of every position, which positions have a label token among them, repeated neighbours."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    vocab_size = min(vocab.vocab_size, table.shape[0])
    ids, sims = nearest(prompt, table[:vocab_size], k)
    label_of = {}
    for label in labels:
        for token in vocab.encode(label):
            label_of.setdefault(int(token), label)
    positions = []
    for i, (row, row_sims) in enumerate(zip(ids, sims)):
        positions.append({"position": i, "ids": row.tolist(), "tokens": [token_text(vocab, t) for t in row],
                          "similarities": [float(s) for s in row_sims],
                          "labels": sorted({label_of[t] for t in row.tolist() if t in label_of})})
    holders = collections.defaultdict(list)
    for p in positions:
        for t in p["ids"]:
            holders[t].append(p["position"])
    repeated = sorted(((t, ps) for t, ps in holders.items() if len(ps) > 1), key=lambda x: (-len(x[1]), x[0]))
    return {"k": k, "positions": positions,
            "with_label": [p["position"] for p in positions if p["labels"]],
            "repeated": [{"id": int(t), "token": token_text(vocab, t), "positions": ps} for t, ps in repeated]}


def report(result: Dict[str, object], labels: Sequence[str] = ()) -> str:
    positions = result["positions"]
    lines = [f"{len(positions)} prompt positions, {result['k']} nearest tokens by cosine similarity:"]
    for p in positions:
        cells = "  ".join(f"{t!r} {s:.2f}" for t, s in zip(p["tokens"], p["similarities"]))
        mark = f"   <- {', '.join(p['labels'])}" if p["labels"] else ""
        lines.append(f"  {p['position']:>4}: {cells}{mark}")
    if labels:
        lines.append(f"positions with a class label ({', '.join(labels)}) among their neighbours: "
                     f"{len(result['with_label'])}/{len(positions)}")
    repeated = result["repeated"]
    shown = ", ".join(f"{r['token']!r} ({len(r['positions'])} positions)" for r in repeated[:10])
    lines.append(f"tokens neighbouring several positions: {len(repeated)}" + (f": {shown}" if shown else "")
                 + (", ..." if len(repeated) > 10 else ""))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", help=".npy, a training run's MODEL_DIR, a checkpoint or a PEFT adapter")
    parser.add_argument("--checkpoint", required=True, help="the frozen model (its embedding table is read)")
    parser.add_argument("-k", type=int, default=5, help="neighbours per position (default 5)")
    parser.add_argument("--vocab", default=None, help="SentencePiece model path or 'byte'")
    parser.add_argument("--labels", default="", help="comma-separated class labels, e.g. 'True,False'")
    parser.add_argument("--embedding_key", default=EMBEDDING_KEY)
    parser.add_argument("--bank_index", type=int, default=None, help="which prompt of a prompt bank")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    try:
        prompt = read_prompt_array(args.prompt, args.bank_index)
        table = read_embedding(args.checkpoint, args.embedding_key)
        result = interpret(prompt, table, load_vocabulary(args.vocab), args.k, labels)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise SystemExit(f"nearest_tokens: {' '.join(str(e).split())}") from None
    print(report(result, labels))
    return result


if __name__ == "__main__":
    main()
