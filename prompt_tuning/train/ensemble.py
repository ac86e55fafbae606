"""Prompt ensembles (the paper's Table 3): N prompts of one task evaluated together in one batched forward.

Every eval batch of B examples becomes one batch of B * N rows, example e with prompt i at row e * N + i
(`prompt_index` = i), decoded or scored in a single call; nothing loops over the prompts.  From those
outputs each prompt's own metrics are computed, and the ensemble's:

- decodes: a majority vote over the N prompts' decoded token ids, per example.  Ties (several answers with
  the same count) go to the tied answer given by the lowest prompt row (so with N copies of one prompt the
  ensemble is that prompt, and with all answers different it is row 0's);
- rank classification: the N prompts' scores (summed log-likelihoods) summed per example, i.e. the
  product of their likelihoods.  A `_rank` task's label candidates share their input's encoding
  (evaluation.score_dataset): each call encodes B inputs x N prompts once and scores their candidates.

The report gives, per task and metric, each prompt's value, their average, standard deviation and best
(highest) and the ensemble's, as JSON lines and as a Markdown table with Table 3's columns.
"""
import collections
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from prompt_tuning.train.evaluation import (Evaluator, broadcast_metrics, bucket_trimmer, decoding_options, gather,
                                            iterate_global, metric_value, repeat_over_rows, score_dataset)

ENSEMBLE, AVERAGE, BEST = "ensemble", "average", "best"


# ---------------------------------------------------------------------------------------- combining outputs
def majority_vote(answers: Sequence) -> object:
    """The most frequent of one example's N answers (hashable, in prompt-row order); a tie goes to the tied
    answer that the lowest row gave."""
    if not len(answers):
        raise ValueError("majority_vote needs at least one answer")
    counts = collections.Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)


def vote_decodes(decodes: Sequence[Sequence[Sequence[int]]]) -> List[List[int]]:
    """Per example, the majority vote over its N decodes (token id lists, EOS and padding stripped first)."""
    return [list(majority_vote([tuple(_strip(d)) for d in per_prompt])) for per_prompt in decodes]


def sum_scores(scores) -> np.ndarray:
    """[examples, N] rank-classification scores -> [examples]: their sum (the log of the likelihoods' product)."""
    return np.asarray(scores, np.float64).sum(axis=1)


def _strip(tokens, eos_id: int = 1):
    out = []
    for t in tokens:
        if t == eos_id or t == 0:
            break
        out.append(int(t))
    return out


# ---------------------------------------------------------------------------------------- one batched forward
class EnsembleEvaluator(Evaluator):
    """Evaluates prompt-bank rows `rows` (an ensemble of one task's prompts) on every task of
    `mixture_or_task_name`, in one forward per batch; metrics as Evaluator's, keyed

        '<task>/<metric>'               the ensemble (what BEST_METRIC and early stopping see)
        '<task>/prompt_<i>/<metric>'    prompt i alone (i = its place in `rows`)
        '<task>/average/<metric>', '<task>/best/<metric>'

    and the Table-3 report in <output_dir>/ensemble.jsonl and ensemble.md.
    """

    def __init__(self, trainer, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                 batch_size: int, rows: Sequence[int], split: str = "validation",
                 num_examples: Optional[int] = None, output_dir: Optional[str] = None,
                 decoding: Optional[dict] = None, eos_id: int = 1, names: Optional[Sequence[str]] = None,
                 length_buckets=None):
        self.trainer, self.batch_size, self.output_dir, self.eos_id = trainer, batch_size, output_dir, eos_id
        self.length_buckets, self.trim = length_buckets, bucket_trimmer(trainer.model, length_buckets)
        self.decoding = decoding or decoding_options()
        self.rows = [int(r) for r in rows]
        if not self.rows:
            raise ValueError("EnsembleEvaluator: no prompt rows to ensemble")
        self.names = list(names) if names else [f"prompt_{i}" for i in range(len(self.rows))]
        tasks = [t.name for t in seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))]
        self.evaluators = [seqio.Evaluator(
            task, feature_converter=trainer.model.feature_converter(), eval_split=split,
            sequence_length=dict(task_feature_lengths), num_examples=num_examples, use_cached=False,
            async_compute_metrics=False) for task in tasks]
        self._max_decode_len = task_feature_lengths["targets"]

    def _all_prompts(self, batch):
        """B padded examples -> the B * N rows decoded in one call (cut to LENGTH_BUCKETS)."""
        rows = repeat_over_rows(batch, self.rows)
        return self.trim(rows) if self.trim else rows

    def _outputs(self, state, params):
        """predict_fn / score_fn that run all prompts at once and keep every prompt's outputs in `store`."""
        store, n = {}, len(self.rows)
        model, mesh = self.trainer.model, self.trainer.mesh

        def predict(ds):
            out = []
            for index, count, batch in iterate_global(ds, self.batch_size, mesh, self._all_prompts):
                tokens, _ = model.predict_batch(params, batch, max_decode_len=self._max_decode_len,
                                                eos_id=self.eos_id, **self.decoding)
                tokens = gather(tokens).reshape(self.batch_size, n, -1)[:count]
                out.extend((int(i), t.tolist()) for i, t in zip(index, tokens))
            store["predict"] = out
            return [(i, t[0]) for i, t in out]

        def score(ds):
            store["score"] = score_dataset(self.trainer, state, ds, self.batch_size, self.length_buckets, self.rows)
            return [(i, float(s[0])) for i, s in store["score"]]
        return store, predict, score

    def evaluate(self, state, step: int) -> Dict[str, float]:
        params, flat, report = self.trainer.params_for_eval(state), {}, []
        compute = jax.process_index() == 0
        for evaluator in self.evaluators:
            if not evaluator.eval_tasks:
                continue
            store, predict, score = self._outputs(state, params)
            per_prompt = [_metrics(evaluator.evaluate(compute_metrics=compute, step=step, predict_fn=predict,
                                                      score_fn=score))]
            for i in range(1, len(self.rows)):  # the other prompts' metrics from the outputs already computed
                per_prompt.append(_metrics(evaluator.evaluate(
                    compute_metrics=compute, step=step,
                    predict_fn=lambda ds, i=i: [(j, t[i]) for j, t in store["predict"]],
                    score_fn=lambda ds, i=i: [(j, float(s[i])) for j, s in store["score"]])))
            ensemble = _metrics(evaluator.evaluate(
                compute_metrics=compute, step=step,
                predict_fn=lambda ds: [(j, v) for (j, _), v in zip(
                    store["predict"], vote_decodes([t for _, t in store["predict"]]))],
                score_fn=lambda ds: [(j, float(v)) for (j, _), v in zip(
                    store["score"], sum_scores([s for _, s in store["score"]]))]))
            for task, metrics in ensemble.items():
                for metric, value in metrics.items():
                    values = [p[task][metric] for p in per_prompt]
                    line = table_row(task, metric, values, value, self.names)
                    report.append(line)
                    flat[f"{task}/{metric}"] = value
                    flat.update({f"{task}/{name}/{metric}": v for name, v in zip(self.names, values)})
                    flat[f"{task}/{AVERAGE}/{metric}"] = line[AVERAGE]
                    flat[f"{task}/{BEST}/{metric}"] = line[BEST]
        if self.output_dir and compute and flat:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": int(step), **flat}) + "\n")
            write_report(self.output_dir, step, report)
        return broadcast_metrics(flat)


