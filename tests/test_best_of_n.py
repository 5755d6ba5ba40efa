"""Best-of-n: exact quadrature against the Gaussian closed form and Monte Carlo; Gao fits; bad n."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from goodhart_jax import best_of_n
from goodhart_jax.best_of_n import authors_grid, bon_exact, bon_mc, check_ns, fit_gao, kl_bound
from goodhart_jax.tails import parse

NS = (1, 4, 64, 1024)
_exact = jax.jit(bon_exact)
_mc = jax.jit(bon_mc, static_argnums=(3, 4))


def expected_max_normal(n):
    """E[max of n standard normals] = ∫ n z phi(z) Phi(z)^(n-1) dz."""
    f = lambda z: n * z * stats.norm.pdf(z) * stats.norm.cdf(z) ** (n - 1)  # noqa: E731
    return integrate.quad(f, -12, 12, points=[math.sqrt(2 * math.log(n))] if n > 1 else None, limit=200,
                          epsabs=1e-13, epsrel=1e-12)[0]


def test_gaussian_closed_form():
    with jax.enable_x64(True):
        r = _exact(parse("normal"), parse("normal:scale=2"), jnp.asarray(NS, jnp.float64))
    su = math.sqrt(5.0)
    em = np.array([expected_max_normal(n) for n in NS])
    # V_best = (sv^2/su) Z_max and U_best = su Z_max; quadrature is ~1e-12, scipy's quad ~1e-12.
    np.testing.assert_allclose(r.E_V, 4 / su * em, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(r.E_U, su * em, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(r.KL_bound, np.log(NS) - (np.array(NS) - 1) / np.array(NS), rtol=1e-12)
    assert float(kl_bound(1.0)) == 0.0


def test_heavy_error_exact_matches_monte_carlo():
    utilities, errors = authors_grid()
    util, err = utilities[0][1], errors[2][1]  # 2 x normal, Student-t(3) at unit variance
    with jax.enable_x64(True):  # one compiled program: NS, then n = 16 and 65536, in one call
        both = _exact(err, util, jnp.asarray(NS + (16, 65536), jnp.float64))
    r, far = jax.tree.map(lambda a: a[:len(NS)], both), jax.tree.map(lambda a: a[len(NS):], both)
    m = _mc(jax.random.key(0), err, util, NS, 400)
    z = (np.asarray(m.E_V) - np.asarray(r.E_V)) / np.asarray(m.E_V_se)
    assert np.all(np.abs(z[1:]) < 4), z  # n = 1 has E_V = 0 exactly: checked below
    zu = (np.asarray(m.E_U) - np.asarray(r.E_U)) / np.asarray(m.E_U_se)
    assert np.all(np.abs(zu) < 4), zu
    assert abs(float(r.E_V[0])) < 1e-8 and abs(float(m.E_V[0])) < 4 * float(m.E_V_se[0])
    # Catastrophic Goodhart in best-of-n: E[V] rises, then falls back as the t(3) error takes over.
    assert float(far.E_V[1]) < float(far.E_V[0])  # n = 65536 below n = 16


def test_monte_carlo_selection_equals_brute_force():
    """bon_mc's one-pass best-of-prefixes against argmax over each prefix of the same draws, in NumPy.

    n_max = 65536 runs the trials in blocks of 4 (7 trials: one padded block); n in any order, repeated."""
    err, util = parse("student_t:df=3"), parse("normal:scale=2")
    ns, T = (64, 1, 65536, 5, 4, 64), 7
    m = _mc(jax.random.key(3), err, util, ns, T)
    U, V = [], []
    for k in jax.random.split(jax.random.key(3), T):  # the documented draws: trial t from split(key, T)[t]
        kx, kv = jax.random.split(k)
        x, v = np.asarray(err.sample(kx, (max(ns),))), np.asarray(util.sample(kv, (max(ns),)))
        i = [np.argmax((x + v)[:n]) for n in ns]
        U.append((x + v)[i])
        V.append(v[i])
    U, V = np.array(U, np.float64), np.array(V, np.float64)
    np.testing.assert_allclose(m.E_U, U.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.E_V, V.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.E_V_se, V.std(0, ddof=1) / math.sqrt(T), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.E_U_se, U.std(0, ddof=1) / math.sqrt(T), rtol=1e-5, atol=1e-6)


def test_authors_grid_variances():
    utilities, errors = authors_grid()
    for _, f in utilities:
        np.testing.assert_allclose(float(f.dist.variance), 4.0, rtol=1e-6)
    for label, f in errors:
        if label.startswith("lognormal"):
            np.testing.assert_allclose(float(f.mean), 2 ** (math.log(2) / 2) - 1, rtol=1e-6)  # e^{s^2/2} - 1
        else:
            np.testing.assert_allclose(float(f.dist.variance), 1.0, rtol=1e-6)


def test_gao_fit_matches_least_squares():
    n = np.array(NS + (4096, 65536), float)
    d = np.sqrt(np.log(n) - (n - 1) / n)
    R = d * (2.0 - 0.3 * d) + 0.05 * np.sin(7 * d)
    f = jax.jit(fit_gao)(jnp.asarray(d, jnp.float32), jnp.asarray(R, jnp.float32))
    A = np.stack([d, -d * d], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(A, R, rcond=None)
    # Adam on a 2-parameter quadratic loss in float32: converges to ~1e-4 of the normal equations.
    np.testing.assert_allclose([float(f.alpha), float(f.beta)], [alpha, beta], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.asarray(f.residuals), R - A @ [alpha, beta], atol=5e-3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, float("nan"), float("inf")])
def test_bad_n(bad):
    with pytest.raises(ValueError, match="n must be"):
        check_ns([1, bad])


def _f_u_mpmath(u, alpha):
    """f_U(u) for U = X + V, X ~ N(0, 1), V ~ Pareto(alpha) by 30-digit mpmath (split at the bump v ~ u)."""
    import mpmath as mp

    mp.mp.dps = 30
    u, a = mp.mpf(u), mp.mpf(alpha)
    g = lambda v: mp.npdf(u - v) * a * v ** (-a - 1)  # noqa: E731
    pts = [1] + [p for p in (u - 40, u - 5, u, u + 5) if p > 1] + [u + 40, mp.inf]
    return float(mp.log(mp.quad(g, sorted(set(pts)))))


@pytest.mark.slow  # two family pairs compiled (~1 min each on 2 loaded cores)
def test_power_law_tails_near_index_one():
    """Pareto(1.01) as error or as utility: best-of-1 is the base (E_U = E[X] + E[V] = 101, E_V = E[V]);
    it gave 36.4 (the u-integral's tail beyond e^43 dropped) and 294.7 (f_U at u ~ 1e17 from a bump of
    width 1 on nodes 16 apart). The density of U at u ~ 1e17 against mpmath."""
    X, P = parse("normal"), parse("pareto:alpha=1.01")
    with jax.enable_x64(True):
        r = jax.device_get(_exact(P, X, jnp.asarray([1.0, 4.0])))
        np.testing.assert_allclose([r.E_U[0], r.E_V[0]], [101.0, 0.0], rtol=1e-6, atol=1e-9)
        r = jax.device_get(_exact(X, P, jnp.asarray([1.0, 4.0])))
        np.testing.assert_allclose([r.E_U[0], r.E_V[0]], [101.0, 101.0], rtol=1e-6)
        assert r.E_U[1] > r.E_U[0] and r.E_V[1] > r.E_V[0]
        # Without a finite mean in X or V the exact moments are not computed, on the programs compiled above
        # (Cauchy X with Student-t(1.5) V gave E_U = 1.1e9 and E_V = 3.26 at n = 4; Monte Carlo, 1.6e7 trials:
        # 2.39): E_U = +inf; E_V refused (NaN) where only X lacks a mean, +inf where V does (Pareto(0.9) here).
        r = jax.device_get(_exact(parse("pareto:alpha=0.9"), X, jnp.asarray([1.0, 4.0])))
        assert np.all(np.isposinf(r.E_U)) and np.all(np.isnan(r.E_V)), r
        r = jax.device_get(_exact(X, parse("pareto:alpha=0.9"), jnp.asarray([1.0, 4.0])))
        assert np.all(np.isposinf(r.E_U)) and np.all(np.isposinf(r.E_V)), r
        us = jnp.asarray([3.0, 1e4, 1e17])
        lf, ev = jax.jit(jax.vmap(lambda u: best_of_n._conv(X, P, u, jnp.float64)))(us)
    # At u = 1e17, f_U(u) = E_X[f_V(u - X)] = alpha u^(-alpha-1) (1 + O(u^-2)) exactly in float64 (mpmath's
    # quad over the 17 decades below u is the less accurate one there).
    want = [_f_u_mpmath(u, 1.01) for u in (3.0, 1e4)] + [math.log(1.01) - 2.01 * math.log(1e17)]
    np.testing.assert_allclose(lf, want, rtol=1e-9)
    np.testing.assert_allclose(ev[2], 1e17, rtol=1e-12)  # E[V | U = u] = u - E[X | U = u], E[X | U = u] = O(1)


@pytest.mark.parametrize("error,utility,expected", [
    ("student_t:df=1", "normal", {"E_U", "E_U_se"}),  # the pair: E_U_mc printed 4.7e6 +- 1.0e6
    ("student_t:df=0.5", "normal", {"E_U", "E_U_se"}),
    ("student_t:df=2", "normal", {"E_U_se"}),
    ("pareto:alpha=1.5", "normal", {"E_U_se"}),
    ("normal", "student_t:df=1.5", {"E_U_se", "E_V_se"}),
    ("normal", "pareto:alpha=1", {"E_U", "E_U_se", "E_V", "E_V_se"}),
    ("student_t:df=3", "lognormal", set()),
])
def test_infinite_moments_of_the_best_are_named(error, utility, expected):
    """The k-th moment of the best of n is finite iff X's and V's are (Student-t: df > k; Pareto: alpha > k)."""
    why = best_of_n.why_not_finite(parse(error), parse(utility))
    assert set(why) == expected
    for k, w in why.items():  # a standard error goes with its mean where that is infinite
        assert "no finite mean" in w if k in ("E_U", "E_V") or k[:3] in why else "infinite variance" in w


