"""Soft-prompt initializers, each a gin-configurable factory.

Every factory returns `init(rng, shape, embedding_table) -> float32 array`.  `shape` is
[length, embed] for one prompt or [num_prompts, length, embed] for a bank (each bank member is
drawn with its own key).  `embedding_table` is the model's (loaded, frozen) token embedding
[vocab, embed]: the processor hook passes it so vocabulary-based inits start from real
pretrained embeddings.
"""
import functools
from typing import Callable, Optional, Sequence, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError, check_finite

Initializer = Callable[[jax.Array, Sequence[int], Optional[jax.Array]], jax.Array]

GIN_MODULE = "prompt_tuning.prompts"  # gin selectors read `prompts.uniform`, `prompts.PromptProcessor`, ...
# T5 SentencePiece: pad 0, eos 1, unk 2 carry no meaning as prompt tokens.
SPECIAL_IDS = (0, 1, 2)


def _check_rank(shape, what):
    if len(shape) not in (2, 3):
        raise UserError(f"{what}: prompt shape must be [length, embed] or [num_prompts, length, embed], "
                         f"got {tuple(shape)}")


def _per_prompt(init_one):
    """Lift a [length, embed] initializer to banks: one independent draw per bank member."""
    @functools.wraps(init_one)
    def init(rng, shape, embedding_table=None):
        _check_rank(shape, init_one.__name__)
        if len(shape) == 2:
            return init_one(rng, tuple(shape), embedding_table)
        keys = jax.random.split(rng, shape[0])
        return jnp.stack([init_one(k, tuple(shape[1:]), embedding_table) for k in keys])
    return init


EMBEDDING_VARIABLE = "token_embedder/embedding"


@functools.lru_cache(maxsize=4)
def checkpoint_embedding(path: str, variable: str = EMBEDDING_VARIABLE) -> np.ndarray:
    """The token embedding table [vocab, embed] of the checkpoint at `path` (t5x legacy / Orbax / Hugging Face).

    Read when the prompt is initialised.  t5x's own CLI creates every parameter from scratch and restores the
    frozen checkpoint afterwards, so there the table the network passes is still random: vocabulary-based
    initializers given `embedding_checkpoint` read the real one here instead (the original project's
    `prompts.t5x_load(INITIAL_CHECKPOINT_PATH, 'token_embedder/embedding')`).
    """
    from prompt_tuning.checkpoints.loader import open_checkpoint
    source = open_checkpoint(path)
    if variable not in source.shapes:
        raise KeyError(f"{path}: no variable {variable!r}; it has e.g. {sorted(source.shapes)[:5]}")
    return np.asarray(source.read(variable), np.float32)


def _table(embedding_table, embedding_checkpoint):
    """The checkpoint's table when one is named (see checkpoint_embedding), else the network's."""
    return embedding_table if embedding_checkpoint is None else checkpoint_embedding(str(embedding_checkpoint))


def _need_table(embedding_table, shape, what):
    if embedding_table is None:
        raise UserError(f"{what} needs the model's embedding table; none was given")
    if embedding_table.shape[-1] != shape[-1]:
        raise UserError(f"{what}: embedding width {embedding_table.shape[-1]} != prompt width {shape[-1]}")
    return jnp.asarray(embedding_table, jnp.float32)


@gin.configurable(module=GIN_MODULE)
def byte_vocabulary():
    """seqio's byte vocabulary, for class_labels / from_text on byte models (ByT5, the synthetic tiny T5):
    prompt_init/prompts.class_labels.vocab = @prompts.byte_vocabulary()"""
    import seqio
    return seqio.ByteVocabulary()


@gin.configurable(module=GIN_MODULE)
def uniform(scale: float = 0.5) -> Initializer:
    """Uniform in [-scale, scale] (the paper's range; the original code drew from [0, scale))."""
    @_per_prompt
    def uniform_init(rng, shape, embedding_table=None):
        return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)
    return uniform_init


@gin.configurable(module=GIN_MODULE)
def sampled_vocab(population_size: int = 5000, exclude_ids: Sequence[int] = SPECIAL_IDS,
                  embedding_checkpoint: Optional[str] = None) -> Initializer:
    """Rows of the embedding table for ids drawn from the `population_size` most frequent tokens.

    SentencePiece ids are roughly frequency ordered, so "most frequent" = ids below
    `population_size` (special ids excluded).  Drawn without replacement unless the prompt is longer
    than the population.  embedding_checkpoint: read the table from this checkpoint (see checkpoint_embedding).
    """
    @_per_prompt
    def sampled_vocab_init(rng, shape, embedding_table=None):
        table = _need_table(_table(embedding_table, embedding_checkpoint), shape, "sampled_vocab")
        excluded = set(int(i) for i in exclude_ids)
        population = np.array([i for i in range(min(population_size, table.shape[0])) if i not in excluded])
        if population.size == 0:
            raise UserError(f"sampled_vocab: no ids left to sample below population_size={population_size}")
        ids = jax.random.choice(rng, population, (shape[0],), replace=shape[0] > population.size)
        return table[ids]
    return sampled_vocab_init


