"""Tail-index estimators, the double bootstrap and the verdict, against independent references."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import tail_index as ti

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kwa2024"


def pareto_sample(key, alpha, n):
    """Pareto(alpha, scale 1) by inversion: xi = 1 / alpha."""
    u = jax.random.uniform(key, (n,), minval=1e-12)
    return np.asarray(u ** (-1.0 / alpha), np.float64)


def naive_hill(x_desc, k):
    return np.mean(np.log(x_desc[:k])) - np.log(x_desc[k])


@pytest.mark.parametrize("jit", [False, True])
def test_hill_equals_naive_loop(jit):
    x = np.sort(pareto_sample(jax.random.key(0), 1.7, 101))[::-1]  # prime size
    fn = jax.jit(ti.hill) if jit else ti.hill
    curve = fn(jnp.asarray(x, jnp.float32))
    ref = np.array([naive_hill(x, k) for k in range(1, 101)])
    np.testing.assert_array_equal(np.asarray(curve.k), np.arange(1, 101))
    # float32 logs and cumulative sums: ~1e-6 relative per term.
    np.testing.assert_allclose(np.asarray(curve.xi), ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(curve.se), ref / np.sqrt(np.arange(1, 101)), rtol=2e-4, atol=2e-5)


def test_hill_nan_where_order_statistic_not_positive():
    x = jnp.array([3.0, 2.0, 1.0, -1.0, -2.0])
    xi = np.asarray(ti.hill(x).xi)
    assert np.all(np.isfinite(xi[:2])) and np.all(np.isnan(xi[2:]))


def test_moment_and_pickands_equal_naive_formulas():
    x = np.sort(pareto_sample(jax.random.key(1), 2.5, 211))[::-1]
    mom = ti.moment(jnp.asarray(x, jnp.float32))
    pick = ti.pickands(jnp.asarray(x, jnp.float32))
    for k in (1, 7, 50, 209):
        d = np.log(x[:k]) - np.log(x[k])
        m1, m2 = d.mean(), (d**2).mean()
        if m2 > m1**2:
            ref = m1 + 1 - 0.5 / (1 - m1**2 / m2)
            assert float(mom.xi[k - 1]) == pytest.approx(ref, rel=1e-3, abs=1e-4)
    assert pick.xi.shape == (211 // 4,)
    for k in (1, 5, 52):
        ref = np.log((x[k - 1] - x[2 * k - 1]) / (x[2 * k - 1] - x[4 * k - 1])) / np.log(2)
        assert float(pick.xi[k - 1]) == pytest.approx(ref, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_hill_and_moment_recover_pareto_index(alpha):
    n, k = 20000, 2000
    x = ti.preprocess(pareto_sample(jax.random.key(2), alpha, n))
    h, m = ti.hill(x), ti.moment(x)
    # Exact Pareto: Hill is unbiased; 4 standard errors.
    assert abs(float(h.xi[k - 1]) - 1 / alpha) < 4 * float(h.se[k - 1])
    assert abs(float(m.xi[k - 1]) - 1 / alpha) < 4 * float(m.se[k - 1])


def test_pickands_recovers_negative_shape():
    from goodhart_jax.gpd import GeneralizedPareto

    xi_true, n, k = -0.3, 20000, 1500
    x = ti.preprocess(GeneralizedPareto(1.0, xi_true).sample(jax.random.key(3), (n,)) - 5.0)
    p = ti.pickands(x)
    assert abs(float(p.xi[k - 1]) - xi_true) < 4 * float(p.se[k - 1])


def test_double_bootstrap_k_gives_good_hill():
    x = ti.preprocess(pareto_sample(jax.random.key(4), 2.0, 5000))
    db = jax.jit(ti.double_bootstrap_k, static_argnames="num_boot")(jax.random.key(5), x, num_boot=50)
    k = int(db.k)
    assert 2 <= k <= 5000 - 2 and db.n1 == int(5000**0.9) and db.n2 == int(db.n1**2 / 5000)
    h = ti.hill(x)
    assert abs(float(h.xi[k - 1]) - 0.5) < 4 * float(h.se[k - 1])


def test_paper_k_range():
    ks = ti.paper_k_range(30000)
    assert ks[0] == int(30000**0.1) == 2 and ks[-1] == int(30000**0.5) - 1 == 172


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([1.0, np.nan] * 100), "non-finite"),
        (np.array([1.0, np.inf] * 100), "non-finite"),
        (np.ones((20, 10)), "1-D"),
        (np.ones(50), "too few"),
        (np.array(["a"] * 200), "numeric"),
        (np.array([object()] * 200), "numeric"),
    ],
)
def test_check_sample_rejects(bad, message):
    with pytest.raises(ti.TailInputError, match=message):
        ti.check_sample(bad)


def E(name, lo, hi):
    return ti.Evidence(name, (lo + hi) / 2, lo, hi, 10, ti.vote(lo, hi))


def test_verdict_rules():
    assert ti.vote(0.1, 0.3) == "heavy" and ti.vote(-0.3, -0.1) == "light"
    assert ti.vote(-0.1, 0.1) == "inconclusive" and ti.vote(np.nan, 1.0) == "n/a"
    assert ti.verdict_from(E("gpd", 0.1, 0.3), (E("moment", 0.05, 0.2),)).verdict == "heavy"
    assert ti.verdict_from(E("gpd", -0.3, -0.1), (E("moment", -0.2, -0.05),)).verdict == "light"
    # A dissenting estimator (even merely inconclusive) blocks a definite call.
    assert ti.verdict_from(E("gpd", 0.1, 0.3), (E("moment", -0.1, 0.2),)).verdict == "inconclusive"
    assert ti.verdict_from(E("gpd", -0.1, 0.1)).verdict == "inconclusive"
    hill_only = ti.Evidence("Hill", 0.2, 0.1, 0.3, 10, "n/a")
    assert ti.verdict_from(E("gpd", -0.3, -0.1), (hill_only,)).verdict == "light"


@pytest.mark.parametrize("law, expected", [("normal", "light"), ("pareto", "heavy")])
def test_diagnose_verdicts(law, expected):
    n, key = 16000, jax.random.key(6)  # 1600 exceedances: the 2048 MLE bucket shared with test_tail_gpd
    x = {
        "normal": lambda: np.asarray(jax.random.normal(key, (n,))),
        "pareto": lambda: pareto_sample(key, 2.0, n),
    }[law]()
    d = ti.diagnose(jax.random.key(7), x, demean=True, positive_only=True, bayes=False, num_boot=20)
    assert d.verdict.verdict == expected, d.verdict.reason


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present (the paper's published rewards)")
def test_paper_figure1_hill_reading():
    """README recipe: sort desc, demean, keep positives, k = int(n^0.1)..int(n^0.5)-1."""
    raw = np.load(DATA / "random_starling_reward_values.npy").astype(np.float64)
    n = raw.shape[0]
    ref_x = np.sort(raw)[::-1]
    ref_x = ref_x - ref_x.mean()
    ref_x = ref_x[ref_x > 0]
    ks = ti.paper_k_range(n)
    ref = np.array([np.mean(np.log(ref_x[:k]) - np.log(ref_x[k])) for k in ks])
    h = ti.hill(ti.preprocess(raw, demean=True, positive_only=True))
    np.testing.assert_allclose(np.asarray(h.xi)[ks - 1], ref, rtol=1e-3)
    # The paper reads "about 0.20 for large k": our last point, within 2 standard errors.
    xi, se = float(h.xi[ks[-1] - 1]), float(h.se[ks[-1] - 1])
    assert abs(xi - 0.20) < 2 * se
