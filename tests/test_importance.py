"""Self-normalised importance sampling and mixture proposals against closed forms and SciPy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from goodhart_jax.importance import snis, stratified_mixture
from goodhart_jax.tails import Family, parse


def _target_draws(key, n):
    """Target p~ = 5 N(1, 0.5^2) (normaliser 5) by a Student-t(3) proposal; f = (y, y^2)."""
    y = parse("student_t:df=3").sample(key, (n,), jnp.float64)
    log_w = math.log(5.0) + parse("normal:loc=1,scale=0.5").log_prob(y) - parse("student_t:df=3").log_prob(y)
    return log_w, jnp.stack([y, y * y], axis=1)


def test_estimate_normaliser_and_calibrated_standard_error():
    with jax.enable_x64(True):
        one = jax.jit(lambda k: snis(*_target_draws(k, 4000)))
        r = jax.vmap(one)(jax.random.split(jax.random.key(0), 300))
        r = jax.device_get(r)
    truth = np.array([1.0, 1.25])  # E[Y], E[Y^2] = 1 + 0.25
    z = (r.estimate - truth) / r.se  # [300, 2]
    # Each estimate within 4.5 of its own standard error, and the errors' spread is the se's (delta method,
    # 300 replicates: the sample sd of z has a standard error of ~0.04).
    assert np.all(np.abs(z) < 4.5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.15)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.25)
    # log mean w estimates log ∫ p~ = log 5; its relative error is ~ 1/sqrt(ESS).
    assert np.all(np.abs(r.log_mean_w - math.log(5.0)) < 5 / np.sqrt(r.ess))
    assert np.all((r.ess > 500) & (r.ess < 4000))


def test_equal_and_zero_weights():
    f = jnp.arange(10.0)
    r = snis(jnp.zeros(10), f)
    np.testing.assert_allclose(float(r.ess), 10.0, rtol=1e-6)
    np.testing.assert_allclose(float(r.estimate), 4.5, rtol=1e-6)
    # se of a plain mean with the 1/n (not 1/(n-1)) variance: sqrt(sum (f - mean)^2) / n.
    np.testing.assert_allclose(float(r.se), np.std(np.arange(10.0)) / math.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(float(r.log_mean_w), 0.0, atol=1e-6)
    # -inf and NaN weights drop out, also against an infinite f there.
    r = snis(jnp.array([0.0, -jnp.inf, jnp.nan, 0.0]), jnp.array([1.0, jnp.inf, jnp.inf, 3.0]))
    np.testing.assert_allclose([float(r.estimate), float(r.ess)], [2.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(float(r.log_mean_w), math.log(2 / 4), rtol=1e-6)


def test_stratified_mixture_density_and_strata():
    refs = [stats.norm(), stats.t(3, loc=4.0, scale=0.5), stats.laplace(loc=-2)]
    with jax.enable_x64(True):
        comps = [parse("normal"), Family("student_t", dict(df=3.0, loc=jnp.float64(4.0), scale=jnp.float64(0.5))),
                 parse("laplace:loc=-2")]
        d = jax.device_get(jax.jit(lambda k: stratified_mixture(k, comps, 5000, jnp.float64))(jax.random.key(1)))
    assert d.y.shape == d.log_q.shape == (15000,) and d.y.dtype == np.float64
    want = np.log(np.mean([r.pdf(d.y) for r in refs], axis=0))
    np.testing.assert_allclose(d.log_q, want, rtol=1e-10, atol=1e-12)
    for c, ref in enumerate(refs):  # draws come component by component
        assert stats.kstest(d.y[c * 5000:(c + 1) * 5000], ref.cdf).pvalue > 1e-4