def _encode(vocab, text: str, what: str):
    """Token ids of `text`.  vocab: a seqio-like vocabulary, a SentencePiece model path, or None for
    the tasks' vocabulary (its path resolved late, after gin and flags)."""
    if vocab is None:
        from prompt_tuning.tasks.vocab import VOCABULARY as vocab
    elif isinstance(vocab, str):
        import seqio
        vocab = seqio.SentencePieceVocabulary(vocab, extra_ids=100)
    ids = list(vocab.encode(text))
    if not ids:
        raise UserError(f"{what}: {text!r} tokenizes to no ids")
    return ids


@gin.configurable(module=GIN_MODULE)
def class_labels(labels: Sequence[str] = gin.REQUIRED, vocab=None,
                 fallback: Optional[Initializer] = None, embedding_checkpoint: Optional[str] = None) -> Initializer:
    """Position i = mean embedding of label i's sub-tokens; later positions from `fallback`.

    `fallback` defaults to `sampled_vocab(embedding_checkpoint=embedding_checkpoint)`.  Labels are tokenized
    when the prompt is initialised.  embedding_checkpoint: see checkpoint_embedding (pass it to a given
    fallback too).
    """
    fallback = sampled_vocab(embedding_checkpoint=embedding_checkpoint) if fallback is None else fallback

    @_per_prompt
    def class_labels_init(rng, shape, embedding_table=None):
        label_ids = [_encode(vocab, label, "class_labels") for label in labels]
        table = _need_table(_table(embedding_table, embedding_checkpoint), shape, "class_labels")
        if len(label_ids) > shape[0]:
            raise UserError(f"class_labels: {len(label_ids)} labels do not fit a prompt of length {shape[0]}")
        rows = jnp.stack([table[jnp.asarray(ids)].mean(axis=0) for ids in label_ids])
        if len(label_ids) == shape[0]:
            return rows
        rest = fallback(rng, (shape[0] - len(label_ids), shape[1]), embedding_table)
        return jnp.concatenate([rows, rest], axis=0)
    return class_labels_init


@gin.configurable(module=GIN_MODULE)
def from_text(text: str = gin.REQUIRED, vocab=None, fallback: Optional[Initializer] = None,
              embedding_checkpoint: Optional[str] = None) -> Initializer:
    """The embeddings of `text`'s tokens; the rest cycles the text, or comes from `fallback` if given.
    embedding_checkpoint: see checkpoint_embedding."""
    @_per_prompt
    def from_text_init(rng, shape, embedding_table=None):
        ids = _encode(vocab, text, "from_text")
        table = _need_table(_table(embedding_table, embedding_checkpoint), shape, "from_text")
        if len(ids) > shape[0]:
            raise UserError(f"from_text: {text!r} has {len(ids)} tokens, more than prompt length {shape[0]}")
        if fallback is None:
            return table[jnp.asarray([ids[i % len(ids)] for i in range(shape[0])])]
        rows = table[jnp.asarray(ids)]
        if len(ids) == shape[0]:
            return rows
        return jnp.concatenate([rows, fallback(rng, (shape[0] - len(ids), shape[1]), embedding_table)])
    return from_text_init


def _checked(value, shape, source: str):
    value = np.asarray(value)
    if tuple(value.shape) != tuple(shape):
        raise UserError(f"prompt from {source} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return jnp.asarray(check_finite(value, f"prompt from {source}"), jnp.float32)


@gin.configurable(module=GIN_MODULE)
def from_array(array: Union[np.ndarray, jax.Array, str] = gin.REQUIRED) -> Initializer:
    """A fixed value: an array, or a `.npy` path (loaded lazily, `allow_pickle=False`)."""
    def from_array_init(rng, shape, embedding_table=None):
        if isinstance(array, str):
            return _checked(np.load(array, allow_pickle=False), shape, array)
        return _checked(array, shape, "array")
    return from_array_init


@gin.configurable(module=GIN_MODULE)
def from_npy(path: str = gin.REQUIRED) -> Initializer:
    """A prompt saved with `np.save` (e.g. by scripts/extract_prompt.py)."""
    return from_array(str(path))


@gin.configurable(module=GIN_MODULE)
def from_file(path: str = gin.REQUIRED) -> Initializer:
    """A saved prompt: `.npy`, PEFT adapter directory, or checkpoint (see `checkpoint_io.read_prompt`)."""
    def from_file_init(rng, shape, embedding_table=None):
        from prompt_tuning.prompts.checkpoint_io import read_prompt
        return _checked(read_prompt(path), shape, str(path))
    return from_file_init


@gin.configurable(module=GIN_MODULE)
def from_checkpoint(path: str = gin.REQUIRED, variable: Optional[str] = None) -> Initializer:
    """A prompt variable of a t5x (legacy or orbax) checkpoint; see `checkpoint_io.read_prompt_checkpoint`."""
    def from_checkpoint_init(rng, shape, embedding_table=None):
        from prompt_tuning.prompts.checkpoint_io import read_prompt_checkpoint
        return _checked(read_prompt_checkpoint(path, variable), shape, f"{path} ({variable or 'prompt'})")
    return from_checkpoint_init
