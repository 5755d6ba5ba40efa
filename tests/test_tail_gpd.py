"""Generalised Pareto distribution and fits, against scipy.stats.genpareto."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from goodhart_jax import gpd
from goodhart_jax.tail_index import fit_excesses_mle  # jitted, padded to a power of two: one compile

SHAPES = [0.4, 0.0, -0.3]


@pytest.mark.parametrize("xi", SHAPES + [1e-7, -0.02])
def test_logpdf_cdf_icdf_match_scipy(xi):
    d = gpd.GeneralizedPareto(1.7, xi)
    y = np.linspace(0.0, 4.0, 37)
    ref = st.genpareto(xi, scale=1.7)
    np.testing.assert_allclose(np.asarray(d.log_prob(jnp.asarray(y))), ref.logpdf(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.cdf(jnp.asarray(y))), ref.cdf(y), rtol=1e-5, atol=1e-6)
    q = np.linspace(0.01, 0.99, 13)
    np.testing.assert_allclose(np.asarray(d.icdf(jnp.asarray(q))), ref.ppf(q), rtol=1e-4, atol=1e-5)


def test_logpdf_outside_support_is_minus_inf_with_finite_grad():
    assert float(gpd.gpd_logpdf(-0.1, 1.0, 0.2)) == -np.inf
    assert float(gpd.gpd_logpdf(5.0, 1.0, -0.5)) == -np.inf  # end point at 2
    # The point outside the support adds exactly 0 to the gradient (double where); the one inside
    # adds d/dsigma [-log sigma - (1 + 1/xi) log(1 + xi y / sigma)] = -1/sigma + (1 + xi) y / (sigma (sigma + xi y)).
    sigma, xi, y = 1.3, -0.5, 0.5
    g = jax.grad(lambda s: gpd.gpd_logpdf(jnp.array([y, 5.0]), s, xi).sum())(sigma)
    closed = -1 / sigma + (1 + xi) * y / (sigma * (sigma + xi * y))
    h = 1e-6  # float64 central difference of scipy's log density: error O(h^2) + O(1e-16 / h) ~ 1e-10
    fd = (st.genpareto.logpdf(y, xi, scale=sigma + h) - st.genpareto.logpdf(y, xi, scale=sigma - h)) / (2 * h)
    assert closed == pytest.approx(fd, rel=1e-7)
    assert float(g) == pytest.approx(closed, rel=1e-5)  # float32 gradient
    g_out = jax.grad(lambda s: gpd.gpd_logpdf(5.0, s, xi))(sigma)
    assert float(g_out) == 0.0


@pytest.mark.parametrize("xi", [0.3, 0.0, -0.4])
@pytest.mark.parametrize("x64", [False, True])
def test_pot_tail_matches_scipy(xi, x64):
    u, sigma, rate = -1.2, 0.8, 0.07
    x = np.array([-3.0, u, u + 1e-3, 0.0, 0.5, 0.79, 3.0, 40.0])
    ref = st.genpareto(xi, loc=u, scale=sigma)
    end = ref.support()[1]  # u + sigma / |xi| for xi < 0, inf otherwise
    with jax.enable_x64(x64):
        tail = gpd.pot_tail(x, u, sigma, xi, rate)
        log_sf = np.asarray(tail.log_sf, np.float64)
        above = x > u
        assert np.all(np.isnan(log_sf[~above]))  # at or below the threshold the fit says nothing
        want = np.log(rate) + ref.logsf(x[above])  # -inf beyond the end point
        # float32: logsf of a few units, ~1e-7 relative per operation; float64: 1e-12.
        np.testing.assert_allclose(log_sf[above], want, rtol=1e-12 if x64 else 2e-6, atol=0)
        assert float(tail.end_point) == pytest.approx(end, rel=1e-12 if x64 else 1e-6)
        np.testing.assert_array_equal(np.asarray(tail.beyond_end), x > end)
    if xi < 0:
        assert np.isinf(want[-1]) and 0 < np.asarray(tail.beyond_end).sum() < x.size


@pytest.mark.parametrize("xi", SHAPES)
def test_sample_matches_scipy_cdf(xi):
    y = np.asarray(gpd.GeneralizedPareto(2.0, xi).sample(jax.random.key(0), (4000,)))
    assert st.kstest(y, st.genpareto(xi, scale=2.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize("xi", SHAPES)
def test_mle_recovers_shape_and_matches_scipy(xi):
    y = gpd.GeneralizedPareto(2.0, xi).sample(jax.random.key(1), (2048,))
    fit = fit_excesses_mle(y)
    assert bool(fit.converged)
    # Known shape within 4 standard errors; asymptotic se = (1 + xi) / sqrt(n).
    assert abs(float(fit.xi) - xi) < 4 * (1 + xi) / np.sqrt(2048)
    assert float(fit.xi_se) == pytest.approx((1 + xi) / np.sqrt(2048), rel=0.15)
    c, _, scale = st.genpareto.fit(np.asarray(y, np.float64), floc=0)
    # Same optimum as scipy, to a small fraction of the statistical error.
    assert abs(float(fit.xi) - c) < 0.05 * float(fit.xi_se)
    assert abs(float(fit.sigma) - scale) < 0.05 * float(fit.sigma_se)


def test_masked_padded_fit_matches_scipy_on_the_unpadded_sample():
    y = np.asarray(gpd.GeneralizedPareto(1.0, 0.2).sample(jax.random.key(2), (1500,)), np.float64)
    fit = fit_excesses_mle(y)  # padded to 2048 with a mask
    c, _, scale = st.genpareto.fit(y, floc=0)
    assert abs(float(fit.xi) - c) < 0.05 * float(fit.xi_se)
    assert float(fit.sigma) == pytest.approx(scale, rel=1e-3)


def test_bayes_posterior_covers_shape():
    xi = 0.5
    y = gpd.GeneralizedPareto(1.0, xi).sample(jax.random.key(3), (300,))
    post = gpd.fit_gpd_bayes(jax.random.key(4), y, num_warmup=100, num_samples=200)
    se = (1 + xi) / np.sqrt(300)
    assert abs(float(post.xi_mean) - xi) < 4 * se
    assert float(post.xi_lo) < float(post.xi_mean) < float(post.xi_hi)
    assert float(post.xi_hi) - float(post.xi_lo) == pytest.approx(2 * 1.96 * se, rel=0.5)
    assert float(post.p_heavy) > 0.99 and int(post.num_divergent) < 15
