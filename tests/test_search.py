"""Tests of the coordinate-gradient search on tiny differentiable scorers.

The toy scorer (random embeddings, one attention layer, an MLP head, pure JAX)
has a vocabulary and length small enough (6^5 = 7776 sequences) to enumerate
every sequence, so the global maximum is known.
"""
import itertools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.scorer import Scorer
from goodhart_jax.search import (SearchConfig, make_scan, make_search, onehot_gradient,
                                 search, search_params, top_k_ids)
from goodhart_jax.search import schedules

VOCAB, LENGTH, DIM = 6, 5, 8


def toy_params(key, vocab=VOCAB, length=LENGTH, dim=DIM, dtype=jnp.float32):
    ks = jax.random.split(key, 6)
    n = lambda k, s, sc=1.0: (sc * jax.random.normal(k, s)).astype(dtype)
    return dict(emb=n(ks[0], (vocab, dim)), pos=n(ks[1], (length, dim), 0.5),
                wq=n(ks[2], (dim, dim), dim ** -0.5), wk=n(ks[3], (dim, dim), dim ** -0.5),
                w1=n(ks[4], (dim, 16), dim ** -0.5), w2=n(ks[5], (16,), 0.25))


def toy_score_onehot(params, onehot, mask):
    """onehot [B, T, V], mask [B, T] -> [B]: embeddings, one attention layer, MLP head."""
    T = onehot.shape[1]
    h = onehot @ params["emb"] + params["pos"][:T]                          # [B, T, D]
    logits = jnp.einsum("btd,bsd->bts", h @ params["wq"], h @ params["wk"])
    logits = jnp.where(mask[:, None, :] > 0, logits, -1e9)
    h = h + jax.nn.softmax(logits, axis=-1) @ h
    m = mask.astype(h.dtype)[..., None]
    pooled = (h * m).sum(1) / m.sum(1)                                      # [B, D]
    hid = jnp.tanh(pooled @ params["w1"])
    return hid @ params["w2"]


def toy_scorer(key, **kw) -> Scorer:
    params = toy_params(key, **kw)
    vocab = params["emb"].shape[0]
    return Scorer(params=params,
                  score_tokens=lambda p, ids, mask: toy_score_onehot(
                      p, jax.nn.one_hot(ids, vocab, dtype=p["emb"].dtype), mask),
                  score_onehot=toy_score_onehot, vocab_size=vocab)


def all_sequences(vocab=VOCAB, length=LENGTH):
    return jnp.asarray(list(itertools.product(range(vocab), repeat=length)), jnp.int32)


def enumerate_max(scorer, banned=()):
    seqs = all_sequences()
    if banned:
        seqs = seqs[~np.isin(np.asarray(seqs), banned).any(1)]
    scores = scorer.score_tokens(scorer.params, seqs, jnp.ones(seqs.shape, jnp.int32))
    i = int(jnp.argmax(scores))
    return np.asarray(seqs[i]), float(scores[i])


# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize("jit", [False, True])
def test_top_k_ids_is_lax_top_k(jit):
    """The two-stage top-k gives lax.top_k's indices, order and ties (the lower index first) included: values from
    few levels (many ties), -inf entries (banned ids), widths that need -inf padding, prime sizes; along the
    last axis or any other (the search ranks [V, T])."""
    rng = np.random.default_rng(0)
    fn = jax.jit(top_k_ids, static_argnums=(1, 2, 3)) if jit else top_k_ids
    for v, k, chunk, levels in [(97, 3, 4, 2), (1009, 8, 16, 3), (1009, 5, 8, 1000), (4099, 8, 128, 7),
                                (53, 7, 4, 1), (31, 3, 8, 4)]:        # the last: too narrow, one lax.top_k
        x = rng.integers(0, levels, (3, 5, v)).astype(np.float32)
        x[:, :, rng.random(v) < 0.3] = -np.inf
        x[0, 0, :] = -np.inf                                         # a row of -inf: the k lowest indices
        want = np.asarray(jax.lax.top_k(x, k)[1])                   # [3, 5, k]
        np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(x), k, chunk)), want)
        for axis in (0, 1):                                          # V moved to `axis`: the others keep their order
            got = np.asarray(fn(jnp.asarray(np.moveaxis(x, 2, axis)), k, chunk, axis))
            np.testing.assert_array_equal(got, want)


def test_paper_schedule_matches_python():
    i = np.arange(5000)
    got = np.asarray(schedules.paper()(jnp.asarray(i)))
    want = np.asarray([schedules.paper_python(j) for j in i])
    np.testing.assert_array_equal(got, want)
    assert want[0] == 9 and want[999] == 2


