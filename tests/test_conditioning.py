"""E[V | X + V >= t]: closed forms, mpmath far in the tail, Monte Carlo, limit trends."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import special

from goodhart_jax.conditioning import (
    check_thresholds, exponential_limit, integrand_mode, sweep_footnote4, sweep_footnote4_mc, sweep_threshold,
    sweep_threshold_mc, threshold, weight_tail_index, WHY_NOT, WHY_NOT_MC,
)
from goodhart_jax.tails import parse

# ----------------------------------------------------------------------------
# mpmath reference. P(X+V >= t) is ~e^-2500 at t = 100 with normal error, so the
# integrand is rescaled by its peak in log space before mp.quad sees it.

mp.mp.dps = 25


def _mp_logpdf(fam, v):
    p, v = fam.params, mp.mpf(v)
    if fam.name == "normal":
        z = (v - p["loc"]) / p["scale"]
        return -z * z / 2 - mp.log(mp.sqrt(2 * mp.pi) * p["scale"])
    if fam.name == "student_t":
        df, z = mp.mpf(p["df"]), (v - p["loc"]) / p["scale"]
        return (mp.loggamma((df + 1) / 2) - mp.loggamma(df / 2) - mp.log(mp.sqrt(df * mp.pi) * p["scale"])
                - (df + 1) / 2 * mp.log(1 + z * z / df))
    raise KeyError(fam.name)


def _mp_logsf(fam, x):
    p, x = fam.params, mp.mpf(x)
    if fam.name == "normal":
        return mp.log(mp.erfc((x - p["loc"]) / p["scale"] / mp.sqrt(2)) / 2)
    if fam.name == "student_t":
        df, z = mp.mpf(p["df"]), (x - p["loc"]) / p["scale"]
        i = mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + z * z), regularized=True)
        return mp.log(i / 2) if z >= 0 else mp.log(1 - i / 2)
    if fam.name == "pareto":
        return p["alpha"] * (mp.log(p["scale"]) - mp.log(x)) if x > p["scale"] else mp.mpf(0)
    raise KeyError(fam.name)


def mp_threshold(err, util, t, points):
    """(E[V | X+V >= t], log P(X+V >= t)) by mpmath, split at `points`."""
    lg = lambda v: _mp_logpdf(util, v) + _mp_logsf(err, t - v)  # noqa: E731
    peak = max(lg(v) for v in points)
    f = lambda v: mp.exp(lg(v) - peak)  # noqa: E731
    pieces = [-mp.inf] + sorted({mp.mpf(x) for x in points}) + [mp.inf]
    z = mp.quad(f, pieces)
    return float(mp.quad(lambda v: v * f(v), pieces) / z), float(peak + mp.log(z))


def gaussian_closed_form(t, sx, sv):
    """E[V | X+V >= t] = (sv^2/su) phi(t/su) / Phibar(t/su), in log space."""
    su = math.hypot(sx, sv)
    z = np.asarray(t) / su
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    return sv**2 / su * np.exp(log_phi - special.log_ndtr(-z)), special.log_ndtr(-z)


# ----------------------------------------------------------------------------
# Compiling a (error, utility, dtype, shape) combination costs seconds, so the
# tests share one threshold grid and cache results per process.

TS = (0.0, 10.0, 100.0)
K = 6  # every sweep is padded to K thresholds (repeating the last): one program per (error, utility, dtype)


@functools.lru_cache(maxsize=None)
def quad(err: str, util: str, x64: bool, ts=TS):
    assert len(ts) <= K
    padded = tuple(ts) + (ts[-1],) * (K - len(ts))
    with jax.enable_x64(x64):
        r = sweep_threshold(parse(err), parse(util), jnp.asarray(padded, jnp.float64 if x64 else jnp.float32))
        return np.asarray(r.E_V)[:len(ts)], np.asarray(r.log_p)[:len(ts)]


def test_gaussian_closed_form():
    ts = (-3.0, 0.0, 2.0, 10.0, 40.0, 100.0)
    E_V, log_p = quad("normal:scale=1.5", "normal:scale=0.7", True, ts)  # the normal/normal program
    with jax.enable_x64(True):
        eager = threshold(parse("normal:scale=1.5"), parse("normal:scale=0.7"), jnp.float64(40.0))
    want, want_logp = gaussian_closed_form(np.array(ts), 1.5, 0.7)
    # Double-exponential quadrature of an analytic integrand: ~1e-12 in float64.
    np.testing.assert_allclose(E_V, want, rtol=1e-9)
    np.testing.assert_allclose(log_p, want_logp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(eager.E_V), want[4], rtol=1e-9)  # un-jitted agrees


def test_vmap_over_family_parameters():
    scales = jnp.array([0.5, 1.0, 2.0])
    with jax.enable_x64(True):
        fams = jax.vmap(lambda s: dataclasses.replace(parse("normal"), params={"loc": 0.0, "scale": s}))(scales)
        out = jax.jit(jax.vmap(threshold, in_axes=(0, None, None)))(fams, parse("normal"), jnp.float64(3.0))
    want = [gaussian_closed_form(3.0, float(s), 1.0)[0] for s in scales]
    np.testing.assert_allclose(np.asarray(out.E_V), want, rtol=1e-9)


@pytest.mark.parametrize("err,util", [
    ("student_t:df=3", "normal"),  # Theorem 5: heavy error
    ("pareto:alpha=2.5", "normal"),  # error with a support edge: Fbar_X(t - v) kinks at v = t - 1
    ("student_t:df=3", "student_t:df=3"),  # two bumps: v near 0 and v near t
    ("normal", "student_t:df=3"),  # heavy utility: V follows t
])
def test_heavy_tails_far_out_match_mpmath(err, util):
    E_V, log_p = quad(err, util, True)
    err, util = parse(err), parse(util)
    for i, t in enumerate(TS[1:], start=1):
        m = grid_mode(err, util, t)
        pts = [0.0, m - 1, m, m + 1, t - float(err.kink()), t - 1, t + 1]
        want, want_logp = mp_threshold(err, util, t, pts)
        # The target is 1e-6 relative; measured ~1e-9 at worst (two bumps).
        np.testing.assert_allclose(E_V[i], want, rtol=1e-6)
        np.testing.assert_allclose(log_p[i], want_logp, rtol=1e-8)


def _sp_logpdf_logsf(fam):
    """SciPy float64 (log pdf, log sf) of a family (normal, Student-t, Pareto)."""
    from scipy import stats
    p = fam.params
    if fam.name == "normal":
        d = stats.norm(p["loc"], p["scale"])
    elif fam.name == "student_t":
        d = stats.t(float(p["df"]), p["loc"], p["scale"])
    elif fam.name == "pareto":
        d = stats.pareto(float(p["alpha"]), scale=p["scale"])
    else:
        raise KeyError(fam.name)
    return d.logpdf, d.logsf


def grid_mode(err, util, t):
    """The integrand's maximiser on a grid over [-10, t + 10] (spacing (t + 20) / 2400), by SciPy in float64:
    split points for `mp_threshold` found without the library (its bump locator is what is under test)."""
    vs = np.linspace(-10.0, t + 10.0, 2401)
    logpdf, logsf = _sp_logpdf_logsf(util)[0], _sp_logpdf_logsf(err)[1]
    return float(vs[int(np.argmax(logpdf(vs) + logsf(t - vs)))])


def test_integrand_mode_matches_the_grid():
    """integrand_mode against the SciPy grid's maximiser (within one grid step), Student-t(3) error, t = 10."""
    err, util, t = parse("student_t:df=3"), parse("normal"), 10.0
    with jax.enable_x64(True):
        m = float(jax.jit(integrand_mode)(err, util, jnp.float64(t)))
    assert abs(m - grid_mode(err, util, t)) <= (t + 20.0) / 2400


