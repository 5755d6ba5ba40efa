"""Prefix sharing in the search (`SearchConfig.share_prefix`) and the lookup embedding of the gradient pass.

References: the models' full forward pass on whole rows (`score_tokens`), the
einsum `onehot @ E` and its autodiff, brute-force enumeration of the slots'
law, and the plain search with the same key.
"""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # make_tiny_checkpoint draws its weights with transformers' classes

from goodhart_jax import models  # noqa: E402
from goodhart_jax.models import layers  # noqa: E402
from goodhart_jax.models.testing import make_tiny_checkpoint  # noqa: E402
from goodhart_jax.scorer import Scorer  # noqa: E402
from goodhart_jax.search import SearchConfig, make_scan, make_search, search_params  # noqa: E402
from goodhart_jax.search.gcg import prefix_slots  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefix")
    out = {}
    for arch, layout in (("gpt_neox", "oasst"), ("llama", "starling")):
        ck = make_tiny_checkpoint(d / arch, arch, layout, seed=5)
        out[arch] = models.load_model(ck.path, base_model=ck.base_model)
    return out


def _rows(key, tokens, vocab, num_rows):
    """Rows equal to `tokens` before a random first edit (some never edited, one edited at 0), and their first."""
    t = tokens.shape[0]
    k1, k2 = jax.random.split(key)
    first = np.array(jax.random.randint(k1, (num_rows,), 0, t + 1))
    first[0], first[1] = 0, t                                         # edited at 0; not edited
    new = np.array(jax.random.randint(k2, (num_rows, t), 0, vocab))
    keep = np.arange(t)[None] < first[:, None]
    rows = np.where(keep, np.asarray(tokens)[None], new)
    rows[np.arange(num_rows)[first < t], first[first < t]] = (np.asarray(tokens)[first[first < t]] + 1) % vocab
    return jnp.asarray(rows, jnp.int32), jnp.asarray(first, jnp.int32)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_packed_rows_score_as_the_full_pass(tiny, arch):
    """Rows scored from their first edit on against the cached row = the whole rows' full pass (float32); also
    with the first layer's per-token work on the distinct rows (distinct=(ids, src), rows = ids[src];
    GPT-NeoX runs it, Llama takes the plain first layer)."""
    m = tiny[arch]
    scorer = models.reward_scorer(m)
    t, c = 13, 11
    tokens = jax.random.randint(jax.random.key(1), (t,), 0, m.vocab_size)
    rows, first = _rows(jax.random.key(2), tokens, m.vocab_size, c)
    full = np.asarray(scorer.score_tokens(scorer.params, rows, jnp.ones(rows.shape, jnp.int32)))
    cache = jax.jit(scorer.prefix.cache)(scorer.params, tokens)
    need = int(np.sum(t - np.minimum(np.asarray(first), t - 1)))
    score = jax.jit(scorer.prefix.score_rows, static_argnums=4)
    ids = jnp.concatenate([tokens, rows.reshape(-1)])                 # the row's tokens, then every row entry
    src = jnp.where(rows == tokens[None], jnp.arange(t)[None], t + jnp.arange(c * t).reshape(c, t))
    assert np.array_equal(np.asarray(ids[src]), np.asarray(rows))
    for slots in (need, c * t):                                 # exactly full; the plain width (spare slots)
        for hint in (None, (ids, src)):
            r, used = score(scorer.params, cache, rows, first, slots, hint)
            assert int(used) == need
            np.testing.assert_allclose(np.asarray(r), full, rtol=1e-5, atol=1e-6)   # float32: summation order only


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt_neox_sequential", "llama"])
def test_distinct_rows_score_as_the_full_pass(tiny, tmp_path, arch):
    """score_tokens with distinct=(ids, src), rows = ids[src] (the first layer's per-token work on the U rows)
    = without it, on left-padded and unpadded rows; Llama's block takes the plain pass."""
    if arch == "gpt_neox_sequential":
        ck = make_tiny_checkpoint(tmp_path / arch, "gpt_neox", "oasst", seed=6, use_parallel_residual=False)
        m = models.load_model(ck.path)
    else:
        m = tiny[arch]
    scorer = models.reward_scorer(m)
    assert scorer.distinct
    b, t, u = 7, 11, 13
    ids = jax.random.randint(jax.random.key(3), (u,), 0, m.vocab_size)
    src = jax.random.randint(jax.random.key(4), (b, t), 0, u)
    rows = ids[src]
    mask = jnp.ones((b, t), jnp.int32).at[:3, :4].set(0)              # three left-padded rows
    full = np.asarray(jax.jit(scorer.score_tokens)(scorer.params, rows, mask))
    hinted = jax.jit(lambda p, r, m, d: scorer.score_tokens(p, r, m, distinct=d))(scorer.params, rows, mask, (ids, src))
    np.testing.assert_allclose(np.asarray(hinted), full, rtol=1e-5, atol=1e-6)   # float32: GEMM row count only


