"""Mixed-task inference: one batch holds examples of many tasks, each decoded with its own prompt (bank row).

    model, params = load_pretrained(path, prompt=['rte.npy', 'boolq_peft_dir', 'copa_run_dir'])
    rows = {'rte': 0, 'boolq': 1, 'copa': 2}
    texts = predict_mixed(model, params, [{'inputs': 'premise: ...', 'task': 'rte'},
                                          {'inputs': 'question: ...', 'task': 'boolq'}, ...],
                          rows, vocabulary, {'inputs': 512, 'targets': 8})

Each example names its row by 'task' (a key of `rows`) or 'prompt' (a row number or a key of `rows`).  The
examples are converted by the model's own seqio feature converter, so encoder-decoder and decoder-only models
take the same call; the rows' outputs are those of each prompt alone (a bank's rows are masked to their own
lengths, see prompts.join).
"""
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio

from prompt_tuning.errors import UserError
from prompt_tuning.models import PROMPT_INDEX, BaseModel


def row_of(example: Mapping, rows: Optional[Mapping[str, int]], num_rows: Optional[int] = None) -> int:
    """The bank row an example names: example['task'] (a key of `rows`) or example['prompt'] (a row or a key)."""
    rows = rows or {}
    if "task" in example:
        name = example["task"]
        if name not in rows:
            raise UserError(f"example names task {name!r}, which has no prompt row (rows: {sorted(rows, key=rows.get)})")
        return int(rows[name])
    if "prompt" in example:
        prompt = example["prompt"]
        if isinstance(prompt, str):
            if prompt not in rows:
                raise UserError(f"example names prompt {prompt!r}; known: {sorted(rows, key=rows.get)}")
            return int(rows[prompt])
        row = int(prompt)
        if row < 0 or (num_rows is not None and row >= num_rows):
            raise UserError(f"example names prompt row {row}; the bank has {num_rows} rows")
        return row
    raise UserError(f"example {dict(example)!r} names neither a 'task' nor a 'prompt'")


def convert_examples(model: BaseModel, examples: Sequence[Mapping], vocabulary,
                     task_feature_lengths: Mapping[str, int], eos_id: int = 1) -> Dict[str, np.ndarray]:
    """The model's features [N, ...] for examples whose 'inputs' are texts or token ids (EOS appended after
    trimming to the inputs length, as the tasks do); targets are empty (only EOS)."""
    import tensorflow as tf

    length = int(task_feature_lengths["inputs"])

    def ids(x):
        tokens = list(vocabulary.encode(x) if isinstance(x, str) else x)
        return np.asarray(tokens[:length - 1] + [eos_id], np.int32)
    encoded = [ids(ex["inputs"]) for ex in examples]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"inputs": e, "targets": np.asarray([eos_id], np.int32)} for e in encoded),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    converted = list(model.feature_converter()(ds, dict(task_feature_lengths)).as_numpy_iterator())
    return {k: np.stack([c[k] for c in converted]) for k in converted[0]}


def interleave(parts: Sequence[Mapping[str, np.ndarray]]) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Feature sets of several tasks merged round-robin (one of each in turn, so every batch mixes them):
    (features, each row's part, each row's index within its part)."""
    order = sorted(((i, p) for p, part in enumerate(parts) for i in range(len(next(iter(part.values()))))))
    part_of = np.asarray([p for _, p in order], np.int64)
    index_in = np.asarray([i for i, _ in order], np.int64)
    keys = set.intersection(*(set(part) for part in parts))
    return ({k: np.stack([parts[p][k][i] for i, p in order]) for k in sorted(keys)}, part_of, index_in)


def predict_features(model: BaseModel, params, features: Mapping[str, np.ndarray], batch_size: int,
                     max_decode_len: int, eos_id: int = 1, **decoding) -> List[List[int]]:
    """Decoded token ids (up to EOS) of every row of `features`, `batch_size` rows per call (the last batch
    padded); rows carrying `prompt_index` use their own prompts.  Single-process; the CLIs shard batches."""
    n = len(next(iter(features.values())))
    out = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in features.items()}
        count = len(next(iter(chunk.values())))
        chunk = {k: np.pad(v, [(0, batch_size - count)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
        tokens, _ = model.predict_batch(params, chunk, max_decode_len=max_decode_len, eos_id=eos_id, **decoding)
        out.extend(until_eos(row, eos_id) for row in np.asarray(tokens)[:count].tolist())
    return out


def until_eos(tokens: Sequence[int], eos_id: int = 1) -> List[int]:
    """A decode's tokens before its EOS (decodes are 0 after EOS)."""
    tokens = list(tokens)
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else [t for t in tokens if t]


def predict_mixed(model: BaseModel, params, examples: Sequence[Mapping], rows: Optional[Mapping[str, int]],
                  vocabulary, task_feature_lengths: Mapping[str, int], *, batch_size: int = 32,
                  eos_id: int = 1, num_rows: Optional[int] = None, **decoding) -> List[str]:
    """The decoded text of each example, every batch mixing the examples' prompts (see the module doc)."""
    if not examples:
        return []
    features = convert_examples(model, examples, vocabulary, task_feature_lengths, eos_id)
    features[PROMPT_INDEX] = np.asarray([row_of(ex, rows, num_rows) for ex in examples], np.int32)
    tokens = predict_features(model, params, features, batch_size, int(task_feature_lengths["targets"]), eos_id,
                              **decoding)
    return [vocabulary.decode(t) for t in tokens]