@pytest.mark.parametrize("err,util", [("normal", "student_t:df=3"), ("student_t:df=3", "normal")])
def test_monte_carlo_within_four_standard_errors_and_float32(err, util):
    E32, logp32 = quad(err, util, False)
    E64, logp64 = quad(err, util, True)
    assert E32.dtype == np.float32 and np.all(np.isfinite(E32))
    # float32 log-space sums: a few ulps times the node count.
    np.testing.assert_allclose(E32, E64, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logp32, logp64, rtol=1e-5)
    m = sweep_threshold_mc(jax.random.key(0), parse(err), parse(util), jnp.asarray(TS, jnp.float32), 20_000)
    z = (np.asarray(m.E_V) - E64) / np.asarray(m.se)
    assert np.all(np.abs(z) < 4), z
    # Importance sampling keeps a useful sample far out (plain rejection would keep none at t = 100).
    assert np.all(np.asarray(m.ess) > 300), m.ess
    # log P(X+V >= t) = log E_q[w]: the relative error of a mean of bounded weights is ~1/sqrt(ESS).
    np.testing.assert_allclose(np.asarray(m.log_p), logp64, atol=0.1)


def test_plain_monte_carlo_at_small_t():
    """An estimator that shares nothing with the quadrature: draw X and V, keep X+V >= t."""
    rng = np.random.default_rng(0)
    n, t = 2_000_000, 2.0
    x, v = rng.standard_t(3, n), rng.standard_normal(n)
    keep = v[x + v >= t]
    E_V, log_p = quad("student_t:df=3", "normal", True, (t,))
    se = keep.std() / math.sqrt(keep.size)
    assert abs(keep.mean() - E_V[0]) < 4 * se
    np.testing.assert_allclose(math.log(keep.size / n), log_p[0], atol=4 / math.sqrt(keep.size))


