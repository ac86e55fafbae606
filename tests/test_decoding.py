"""Decoding against brute force on toy step functions whose right answers can be enumerated.

The toy model's logits depend on the whole prefix, which it keeps in the cache, so wrong cache tiling or beam
gathering changes the results; it also reads its write position from a scalar cache leaf, which decoding must
leave alone.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding

EOS = 1
NEG_INF = decoding.NEG_INF


class ToyLM:
    """logits(step s, prefix p) = sum_{t<=s} W[s, t, p[t]] + bias[example]; p[0] = 0 (decoder start)."""

    def __init__(self, vocab, length, seed, scale=1.5, eos_logit=None, pad_logit=None, batch=2):
        rs = np.random.RandomState(seed)
        self.vocab, self.length = vocab, length
        self.w = (rs.normal(size=(length, length, vocab, vocab)) * scale).astype(np.float32)
        self.bias = (rs.normal(size=(batch, vocab)) * scale).astype(np.float32)
        if eos_logit is not None:   # fixed logit for EOS at every step (e.g. -1e9: never finish)
            self.w[:, :, :, EOS] = 0.0
            self.bias[:, EOS] = eos_logit
        if pad_logit is not None:
            self.w[:, :, :, 0] = 0.0
            self.bias[:, 0] = pad_logit

    def init_cache(self):
        batch = self.bias.shape[0]
        return {"hist": jnp.zeros((batch, self.length), jnp.int32), "index": jnp.zeros((), jnp.int32),
                "bias": jnp.asarray(self.bias)}

    def step_fn(self, tokens, cache, step):
        index = cache["index"]
        hist = jax.lax.dynamic_update_slice(cache["hist"], tokens[:, None], (0, index))
        positions = jnp.arange(self.length)
        contrib = jnp.asarray(self.w)[step][positions[None, :], hist]          # [N, T, V]
        logits = jnp.sum(jnp.where((positions <= step)[None, :, None], contrib, 0.0), axis=1) + cache["bias"]
        return logits, {"hist": hist, "index": index + 1, "bias": cache["bias"]}

    def log_probs(self, example, prefix):
        """float64 log-softmax of the next token after `prefix` (which starts with the 0 start token)."""
        s = len(prefix) - 1
        logits = sum(self.w[s, t, tok].astype(np.float64) for t, tok in enumerate(prefix)) + self.bias[example]
        return logits - np.logaddexp.reduce(logits)

    def sequence_log_prob(self, example, tokens):
        """Summed log-prob of `tokens` up to and including the first EOS (0 padding after it ignored)."""
        total, prefix = 0.0, [0]
        for tok in tokens:
            total += self.log_probs(example, prefix)[tok]
            prefix.append(int(tok))
            if tok == EOS:
                break
        return total

    def greedy(self, example):
        out, prefix = [], [0]
        while len(out) < self.length:
            tok = int(np.argmax(self.log_probs(example, prefix)))
            out.append(tok)
            prefix.append(tok)
            if tok == EOS:
                break
        return out + [0] * (self.length - len(out))


_COMPILED = {}


def _sample(model, rng=None, **kwargs):
    """Jitted sampling, compiled once per (model, settings) and reused across rng keys."""
    key = (id(model), rng is None, tuple(sorted(kwargs.items())))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(functools.partial(
            decoding.temperature_sample, model.step_fn, batch_size=model.bias.shape[0],
            max_decode_len=model.length, eos_id=EOS, **kwargs))
    return jax.device_get(_COMPILED[key](model.init_cache(), rng=rng))


def _beam(model, beam_size, alpha=0.6):
    fn = jax.jit(functools.partial(decoding.beam_search, model.step_fn, batch_size=model.bias.shape[0],
                                   beam_size=beam_size, max_decode_len=model.length, eos_id=EOS, alpha=alpha))
    return jax.device_get(fn(model.init_cache()))


def _brevity(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def greedy_model():
    # EOS likely enough that some rows end early; pad never chosen, so trailing zeros can only be padding.
    return ToyLM(vocab=6, length=6, seed=3, pad_logit=-1e9, batch=4)


@pytest.fixture(scope="module")
def greedy_result(greedy_model):
    return _sample(greedy_model, topk=1)


def test_greedy_equals_stepwise_argmax(greedy_model, greedy_result):
    tokens, scores = greedy_result
    assert tokens.shape == (4, 1, 6) and tokens.dtype == np.int32 and scores.shape == (4, 1)
    expected = np.array([greedy_model.greedy(b) for b in range(4)])
    np.testing.assert_array_equal(tokens[:, 0], expected)
    assert (expected == EOS).any(), "toy model should produce at least one EOS to exercise padding"
    assert not (expected == EOS).all(axis=1).any()


def test_greedy_scores_are_raw_log_likelihood_through_eos(greedy_model, greedy_result):
    tokens, scores = greedy_result
    for b in range(4):
        np.testing.assert_allclose(scores[b, 0], greedy_model.sequence_log_prob(b, tokens[b, 0]), rtol=1e-5)


def test_eos_then_zero_padding(greedy_result):
    tokens = greedy_result[0][:, 0]
    for row in tokens:
        hits = np.flatnonzero(row == EOS)
        if hits.size:
            assert (row[hits[0] + 1:] == 0).all()
        assert (row[: hits[0] if hits.size else len(row)] != 0).all()


def test_zero_temperature_and_topk1_agree(greedy_model, greedy_result):
    tokens, scores = _sample(greedy_model, rng=jax.random.PRNGKey(5), temperature=0.0, topk=0, num_decodes=2)
    for d in range(2):
        np.testing.assert_array_equal(tokens[:, d], greedy_result[0][:, 0])
        np.testing.assert_allclose(scores[:, d], greedy_result[1][:, 0], rtol=1e-6)


def test_rescaled_greedy_scores_are_zero_like_t5x(greedy_model):
    _, scores = _sample(greedy_model, topk=1, rescale_log_probs=True)
    np.testing.assert_array_equal(scores, 0.0)


def test_num_decodes_tiles_cache_per_example(greedy_model, greedy_result):
    """Greedy with 3 decodes: every decode of example b must be example b's greedy output (batch-major tiling)."""
    tokens, scores = _sample(greedy_model, topk=1, num_decodes=3)
    assert tokens.shape == (4, 3, 6) and scores.shape == (4, 3)
    np.testing.assert_array_equal(tokens, np.repeat(greedy_result[0], 3, axis=1))


