"""seqio evaluation of the prompted model: by decoding (predict metrics) and by scoring (rank classification).

Every process walks the same eval batches (padded to the global batch size) and feeds its slice of rows; the
results are gathered so each process holds all predictions.  Metrics are computed on process 0 and written
as JSON lines (MODEL_DIR/eval/metrics.jsonl) and TensorBoard scalars by the caller's writer.
"""
import json
import os
from typing import Dict, List, Mapping, Optional, Tuple

import gin
import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils

from prompt_tuning.errors import UserError
from prompt_tuning.models import BaseModel
from prompt_tuning.train import data
from prompt_tuning.train.trainer import Trainer, TrainState


@gin.configurable
def decoding_options(method: str = "greedy", num_decodes: int = 1, temperature: float = 1.0, topk: int = 0,
                     topp: float = 0.0, alpha: float = 0.6) -> dict:
    """How eval and infer decode; gin/decoding/*.gin set these."""
    return dict(method=method, num_decodes=num_decodes, temperature=temperature, topk=topk, topp=topp, alpha=alpha)


def _gather(x) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def iterate_global(ds, batch_size: int, mesh):
    """(indices [n], global batch) over an enumerated seqio dataset; the last batch is padded with zeros."""
    rows = data.local_batch_size(batch_size)
    start = jax.process_index() * rows
    for index, features in ds.batch(batch_size).as_numpy_iterator():
        n = len(index)
        padded = {k: np.pad(v, [(0, batch_size - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in features.items()}
        local = {k: v[start:start + rows] for k, v in padded.items()}
        yield index, n, data.to_global(local, mesh)


def predict_dataset(model: BaseModel, params, ds, batch_size: int, mesh, max_decode_len: int, eos_id: int = 1,
                    decoding: Optional[dict] = None) -> List[Tuple[int, List[int]]]:
    """(example index, decoded token ids) for every example of an enumerated, feature-converted dataset."""
    decoding = decoding or decoding_options()
    out = []
    for index, n, batch in iterate_global(ds, batch_size, mesh):
        tokens, _ = model.predict_batch(params, batch, max_decode_len=max_decode_len, eos_id=eos_id, **decoding)
        out.extend((int(i), t.tolist()) for i, t in zip(index, _gather(tokens)[:n]))
    return out


@gin.configurable
class Evaluator:
    """Wraps `seqio.Evaluator` for one mixture or task and split.

    task_rows: {task name: prompt-bank row} when each task has its own prompt (a multi-task bank); every task
    of the mixture is then evaluated with its row, and its metrics are reported under its name as usual.
    """

    def __init__(self, trainer: Trainer, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 batch_size: int, split: str = "validation", num_examples: Optional[int] = None,
                 output_dir: Optional[str] = None, decoding: Optional[dict] = None, eos_id: int = 1,
                 task_rows: Optional[Mapping[str, int]] = None):
        self.trainer, self.batch_size, self.output_dir, self.eos_id = trainer, batch_size, output_dir, eos_id
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
                                   self._max_decode_len, self.eos_id, self.decoding)
        return predict

    def _score_fn(self, state):
        def score(ds):
            out = []
            for index, n, batch in iterate_global(ds, self.batch_size, self.trainer.mesh):
                scores = _gather(self.trainer.score_batch(state, batch))[:n]
                out.extend((int(i), float(s)) for i, s in zip(index, scores))
            return out
        return score

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
            flat.update({f"{task}/{name}": float(_scalar(value)) for task, metrics in results.items()
                         for name, value in metrics.items()})
        if self.output_dir and jax.process_index() == 0 and flat:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": int(step), **flat}) + "\n")
        # Every process needs the metrics (best-checkpoint choice is collective).
        return broadcast_metrics(flat)


def _scalar(value):
    """seqio returns clu metric objects or plain numbers."""
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
