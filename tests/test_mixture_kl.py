"""The Section 5 mixture KL against enumeration and mpmath."""
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from goodhart_jax.search import mixture_kl, mixture_kl_approx


def _mp_exact(log_q, alpha):
    mp.mp.dps = 50
    q, a = mp.e ** mp.mpf(log_q), mp.mpf(alpha)
    px = (1 - a) * q + a
    return float(px * mp.log(px / q) + (1 - a) * (1 - q) * mp.log(1 - a))


def test_matches_enumeration_on_a_small_distribution():
    rng = np.random.default_rng(0)
    Q = rng.dirichlet(np.ones(6))
    for i in range(6):
        for a in (1e-3, 0.1, 0.5, 0.9):
            P = (1 - a) * Q
            P[i] += a
            brute = float(np.sum(P * np.log(P / Q)))
            with jax.enable_x64(True):
                ours = float(mixture_kl(jnp.log(Q[i]), a))
            np.testing.assert_allclose(ours, brute, rtol=1e-10)


@pytest.mark.parametrize("log_q", [-1339.70, -300.0, -20.0])
@pytest.mark.parametrize("alpha", [1e-4, 1e-2, 0.3])
def test_far_below_float_range_matches_mpmath(log_q, alpha):
    ref = _mp_exact(log_q, alpha)
    np.testing.assert_allclose(float(mixture_kl(log_q, alpha)), ref, rtol=1e-5)
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(mixture_kl(jnp.float64(log_q), alpha)), ref, rtol=1e-12)


def test_paper_worked_number():
    # Kwa et al. 2024, Section 5: log q = -1339.70, alpha = 0.01 -> about 13.35 nats.
    approx = float(mixture_kl_approx(-1339.70, 0.01))
    assert abs(approx - 0.01 * (np.log(0.01) + 1339.70)) < 1e-4
    exact = float(mixture_kl(-1339.70, 0.01))
    assert abs(exact - _mp_exact(-1339.70, 0.01)) < 1e-4
    assert exact < approx and abs(exact - approx) < 0.02   # the approximation drops (1-a) log(1-a)