def test_limit_trends_theorems_5_and_8():
    ts = (10.0, 30.0, 100.0, 300.0, 1000.0)
    heavy = quad("student_t:df=3", "normal", True, ts)[0]
    light = quad("normal", "normal", True, ts)[0]
    expo = quad("exponential:rate=2", "normal", True, ts)[0]
    with jax.enable_x64(True):
        lim = float(jax.jit(exponential_limit)(jnp.float64(2.0), parse("normal")))
    # Theorem 5: heavy error -> E[V] = 0, decreasing along the grid.
    assert np.all(np.diff(heavy) < 0) and 0 < heavy[-1] < 0.01
    # Theorem 8: light error -> infinity (t/2 for equal variances, up to the Mills ratio).
    assert np.all(np.diff(light) > 0)
    np.testing.assert_allclose(light, gaussian_closed_form(np.array(ts), 1.0, 1.0)[0], rtol=1e-9)
    # Boundary: exponential error -> the tilt of N(0,1) by the rate, N(rate, 1): limit = rate.
    np.testing.assert_allclose(lim, 2.0, rtol=1e-10)
    np.testing.assert_allclose(expo[-2:], lim, rtol=1e-9)


def test_footnote4_bounded_and_matches_sampling():
    rng = np.random.default_rng(1)
    n, t = 2_000_000, 2.0
    v = rng.standard_normal(n)
    x = np.where(np.abs(v) <= 1, 2.0 * rng.standard_normal(n), 0.0)
    keep = v[x + v >= t]
    with jax.enable_x64(True):  # the programs of test_sweep_footnote4_matches_scipy_quad (four thresholds)
        r = sweep_footnote4(jnp.array([t, 10.0, 100.0, 1000.0]))
        m = sweep_footnote4_mc(jax.random.key(2), jnp.array([t, 10.0, 100.0, 1000.0]), 20_000)
    E = np.asarray(r.E_V)
    assert abs(keep.mean() - E[0]) < 4 * keep.std() / math.sqrt(keep.size)
    assert abs(float(m.E_V[0]) - E[0]) < 4 * float(m.se[0])
    # Light-tailed given V, yet bounded: only |V| <= 1 reaches a high proxy.
    assert np.all((E[1:] > 0) & (E[1:] <= 1)) and np.all(np.diff(E[1:]) > 0)


def test_bad_thresholds():
    for bad in (np.inf, np.nan, [1.0, -np.inf]):
        with pytest.raises(ValueError, match="finite"):
            check_thresholds(bad)
    with pytest.raises(ValueError, match="unknown family"):
        parse("cauchyish")


def test_sweep_footnote4_matches_scipy_quad():
    """sweep_footnote4 / sweep_footnote4_mc against SciPy quadrature of footnote 4's pair in float64."""
    from scipy import integrate, stats

    def reference(t):
        # |v| <= 1: X ~ N(0, 4), P(X >= t - v) = sf((t - v) / 2); |v| > 1: X = 0, so v >= t. t >= 1 here.
        p_in = integrate.quad(lambda v: stats.norm.pdf(v) * stats.norm.sf((t - v) / 2), -1, 1, epsabs=0,
                              epsrel=1e-12)[0]
        m_in = integrate.quad(lambda v: v * stats.norm.pdf(v) * stats.norm.sf((t - v) / 2), -1, 1, epsabs=0,
                              epsrel=1e-12)[0]
        p_out, m_out = stats.norm.sf(t), stats.norm.pdf(t)  # ∫_t^inf phi, ∫_t^inf v phi
        return (m_in + m_out) / (p_in + p_out), math.log(p_in + p_out)

    ts = np.array([1.0, 2.0, 5.0, 12.0])
    ref = np.array([reference(t) for t in ts])
    with jax.enable_x64(True):
        q = sweep_footnote4(jnp.asarray(ts))
        m = sweep_footnote4_mc(jax.random.key(3), jnp.asarray(ts), 20_000)
    assert q.E_V.shape == m.E_V.shape == (4,)
    np.testing.assert_allclose(q.E_V, ref[:, 0], rtol=1e-8)  # both quadratures converge far below this
    np.testing.assert_allclose(q.log_p, ref[:, 1], rtol=1e-8)
    assert np.all(np.abs(np.asarray(m.E_V) - ref[:, 0]) < 4 * np.asarray(m.se))


