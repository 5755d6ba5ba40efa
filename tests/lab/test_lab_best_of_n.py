"""Exact best-of-n on enumerated sequences: brute force, Monte Carlo, mpmath, the KL bound, ties."""
import itertools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from goodhart_jax import mdp
from goodhart_jax.lab.best_of_n import bon_logprobs, bon_stats, bon_tree
from goodhart_jax.lab.tree import terminal_logprobs
from goodhart_jax.tails import parse

bon_stats_jit = jax.jit(bon_stats)


def brute_force(p0, r, n):
    """P(best of n = x) by enumerating all N^n tuples; the first draw attaining the maximum wins."""
    N = len(p0)
    out = np.zeros(N)
    for t in itertools.product(range(N), repeat=n):
        vals = r[list(t)]
        out[t[int(np.argmax(vals))]] += np.prod(p0[list(t)])
    return out


def small_case(seed=0, N=6):
    rng = np.random.default_rng(seed)
    p0 = rng.dirichlet(np.ones(N))
    r = np.array([0.3, -1.0, 0.3, 2.0, -1.0, 0.7])[:N]  # two ties, one of them at the bottom
    g = rng.normal(size=N)
    return p0, r, g


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_brute_force_with_ties(jit, n):
    p0, r, g = small_case()
    ref = brute_force(p0, r, n)
    with jax.enable_x64(True):
        f = jax.jit(bon_logprobs) if jit else bon_logprobs
        lp = np.asarray(f(jnp.log(p0), jnp.asarray(r), jnp.asarray(float(n))))
        s = bon_stats_jit(jnp.log(p0), jnp.asarray(r), jnp.asarray(g), jnp.asarray([float(n)]))
    np.testing.assert_allclose(np.exp(lp), ref, rtol=1e-12, atol=1e-15)  # float64 round-off only
    mask = ref > 0
    kl = np.sum(ref[mask] * np.log(ref[mask] / p0[mask]))
    np.testing.assert_allclose(s.gold[0], ref @ g, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s.proxy[0], ref @ r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s.KL[0], kl, rtol=1e-10, atol=1e-14)