# ---------------------------------------------------------------------------------------- the infer CLI's side
def _sharded_predict(model, params, features, batch_size, mesh, max_decode_len, eos_id, decoding,
                     length_buckets=None):
    """predict_features across processes (evaluation.predict_dataset's global batches), in row order."""
    import tensorflow as tf

    from prompt_tuning.train.evaluation import predict_dataset
    ds = tf.data.Dataset.from_tensor_slices(dict(features)).enumerate()
    out = dict(predict_dataset(model, params, ds, batch_size, mesh, max_decode_len, eos_id, decoding, length_buckets))
    return [until_eos(out[i], eos_id) for i in range(len(out))]


def decode_mixture(model, params, mesh, rows: Mapping[str, int], task_feature_lengths: Mapping[str, int],
                   split: str, batch_size: int, *, num_examples: Optional[int] = None, eos_id: int = 1,
                   decoding: Optional[dict] = None, length_buckets=None) -> Dict[str, List[dict]]:
    """{task: [{"index", "inputs", "prediction", "targets"}]} for every task of `rows` (task -> bank row),
    their examples interleaved so that each batch mixes the tasks, each example with its task's row."""
    parts, raw, names = [], [], list(rows)
    lengths = dict(task_feature_lengths)
    for name in names:
        task = seqio.get_mixture_or_task(name)
        ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
        if num_examples:
            ds = ds.take(num_examples)
        raw.append((task, list(ds.as_numpy_iterator())))
        converted = list(model.feature_converter(prompt_index=rows[name])(ds, lengths).as_numpy_iterator())
        parts.append({k: np.stack([c[k] for c in converted]) for k in converted[0]})
    features, part_of, index_in = interleave(parts)
    tokens = _sharded_predict(model, params, features, batch_size, mesh, lengths["targets"], eos_id, decoding,
                              length_buckets)
    out = {name: [] for name in names}
    for t, p, i in zip(tokens, part_of, index_in):
        task, examples = raw[p]
        out[names[p]].append(_line(int(i), examples[i], t, task))
    return {name: sorted(lines, key=lambda line: line["index"]) for name, lines in out.items()}


def decode_file(model, params, mesh, path: str, rows: Optional[Mapping[str, int]], num_rows: int, vocabulary,
                task_feature_lengths: Mapping[str, int], batch_size: int, *, eos_id: int = 1,
                decoding: Optional[dict] = None, length_buckets=None) -> List[dict]:
    """The lines of JSON-lines file `path` ({"inputs": text, "task" | "prompt": ...} each) with "prediction"
    added, decoded in mixed batches."""
    examples = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    examples.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: not valid JSON ({e})") from None
    if not examples:
        raise UserError(f"{path}: no examples")
    for number, example in enumerate(examples, 1):
        if not isinstance(example, dict) or "inputs" not in example:
            raise UserError(f"{path}:{number}: each line must be an object with 'inputs' and 'task' or 'prompt'")
    features = convert_examples(model, examples, vocabulary, task_feature_lengths, eos_id)
    features[PROMPT_INDEX] = np.asarray([row_of(ex, rows, num_rows) for ex in examples], np.int32)
    tokens = _sharded_predict(model, params, features, batch_size, mesh, task_feature_lengths["targets"], eos_id,
                              decoding, length_buckets)
    return [{**ex, "prediction": vocabulary.decode(t)} for ex, t in zip(examples, tokens)]


def _line(index, example, tokens, task):
    vocab, in_vocab = task.output_features["targets"].vocabulary, task.output_features["inputs"].vocabulary
    return {"index": index, "inputs": in_vocab.decode(example["inputs"].tolist()),
            "prediction": vocab.decode(tokens),
            "targets": vocab.decode(example["targets"].tolist()) if "targets" in example else None}


def infer_mixed(trainer, state, rows, task, model_dir, lengths, batch_size, split, num_examples, eos_id,
                input_file: Optional[str] = None, length_buckets=None) -> str:
    """The infer CLI's mixed-task decoding (see prompt_tuning.infer): writes the JSON lines, returns the last path."""
    params, mesh = trainer.params_for_eval(state), trainer.mesh
    if input_file:
        vocab = next(iter(seqio.get_subtasks(task))).output_features["inputs"].vocabulary
        outputs = {os.path.splitext(os.path.basename(input_file))[0] + "-predictions": decode_file(
            trainer.model, params, mesh, input_file, rows, trainer.num_prompt_rows or None, vocab, lengths,
            batch_size, eos_id=eos_id, length_buckets=length_buckets)}
    else:
        names = [t.name for t in seqio.get_subtasks(task)]
        if rows is None or set(names) - set(rows):
            raise UserError(f"MIXTURE_OR_TASK_NAME={task.name!r} is a mixture: infer decodes it with a per-task "
                             f"prompt bank (PROMPT_CHECKPOINT_PATH of a PROMPT_ROWS='per_task' run); rows: {rows}")
        decoded = decode_mixture(trainer.model, params, mesh, {n: rows[n] for n in names}, lengths, split,
                                 batch_size, num_examples=num_examples, eos_id=eos_id,
                                 length_buckets=length_buckets)
        outputs = {f"{name}-{split}": lines for name, lines in decoded.items()}
    path = None
    for name, lines in outputs.items():
        path = write_predictions(os.path.join(model_dir, "inference", f"{name}.jsonl"), lines)
    return path


def write_predictions(path: str, lines: Sequence[dict]) -> str:
    """The prediction records as JSON lines at `path` (process 0 writes; every process returns the path)."""
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        print(f"wrote {len(lines)} predictions to {path}")
    return path