def _counting_steps(model):
    """model.step_fn that records (from inside jit) every step index the decoding loop runs."""
    calls = []

    def step_fn(tokens, cache, step):
        jax.debug.callback(lambda s: calls.append(int(s)), step)
        return model.step_fn(tokens, cache, step)
    return step_fn, calls


def test_stops_when_all_rows_ended():
    """With EOS dominant the loop must end after one step (t5x's all-ended condition), not run max_decode_len."""
    model = ToyLM(vocab=5, length=6, seed=0, eos_logit=50.0)
    step_fn, calls = _counting_steps(model)
    tokens, _ = jax.jit(lambda c: decoding.temperature_sample(step_fn, c, 2, 6, EOS, topk=1))(model.init_cache())
    jax.effects_barrier()
    assert calls == [0]
    np.testing.assert_array_equal(np.asarray(tokens), [[[1, 0, 0, 0, 0, 0]]] * 2)


class Unigram:
    """Prefix-independent distribution so sampled token frequencies can be checked against exact probabilities."""

    def __init__(self, logits):
        self.logits = np.asarray(logits, np.float32)

    def step_fn(self, tokens, cache, step):
        return jnp.broadcast_to(jnp.asarray(self.logits), (tokens.shape[0], self.logits.size)), cache


UNIGRAM = Unigram(np.log([0.02, 0.03, 0.35, 0.25, 0.15, 0.12, 0.05, 0.03]))  # EOS (id 1) is rare
N_SAMPLES = 4000


@functools.lru_cache(maxsize=None)
def _unigram_sampler(topk):
    """N_SAMPLES decodes of one example; temperature and topp are traced: one compile serves all their values."""
    return jax.jit(lambda cache, temperature, topp: decoding.temperature_sample(
        UNIGRAM.step_fn, cache, 1, 2, EOS, jax.random.PRNGKey(0), temperature=temperature, topk=topk, topp=topp,
        num_decodes=N_SAMPLES))


def _unigram_draws(temperature=1.0, topk=0, topp=0.0):
    """All decodes (rows) and scores of the single example."""
    cache = {"dummy": jnp.zeros((1, 1))}
    tokens, scores = jax.device_get(_unigram_sampler(topk)(cache, jnp.float32(temperature), jnp.float32(topp)))
    return tokens[0], scores[0]


def _assert_frequencies(first_tokens, probs):
    """Empirical frequencies within 5 standard errors of the expected probabilities (never flaky in practice)."""
    freq = np.bincount(first_tokens, minlength=probs.size) / first_tokens.size
    tol = 5 * np.sqrt(probs * (1 - probs) / first_tokens.size) + 1e-9
    assert (np.abs(freq - probs) <= tol).all(), (freq, probs)