def test_linear_and_constant_schedules():
    lin = schedules.linear(9, 2, 100)
    got = np.asarray(lin(jnp.arange(100)))
    assert got[0] == 9 and got[-1] == 2 and np.all(np.diff(got) <= 0)
    np.testing.assert_array_equal(np.asarray(schedules.constant(3)(jnp.arange(4))), 3)
    assert SearchConfig(length=4, schedule="paper").max_edits == 4   # clipped to T
    assert SearchConfig(length=40, schedule="paper").max_edits == 9
    with pytest.raises(ValueError):
        SearchConfig(length=4, schedule="nope")


# ---------------------------------------------------------------- the search

@pytest.mark.parametrize("schedule", ["gcg", "linear"])
def test_finds_global_max_in_most_restarts(schedule):
    # Over toy seeds 0..5 (16 restarts, 40 steps) the share of restarts that
    # reach the enumerated maximum was 62/94/100/44/100/100 % (gcg, n = 2) and
    # 56/94/100/31/100/100 % (linear 3 -> 1): greedy coordinate search can end
    # in one of the toy's 1..15 one-edit local optima. Seed 1 is typical.
    scorer = toy_scorer(jax.random.key(1))
    best_seq, best = enumerate_max(scorer)
    cfg = SearchConfig(length=LENGTH, topk=3, num_candidates=16, num_iters=40,
                       schedule=schedule, edits=2, edits_start=3, edits_end=1)
    states, infos = search(jax.random.key(1), cfg, scorer, num_restarts=16)
    found = np.isclose(np.asarray(states.best_reward), best, rtol=0, atol=1e-5)
    assert found.mean() >= 0.75, (found.mean(), np.asarray(states.best_reward), best)
    np.testing.assert_array_equal(np.asarray(states.best_tokens)[found][0], best_seq)
    # The search never scores above the enumerated maximum.
    assert np.all(np.asarray(infos.best_reward) <= best + 1e-5)


def test_best_so_far_never_decreases_and_matches_scorer():
    scorer = toy_scorer(jax.random.key(2))
    cfg = SearchConfig(length=LENGTH, topk=4, num_candidates=8, num_iters=30,
                       schedule="linear", edits_start=4, edits_end=1)
    states, infos = search(jax.random.key(3), cfg, scorer, num_restarts=8)
    trace = np.asarray(infos.best_objective)                               # [R, I]
    assert np.all(np.diff(trace, axis=1) >= 0)
    # Moving to the best candidate may go down; the buffer never does.
    np.testing.assert_array_equal(trace[:, -1], np.asarray(states.best_objective))
    rescored = scorer.score_tokens(scorer.params, states.best_tokens,
                                   jnp.ones(states.best_tokens.shape, jnp.int32))
    # batch shapes differ (C vs R rows): float32 summation-order noise only.
    np.testing.assert_allclose(np.asarray(rescored), np.asarray(states.best_reward),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(infos.num_edits[0]),
                                  np.asarray(schedules.linear(4, 1, 30)(jnp.arange(30))))


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(seed=st.integers(0, 2 ** 31 - 1))
def test_property_never_loses_best(seed):
    # One compiled function for all examples: scorer params are traced.
    scorer = toy_scorer(jax.random.key(seed))
    states, infos = _never_loses_run(jax.random.key(seed + 1), scorer.params)
    trace = np.asarray(infos.best_objective)
    assert np.all(np.diff(trace, axis=-1) >= 0)
    assert np.all(np.asarray(states.best_objective) >= np.asarray(infos.objective).max(-1))


_TOY = toy_scorer(jax.random.key(0))
_CFG = SearchConfig(length=LENGTH, topk=3, num_candidates=8, num_iters=12, schedule="paper")
_INIT, _STEP = make_search(_CFG, _TOY)
_RUN = make_scan(_STEP, _CFG.num_iters, _CFG.num_iters)


@jax.jit
def _never_loses_run(key, toy_params):
    params = search_params(_TOY._replace(params=toy_params))
    k_init, k_run = jax.random.split(key)
    return _RUN(k_run, _INIT(k_init, params), params)