def mp_stats(p0, r, g, n):
    """50-digit reference of the closed form (F(v)^n - F(v-)^n, split by pi0 mass within a tie)."""
    mpmath.mp.dps = 50
    p0 = [mpmath.mpf(float(x)) for x in p0]
    tot = sum(p0)
    p0 = [x / tot for x in p0]
    vals = sorted(set(r.tolist()))
    P = [mpmath.mpf(0)] * len(p0)
    for v in vals:
        F = sum(p for p, x in zip(p0, r) if x <= v)
        Fm = sum(p for p, x in zip(p0, r) if x < v)
        m = F - Fm
        pv = F**n - Fm**n
        for i, x in enumerate(r):
            if x == v:
                P[i] = p0[i] / m * pv
    kl = sum(P[i] * mpmath.log(P[i] / p0[i]) for i in range(len(P)) if P[i] > 0)
    return float(sum(P[i] * float(g[i]) for i in range(len(P)))), float(kl)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_n_against_mpmath(dtype):
    rng = np.random.default_rng(1)
    N = 40
    p0 = rng.dirichlet(np.full(N, 0.3))
    r = np.round(rng.normal(size=N), 1)  # rounded: ties
    g = rng.normal(size=N)
    ns = [1, 7, 4**8, 10**6, 4**12]
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        s = bon_stats_jit(jnp.log(jnp.asarray(p0, dt)), jnp.asarray(r, dt), jnp.asarray(g, dt), jnp.asarray(ns, dt))
    ref = np.array([mp_stats(p0, r, g, n) for n in ns])
    # float64: round-off; float32: the log-space forms keep ~1e-5 even at n = 4^12.
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (2e-4, 2e-5)
    np.testing.assert_allclose(np.asarray(s.gold), ref[:, 0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(s.KL), ref[:, 1], rtol=rtol, atol=atol)


def test_limits_and_bound():
    """n = 1 is pi0 (KL 0); KL rises with n to -log pi0(top tie) and stays below log n - (n-1)/n."""
    rng = np.random.default_rng(2)
    N = 300
    p0 = rng.dirichlet(np.ones(N))
    for r in (rng.normal(size=N), np.round(rng.normal(size=N), 0)):  # continuous, then coarse ties
        ns = np.array([1, 2, 3, 10, 100, 4**8, 1e6, 1e15])
        with jax.enable_x64(True):
            s = bon_stats_jit(jnp.log(p0), jnp.asarray(r), jnp.asarray(r), jnp.asarray(ns))
        kl = np.asarray(s.KL)
        assert abs(kl[0]) < 1e-14 and abs(float(s.proxy[0]) - p0 @ r) < 1e-12
        assert np.all(np.diff(kl)[:4] > 0) and np.all(np.diff(kl) >= -1e-12)  # saturates once the top tie wins
        assert np.all(kl <= np.asarray(s.KL_bound) + 1e-12)
        top = r == r.max()
        np.testing.assert_allclose(kl[-1], -np.log(p0[top].sum()), rtol=1e-9)
        np.testing.assert_allclose(float(s.proxy[-1]), r.max(), rtol=1e-9)


def random_tree(key, vocab=3, depth=3, decimals=1):
    """A random-pi0 EOS tree with proxy rounded to `decimals` (ties) and gold N(0, 1)."""
    spec = mdp.TreeSpec(vocab, depth, eos=True)
    fam = parse("normal")
    t = jax.jit(lambda k: mdp.make_tree(k, spec, fam, fam, pi0="random"))(key)
    U = tuple(jnp.round(x + v, decimals) for x, v in zip(t.X, t.V))
    return mdp.Tree(t.log_pi0, tuple(u - v for u, v in zip(U, t.V)), t.V), spec


def test_monte_carlo():
    """Best of n sampled from pi0 over the tree's sequences (first maximal draw wins) matches within 4 se."""
    tree, spec = random_tree(jax.random.key(4))
    ns = (1, 3, 16, 128)
    s = jax.jit(bon_tree)(tree, jnp.asarray(ns, jnp.float32))
    lp = jax.jit(terminal_logprobs)(tree.log_pi0)
    proxy = jnp.concatenate(mdp.terminal_values(tree))
    gold = jnp.concatenate(tree.V)
    T = 4000

    @jax.jit
    def draw(key):
        idx = jax.random.categorical(key, lp, shape=(T, max(ns)))  # [T, n_max]
        u = proxy[idx]

        def best(n):
            i = jnp.argmax(jnp.where(jnp.arange(max(ns)) < n, u, -jnp.inf), axis=1)
            return jnp.take_along_axis(idx, i[:, None], axis=1)[:, 0]
        return jax.vmap(best)(jnp.asarray(ns))  # [K, T]

    picks = np.asarray(draw(jax.random.key(5)))
    for j, n in enumerate(ns):
        for exact, table in ((s.gold[j], gold), (s.proxy[j], proxy)):
            x = np.asarray(table)[picks[j]]
            z = (x.mean() - float(exact)) / (x.std(ddof=1) / np.sqrt(T))
            assert abs(z) < 4, (n, z)
    # the law itself, on the sequences it favours most at n = 16
    P = np.exp(np.asarray(jax.jit(bon_logprobs)(lp, proxy, 16.0)))
    freq = np.bincount(picks[2], minlength=P.size) / T
    for i in np.argsort(P)[-5:]:
        assert abs(freq[i] - P[i]) < 4 * np.sqrt(P[i] * (1 - P[i]) / T), (i, freq[i], P[i])
    assert np.all(np.asarray(s.KL) <= np.asarray(s.KL_bound) + 1e-6)
