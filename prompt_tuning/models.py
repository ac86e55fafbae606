"""Models: the one place that knows a network's batch keys, loss, scores and decoding (t5x's models.py).

The trainer, evaluation, the CLIs and the benchmarks hold a model and call only its methods, so none of them
knows whether the network is an encoder-decoder or a decoder-only prefix LM.  Batches use t5x's feature names;
`prompt_index` [B] (the row of a prompt bank each example uses) is optional everywhere.

    model = EncoderDecoderModel(Transformer(config, encoder_input_processor_factory=...))
    variables = model.init(rng, model.dummy_batch({'inputs': 512, 'targets': 8}))
    sums = model.loss_sums(params, batch, dropout_rng=rng, z_loss=1e-4)     # add over microbatches
    scores = model.score_batch(params, batch)                                # [B] rank-classification scores
    scores = model.score_candidates(params, batch)    # [B, C]: C candidate targets per input, encoded once
    tokens, scores = model.predict_batch(params, batch, method='beam', num_decodes=4)

Every method is pure; `predict_batch` jits itself (keyed by the model and the decoding options), the rest
are traced inside the trainer's jitted steps.  Models are frozen dataclasses, hashable, so jit can key on them.
"""
import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import decoding, losses
from prompt_tuning.errors import UserError
from prompt_tuning.t5.decoder_only import DecoderOnly
from prompt_tuning.t5.network import Transformer

if TYPE_CHECKING:
    import seqio