def test_onehot_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        scorer = toy_scorer(jax.random.key(4), dtype=jnp.float64)
        params = search_params(scorer)
        tokens = jnp.asarray([1, 4, 0, 5, 2])
        value, grad = onehot_gradient(scorer)(params, tokens)
        assert grad.shape == (LENGTH, VOCAB)
        onehot = jax.nn.one_hot(tokens, VOCAB, dtype=jnp.float64)
        mask = jnp.ones((1, LENGTH), jnp.int32)
        f = lambda oh: scorer.score_onehot(scorer.params, oh[None], mask)[0]
        np.testing.assert_allclose(value, f(onehot), rtol=1e-12)
        eps = 1e-5
        fd = np.zeros((LENGTH, VOCAB))
        for t in range(LENGTH):
            for v in range(VOCAB):
                e = jnp.zeros_like(onehot).at[t, v].set(eps)
                fd[t, v] = (f(onehot + e) - f(onehot - e)) / (2 * eps)
        # float64 central differences: truncation error O(eps^2) ~ 1e-10.
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("jit", [False, True])
def test_same_seed_same_result_and_chunking(jit):
    scorer = toy_scorer(jax.random.key(5))
    cfg = SearchConfig(length=LENGTH, topk=3, num_candidates=8, num_iters=10, schedule="paper")
    init, step = make_search(cfg, scorer)
    params = search_params(scorer)
    whole = make_scan(step, 10, 10)
    chunk = make_scan(step, 4, 10)          # 3 chunks of 4 = 10 steps + 2 padding
    if jit:
        whole, chunk = jax.jit(whole), jax.jit(chunk)
    key = jax.random.key(6)
    s0 = init(jax.random.key(7), params)
    a, ia = whole(key, s0, params)
    b, _ = whole(key, s0, params)
    c = s0
    for _ in range(3):
        c, ic = chunk(key, c, params)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_close(a, c, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(a.best_tokens), np.asarray(c.best_tokens))
    assert int(c.iteration) == 10 and not bool(ic.active[-1])
    other, io = whole(jax.random.key(8), s0, params)
    assert int(other.iteration) == 10
    # Same start, another key: other candidates, another path (the best-so-far traces part at step 1).
    assert np.asarray(io.best_reward)[0] != np.asarray(ia.best_reward)[0]
    # Against all 6^5 sequences: key 8 reaches the global maximum, while key 6 stops on the
    # runner-up (a one-edit local optimum of this toy); both rewards are the model's own scores.
    seqs = np.asarray(all_sequences())
    scores = np.asarray(scorer.score_tokens(scorer.params, jnp.asarray(seqs), jnp.ones(seqs.shape, jnp.int32)))
    first, second = np.argsort(-scores)[:2]
    np.testing.assert_array_equal(np.asarray(other.best_tokens), seqs[first])
    np.testing.assert_array_equal(np.asarray(a.best_tokens), seqs[second])
    # batch shapes differ (7776 vs 1 rows): float32 summation-order noise only.
    np.testing.assert_allclose([float(other.best_reward), float(a.best_reward)], scores[[first, second]],
                               rtol=1e-5, atol=1e-6)


def test_banned_tokens_never_appear():
    scorer = toy_scorer(jax.random.key(9))
    banned = (0, 3)
    cfg = SearchConfig(length=LENGTH, topk=4, num_candidates=16, num_iters=25,
                       schedule="gcg", edits=2, banned_ids=banned)
    init, step = make_search(cfg, scorer)
    params = search_params(scorer)
    step = jax.jit(step)
    seen = []
    for r in range(4):
        state = init(jax.random.key(100 + r), params)
        seen += [state.tokens, state.best_tokens]
        for i in range(cfg.num_iters):
            state, _ = step(jax.random.key(1000 * r + i), state, params)
            seen += [state.tokens, state.best_tokens]
    seen = np.asarray(jnp.stack(seen))
    assert not np.isin(seen, banned).any()
    # The search still reaches the best sequence among those without banned ids.
    _, best = enumerate_max(scorer, banned)
    states, _ = search(jax.random.key(10), cfg, scorer, num_restarts=8)
    assert not np.isin(np.asarray(states.best_tokens), banned).any()
    assert np.isclose(np.asarray(states.best_reward), best, atol=1e-5).mean() >= 0.5
    with pytest.raises(ValueError):
        make_search(SearchConfig(length=LENGTH, topk=5, banned_ids=banned), scorer)


