"""seqio evaluation of the prompted model: by decoding (predict metrics) and by scoring (rank classification).

Every process walks the same eval batches (padded to the global batch size) and feeds its slice of rows; the
results are gathered so each process holds all predictions.  Metrics are computed on process 0 and written
as JSON lines (MODEL_DIR/eval/metrics.jsonl) and TensorBoard scalars by the caller's writer.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils

from prompt_tuning.errors import UserError
from prompt_tuning.models import PROMPT_INDEX, BaseModel
from prompt_tuning.train import data
from prompt_tuning.train.trainer import Trainer, TrainState


@gin.configurable
def decoding_options(method: str = "greedy", num_decodes: int = 1, temperature: float = 1.0, topk: int = 0,
                     topp: float = 0.0, alpha: float = 0.6) -> dict:
    """How eval and infer decode; gin/decoding/*.gin set these."""
    return dict(method=method, num_decodes=num_decodes, temperature=temperature, topk=topk, topp=topp, alpha=alpha)


def gather(x) -> np.ndarray:
    """A global array's rows from every process, as numpy on each."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(batch: Mapping[str, np.ndarray], mesh):
    """The same full batch on every process -> global arrays, each process feeding its own slice of rows."""
    size = len(next(iter(batch.values())))
    rows = data.local_batch_size(size)
    start = jax.process_index() * rows
    return data.to_global({k: v[start:start + rows] for k, v in batch.items()}, mesh)


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    return np.pad(x, [(0, size - len(x))] + [(0, 0)] * (x.ndim - 1))


def iterate_global(ds, batch_size: int, mesh, trim=None):
    """(indices [n], global batch) over an enumerated seqio dataset; the last batch is padded with zeros.
    trim: applied to each padded numpy batch first (`data.trim_to_buckets`)."""
    trim = trim or (lambda batch: batch)
    for index, features in ds.batch(batch_size).as_numpy_iterator():
        padded = trim({k: _pad_rows(v, batch_size) for k, v in features.items()})
        yield index, len(index), global_batch(padded, mesh)


def bucket_trimmer(model: BaseModel, length_buckets):
    """The batch -> batch function that cuts padding to LENGTH_BUCKETS for this model (None: keep it)."""
    if not length_buckets:
        return None
    data.check_length_buckets(length_buckets, model.LENGTH_GROUPS)
    return lambda batch: data.trim_to_buckets(batch, model.LENGTH_GROUPS, length_buckets)


# ---------------------------------------------------------------------------------------- rank classification
def input_runs(rows: Mapping[str, np.ndarray], keys) -> List[Tuple[int, int]]:
    """(start, length) of each run of consecutive rows equal in `keys`: the rows of one input, each with another
    candidate target (a `_rank` task writes an example's candidates one after another).  Equal inputs that
    follow each other form one run even when they are different examples: they share the encoding too."""
    n = len(next(iter(rows.values())))
    if n == 0:
        return []
    same = np.ones(n - 1, bool)
    for k in keys:
        v = rows[k].reshape(n, -1)
        same &= (v[1:] == v[:-1]).all(axis=1)
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1])
    return list(zip(starts.tolist(), np.diff(np.append(starts, n)).tolist()))


def candidate_batch(rows: Mapping[str, np.ndarray], runs, input_keys, size: int, width: int) -> dict:
    """Runs of rows -> one `score_candidates` batch: inputs [size, ...] (each run's first row) and the
    other features [size, width, ...] (the run's candidates); missing runs and candidates are zeros."""
    batch = {}
    for k, v in rows.items():
        if k in input_keys:
            batch[k] = _pad_rows(np.stack([v[start] for start, _ in runs]), size)
        else:
            out = np.zeros((size, width) + v.shape[1:], v.dtype)
            for g, (start, n) in enumerate(runs):
                out[g, :n] = v[start:start + n]
            batch[k] = out
    return batch


def repeat_over_rows(batch: Mapping[str, np.ndarray], rows: Sequence[int]) -> Dict[str, np.ndarray]:
    """B examples -> B * N rows: example e with prompt-bank row rows[i] at row e * N + i (an ensemble)."""
    n = len(rows)
    out = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in batch.items() if k != PROMPT_INDEX}
    out[PROMPT_INDEX] = np.tile(np.asarray(rows, np.int32), len(next(iter(batch.values()))))
    return out


def score_dataset(trainer: Trainer, state: TrainState, ds, batch_size: int, length_buckets=None,
                  prompt_rows: Optional[Sequence[int]] = None) -> List[Tuple[int, Any]]:
    """(example index, score) for every row of an enumerated, feature-converted dataset.

    Rows whose input features are equal and adjacent (rank classification's candidates) are scored together
    by `trainer.score_candidates`: batch_size inputs at a time, each encoded once.  Without such runs, or for
    a model without `INPUT_FEATURES`, rows are scored batch_size at a time by `trainer.score_batch`.
    prompt_rows: score every row with each of these prompt-bank rows, all in the same call (an ensemble);
    each score is then an array [N], in the order of prompt_rows.
    """
    model, mesh = trainer.model, trainer.mesh
    n = len(prompt_rows) if prompt_rows else 1
    trim = bucket_trimmer(model, length_buckets) or (lambda batch: batch)

    def prepare(batch):
        return global_batch(trim(repeat_over_rows(batch, prompt_rows) if prompt_rows else batch), mesh)

    def per_row(rows_batch):   # [batch_size] rows -> [batch_size, N]
        return gather(trainer.score_batch(state, prepare(rows_batch))).reshape(batch_size, n)

    indices, rows = [], {}
    for index, features in ds.batch(batch_size).as_numpy_iterator():
        indices.append(index)
        for k, v in features.items():
            rows.setdefault(k, []).append(v)
    if not indices:
        return []
    index = np.concatenate(indices)
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    runs = input_runs(rows, [k for k in model.INPUT_FEATURES if k in rows]) if model.INPUT_FEATURES else []
    scores = np.zeros((len(index), n))
    if not runs or max(length for _, length in runs) == 1:
        for start in range(0, len(index), batch_size):
            part = per_row({k: _pad_rows(v[start:start + batch_size], batch_size) for k, v in rows.items()})
            scores[start:start + batch_size] = part[:len(index) - start]
    else:
        width = max(length for _, length in runs)
        for first in range(0, len(runs), batch_size):
            chunk = runs[first:first + batch_size]
            batch = prepare(candidate_batch(rows, chunk, model.INPUT_FEATURES, batch_size, width))
            part = gather(trainer.score_candidates(state, batch)).reshape(batch_size, n, width)
            for g, (start, length) in enumerate(chunk):
                scores[start:start + length] = part[g, :, :length].T
    return [(int(i), s if prompt_rows else float(s[0])) for i, s in zip(index, scores)]


def predict_dataset(model: BaseModel, params, ds, batch_size: int, mesh, max_decode_len: int, eos_id: int = 1,
                    decoding: Optional[dict] = None, length_buckets=None) -> List[Tuple[int, List[int]]]:
    """(example index, decoded token ids) for every example of an enumerated, feature-converted dataset."""
    decoding = decoding or decoding_options()
    out = []
    for index, n, batch in iterate_global(ds, batch_size, mesh, bucket_trimmer(model, length_buckets)):
        tokens, _ = model.predict_batch(params, batch, max_decode_len=max_decode_len, eos_id=eos_id, **decoding)
        out.extend((int(i), t.tolist()) for i, t in zip(index, gather(tokens)[:n]))
    return out


@gin.configurable
class Evaluator:
    """Wraps `seqio.Evaluator` for one mixture or task and split.

    task_rows: {task name: prompt-bank row} when each task has its own prompt (a multi-task bank); every task
    of the mixture is then evaluated with its row, and its metrics are reported under its name as usual.
    length_buckets: cut each batch's padding to these lengths (see data.trim_to_buckets); metrics unchanged.
    """

    def __init__(self, trainer: Trainer, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 batch_size: int, split: str = "validation", num_examples: Optional[int] = None,
                 output_dir: Optional[str] = None, decoding: Optional[dict] = None, eos_id: int = 1,
                 task_rows: Optional[Mapping[str, int]] = None, length_buckets=None):
        self.trainer, self.batch_size, self.output_dir, self.eos_id = trainer, batch_size, output_dir, eos_id
        data.check_length_buckets(length_buckets, trainer.model.LENGTH_GROUPS)
        self.length_buckets = length_buckets
        data.check_split(mixture_or_task_name, split)   # seqio would skip a task without it, silently
        self.decoding = decoding or decoding_options()

        def evaluator(name, row=None):
            return seqio.Evaluator(
                name, feature_converter=trainer.model.feature_converter(prompt_index=row), eval_split=split,
                sequence_length=dict(task_feature_lengths), num_examples=num_examples, use_cached=False,
                async_compute_metrics=False)
        if task_rows is None:
            self.evaluators = [evaluator(mixture_or_task_name)]
        else:
            tasks = [t.name for t in seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))]
            missing = sorted(set(tasks) - set(task_rows))
            if missing:
                raise UserError(f"{mixture_or_task_name}: tasks {missing} have no prompt-bank row "
                                 f"(the bank's rows: {sorted(task_rows, key=task_rows.get)})")
            self.evaluators = [evaluator(t, task_rows[t]) for t in tasks]
        self._max_decode_len = task_feature_lengths["targets"]

    def _predict_fn(self, params):
        def predict(ds):
            return predict_dataset(self.trainer.model, params, ds, self.batch_size, self.trainer.mesh,
                                   self._max_decode_len, self.eos_id, self.decoding, self.length_buckets)
        return predict

    def _score_fn(self, state):
        return lambda ds: score_dataset(self.trainer, state, ds, self.batch_size, self.length_buckets)

    def history(self) -> List[Dict[str, float]]:
        """The evaluations earlier starts of this run wrote (<output_dir>/metrics.jsonl), oldest first."""
        path = os.path.join(self.output_dir or "", "metrics.jsonl")
        if not self.output_dir or not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def evaluate(self, state: TrainState, step: int) -> Dict[str, float]:
        """{'<task>/<metric>': value}; also appended to <output_dir>/metrics.jsonl on process 0."""
        params, flat = self.trainer.params_for_eval(state), {}
        for evaluator in self.evaluators:
            if not evaluator.eval_tasks:
                continue
            future, _ = evaluator.evaluate(compute_metrics=jax.process_index() == 0, step=step,
                                           predict_fn=self._predict_fn(params), score_fn=self._score_fn(state))
            results = future.result() or {}
            flat.update({f"{task}/{name}": float(metric_value(value)) for task, metrics in results.items()
                         for name, value in metrics.items()})
        if self.output_dir and jax.process_index() == 0 and flat:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": int(step), **flat}) + "\n")
        # Every process needs the metrics (best-checkpoint choice is collective).
        return broadcast_metrics(flat)


def metric_value(value):
    """A metric as a plain number (seqio returns clu metric objects or plain numbers)."""
    if hasattr(value, "compute"):
        value = value.compute()
    if hasattr(value, "value"):
        value = value.value
    return np.asarray(value).item()


def broadcast_metrics(flat: Dict[str, float]) -> Dict[str, float]:
    """Process 0's metrics on every process (keys travel as JSON bytes)."""
    if jax.process_count() == 1:
        return flat
    payload = np.frombuffer(json.dumps(flat).encode().ljust(1 << 16), np.uint8)
    payload = multihost_utils.broadcast_one_to_all(payload)
    return json.loads(bytes(np.asarray(payload)).decode().strip())