def test_search_with_dedup_first_layer_takes_the_plain_steps(tiny):
    """GCG with the first layer on the T + C E distinct rows takes the same steps as without (same key).

    The plain run is test_search_with_shared_prefix_takes_the_plain_steps' (same config, 6 steps, same keys):
    one program, compiled once a suite run (the JAX cache)."""
    scorer = models.reward_scorer(tiny["gpt_neox"])
    params = search_params(scorer)
    out = []
    for dedup in (False, True):
        cfg = SearchConfig(length=9, topk=3, num_candidates=8, num_iters=6, schedule="gcg", edits=2,
                           dedup_first_layer=dedup)
        init, step = make_search(cfg, scorer)
        state = jax.jit(init)(jax.random.key(3), params)
        out.append(jax.jit(make_scan(step, cfg.num_iters))(jax.random.key(4), state, params))
    (s0, i0), (s1, i1) = out
    np.testing.assert_array_equal(np.asarray(s0.tokens), np.asarray(s1.tokens))
    np.testing.assert_array_equal(np.asarray(s0.best_tokens), np.asarray(s1.best_tokens))
    np.testing.assert_allclose(np.asarray(i1.objective), np.asarray(i0.objective), rtol=1e-5, atol=1e-6)


def test_pack_rows_layout_by_brute_force():
    """Each slot holds (row, position) of the rows' tokens from their first edit on, in order; the grid
    reads the cached row before first[c] and the row's own slot after."""
    t, first = 6, np.array([0, 6, 3, 5, 2])
    want = [(c, p) for c in range(len(first)) for p in range(min(first[c], t - 1), t)]
    packed, used = layers.pack_rows(jnp.asarray(first), t, len(want) + 3)
    assert int(used) == len(want)
    got = list(zip(np.asarray(packed.row).tolist(), np.asarray(packed.pos).tolist()))
    assert got[:len(want)] == want
    assert [got[i] for i in np.asarray(packed.last)] == [(c, t - 1) for c in range(len(first))]
    cached = np.arange(t) + 100.0
    slots = np.array([10 * c + p for c, p in got], np.float64)
    grid = np.asarray(packed.grid(jnp.asarray(slots)[None], jnp.asarray(cached)[None]))
    expect = np.array([[cached[p] if p < min(first[c], t - 1) else 10 * c + p for p in range(t)]
                       for c in range(len(first))])
    np.testing.assert_array_equal(grid, expect)
    np.testing.assert_array_equal(np.asarray(packed.unpack(jnp.asarray(expect)))[0], slots)


@pytest.mark.parametrize("t,c,n", [(5, 3, 2), (4, 4, 1), (6, 2, 3)])
def test_prefix_slots_is_the_quantile_of_the_enumerated_law(t, c, n):
    """prefix_slots = the 99% quantile of sum_c max(T - first edit, 1), enumerated over every position set."""
    sizes = [t - min(min(s), t - 1) for s in itertools.combinations(range(t), n)]
    counts = {}
    for combo in itertools.product(sizes, repeat=c):
        counts[sum(combo)] = counts.get(sum(combo), 0) + 1
    total, acc = len(sizes) ** c, 0
    for k in sorted(counts):
        acc += counts[k]
        if acc / total >= 0.99 - 1e-12:
            break
    assert prefix_slots(t, c, n) == k
    assert prefix_slots(t, c, n, miss=0.0) == c * t                  # every edit at position 0 is possible


def test_onehot_embed_is_the_product_and_its_gradient():
    """Lookup on exact one-hot rows = onehot @ E bitwise; a relaxed input takes the product; the gradient
    (both arguments) is the product's autodiff."""
    table = jax.random.normal(jax.random.key(0), (7, 3))
    onehot = jax.nn.one_hot(jnp.array([[2, 0, 6], [5, 5, 1]]), 7)
    relaxed = onehot.at[0, 1].set(jnp.array([0.5, 0, 0, 0, 0.5, 0, 0]))
    product = lambda x, e: jnp.einsum("btv,vd->btd", x, e)  # noqa: E731
    not_onehot = [relaxed, onehot.at[1, 2].set(0.0),                        # a row of zeros (no index)
                  onehot.at[1, 2, 3].set(1.0),                              # two ones in a row
                  onehot.at[1, 2, 1].set(2.0),                              # one non-zero, not 1
                  onehot.at[0, 0, 4].set(-1.0)]                             # a 1 and a -1
    for fn in (layers.onehot_embed, jax.jit(layers.onehot_embed)):
        np.testing.assert_array_equal(np.asarray(fn(onehot, table)), np.asarray(product(onehot, table)))
        for x in not_onehot:
            np.testing.assert_allclose(np.asarray(fn(x, table)), np.asarray(product(x, table)), rtol=1e-6)
    w = jax.random.normal(jax.random.key(1), (2, 3, 3))
    for x in (onehot, relaxed):
        ours = jax.grad(lambda x, e: jnp.sum(jnp.sin(layers.onehot_embed(x, e)) * w), argnums=(0, 1))(x, table)
        ref = jax.grad(lambda x, e: jnp.sum(jnp.sin(product(x, e)) * w), argnums=(0, 1))(x, table)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # four scanned searches to compile: 74 s on the 2-core machine at load 8
