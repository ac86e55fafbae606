"""Autoregressive decoding over a cached step function: sampling (greedy/temperature/top-k/top-p) and beam search.

Both functions are pure and jittable (a `lax.while_loop` inside) and reproduce t5x's `t5x.decoding`
semantics, so decodes and scores can be compared with t5x's exactly.  The model is reached only through

    step_fn(token_ids int32[N], cache, step int32[]) -> (logits float32[N, V], new_cache)

where N is the flattened batch, batch-major: row `b * n + j` is decode/beam `j` of example `b` (t5x's order).
The caller passes `cache` for the plain batch B; every cache leaf with ndim >= 1 has a leading batch axis and is
tiled (and, in beam search, gathered along the beams) here.  Scalar leaves (e.g. `cache_index`) are left alone.
Anything else the step function needs per example (encoder outputs, masks) can either ride in the cache or be
expanded by the caller with `expand_batch`.

Generation starts from the decoder start token 0 and emits at most `max_decode_len` tokens; positions after EOS
are 0.  Results are sorted ascending by score, best LAST (t5x's order, for both functions).
"""
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PyTree = Any
StepFn = Callable[[jax.Array, PyTree, jax.Array], Tuple[jax.Array, PyTree]]

# t5x's "effective -inf": masks candidates and fills empty finished beam slots (a finite value keeps sums finite).
NEG_INF = -1.0e7
# t5x treats temperatures at or below this as 0 (greedy), avoiding overflow in logits / temperature.
MIN_TEMPERATURE = 1e-4


def expand_batch(x: jax.Array, n: int) -> jax.Array:
    """[B, ...] -> [B * n, ...], each example repeated n times consecutively (the flat order step_fn sees)."""
    return jnp.repeat(x, n, axis=0)


def _map_batched(fn, cache: PyTree) -> PyTree:
    """Applies `fn` to cache leaves that have a batch axis; scalars (cache indices) are shared by all rows."""
    return jax.tree_util.tree_map(lambda x: fn(x) if jnp.ndim(x) >= 1 else x, cache)


def _python_number(x):
    """x as a float when it is a plain (untraced) number, else None: static settings let us prune code."""
    return float(x) if isinstance(x, (int, float, np.number)) else None


def _check_args(function, batch_size, n, n_name, max_decode_len):
    if batch_size < 1 or n < 1 or max_decode_len < 1:
        raise ValueError(f"decoding.{function}: batch_size, {n_name} and max_decode_len must be >= 1, "
                         f"got {batch_size}, {n}, {max_decode_len}")


# --------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------

def _topk_mask(logits: jax.Array, k: int) -> jax.Array:
    """Keeps logits >= the k-th largest (ties at the cut are kept, as t5x's binary-search topk_mask does)."""
    cutoff = lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= cutoff, logits, NEG_INF)