Batch = Mapping[str, Any]
PROMPT_INDEX = "prompt_index"
DECODE_METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """What every model provides; subclasses name their features and implement logits and decoding."""

    module: nn.Module
    # Features the module reads (the feature converter's model features) and those a batch may omit.
    FEATURES: ClassVar[Tuple[str, ...]] = ()
    OPTIONAL_FEATURES: ClassVar[Tuple[str, ...]] = (PROMPT_INDEX,)
    # The features that fix a row's input side: rows equal in these can share one encoding when scored
    # (`score_candidates`).  Empty: every row is scored on its own.
    INPUT_FEATURES: ClassVar[Tuple[str, ...]] = ()
    # The task features (seqio's names) whose lengths TASK_FEATURE_LENGTHS must give.
    TASK_FEATURES: ClassVar[Tuple[str, ...]] = ("inputs", "targets")
    # Features whose length is one (padding is cut off them together; see data.trim_to_buckets), by name.
    LENGTH_GROUPS: ClassVar[Mapping[str, Tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ data
    def feature_converter(self, prompt_index: Optional[int] = None, pack: bool = False) -> "seqio.FeatureConverter":
        """Task features -> this model's batch keys: one example per row, or with `pack` several, each with
        its own prompt (models that can pack override this).

        prompt_index: the prompt-bank row every converted example uses (its task's row), as a feature.
        """
        if pack:
            raise UserError(f"PACK=True: {type(self).__name__} cannot pack examples (EncoderDecoderModel can)")
        return self.feature_converter_cls()(pack=False, prompt_index=prompt_index)

    def feature_converter_cls(self) -> type:
        """The seqio converter class.  Imported here, not at the top: `prompt_tuning.feature_converters` loads
        seqio and TensorFlow (~0.6 GB resident), which a process that only runs the model does not need."""
        raise NotImplementedError

    def features(self, batch: Batch, *required: str) -> dict:
        """The model features of `batch` as arrays; other keys (strings, ids) are dropped before jit."""
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
        out = {k: _as_array(batch[k]) for k in self.FEATURES + self.OPTIONAL_FEATURES
               if batch.get(k) is not None}
        if "decoder_target_tokens" in out and "decoder_loss_weights" not in out:
            out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(jnp.int32)
        return out

    @property
    def vocab_size(self) -> int:
        """Token ids must be below this (the embedding table's rows)."""
        return self.module.config.vocab_size

    @property
    def token_features(self) -> Tuple[str, ...]:
        return tuple(k for k in self.FEATURES if k.endswith("_tokens"))

    def prompt_length(self) -> int:
        """The positions the prompt adds to every row (its processor's length; 0 without a prompt)."""
        factory = getattr(self.module, getattr(self.module, "PROCESSOR_HOOK", ""), None)
        return int(getattr(factory(), "length", 0)) if factory is not None else 0

    def positions_per_row(self, batch: Batch) -> int:
        """The positions one row of `batch` fills in the network: each length group's (a candidates batch's
        [B, C, T] targets count C * T) plus the prompt's.  `Trainer.microbatch_positions` budgets these."""
        groups = [names[0] for names in self.LENGTH_GROUPS.values() if names[0] in batch]
        return sum(math.prod(batch[k].shape[1:]) for k in groups) + self.prompt_length()

    def model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        """The length of each model feature of an unpacked batch, as this model's seqio converter gives it
        (a test checks they agree), computed here so that building a model's batch does not load seqio."""
        missing = sorted(set(self.TASK_FEATURES) - set(task_feature_lengths))
        if missing:
            raise UserError(f"TASK_FEATURE_LENGTHS={dict(task_feature_lengths)} lacks {missing}: this model "
                            f"needs a length for each of {sorted(self.TASK_FEATURES)}")
        return self._feature_lengths(task_feature_lengths)

    def _feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        raise NotImplementedError

    def dummy_batch(self, task_feature_lengths: Mapping[str, int], batch_size: int = 1) -> dict:
        """All-ones features with the run's shapes (initialisation and sharding only look at shapes)."""
        lengths = self.model_feature_lengths(task_feature_lengths)
        return {k: jnp.ones((batch_size, lengths[k]), jnp.int32) for k in self.FEATURES}

    # ------------------------------------------------------------------ parameters
    def init(self, rng: jax.Array, batch: Batch, params=None):
        """The module's variables (boxed with their logical axes) for a batch of these shapes.

        With `params` (a pretrained checkpoint's), those are kept and only the missing ones are created: the
        prompt, whose vocabulary-based initializers then read the loaded embedding table.
        """
        inputs = self._inputs(self.features(batch))
        if params is None:
            return self.module.init(rng, **inputs)
        _, variables = self.module.apply({"params": params}, **inputs, rngs={"params": rng}, mutable=["params"])
        return variables

    def bare(self) -> "BaseModel":
        """The same model without its prompt: the parameter tree a pretrained checkpoint holds."""
        return dataclasses.replace(self, module=self.module.clone(**{self.module.PROCESSOR_HOOK: None}))

    # ------------------------------------------------------------------ training and scoring
    def _inputs(self, batch: dict) -> dict:
        raise NotImplementedError

    def logits(self, params, batch: Batch, *, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
        """Teacher-forced float32 logits [B, T, vocab]; dropout on when `dropout_rng` is given."""
        features = self.features(batch, *self.FEATURES[:2])
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return self.module.apply({"params": params}, **self._inputs(features),
                                 enable_dropout=dropout_rng is not None, rngs=rngs)

    def loss_sums(self, params, batch: Batch, *, dropout_rng: Optional[jax.Array] = None, z_loss: float = 0.0,
                  num_prompt_rows: int = 0) -> Mapping[str, jax.Array]:
        """Sums over the batch of t5x's token losses (see losses.loss_sums); add them across microbatches.

        With `num_prompt_rows` (a prompt bank's size) and a `prompt_index` feature, also 'row_weight'
        [num_prompt_rows]: each bank row's share of the target tokens, to normalise each row on its own.
        """
        features = self.features(batch)
        logits = self.logits(params, features, dropout_rng=dropout_rng)
        sums = losses.loss_sums(logits, features["decoder_target_tokens"], features["decoder_loss_weights"],
                                z_loss)
        if num_prompt_rows and PROMPT_INDEX in features:
            per_example = features["decoder_loss_weights"].astype(jnp.float32).sum(-1)
            sums = dict(sums, row_weight=jax.ops.segment_sum(per_example, features[PROMPT_INDEX].astype(jnp.int32),
                                                             num_prompt_rows))
        return sums

    def token_log_probs(self, params, batch: Batch) -> jax.Array:
        """log p(target) per token [B, T], 0 where decoder_loss_weights is 0 (default: target > 0)."""
        features = self.features(batch)
        return losses.token_log_probs(self.logits(params, features), features["decoder_target_tokens"],
                                      features["decoder_loss_weights"])

    def score_batch(self, params, batch: Batch) -> jax.Array:
        """Summed target log-likelihood per example [B] (t5x's score_batch; EOS counts): rank classification."""
        return self.token_log_probs(params, batch).sum(-1)

    def score_candidates(self, params, batch: Batch) -> jax.Array:
        """Rank classification with C candidate targets per input: scores [B, C], each equal to score_batch of
        that (input, candidate) row.  `INPUT_FEATURES` are [B, ...]; the decoder features are [B, C, T].

        This generic version repeats every input C times; models that can share the input's work override it.
        """
        features = self.features(batch)
        b, c = features["decoder_target_tokens"].shape[:2]
        per_input = lambda k, v: k in self.INPUT_FEATURES or v.ndim == 1   # noqa: E731  (prompt_index [B])
        rows = {k: (jnp.repeat(v, c, axis=0) if per_input(k, v) else v.reshape(b * c, *v.shape[2:]))
                for k, v in features.items()}
        return self.score_batch(params, rows).reshape(b, c)

    # ------------------------------------------------------------------ decoding
    def predict_batch(self, params, batch: Batch, *, method: str = "greedy", num_decodes: int = 1,
                      temperature: float = 1.0, topk: int = 0, topp: float = 0.0, alpha: float = 0.6,
                      max_decode_len: Optional[int] = None, rng: Optional[jax.Array] = None, eos_id: int = 1,
                      return_all_decodes: bool = False) -> Tuple[jax.Array, jax.Array]:
        """Decodes with a key/value cache, as t5x's `predict_batch_with_aux`.

        method: 'greedy' (argmax), 'sample' (temperature / topk / topp, `num_decodes` samples) or 'beam'
        (`num_decodes` beams, brevity penalty alpha).  max_decode_len defaults to the targets' length in the
        batch.  Returns the best decode (tokens int32[B, T], scores float32[B]) or, with return_all_decodes,
        all of them ([B, num_decodes, T], [B, num_decodes]) sorted ascending by score, best last.  Positions
        after EOS are 0.  Greedy/sample scores are summed log-probs of the generated tokens up to and
        including EOS; beam scores are length-normalised as t5x.
        """
        args, static = self._predict_args(batch, method, num_decodes, temperature, topk, topp, alpha,
                                          max_decode_len, rng, eos_id)
        tokens, scores = _predict_jit(self, params, *args, **static)
        if return_all_decodes:
            return tokens, scores
        return tokens[:, -1], scores[:, -1]

    def lower_predict_batch(self, params, batch: Batch, **options) -> jax.stages.Lowered:
        """The jitted decoding program for these shapes and options, lowered (for compile-time analysis)."""
        options.pop("return_all_decodes", None)
        args, static = self._predict_args(batch, **{**_PREDICT_DEFAULTS, **options})
        return _predict_jit.lower(self, params, *args, **static)

    def _predict_args(self, batch, method, num_decodes, temperature, topk, topp, alpha, max_decode_len, rng,
                      eos_id):
        if method not in DECODE_METHODS:
            raise UserError(f"predict_batch: unknown method {method!r}; use {', '.join(map(repr, DECODE_METHODS))}")
        features = self.decoding_features(batch)
        if max_decode_len is None:
            max_decode_len = self.default_decode_len(batch)
        rng = jax.random.PRNGKey(0) if rng is None else rng
        return (features, rng), dict(method=method, num_decodes=int(num_decodes), temperature=float(temperature),
                                     topk=int(topk), topp=float(topp), alpha=float(alpha),
                                     max_decode_len=int(max_decode_len), eos_id=int(eos_id))

    def decoding_features(self, batch: Batch) -> dict:
        raise NotImplementedError

    def default_decode_len(self, batch: Batch) -> int:
        raise NotImplementedError

    def decode(self, params, features: dict, rng, *, method, num_decodes, temperature, topk, topp, alpha,
               max_decode_len, eos_id):
        """Traced body of predict_batch: builds the cache and the step function, runs the search."""
        cache, step_fn = self.decoding_state(params, features, max_decode_len, num_decodes)
        batch_size = next(iter(features.values())).shape[0]
        if method == "beam":
            return decoding.beam_search(step_fn, cache, batch_size, num_decodes, max_decode_len, eos_id,
                                        alpha=alpha)
        return decoding.temperature_sample(step_fn, cache, batch_size, max_decode_len, eos_id, rng,
                                           temperature=temperature, topk=1 if method == "greedy" else topk,
                                           topp=topp, num_decodes=num_decodes)

    def decoding_state(self, params, features: dict, max_decode_len: int, num_decodes: int):
        """(cache for batch B, step_fn over B * num_decodes rows) in decoding.py's protocol."""
        raise NotImplementedError


def _as_array(x):
    """Arrays and abstract shapes pass as they are (keeping their shardings); numpy goes to the device."""
    return x if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else jnp.asarray(x)


_PREDICT_DEFAULTS = dict(method="greedy", num_decodes=1, temperature=1.0, topk=0, topp=0.0, alpha=0.6,
                         max_decode_len=None, rng=None, eos_id=1)


@functools.partial(jax.jit, static_argnames=("model", "method", "num_decodes", "temperature", "topk", "topp",
                                             "alpha", "max_decode_len", "eos_id"))
def _predict_jit(model: BaseModel, params, features, rng, **options):
    return model.decode(params, features, rng, **options)


def _zeros_like_shapes(fn, *args):
    """fn's outputs as zeros, shapes found without computing (an empty decoding cache)."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


@gin.configurable(module="models")
@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel(BaseModel):
    """T5 encoder-decoder (`t5.network.Transformer`); the soft prompt joins the embedded encoder input."""

    FEATURES: ClassVar[Tuple[str, ...]] = ("encoder_input_tokens", "decoder_input_tokens",
                                           "decoder_target_tokens", "decoder_loss_weights")
    PACKING_FEATURES: ClassVar[Tuple[str, ...]] = ("encoder_segment_ids", "encoder_positions",
                                                   "decoder_segment_ids", "decoder_positions")
    OPTIONAL_FEATURES: ClassVar[Tuple[str, ...]] = (PROMPT_INDEX,) + PACKING_FEATURES
    INPUT_FEATURES: ClassVar[Tuple[str, ...]] = ("encoder_input_tokens", PROMPT_INDEX)
    LENGTH_GROUPS: ClassVar[Mapping[str, Tuple[str, ...]]] = {
        "inputs": ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"),
        "targets": ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions")}

    def feature_converter(self, prompt_index: Optional[int] = None, pack: bool = False) -> "seqio.FeatureConverter":
        """With `pack`, seqio's packing with a prompt slot at the start of every example (see
        feature_converters.EncDecFeatureConverter): each example attends only within itself and sees its own copy of the prompt,
        so its logits are those of its unpacked row."""
        if not pack:
            return super().feature_converter(prompt_index)
        return self.feature_converter_cls()(pack=True, prompt_index=prompt_index, prompt_slots=self.prompt_slots())

    def feature_converter_cls(self) -> type:
        from prompt_tuning.feature_converters import EncDecFeatureConverter
        return EncDecFeatureConverter

    def _feature_lengths(self, task_feature_lengths):
        targets = task_feature_lengths["targets"]
        return {"encoder_input_tokens": task_feature_lengths["inputs"], "decoder_input_tokens": targets,
                "decoder_target_tokens": targets, "decoder_loss_weights": targets}

    def prompt_slots(self) -> int:
        """The prompt positions each packed example reserves (its processor's length; 0 without a prompt)."""
        factory = self.module.encoder_input_processor_factory
        if factory is None:
            return 0
        processor = factory()
        if not hasattr(processor, "check_packable"):
            raise UserError(f"PACK=True: the prompt processor {type(processor).__name__} cannot fill packed "
                            "rows (prompts.PromptProcessor can)")
        processor.check_packable()
        return processor.length

    def _inputs(self, batch: dict) -> dict:
        packing = {k: batch[k] for k in self.PACKING_FEATURES if k in batch}
        return {"encoder_input_tokens": batch["encoder_input_tokens"],
                "decoder_input_tokens": batch["decoder_input_tokens"],
                "decoder_target_tokens": batch.get("decoder_target_tokens"),
                "prompt_index": batch.get(PROMPT_INDEX), **packing,
                # Packed rows from feature_converter(pack=True) hold their prompt slots.
                **({"packed_prompts": True} if packing else {})}

    def score_candidates(self, params, batch: Batch) -> jax.Array:
        """Encodes each of the B inputs once; the decoder scores its C candidates against that encoding."""
        features = self.features(batch, "encoder_input_tokens", "decoder_input_tokens")
        module = self.module
        tokens, prompt_index = features["encoder_input_tokens"], features.get(PROMPT_INDEX)
        b, c, t = features["decoder_target_tokens"].shape
        encoded = module.apply({"params": params}, tokens, prompt_index=prompt_index, method=module.encode)
        # Decoder row i*C+j is input i's candidate j; the decoder attends C rows to each encoded input.
        flat = {k: features[k].reshape(b * c, t) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                           "decoder_loss_weights")}
        logits = module.apply({"params": params}, encoded, tokens, flat["decoder_input_tokens"],
                              flat["decoder_target_tokens"], prompt_index=prompt_index, method=module.decode)
        log_probs = losses.token_log_probs(logits, flat["decoder_target_tokens"], flat["decoder_loss_weights"])
        return log_probs.sum(-1).reshape(b, c)

    def decoding_features(self, batch: Batch) -> dict:
        features = self.features(batch, "encoder_input_tokens")
        return {k: features[k] for k in ("encoder_input_tokens", PROMPT_INDEX) if k in features}

    def default_decode_len(self, batch: Batch) -> int:
        if "decoder_input_tokens" not in batch:
            raise UserError("predict_batch: pass max_decode_len or a batch with decoder_input_tokens")
        return int(np.shape(batch["decoder_input_tokens"])[1])

    def decoding_state(self, params, features, max_decode_len, num_decodes):
        module = self.module
        tokens, prompt_index = features["encoder_input_tokens"], features.get(PROMPT_INDEX)
        encoded = module.apply({"params": params}, tokens, prompt_index=prompt_index, method=module.encode)

        def new_cache(encoded, tokens, prompt_index):
            decoder_tokens = jnp.zeros((tokens.shape[0], max_decode_len), jnp.int32)
            _, variables = module.apply({"params": params}, encoded, tokens, decoder_tokens, decode=True,
                                        max_decode_length=max_decode_len, prompt_index=prompt_index,
                                        method=module.decode, mutable=["cache"])
            return variables["cache"]
        cache = _zeros_like_shapes(new_cache, encoded, tokens, prompt_index)
        # Per-example inputs of the step, repeated for each decode/beam (row b * n + j, decoding's order).
        flat = lambda x: None if x is None else decoding.expand_batch(x, num_decodes)  # noqa: E731
        flat_encoded, flat_tokens, flat_prompt_index = flat(encoded), flat(tokens), flat(prompt_index)

        def step_fn(token_ids, cache, step):
            del step  # the model keeps its own position counter in the cache
            logits, variables = module.apply(
                {"params": params, "cache": cache}, flat_encoded, flat_tokens, token_ids[:, None], decode=True,
                max_decode_length=max_decode_len, prompt_index=flat_prompt_index, method=module.decode,
                mutable=["cache"])
            return logits[:, 0, :].astype(jnp.float32), variables["cache"]
        return cache, step_fn


@gin.configurable(module="models")
@dataclasses.dataclass(frozen=True)
class DecoderOnlyModel(BaseModel):
    """Decoder-only prefix LM (`t5.decoder_only.DecoderOnly`, seqio's PrefixLM features).

    Inputs and targets are one sequence; the inputs part (`decoder_causal_attention`) attends
    bidirectionally and carries no loss.  The soft prompt is prepended to each row's sequence.
    Decoding right-aligns every row's input part, so all rows' inputs end at the same position and one
    cache index serves the batch (T5's relative positions make the left padding invisible): one prefill
    call writes prompt + inputs into the cache, then each step appends one token.
    """

    FEATURES: ClassVar[Tuple[str, ...]] = ("decoder_input_tokens", "decoder_target_tokens",
                                           "decoder_loss_weights", "decoder_causal_attention")
    LENGTH_GROUPS: ClassVar[Mapping[str, Tuple[str, ...]]] = {"sequence": FEATURES}   # inputs + targets, one row

    def feature_converter_cls(self) -> type:
        from prompt_tuning.feature_converters import PrefixLMFeatureConverter
        return PrefixLMFeatureConverter

    def _feature_lengths(self, task_feature_lengths):
        return dict.fromkeys(self.FEATURES, task_feature_lengths["inputs"] + task_feature_lengths["targets"])

    def _inputs(self, batch: dict) -> dict:
        return {"decoder_input_tokens": batch["decoder_input_tokens"],
                "decoder_target_tokens": batch.get("decoder_target_tokens"),
                "decoder_causal_attention": batch.get("decoder_causal_attention"),
                "prompt_index": batch.get(PROMPT_INDEX)}

    def decoding_features(self, batch: Batch) -> dict:
        features = self.features(batch, "decoder_input_tokens", "decoder_causal_attention")
        return {k: features[k] for k in ("decoder_input_tokens", "decoder_causal_attention", PROMPT_INDEX)
                if k in features}

    def default_decode_len(self, batch: Batch) -> int:
        """The room the batch's sequence length leaves after the shortest input part (the task's targets
        length is not in a PrefixLM batch; the eval and infer CLIs pass it)."""
        causal = np.asarray(batch["decoder_causal_attention"])
        return int(max(1, causal.shape[1] - causal.sum(1).min() + 1))

    def decoding_state(self, params, features, max_decode_len, num_decodes):
        module = self.module
        tokens, causal = features["decoder_input_tokens"], features["decoder_causal_attention"] > 0
        prompt_index = features.get(PROMPT_INDEX)
        batch, length = tokens.shape
        # Right-align each row's input part [0, i_1, ..., i_n] (the positions with causal attention).
        shift = length - causal.sum(axis=1)
        source = jnp.arange(length)[None, :] - shift[:, None]
        inside = source >= 0
        prefix = jnp.where(inside, jnp.take_along_axis(tokens, jnp.maximum(source, 0), axis=1), 0)
        dummy = jnp.ones((batch, length + max_decode_len), jnp.int32)
        cache = _zeros_like_shapes(
            lambda t, p: module.apply({"params": params}, t, decode=True, prompt_index=p, mutable=["cache"])[1],
            dummy, prompt_index)
        logits, variables = module.apply(
            {"params": params, **cache}, prefix, decoder_causal_attention=inside.astype(jnp.int32),
            valid=inside, decode=True, prefill=True, prompt_index=prompt_index, mutable=["cache"])
        # Step 0 of the search reads the logits the prefill computed for the first target token.
        cache = {"model": variables, "first_logits": logits[:, -1, :].astype(jnp.float32)}
        flat_prompt_index = None if prompt_index is None else decoding.expand_batch(prompt_index, num_decodes)

        def step_fn(token_ids, cache, step):
            def first():
                return cache["first_logits"], cache

            def later():
                out, variables = module.apply({"params": params, **cache["model"]}, token_ids[:, None],
                                              decode=True, prompt_index=flat_prompt_index, mutable=["cache"])
                return out[:, 0, :].astype(jnp.float32), {"model": variables, "first_logits": cache["first_logits"]}
            return jax.lax.cond(step == 0, first, later)
        return cache, step_fn


Model = BaseModel  # the type the trainer and CLIs take