def test_search_with_shared_prefix_takes_the_plain_steps(tiny, monkeypatch):
    """GCG with share_prefix takes the same steps as without, for the same key: with the default slots,
    with too few (every step falls back to the plain pass) and with C T (never falls back)."""
    m = tiny["gpt_neox"]
    scorer = models.reward_scorer(m)
    cfg = SearchConfig(length=9, topk=3, num_candidates=8, num_iters=6, schedule="gcg", edits=2)
    params = search_params(scorer)

    def run(cfg):
        init, step = make_search(cfg, scorer)
        state = jax.jit(init)(jax.random.key(3), params)
        return jax.jit(make_scan(step, cfg.num_iters))(jax.random.key(4), state, params)

    ps, pi = run(cfg)
    default = SearchConfig.prefix_slots
    for slots in (None, 1, cfg.num_candidates * cfg.length):
        monkeypatch.setattr(SearchConfig, "prefix_slots", default if slots is None else lambda self, n=slots: n)
        ss, si = run(dataclasses.replace(cfg, share_prefix=True))
        np.testing.assert_array_equal(np.asarray(ss.tokens), np.asarray(ps.tokens))
        np.testing.assert_array_equal(np.asarray(ss.best_tokens), np.asarray(ps.best_tokens))
        np.testing.assert_allclose(np.asarray(si.objective), np.asarray(pi.objective), rtol=1e-5, atol=1e-6)


def test_share_prefix_needs_a_prefix_scorer(tiny):
    m = tiny["gpt_neox"]
    plain = models.reward_scorer(m)._replace(prefix=None)
    assert isinstance(plain, Scorer)
    with pytest.raises(ValueError, match="share_prefix"):
        make_search(SearchConfig(length=5, topk=2, num_candidates=4, schedule="gcg", share_prefix=True), plain)


def test_cond_all_takes_one_branch_for_the_whole_batch():
    """Unbatched: lax.cond. Under vmap: true_fn for every row when pred holds for all rows, else false_fn."""
    from goodhart_jax.search.gcg import cond_all

    up, down = (lambda x, y: x + y), (lambda x, y: x - y)
    x = jnp.arange(3.0)
    assert float(cond_all(jnp.bool_(True), up, down, 2.0, 1.0)) == 3.0
    assert float(jax.jit(cond_all, static_argnums=(1, 2))(jnp.bool_(False), up, down, 2.0, 1.0)) == 1.0
    f = jax.vmap(lambda p, x: cond_all(p, up, down, x, 1.0))
    np.testing.assert_array_equal(np.asarray(f(jnp.array([True, True, True]), x)), np.asarray(x + 1))
    np.testing.assert_array_equal(np.asarray(f(jnp.array([True, False, True]), x)), np.asarray(x - 1))


@pytest.mark.slow  # two vmapped searches to compile: 56 s on the 2-core machine at load 8
def test_vmapped_restarts_with_shared_prefix_take_the_plain_steps(tiny):
    """`search` (restarts vmapped, the CLI's way) with share_prefix = without it, same key."""
    from goodhart_jax.search import search

    scorer = models.reward_scorer(tiny["llama"])
    cfg = SearchConfig(length=8, topk=3, num_candidates=6, num_iters=4, schedule="gcg", edits=1)
    (ps, pi), (ss, si) = (search(jax.random.key(7), dataclasses.replace(cfg, share_prefix=share), scorer,
                                 num_restarts=2) for share in (False, True))
    np.testing.assert_array_equal(np.asarray(ss.best_tokens), np.asarray(ps.best_tokens))
    np.testing.assert_array_equal(np.asarray(ss.tokens), np.asarray(ps.tokens))
    np.testing.assert_allclose(np.asarray(si.objective), np.asarray(pi.objective), rtol=1e-5, atol=1e-6)