def _topp_mask(logits: jax.Array, p) -> jax.Array:
    """Keeps the smallest set of most probable tokens whose mass reaches p (ties at the cut kept), as t5x.

    p <= 0 means no filtering (also when p is traced; t5x would mask everything there).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    desc = -jnp.sort(-probs, axis=-1)
    reached = jnp.cumsum(desc, axis=-1) >= p
    # First position whose cumulative mass reaches p; if rounding keeps it below p everywhere, keep everything.
    first = jnp.where(reached.any(-1), jnp.argmax(reached, axis=-1), probs.shape[-1] - 1)
    threshold = jnp.take_along_axis(desc, first[..., None], axis=-1)
    keep = (probs >= threshold) | (jnp.asarray(p) <= 0)
    return jnp.where(keep, logits, NEG_INF)


def _token_log_prob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]


def temperature_sample(step_fn: StepFn, cache: PyTree, batch_size: int, max_decode_len: int, eos_id: int,
                       rng: jax.Array = None, temperature=1.0, topk: int = 0, topp=0.0, num_decodes: int = 1,
                       rescale_log_probs: bool = False) -> Tuple[jax.Array, jax.Array]:
    """Samples `num_decodes` continuations per example; returns (tokens int32[B, D, T], scores float32[B, D]).

    As `t5x.decoding.temperature_sample`: temperature <= 1e-4 or topk == 1 is greedy (argmax); otherwise logits
    are divided by the temperature, top-k then top-p masked, and sampled with `jax.random.categorical` using
    t5x's key schedule (split once per step), so the same `rng` draws the same tokens as t5x.  `temperature`
    may be a scalar or a per-example [B] array; `topp` may be traced, `topk` must be a Python int.  Unlike t5x,
    topk and topp may both be set (top-k is applied first).

    Scores: with rescale_log_probs=False (default; the semantics the references use) the sum of
    log_softmax(raw logits) of the generated tokens up to and including EOS, i.e. the model's log-likelihood,
    independent of temperature/top-k/top-p.  rescale_log_probs=True is t5x's default: log-probs under the
    adjusted (scaled and masked) distribution, 0 for greedy rows.  Decodes of one example are sorted by score,
    ascending (best last), as t5x does.  Decoding stops once every row emitted EOS or T tokens.
    """
    _check_args("temperature_sample", batch_size, num_decodes, "num_decodes", max_decode_len)
    n = batch_size * num_decodes
    rng = jax.random.PRNGKey(0) if rng is None else rng
    temp = jnp.asarray(temperature, jnp.float32)
    if temp.ndim == 1:  # per-example temperature -> per flat row, broadcast over the vocab
        temp = expand_batch(temp, num_decodes)[:, None]
    # Static greedy (no sampling code compiled) for topk=1 or a Python temperature at/below MIN_TEMPERATURE.
    static_temp, static_topp = _python_number(temperature), _python_number(topp)
    greedy_only = topk == 1 or (static_temp is not None and static_temp <= MIN_TEMPERATURE)
    sample_topp = static_topp is None or static_topp > 0

    def choose(logits, key):
        greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if greedy_only:
            token, adjusted = greedy, None
        else:
            scaled = logits / jnp.maximum(temp, MIN_TEMPERATURE)
            if topk > 0:
                scaled = _topk_mask(scaled, topk)
            if sample_topp:
                scaled = _topp_mask(scaled, topp)
            is_greedy = jnp.broadcast_to(jnp.reshape(temp <= MIN_TEMPERATURE, (-1,)), greedy.shape)
            token = jnp.where(is_greedy, greedy, jax.random.categorical(key, scaled).astype(jnp.int32))
            adjusted = (scaled, is_greedy)
        if not rescale_log_probs:
            return token, _token_log_prob(logits, token)
        if greedy_only:
            return token, jnp.zeros(token.shape, jnp.float32)
        scaled, is_greedy = adjusted
        return token, jnp.where(is_greedy, 0.0, _token_log_prob(scaled, token))

    def cond(state):
        return ~jnp.all(state[4])

    def body(state):
        step, tokens, prev, cache, ended, key, log_prob = state
        sub, key = jax.random.split(key)  # t5x's schedule: sample with the first half, carry the second
        logits, cache = step_fn(prev, cache, step)
        token, lp = choose(logits.astype(jnp.float32), sub)
        token = jnp.where(ended, 0, token)
        log_prob = log_prob + jnp.where(ended, 0.0, lp)
        tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        ended = ended | (token == eos_id) | (step >= max_decode_len - 1)
        return step + 1, tokens, token, cache, ended, key, log_prob

    init = (jnp.zeros((), jnp.int32), jnp.zeros((n, max_decode_len), jnp.int32), jnp.zeros((n,), jnp.int32),
            _map_batched(lambda x: expand_batch(x, num_decodes), cache), jnp.zeros((n,), bool), rng,
            jnp.zeros((n,), jnp.float32))
    _, tokens, _, _, _, _, log_prob = lax.while_loop(cond, body, init)

    tokens = tokens.reshape(batch_size, num_decodes, max_decode_len)
    log_prob = log_prob.reshape(batch_size, num_decodes)
    order = jnp.argsort(log_prob, axis=-1)
    return jnp.take_along_axis(tokens, order[..., None], axis=1), jnp.take_along_axis(log_prob, order, axis=1)


# --------------------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------------------

def brevity_penalty(alpha: float, length) -> jax.Array:
    """t5x's length normalisation ((5 + L) / 6) ** alpha (Wu et al. 2016); L counts generated tokens incl. EOS."""
    return jnp.power((5.0 + length) / 6.0, alpha)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, M, ...], idx [B, K] -> [B, K, ...]: per-example selection of beams/candidates."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _top_ascending(scores: jax.Array, k: int) -> jax.Array:
    """Indices of the k best per row, ordered ascending (best last) like t5x (lax.top_k ties: lower index wins)."""
    return jnp.flip(lax.top_k(scores, k)[1], axis=1)


