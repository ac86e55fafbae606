"""Progress line, TensorBoard scalars (clu metric writers), JSON lines and the end-of-run PNG plot."""
import datetime
import json
import os
import sys
import time
from typing import Dict, Mapping, Optional

import jax


class Progress:
    """One line per report: step, loss, steps/s, examples/s and ETA (process 0 only)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int, stream=None):
        self.total, self.batch_size = total_steps, batch_size
        self.last_step, self.last_time = start_step, time.time()
        self.stream = stream or sys.stdout
        self.enabled = jax.process_index() == 0

    def restart(self, step: int) -> None:
        self.last_step, self.last_time = step, time.time()

    def report(self, step: int, metrics: Mapping[str, float]) -> Dict[str, float]:
        now = time.time()
        steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = datetime.timedelta(seconds=int((self.total - step) / steps_per_s)) if steps_per_s > 0 else "?"
        rates = {"steps_per_sec": steps_per_s, "examples_per_sec": steps_per_s * self.batch_size}
        if self.enabled:
            width = len(str(self.total))
            done = int(20 * step / max(self.total, 1))
            print(f"[{'#' * done}{'.' * (20 - done)}] step {step:>{width}}/{self.total} "
                  f"loss {metrics.get('loss', float('nan')):.4f} | {steps_per_s:.2f} steps/s "
                  f"{rates['examples_per_sec']:.1f} examples/s | ETA {eta}", file=self.stream, flush=True)
        return rates


class Writer:
    """TensorBoard scalars under MODEL_DIR/{train,eval} plus the same numbers as JSON lines (for plots)."""

    def __init__(self, model_dir: str, name: str):
        self.dir = os.path.join(model_dir, name)
        self.primary = jax.process_index() == 0
        self.tb = _default_writer(self.dir, self.primary)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self.tb.write_scalars(step, dict(scalars))
        if self.primary:
            with open(os.path.join(self.dir, "scalars.jsonl"), "a") as f:
                f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

    def close(self):
        self.tb.flush()
        self.tb.close()


class _TFScalarWriter:
    """Scalar event files without the tensorboard package (clu's SummaryWriter imports it)."""

    def __init__(self, logdir: str):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        self.tf, self.writer = tf, tf.summary.create_file_writer(logdir)
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    def write_scalars(self, step, scalars):
        with self.writer.as_default():
            for tag, value in scalars.items():
                self.tf.summary.write(tag, self.tf.constant(float(value), self.tf.float32), step=int(step),
                                      metadata=self.metadata)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


def _default_writer(logdir: str, primary: bool):
    """clu's default writer (TensorBoard + logging); a TF-only scalar writer if tensorboard is not installed."""
    from clu.metric_writers.logging_writer import LoggingWriter
    if not primary:
        return LoggingWriter()
    try:
        from clu import metric_writers
    except ImportError:
        return _TFScalarWriter(logdir)
    return metric_writers.create_default_writer(logdir, asynchronous=False)


def _read_jsonl(path: str):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(model_dir: str, metric: Optional[str] = None, filename: str = "training_curves.png") -> Optional[str]:
    """Training loss (and the eval metric, if any) against step, as a PNG in MODEL_DIR; returns its path."""
    if jax.process_index() != 0:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = {r["step"]: r["loss"] for r in _read_jsonl(os.path.join(model_dir, "train", "scalars.jsonl"))
             if "loss" in r}  # a resumed run may repeat steps: the last value wins
    evals = [r for r in _read_jsonl(os.path.join(model_dir, "eval", "scalars.jsonl"))]
    if metric is None and evals:
        names = [k for k in evals[-1] if k != "step"]
        metric = names[0] if names else None
    evals = {r["step"]: r[metric] for r in evals if metric in r}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sorted(train), [train[s] for s in sorted(train)], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(sorted(evals), [evals[s] for s in sorted(evals)], "o-", color="tab:orange", label=metric)
        ax2.set_ylabel(metric, color="tab:orange")
    ax.set_title("prompt tuning")
    fig.tight_layout()
    path = os.path.join(model_dir, filename)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