def _scipy_conditional_mean(t):
    """E[V | X + V >= t], X ~ Pareto(1.01), V ~ Student-t(1.5), by SciPy quad on log-spaced pieces (float64);
    beyond T = 1e3 t, where P(X > t - v) = 1, the Student-t's tail mass and first moment in closed form."""
    from scipy import integrate, stats
    df, a, T = 1.5, 1.01, 1e3 * t
    fv = stats.t(df).pdf
    sf = lambda x: 1.0 if x <= 1 else x ** -a  # noqa: E731  P(X > x)
    g = lambda v: fv(v) * sf(t - v)  # noqa: E731
    cuts = [-1e12, -1e9, -1e6, -1e4, -1e2, -10.0, 0.0, 10.0, 1e2, 1e3, t / 2, t - 10, t - 1, t + 10, 1e2 * t, T]
    # (below -1e12 the integrands are < 1e-30)
    Z = M = 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        Z += integrate.quad(g, lo, hi, epsabs=0, epsrel=1e-10, limit=400)[0]
        M += integrate.quad(lambda v: v * g(v), lo, hi, epsabs=0, epsrel=1e-10, limit=400)[0]
    c = special.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * special.gamma(df / 2))
    Z += stats.t(df).sf(T)
    M += c * df / (df - 1) * (1 + T * T / df) ** (-(df - 1) / 2)  # ∫_T^inf v f_V(v) dv
    return M / Z


def test_monte_carlo_covers_a_heavy_utility_past_the_step():
    """Pareto(1.01) error, Student-t(1.5) utility, t = 1e4: E[V | U >= t] ~ 123, most of it from V past the
    step, which no proposal drew (the Monte Carlo said -0.97 +- 1.2). A Cauchy component at the step covers it."""
    with jax.enable_x64(True):
        X, V = parse("pareto:alpha=1.01"), parse("student_t:df=1.5")
        q = sweep_threshold(X, V, jnp.full(K, 1e4))  # K: jitted (an eager call costs twice the compile)
        m = sweep_threshold_mc(jax.random.key(0), X, V, jnp.asarray([1e4]), 20_000)
    ref = _scipy_conditional_mean(1e4)
    np.testing.assert_allclose(np.asarray(q.E_V), ref, rtol=1e-6)
    assert abs(float(m.E_V[0]) - ref) < 4 * float(m.se[0]) and float(m.se[0]) < 0.1 * ref


def test_float32_refuses_what_it_cannot_evaluate():
    """--no-x64, normal/normal at t = 1e4: the quadrature gave 11838 for 5000 and the Monte Carlo agreed; log g
    (terms ~t^2/4 = 2.5e7) is rounded by 3 nats there. Both NaN now; the Monte Carlo also at t = 1e3 (0.03 nats:
    497.7 +- 0.03 for 500); t = 100 stays right (E[V | U >= t] -> t/2 + O(1/t))."""
    N = parse("normal")
    ts = (100.0, 1e3, 1e4)
    qE, qlogp = quad("normal", "normal", False, ts)
    m = jax.device_get(sweep_threshold_mc(jax.random.key(0), N, N, jnp.asarray(ts, jnp.float32), 20_000))
    assert np.isnan(qE[2]) and np.isnan(qlogp[2]) and np.all(np.isnan([m.E_V[1:], m.se[1:]]))
    exact = quad("normal", "normal", True, ts[:2])[0]
    np.testing.assert_allclose(qE[:2], exact, rtol=1e-5)
    assert abs(m.E_V[0] - exact[0]) < 4 * m.se[0]
    assert "float64" in WHY_NOT and "tail index" in WHY_NOT_MC


def test_weight_tail_index_is_hill():
    """Pareto(alpha) weights: index ~ 1/alpha; bounded weights: ~0 (mean log-excess of the top M)."""
    S = 20_000
    e = jax.random.exponential(jax.random.key(1), (S,))
    for alpha in (1.0, 2.0):
        assert abs(float(weight_tail_index(e / alpha)) - 1 / alpha) < 0.15 / alpha
    assert float(weight_tail_index(jnp.log(jax.random.uniform(jax.random.key(2), (S,))))) < 0.05