def test_penalty_trades_reward_for_base_logprob():
    reward = toy_scorer(jax.random.key(11))
    base = toy_scorer(jax.random.key(12))     # stands in for log pi0
    cfg = SearchConfig(length=LENGTH, topk=3, num_candidates=16, num_iters=30, schedule="gcg",
                       edits=2)
    s0, _ = search(jax.random.key(13), cfg, reward, base, penalty=0.0, num_restarts=4)
    s1, _ = search(jax.random.key(13), cfg, reward, base, penalty=5.0, num_restarts=4)
    np.testing.assert_allclose(np.asarray(s1.best_objective),
                               np.asarray(s1.best_reward + 5.0 * s1.best_logprob), rtol=1e-5)
    mask = jnp.ones(s1.best_tokens.shape, jnp.int32)
    np.testing.assert_allclose(np.asarray(base.score_tokens(base.params, s1.best_tokens, mask)),
                               np.asarray(s1.best_logprob), rtol=1e-5, atol=1e-6)
    assert float(s1.best_logprob.mean()) > float(s0.best_logprob.mean())
    assert float(s0.best_reward.mean()) >= float(s1.best_reward.mean())


def test_token_filter_is_respected():
    scorer = toy_scorer(jax.random.key(14))
    best_seq, _ = enumerate_max(scorer)
    forbidden = int(best_seq[0])
    keep = lambda ids: int(ids[0]) != forbidden     # host-side predicate on one sequence
    cfg = SearchConfig(length=LENGTH, topk=3, num_candidates=8, num_iters=15, schedule="gcg",
                       edits=2)
    states, infos = search(jax.random.key(15), cfg, scorer, token_filter=keep, num_restarts=4)
    best = np.asarray(states.best_tokens)
    ok = np.isfinite(np.asarray(states.best_objective))
    assert ok.any() and np.all(best[ok, 0] != forbidden)


def test_no_retrace_across_calls():
    scorer = toy_scorer(jax.random.key(16))
    cfg = SearchConfig(length=LENGTH, topk=3, num_candidates=8, num_iters=6, schedule="paper")
    init, step = make_search(cfg, scorer)
    run = make_scan(step, 3, cfg.num_iters)
    vrun = jax.jit(jax.vmap(chex.assert_max_traces(run, n=1), in_axes=(0, 0, None)))
    params = search_params(scorer)
    state = jax.vmap(init, in_axes=(0, None))(jax.random.split(jax.random.key(17), 2), params)
    keys = jax.random.split(jax.random.key(18), 2)
    for _ in range(2):
        state, _ = vrun(keys, state, params)
    # A new penalty or new scorer weights are traced: still no retrace.
    other = search_params(toy_scorer(jax.random.key(19)), penalty=0.5)
    vrun(keys, state, other)
    assert np.all(np.asarray(state.iteration) == 6)


# ---------------------------------------------------------------- chunked runs (sims/acg_search's loop)

def _chunks(n, stop_at=None):
    """n chunks of a fake run: (state with iteration [R], info with active [R, steps]); Ctrl-C before chunk stop_at."""
    from types import SimpleNamespace

    for k in range(1, n + 1):
        if k == stop_at:
            raise KeyboardInterrupt
        yield SimpleNamespace(iteration=np.array([2 * k, 2 * k])), SimpleNamespace(active=np.ones((2, 2 * k), bool))


def test_run_chunks_keeps_the_last_finished_chunk_on_ctrl_c():
    from goodhart_jax.search import best_record, run_chunks

    seen = []
    done = run_chunks(_chunks(4), lambda s, i: seen.append(int(s.iteration[0])))
    assert seen == [2, 4, 6, 8] and done.steps == 8 and not done.interrupted and done.seconds >= 0
    done = run_chunks(_chunks(4, stop_at=3))                        # Ctrl-C while chunk 3 runs
    assert done.interrupted and done.steps == 4 and done.info.active.shape == (2, 4)

    def stop_in_callback(state, info):                              # Ctrl-C while chunk 2's files are written
        if state.iteration[0] == 4:
            raise KeyboardInterrupt
    done = run_chunks(_chunks(4), stop_in_callback)
    assert done.interrupted and done.steps == 4
    with pytest.raises(KeyboardInterrupt):                          # nothing finished: nothing to keep
        run_chunks(_chunks(4, stop_at=1))
    rec = best_record(np.array([[1, 2], [3, 4]]), np.float32([0.5, -1]), np.array([0.25, -np.inf]), np.int32(7))
    assert rec == {"iteration": 7, "interrupted": False, "restarts": [
        {"restart": 0, "reward": 0.5, "objective": 0.25, "tokens": [1, 2]},
        {"restart": 1, "reward": -1.0, "objective": -np.inf, "tokens": [3, 4]}]}
