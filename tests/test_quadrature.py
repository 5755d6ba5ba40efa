"""The log-space double-exponential rules and the bump locator against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.quadrature import BREAKS_SEARCH, DROPS, de_moments, locate_bump, log_de_quadrature, log_moments
from goodhart_jax.tails import parse


def test_bump_locator_on_a_gaussian():
    """log g = -(y - mu)^2 / (2 s^2): peak at mu, drop d crossed at mu +- s sqrt(2 d)."""
    with jax.enable_x64(True):
        for mu, s in ((3e3, 0.01), (-7.0, 25.0)):
            b = locate_bump(lambda y: -((y - mu) / s) ** 2 / 2, jnp.array([0.0, 1.0]))
            want = s * np.sqrt(2 * np.array(DROPS))
            np.testing.assert_allclose(float(b.mode), mu, rtol=1e-12, atol=1e-9 * s)
            np.testing.assert_allclose(np.asarray(b.right) - mu, want, rtol=1e-9)
            np.testing.assert_allclose(mu - np.asarray(b.left), want, rtol=1e-9)
            assert np.all(np.diff(np.asarray(b.points())) > 0)



def test_breaks_search_places_the_points_near_enough_and_integrals_do_not_move():
    """`BREAKS_SEARCH` (a 64-point grid, fewer steps): the Gaussian's points to ~1e-3 of its width (the default
    pins them to 1e-9); a rule split there integrates it as exactly as one split at the precise points."""
    with jax.enable_x64(True):
        for mu, s in ((3e3, 0.01), (-7.0, 25.0)):
            log_g = lambda y: -2500.0 - ((y - mu) / s) ** 2 / 2  # noqa: E731
            coarse = locate_bump(log_g, jnp.array([0.0, 1.0]), **BREAKS_SEARCH)
            want = s * np.sqrt(2 * np.array(DROPS))
            np.testing.assert_allclose(float(coarse.mode), mu, rtol=0, atol=1e-2 * s)
            np.testing.assert_allclose(np.asarray(coarse.right) - mu, want, rtol=1e-3)
            np.testing.assert_allclose(mu - np.asarray(coarse.left), want, rtol=1e-3)
            m = de_moments(log_g, coarse.points(), -jnp.inf)
            np.testing.assert_allclose([float(m.log_Z), float(m.mean)],
                                       [-2500 + math.log(s * math.sqrt(2 * math.pi)), mu], rtol=1e-12)
        # The far narrow Student-t(3) bump of the test below, its tails y^-4.
        log_g = lambda y: parse("student_t:df=3,loc=300,scale=0.01").log_prob(y)  # noqa: E731
        b = locate_bump(log_g, jnp.array([0.0, 0.0]), **BREAKS_SEARCH)
        np.testing.assert_allclose(float(b.mode), 300.0, rtol=0, atol=1e-4)
        m = de_moments(log_g, b.points(), -jnp.inf)
    np.testing.assert_allclose([float(m.log_Z), float(m.mean)], [0.0, 300.0], rtol=1e-10, atol=1e-10)


def test_interior_pieces_reaching_less_far():
    """Interior tanh-sinh pieces cut at |k h| <= 3.5 (their end nodes within ~1e-22 of a piece's length of its
    breaks) integrate a bounded integrand as the full rule does (to 1e-15), on 2 x 6 fewer nodes a piece."""
    with jax.enable_x64(True):
        breaks = jnp.array([-3.0, 0.5, 2.0, 40.0])
        full = log_de_quadrature(breaks, -jnp.inf)
        cut = log_de_quadrature(breaks, -jnp.inf, interior_reach=3.5)
        assert full.y.shape[0] - cut.y.shape[0] == 3 * 2 * 6
        for log_g in (lambda y: -jnp.log1p(y * y), lambda y: -jnp.abs(y - 0.5) - 0.01 * y * y):
            a, b = log_moments(log_g, full), log_moments(log_g, cut)
            np.testing.assert_allclose([float(b.log_Z), float(b.mean)], [float(a.log_Z), float(a.mean)],
                                       rtol=1e-15, atol=1e-15)
        # Against the closed form: ∫ dy / (1 + y^2) = pi.
        np.testing.assert_allclose(float(log_moments(lambda y: -jnp.log1p(y * y), cut).log_Z), math.log(math.pi),
                                   rtol=1e-12)

@pytest.mark.parametrize("x64", [False, True])
def test_moments_of_a_far_narrow_gaussian_in_log_space(x64):
    """∫ exp(-2500 - (y - 100)^2 / (2 * 0.3^2)) dy = e^-2500 0.3 sqrt(2 pi), mean 100: nothing underflows."""
    with jax.enable_x64(x64):
        log_g = lambda y: -2500.0 - ((y - 100.0) / 0.3) ** 2 / 2  # noqa: E731
        b = locate_bump(log_g, jnp.array([0.0, 0.0]))
        m = de_moments(log_g, b.points(), -jnp.inf)
    rtol = 1e-12 if x64 else 2e-6  # float32: log Z ~ -2499 carries 1e-4 absolute
    np.testing.assert_allclose(float(m.log_Z), -2500 + math.log(0.3 * math.sqrt(2 * math.pi)), rtol=rtol)
    np.testing.assert_allclose(float(m.mean), 100.0, rtol=rtol)


def test_algebraic_tails_and_a_finite_lower_end():
    with jax.enable_x64(True):
        # Cauchy-like tail 1/(1 + y^2) on (0, inf): integral pi/2; its mean diverges (log), so use y^-3 for that.
        rule = log_de_quadrature(jnp.array([0.0, 1.0]), 0.0)
        m = log_moments(lambda y: -jnp.log1p(y * y), rule)
        np.testing.assert_allclose(float(m.log_Z), math.log(math.pi / 2), rtol=1e-10)
        # g = (1 + y)^-4 on (0, inf): ∫ g = 1/3, ∫ y g = 1/6, mean 1/2.
        m = de_moments(lambda y: -4 * jnp.log1p(y), jnp.array([0.0, 1.0]), 0.0)
        np.testing.assert_allclose([float(m.log_Z), float(m.mean)], [math.log(1 / 3), 0.5], rtol=1e-10)
        # A kink at a break: g = exp(-|y - 2|) on (-inf, inf) split at 2: ∫ = 2, mean 2.
        m = de_moments(lambda y: -jnp.abs(y - 2.0), jnp.array([2.0]), -jnp.inf)
        np.testing.assert_allclose([float(m.log_Z), float(m.mean)], [math.log(2.0), 2.0], rtol=1e-12)


def test_far_narrow_heavy_tailed_bump():
    """A Student-t(3) density at 300 with scale 0.01, located from 0: ∫ = 1 and mean 300 (its tails are y^-4)."""
    with jax.enable_x64(True):
        log_g = lambda y: parse("student_t:df=3,loc=300,scale=0.01").log_prob(y)  # noqa: E731
        b = locate_bump(log_g, jnp.array([0.0, 0.0]))
        m = de_moments(log_g, b.points(), -jnp.inf)
    np.testing.assert_allclose(float(b.mode), 300.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose([float(m.log_Z), float(m.mean)], [0.0, 300.0], rtol=1e-10, atol=1e-10)


def _t_tail(df, t):
    """(log P(T > t), E[T | T > t]) of a standard Student-t by 40-digit mpmath (closed-form tail mean)."""
    import mpmath as mp

    mp.mp.dps = 40
    df, t = mp.mpf(df), mp.mpf(t)
    c = mp.gamma((df + 1) / 2) / (mp.sqrt(df * mp.pi) * mp.gamma(df / 2))
    sf = mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + t * t), regularized=True) / 2
    first = c * df / (df - 1) * (1 + t * t / df) ** (-(df - 1) / 2)  # ∫_t^inf x f(x) dx
    return float(mp.log(sf)), float(first / sf)


@pytest.mark.parametrize("alpha", [1.01, 1.1, 2.0])
@pytest.mark.parametrize("t", [2.0, 1e30])
def test_heavy_tails_near_index_one_are_closed_beyond_the_last_node(alpha, t):
    """∫_t^inf of a Pareto density: log Z = -alpha log t, mean alpha t / (alpha - 1), exact.

    The exp-sinh end stops at ~4e18 t, which used to drop 35% of the mass at alpha = 1.01
    and most of the mean; the closed-form power-law tail puts it back.
    """
    fam = parse(f"pareto:alpha={alpha}")
    with jax.enable_x64(True):
        t64 = jnp.float64(t)
        m = de_moments(fam.log_prob, jnp.stack([t64, 2 * t64]), t64, jnp.float64, 0.25 * t64)
        np.testing.assert_allclose(float(m.log_Z), -alpha * math.log(t), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(m.mean), alpha * t / (alpha - 1.0), rtol=2e-6)


@pytest.mark.parametrize("df", [1.01, 1.1, 3.0])
def test_student_t_tail_near_index_one(df):
    """P(T > 10) and E[T | T > 10] against mpmath, float64, on both kinds of end (finite and -inf lower)."""
    fam = parse(f"student_t:df={df}")
    want_log, want_mean = _t_tail(df, 10.0)
    with jax.enable_x64(True):
        t = jnp.float64(10.0)
        m = de_moments(fam.log_prob, jnp.stack([t, t + 1.0]), t, jnp.float64)
        np.testing.assert_allclose(float(m.log_Z), want_log, rtol=1e-10)
        np.testing.assert_allclose(float(m.mean), want_mean, rtol=2e-6)
        # Whole line: total mass 1 (both ends closed), mean of |T| restricted to T > 10 via the integrand.
        whole = de_moments(fam.log_prob, jnp.asarray([0.0]), -jnp.inf, jnp.float64)
        np.testing.assert_allclose(float(whole.log_Z), 0.0, atol=1e-9)


def test_a_tail_float32_cannot_fit_is_refused_not_printed():
    """Pareto(1.01) beyond t = 1e30 in float32: the nodes overflow early and the fitted slope is
    too coarse for the tail's mean (off ~5x before): NaN, never the number."""
    fam = parse("pareto:alpha=1.01")
    t = jnp.float32(1e30)
    m = de_moments(fam.log_prob, jnp.stack([t, 2 * t]), t, jnp.float32, 0.25 * t)
    assert np.isnan(float(m.mean))
    # ... while float32 with a tail index away from 1 is still right (to 1e-4).
    fam = parse("pareto:alpha=2")
    for t in (jnp.float32(2.0),):  # at t = 1e30 the float32 nodes stop at 5e33: refused (NaN) too
        m = de_moments(fam.log_prob, jnp.stack([t, 2 * t]), t, jnp.float32, 0.25 * t)
        np.testing.assert_allclose(float(m.mean), 2.0 * float(t), rtol=1e-4)
