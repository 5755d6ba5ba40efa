"""The log-space double-exponential rules and the bump locator against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.quadrature import DROPS, de_moments, locate_bump, log_de_quadrature, log_moments
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