def test_temperature_sampling_distribution():
    tokens, scores = _unigram_draws(temperature=2.0)
    probs = np.exp(UNIGRAM.logits / 2.0)
    _assert_frequencies(tokens[:, 0], probs / probs.sum())
    # Scores are raw log-likelihoods regardless of temperature, sorted ascending (best last).
    logp = UNIGRAM.logits - np.logaddexp.reduce(UNIGRAM.logits)
    expected = np.where(tokens[:, 0] == EOS, logp[tokens[:, 0]], logp[tokens[:, 0]] + logp[tokens[:, 1]])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert (np.diff(scores) >= 0).all()
    assert (tokens[tokens[:, 0] == EOS, 1] == 0).all()


def test_topk_restricts_to_k_best():
    tokens, _ = _unigram_draws(topk=3)
    np.testing.assert_array_equal(np.unique(tokens), [2, 3, 4])
    probs = np.zeros(8)
    probs[[2, 3, 4]] = [0.35, 0.25, 0.15]
    _assert_frequencies(tokens[:, 0], probs / probs.sum())


def test_topp_restricts_to_nucleus():
    # Cumulative mass of the sorted probs: .35, .60, .75, .87 -> p = 0.7 keeps {2, 3, 4} (the smallest set >= p).
    tokens, _ = _unigram_draws(topp=0.7)
    probs = np.zeros(8)
    probs[[2, 3, 4]] = [0.35, 0.25, 0.15]
    _assert_frequencies(tokens[:, 0], probs / probs.sum())
    np.testing.assert_array_equal(np.unique(tokens), [2, 3, 4])


def test_topp_zero_means_no_filtering():
    """topp is traced here; 0 must disable the nucleus filter (t5x would mask every token for a traced 0)."""
    tokens, _ = _unigram_draws(topp=0.0)
    probs = np.exp(UNIGRAM.logits)
    _assert_frequencies(tokens[:, 0], probs / probs.sum())


def test_rng_schedule_matches_t5x():
    """t5x splits the key each step, samples with the first half and carries the second: same key, same draws."""
    rows, temperature = 64, 1.7
    rng = jax.random.PRNGKey(3)
    tokens, _ = jax.device_get(jax.jit(lambda c: decoding.temperature_sample(
        UNIGRAM.step_fn, c, rows, 2, EOS, rng, temperature=temperature))({"dummy": jnp.zeros((rows, 1))}))
    scaled = jnp.broadcast_to(jnp.asarray(UNIGRAM.logits) / temperature, (rows, UNIGRAM.logits.size))
    expected = []
    for _ in range(2):
        sub, rng = jax.random.split(rng)
        expected.append(np.asarray(jax.random.categorical(sub, scaled)))
    np.testing.assert_array_equal(tokens[:, 0, 0], expected[0])
    np.testing.assert_array_equal(tokens[:, 0, 1], np.where(expected[0] == EOS, 0, expected[1]))


SAMPLING_MODEL = ToyLM(vocab=6, length=5, seed=1)