def beam_search(step_fn: StepFn, cache: PyTree, batch_size: int, beam_size: int, max_decode_len: int,
                eos_id: int, alpha: float = 0.6) -> Tuple[jax.Array, jax.Array]:
    """Beam search with t5x's exact semantics; returns (tokens int32[B, K, T], scores float32[B, K]).

    Replicates `t5x.decoding.beam_search` step for step (same top-k calls, tie order and float32 arithmetic):
    each step keeps the best 2K extensions of the live beams; extensions ending in EOS go to the finished set
    with score sum_logp / brevity_penalty(alpha, L), the best K others stay live.  A hypothesis is finished only
    by EOS; empty finished slots are all-zero decodes scored NEG_INF.  The search stops after T steps or once no
    live beam can beat the worst finished one (t5x's bound, which uses penalty(T + 1)).  An example with no
    finished hypothesis returns its live beams with raw summed log-probs.  Beams sorted ascending, best LAST.
    Also as t5x: when a beam exceeds the real candidates (tiny vocabularies), extensions of the initial NEG_INF
    filler beams can occupy slots, with scores around NEG_INF / penalty; they never outrank real hypotheses.
    The cache is tiled to B*K rows and its rows are gathered to follow the surviving beams every step.
    """
    _check_args("beam_search", batch_size, beam_size, "beam_size", max_decode_len)
    b, k, length = batch_size, beam_size, max_decode_len + 1  # sequences carry t5x's leading dummy 0 token
    batch_offsets = (jnp.arange(b, dtype=jnp.int32) * k)[:, None]
    # Bound on any live beam's final score: its log-prob can only fall, and the penalty only grow.
    max_penalty = brevity_penalty(alpha, length)

    def cond(state):
        i, live_lp, fin_scores, _, _, fin_flags, _ = state
        best_live = live_lp[:, -1:] / max_penalty
        worst_finished = jnp.where(fin_flags, jnp.min(fin_scores, axis=1, keepdims=True), NEG_INF)
        return (i < length - 1) & ~jnp.all(worst_finished > best_live)

    def body(state):
        i, live_lp, fin_scores, live_seqs, fin_seqs, fin_flags, cache = state
        logits, cache = step_fn(live_seqs[:, :, i].reshape(b * k), cache, i)
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        log_probs = log_probs + live_lp[:, :, None]
        # 2K candidates, so K live ones remain even if the best K all end in EOS.
        cand_lp, cand_idx = lax.top_k(log_probs.reshape(b, k * vocab), 2 * k)
        cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
        cand_seqs = lax.dynamic_update_slice(_gather(live_seqs, cand_beam), cand_token[:, :, None], (0, 0, i + 1))
        cand_eos = cand_token == eos_id

        # Live set: best K candidates that did not just finish.
        cand_live_lp = cand_lp + cand_eos * NEG_INF
        keep = _top_ascending(cand_live_lp, k)
        live_seqs, live_lp = _gather(cand_seqs, keep), _gather(cand_live_lp, keep)
        parent = _gather(cand_beam, keep)
        cache = _map_batched(lambda x: jnp.take(x, (batch_offsets + parent).reshape(-1), axis=0), cache)

        # Finished set: best K of the old finished ones and the candidates that just emitted EOS.
        cand_scores = cand_lp / brevity_penalty(alpha, i + 1) + (~cand_eos) * NEG_INF
        all_scores = jnp.concatenate([fin_scores, cand_scores], axis=1)
        best = _top_ascending(all_scores, k)
        fin_scores = _gather(all_scores, best)
        fin_seqs = _gather(jnp.concatenate([fin_seqs, cand_seqs], axis=1), best)
        fin_flags = _gather(jnp.concatenate([fin_flags, cand_eos], axis=1), best)
        return i + 1, live_lp, fin_scores, live_seqs, fin_seqs, fin_flags, cache

    init = (jnp.zeros((), jnp.int32),
            jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),  # one live beam to start
            jnp.full((b, k), NEG_INF, jnp.float32),
            jnp.zeros((b, k, length), jnp.int32),
            jnp.zeros((b, k, length), jnp.int32),
            jnp.zeros((b, k), bool),
            _map_batched(lambda x: expand_batch(x, k), cache))
    _, live_lp, fin_scores, live_seqs, fin_seqs, fin_flags, _ = lax.while_loop(cond, body, init)

    any_finished = jnp.any(fin_flags, axis=1)
    seqs = jnp.where(any_finished[:, None, None], fin_seqs, live_seqs)
    scores = jnp.where(any_finished[:, None], fin_scores, live_lp)
    return seqs[:, :, 1:], scores
