"""Standard variates: laws (KS against SciPy, float32 and float64), tail resolution, keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from goodhart_jax import variates

LAWS = {
    "std_normal": stats.norm(),
    "std_exponential": stats.expon(),
    "std_laplace": stats.laplace(),
    "std_logistic": stats.logistic(),
    "std_gumbel": stats.gumbel_r(),
}


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("name", sorted(LAWS))
def test_law_ks(name, x64):
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        x = getattr(variates, name)(jax.random.key(11), (20_000,), dtype)
        assert x.dtype == dtype and x.shape == (20_000,)
        x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    assert stats.kstest(x, LAWS[name].cdf).pvalue > 1e-4


def test_student_t_law_and_vmap_over_keys():
    keys = jax.random.split(jax.random.key(3), 4)
    draws = jax.vmap(lambda k: variates.std_student_t(k, 3.0, (5_000,)))(keys)
    loop = jnp.stack([variates.std_student_t(k, 3.0, (5_000,)) for k in keys])
    np.testing.assert_array_equal(draws, loop)
    assert stats.kstest(np.asarray(draws).ravel(), stats.t(3).cdf).pvalue > 1e-4


def test_uniform_resolution_near_zero():
    # The words 0, 1 and 2^32 - 1 map to 2^-33, 3 * 2^-33 and 1: 2^-33 apart near 0,
    # against 2^-24 for a 24-bit uniform (whose -log tops out near 16.6).
    w = jnp.asarray([0, 1, 2**32 - 1], jnp.uint32)
    u = np.asarray(variates._fine(w, None, 32, jnp.float32), np.float64)
    np.testing.assert_array_equal(u[:2], [2.0 ** -33, 3 * 2.0 ** -33])
    assert u[2] == 1.0
    assert -np.log(u[0]) > 22.8
    # Draws: small values sit off the 2^-25 grid a 24-bit uniform is confined to.
    x = np.asarray(variates.uniform_tail(jax.random.key(0), (1 << 22,)), np.float64)
    assert 0 < x.min() and x.max() <= 1.0
    small = x[x < 1e-3] * 2.0 ** 25
    assert small.size > 1000 and np.mean(small != np.round(small)) > 0.9


def test_symmetric_laws_are_symmetric_in_the_tails():
    for name in ("std_laplace", "std_logistic"):
        x = np.asarray(getattr(variates, name)(jax.random.key(5), (1 << 20,)))
        # Both tails reach the same depth (a one-sided uniform would clip one of them).
        assert x.max() > 10 and -x.min() > 10
        assert abs(np.mean(x > 5) - np.mean(x < -5)) < 5 * np.sqrt(np.mean(np.abs(x) > 5) / x.size)


def test_normal_is_exactly_symmetric_and_bounded_as_documented():
    # The extreme inputs 2U - 1 = +-(1 - 2^-24) are exact negatives and finite.
    t = np.asarray(variates._symmetric_unit(jax.random.key(0), (1 << 16,), jnp.float32), np.float64)
    k = np.round((t * 2.0 ** 24 - 1) / 2 + 2.0 ** 23)
    np.testing.assert_array_equal((2 * (k - 2.0 ** 23) + 1) * 2.0 ** -24, t)   # on the odd grid
    top = np.float32(1 - 2.0 ** -24)
    x = np.sqrt(2.0) * np.asarray(jax.lax.erf_inv(jnp.asarray([-top, top])), np.float64)
    assert x[0] == -x[1] and 5.3 < x[1] < 5.5


def test_same_key_same_draws_new_key_new_draws():
    a = variates.std_exponential(jax.random.key(1), (3, 4))
    b = variates.std_exponential(jax.random.key(1), (3, 4))
    c = variates.std_exponential(jax.random.key(2), (3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_integer_dtype_is_refused():
    with pytest.raises(ValueError, match="floating point"):
        variates.std_normal(jax.random.key(0), (3,), jnp.int32)