def test_sampling_is_deterministic_given_rng_and_differs_across_keys():
    model = SAMPLING_MODEL
    a = _sample(model, rng=jax.random.PRNGKey(7), num_decodes=4)
    b = _sample(model, rng=jax.random.PRNGKey(7), num_decodes=4)
    c = _sample(model, rng=jax.random.PRNGKey(8), num_decodes=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    for ex in range(2):
        for d in range(4):
            np.testing.assert_allclose(a[1][ex, d], model.sequence_log_prob(ex, a[0][ex, d]), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------------------

def _enumerate_finished(model, example, alpha):
    """All hypotheses ending in EOS within T tokens, t5x-scored, sorted ascending."""
    hyps = []
    for n in range(1, model.length + 1):
        for body in itertools.product([t for t in range(model.vocab) if t != EOS], repeat=n - 1):
            seq = list(body) + [EOS]
            score = model.sequence_log_prob(example, seq) / _brevity(n, alpha)
            hyps.append((score, seq + [0] * (model.length - n)))
    return sorted(hyps, key=lambda h: h[0])


@pytest.mark.parametrize("alpha", [0.6, 0.0])
def test_exhaustive_beam_equals_brute_force(alpha):
    """Beam as large as the search space keeps every hypothesis, so its finished set is the exact top list."""
    model = ToyLM(vocab=4, length=3, seed=11, scale=1.0)
    beam = 64  # >= 4**3: every prefix stays live, every finished hypothesis fits
    tokens, scores = _beam(model, beam, alpha)
    assert tokens.shape == (2, beam, 3) and scores.shape == (2, beam)
    for b in range(2):
        expected = _enumerate_finished(model, b, alpha)
        real = scores[b] > -1e6   # slots beyond the real hypotheses: NEG_INF (or dead-beam filler, as in t5x)
        assert real.sum() == len(expected)
        np.testing.assert_allclose(scores[b][real], [h[0] for h in expected], rtol=1e-5)
        np.testing.assert_array_equal(tokens[b][real], [h[1] for h in expected])
        assert (np.diff(scores[b]) >= 0).all(), "t5x order: ascending, best last"
        empty = scores[b] == np.float32(NEG_INF)
        assert (tokens[b][empty] == 0).all()


def test_beam_falls_back_to_live_beams_with_raw_log_probs():
    """No hypothesis can emit EOS: t5x returns the live beams scored by raw (unnormalised) summed log-probs."""
    model = ToyLM(vocab=3, length=3, seed=4, eos_logit=-1e9)
    beam = 8  # = 2**3 non-EOS sequences, so the live set is exact
    tokens, scores = _beam(model, beam)
    for b in range(2):
        seqs = [list(s) for s in itertools.product([0, 2], repeat=3)]
        expected = sorted((model.sequence_log_prob(b, s), s) for s in seqs)
        np.testing.assert_allclose(scores[b], [e[0] for e in expected], rtol=1e-5)
        np.testing.assert_array_equal(tokens[b], [e[1] for e in expected])


def test_beam_cache_follows_beams_and_matches_rescoring():
    """Small beam on a prefix-dependent model: every returned hypothesis must be rescored exactly by brute force,
    which fails if cache rows (the prefix history) were not gathered with their beams."""
    model = ToyLM(vocab=7, length=5, seed=2, scale=2.0, batch=3)
    tokens, scores = _beam(model, beam_size=3)
    found = 0
    for b in range(3):
        for tok, score in zip(tokens[b], scores[b]):
            if score == np.float32(NEG_INF):
                assert (tok == 0).all()
                continue
            length = int(np.argmax(tok == EOS)) + 1
            assert tok[length - 1] == EOS and (tok[length:] == 0).all()
            np.testing.assert_allclose(score, model.sequence_log_prob(b, tok) / _brevity(length, 0.6), rtol=1e-5)
            found += 1
    assert found > 0


def test_beam_size_one_top_is_best_finished_of_single_path():
    """beam_size=1: one live path (best non-EOS token); an EOS branch is a candidate only when EOS is among the
    step's top 2 (t5x keeps 2 * beam_size candidates), and the best-scoring such branch is returned."""
    model = ToyLM(vocab=5, length=4, seed=9, pad_logit=-1e9)
    tokens, scores = _beam(model, beam_size=1)
    assert tokens.shape == (2, 1, 4)
    for b in range(2):
        prefix, best = [0], (NEG_INF, None)
        for s in range(model.length):   # live path = argmax over non-EOS tokens; each step may finish with EOS
            lp = model.log_probs(b, prefix)
            finished = (model.sequence_log_prob(b, prefix[1:] + [EOS])) / _brevity(s + 1, 0.6)
            if (lp > lp[EOS]).sum() < 2 and finished > best[0]:
                best = (finished, prefix[1:] + [EOS] + [0] * (model.length - s - 1))
            lp[EOS] = -np.inf
            prefix.append(int(np.argmax(lp)))
        if best[1] is None:
            np.testing.assert_array_equal(tokens[b, 0], prefix[1:])
        else:
            np.testing.assert_array_equal(tokens[b, 0], best[1])
            np.testing.assert_allclose(scores[b, 0], best[0], rtol=1e-5)


def test_beam_early_stop_when_no_live_beam_can_win():
    """EOS dominant: after two steps both finished slots beat any live bound, so only 2 of 6 steps run."""
    model = ToyLM(vocab=5, length=6, seed=0, eos_logit=20.0)
    step_fn, calls = _counting_steps(model)
    tokens, scores = jax.jit(lambda c: decoding.beam_search(step_fn, c, 2, 2, 6, EOS))(model.init_cache())
    jax.effects_barrier()
    assert calls == [0, 1]
    assert np.asarray(tokens)[:, -1].tolist() == [[1, 0, 0, 0, 0, 0]] * 2
    assert (np.asarray(scores)[:, 0] < np.asarray(scores)[:, 1]).all()


def test_brevity_penalty_formula():
    np.testing.assert_allclose(decoding.brevity_penalty(0.6, 3), (8 / 6) ** 0.6, rtol=1e-6)
    np.testing.assert_allclose(decoding.brevity_penalty(0.0, 7), 1.0)


def test_bad_sizes_are_refused():
    model = ToyLM(vocab=4, length=2, seed=0)
    with pytest.raises(ValueError, match="beam_size"):
        decoding.beam_search(model.step_fn, model.init_cache(), 2, 0, 2, EOS)
    with pytest.raises(ValueError, match="num_decodes"):
        decoding.temperature_sample(model.step_fn, model.init_cache(), 2, 2, EOS, num_decodes=0)