def _metrics(result) -> Dict[str, Dict[str, float]]:
    """seqio's (future, outputs) -> {task: {metric: float}} ({} on processes that compute none)."""
    future, _ = result
    return {task: {name: float(metric_value(v)) for name, v in metrics.items()}
            for task, metrics in (future.result() or {}).items()}


# ---------------------------------------------------------------------------------------- the report
def table_row(task: str, metric: str, values: Sequence[float], ensemble: float,
              names: Optional[Sequence[str]] = None) -> dict:
    """One Table-3 line: each prompt's value, their average, std (population) and best, and the ensemble."""
    values = [float(v) for v in values]
    names = list(names) if names else [f"prompt_{i}" for i in range(len(values))]
    return {"task": task, "metric": metric, "prompts": dict(zip(names, values)),
            AVERAGE: float(np.mean(values)), "std": float(np.std(values)), BEST: float(np.max(values)),
            ENSEMBLE: float(ensemble)}


def markdown_table(lines: Sequence[dict]) -> str:
    """Table 3's columns (each prompt, average, std, best, ensemble), one row per task and metric."""
    if not lines:
        return ""
    names = list(lines[0]["prompts"])
    header = ["task", "metric"] + names + ["average", "std", "best", "ensemble"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line["task"], line["metric"]] + [f"{line['prompts'][n]:.2f}" for n in names]
        cells += [f"{line[k]:.2f}" for k in (AVERAGE, "std", BEST, ENSEMBLE)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_report(output_dir: str, step: int, lines: Sequence[dict]) -> None:
    """Appends the lines to <output_dir>/ensemble.jsonl; <output_dir>/ensemble.md holds the latest table."""
    with open(os.path.join(output_dir, "ensemble.jsonl"), "a") as f:
        for line in lines:
            f.write(json.dumps({"step": int(step), **line}) + "\n")
    with open(os.path.join(output_dir, "ensemble.md"), "w") as f:
        f.write(f"Prompt ensemble at step {int(step)}\n\n" + markdown_table(lines))


def ensemble_rows(rows: Optional[Mapping[str, int]]) -> Optional[List[str]]:
    """['prompt_0', ...] in row order for an ensemble bank (rows named '<task>/prompt_<i>', as
    data.prompt_row_names names an ensemble run's); None for a per-task bank or no bank."""
    if not rows:
        return None
    names = [name.rsplit("/", 1)[-1] for name in sorted(rows, key=rows.get)]
    return names if all(name.startswith("prompt_") for name in names) else None


def with_prompt_bank(model, sources: Sequence):
    """`model` with a bank holding the prompts `sources` (files, checkpoints, PEFT dirs, arrays; any lengths)
    as its initial value, row i = sources[i]; the placement stays the model's."""
    import dataclasses
    from prompt_tuning import prompts
    hook = model.module.PROCESSOR_HOOK
    current = getattr(model.module, hook)
    placement = getattr(current, "keywords", {}).get("placement", "prefix")
    factory, _ = prompts.prompt_factory(list(sources), placement)
    return dataclasses.replace(model, module=model.module.clone(**{hook: factory}))
