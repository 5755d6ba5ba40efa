"""Fixed-step bisection against scipy.optimize.brentq (float64 reference)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from goodhart_jax.roots import bisect, bisect_then, default_steps

CASES = [
    # (f for jax, f for numpy, neg, pos): increasing and decreasing, roots near 0 and far from it.
    (lambda x: x**3 - 2 * x - 5, lambda x: x**3 - 2 * x - 5, 2.0, 3.0),
    (lambda x: 0.3 - jnp.exp(-x), lambda x: 0.3 - math.exp(-x), 0.0, 50.0),
    (lambda x: jnp.exp(-x) - 0.3, lambda x: math.exp(-x) - 0.3, 50.0, 0.0),  # decreasing: neg is the right end
    (lambda x: jnp.log(x) + 40.0, lambda x: math.log(x) + 40.0, 1e-30, 1.0),  # root 4e-18, bracket 2e17 times wider
    (lambda x: jnp.tanh(x - 700.0), lambda x: math.tanh(x - 700.0), -1e3, 1e3),
]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_brentq_float64(case, jit):
    f, f_np, neg, pos = CASES[case]
    lo, hi = min(neg, pos), max(neg, pos)
    want = optimize.brentq(f_np, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    with jax.enable_x64(True):
        solve = (lambda a, b: bisect(f, a, b))
        r = (jax.jit(solve) if jit else solve)(jnp.float64(neg), jnp.float64(pos))
        assert r.root.dtype == jnp.float64
        # Bracket invariant: f <= 0 at neg, f > 0 at pos, and the two ends are adjacent floats or equal.
        assert float(f(r.neg)) <= 0 < float(f(r.pos))
    if case == 3:  # the 1e-30..1 bracket is 2^57 root-widths wide: 64 halvings leave ~2^-7 relative
        np.testing.assert_allclose(float(r.root), want, rtol=1e-2)
    else:
        # Both are within a few ulps of the true root; brentq's rtol is 4 eps.
        np.testing.assert_allclose(float(r.root), want, rtol=1e-14, atol=1e-300)


def test_float32_and_vmap_over_targets():
    targets = np.array([0.01, 0.5, 1.0, 3.0, 20.0])
    f = lambda c: (lambda x: x * jnp.exp(x) - c)  # noqa: E731  Lambert W
    want = [optimize.brentq(lambda x: x * math.exp(x) - c, 0.0, 10.0, xtol=1e-15) for c in targets]
    r = jax.jit(jax.vmap(lambda c: bisect(f(c), 0.0, 10.0)))(jnp.asarray(targets, jnp.float32))
    assert r.root.dtype == jnp.float32
    # 35 halvings of [0, 10] leave 3e-10: the float32 resolution of the root is what remains.
    np.testing.assert_allclose(np.asarray(r.root), want, rtol=4 * np.finfo(np.float32).eps, atol=1e-7)


def test_steps_and_unbracketed_end():
    assert default_steps(jnp.float32) == 35 and default_steps(jnp.float64) == 64
    # Few steps: the bracket is exactly [neg, pos] halved num_steps times.
    with jax.enable_x64(True):
        r = bisect(lambda x: x - 0.3, 0.0, 1.0, num_steps=3)
        np.testing.assert_allclose([float(r.neg), float(r.pos)], [0.25, 0.375])
        # No sign change (f > 0 everywhere): the root runs to the `neg` end.
        r = bisect(lambda x: x + 5.0, 0.0, 1.0)
        assert float(r.root) < 1e-18


@pytest.mark.parametrize("at", ["neg", "root"])
def test_bisect_then_is_bisect_and_one_more_evaluation(at):
    """bisect_then: the bracket of `bisect` bit for bit, and f's second output at the chosen end (float32 and
    float64, vmapped over targets) to a few ulps: XLA may compile f's exp differently inside the loop and out
    (1 ulp in float32 seen). The end that never moved (no sign change) is evaluated too."""
    f = lambda c: (lambda x: (x * jnp.exp(x) - c, (jnp.exp(x), jnp.stack([x, x * x]))))  # noqa: E731
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            cs = jnp.asarray([-1.0, 0.01, 0.5, 3.0, 1e9], dtype)  # -1 and 1e9: no root in [0, 10]
            b, aux = jax.jit(jax.vmap(lambda c: bisect_then(f(c), 0.0, 10.0, at=at)))(cs)
            want = jax.jit(jax.vmap(lambda c: bisect(lambda x: f(c)(x)[0], 0.0, 10.0)))(cs)
            for got, ref in zip(b, want):
                np.testing.assert_array_equal(got, ref)
            end = want.neg if at == "neg" else want.root
            ref_aux = jax.jit(jax.vmap(lambda c, x: f(c)(x)[1]))(cs, end)
            for got, ref in zip(jax.tree.leaves(aux), jax.tree.leaves(ref_aux)):
                assert got.dtype == dtype
                np.testing.assert_allclose(got, ref, rtol=4 * np.finfo(dtype).eps, atol=0)
            # Unbracketed: f > 0 throughout (c = -1) leaves neg where it started; f <= 0 throughout runs it to pos.
            assert float(b.neg[0]) == 0.0 and 10.0 - float(b.neg[-1]) < 1e-6
    with pytest.raises(ValueError, match="at must be"):
        bisect_then(f(1.0), 0.0, 1.0, at="pos")


def test_predicate_is_a_sign():
    """A boolean f is a predicate, True on pos's side: the same bracket as the float f with that sign."""
    with jax.enable_x64(True):
        f = lambda x: jnp.exp(-x) - 0.3  # noqa: E731  decreasing: neg is the right end
        b = bisect(lambda x: f(x) > 0, 50.0, 0.0)
        ref = bisect(f, 50.0, 0.0)
    np.testing.assert_array_equal([b.neg, b.pos], [ref.neg, ref.pos])
    np.testing.assert_allclose(float(b.root), -math.log(0.3), rtol=1e-15)


@pytest.mark.parametrize("jit", [False, True])
def test_bisect_then_on_a_grid_finds_the_global_maximum(jit):
    """grid + score: the best grid point's cell is bisected on the stationarity condition -g'(x) = 0; of two
    local maxima of g (at 0.2 and 0.7) the larger one (0.7) wins, and f's result is kept at the root."""
    bump = lambda x, c, h: h * jnp.exp(-((x - c) ** 2) / 0.002)  # noqa: E731
    g = lambda x: bump(x, 0.2, 1.0) + bump(x, 0.7, 2.0)  # noqa: E731

    def f(x):
        return -jax.grad(g)(x), (g(x), x)

    with jax.enable_x64(True):
        solve = lambda: bisect_then(f, 0.0, 1.0, at="root", grid=jnp.linspace(0.05, 0.95, 19),  # noqa: E731
                                    score=lambda r: r[0])
        b, (gx, x) = (jax.jit(solve) if jit else solve)()
        want = optimize.brentq(lambda x: float(jax.grad(g)(x)), 0.65, 0.75, xtol=1e-15)
    np.testing.assert_allclose(float(b.root), want, rtol=1e-12)
    assert float(x) == float(b.root) and float(gx) == float(g(b.root))
    with pytest.raises(ValueError, match="grid and score"):
        bisect_then(f, 0.0, 1.0, grid=jnp.linspace(0.1, 0.9, 9))
