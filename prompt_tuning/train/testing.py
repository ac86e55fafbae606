"""A tiny seqio task and a tiny model for tests and smoke runs of the training stack (no downloads)."""
import gin
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.t5.config import T5Config

TINY_TASK = "pt_tiny_count"
TINY_SCORE_TASK = "pt_tiny_count_score"
VOCAB = seqio.ByteVocabulary()
OUTPUT_FEATURES = {"inputs": seqio.Feature(VOCAB, add_eos=True), "targets": seqio.Feature(VOCAB, add_eos=True)}
# A whole training configuration on the tiny model and task, for CLI runs in tests (MODEL_DIR still to set).
TINY_RUN_GIN = """
include 'models/t5_1_1_prompt.gin'
include 'prompts/uniform.gin'
include 'runs/prompt_finetune.gin'
import prompt_tuning.train.testing
network.Transformer.config = @testing.tiny_config()
PROMPT_LENGTH = 3
MIXTURE_OR_TASK_NAME = 'pt_tiny_count'
TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 4}
BATCH_SIZE = 8
TRAIN_STEPS = 2
"""


def tiny_examples(split: str, n: int = 64, seed: int = 0):
    """Strings of a/b; the target says whether 'a' outnumbers 'b'."""
    rng = np.random.RandomState(seed + (split != "train"))
    inputs, targets = [], []
    for _ in range(n):
        text = "".join(rng.choice(list("ab"), size=rng.randint(3, 9)))
        inputs.append(text)
        targets.append("yes" if text.count("a") > text.count("b") else "no")
    return inputs, targets


def _dataset_fn(split, shuffle_files=False, seed=None):
    inputs, targets = tiny_examples(split, 64 if split == "train" else 16)
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})


def accuracy(targets, predictions):
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def mean_score(targets, scores):
    return {"mean_score": float(np.mean(scores))}


def register_tiny_tasks():
    """Registers the tiny decoding task and its score-metric twin (idempotent)."""
    for name, metric in ((TINY_TASK, accuracy), (TINY_SCORE_TASK, mean_score)):
        if name in seqio.TaskRegistry.names():
            continue
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(_dataset_fn, splits=("train", "validation"),
                                            num_input_examples={"train": 64, "validation": 16}),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=OUTPUT_FEATURES, metric_fns=[metric])


register_tiny_tasks()


@gin.configurable
def tiny_config(**overrides) -> T5Config:
    """A T5 1.1-shaped model small enough to compile in seconds (byte vocabulary)."""
    fields = dict(vocab_size=264, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                  num_decoder_layers=1)
    fields.update(overrides)
    return T5Config(**fields)
