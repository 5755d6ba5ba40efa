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
    for k in (2, 7, 50, 209):
        d = np.log(x[:k]) - np.log(x[k])
        m1, m2 = d.mean(), (d**2).mean()
        ref = m1 + 1 - 0.5 / (1 - m1**2 / m2)  # float64 naive formula; M2 > M1^2 for k >= 2 distinct values
        # float32 cumulative sums of logs: ~1e-6 relative in M1, M2, amplified by 1 / (1 - M1^2 / M2).
        assert float(mom.xi[k - 1]) == pytest.approx(ref, rel=1e-3, abs=1e-4)
    # k = 1: one spacing, M2 = M1^2 exactly, and 1 / (1 - M1^2 / M2) is undefined: nan, not -inf.
    d = np.log(x[0]) - np.log(x[1])
    assert d**2 == d * d and np.isnan(float(mom.xi[0]))
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
    # The authors' scripts (tkwa/catastrophic-goodhart @ 7069bb8): plots_random_starling.py has
    # np.arange(int(n_samples ** 0.1), int(n_samples ** 0.5)) with n_samples = 30000 (Figure 1);
    # plots_from-llama_starling.py has np.arange(int(n_samples ** 0.1), int(n_samples ** 0.6))
    # with n_samples = 16000 (Figure 2).
    np.testing.assert_array_equal(ti.paper_k_range(30000, figure=1), np.arange(2, 173))
    np.testing.assert_array_equal(ti.paper_k_range(16000, figure=2), np.arange(2, 333))
    for bad in (0, 3, "2"):
        with pytest.raises(ti.TailInputError, match="figures 1 and 2"):
            ti.paper_k_range(16000, figure=bad)


def test_two_sided_z_against_scipy():
    import scipy.stats as st

    for level in (0.5, 0.9, 0.95, 0.999):
        assert ti.two_sided_z(level) == pytest.approx(st.norm.ppf(0.5 + level / 2), rel=1e-6)


def test_mle_curve_matches_scipy_fit_at_each_threshold():
    import scipy.stats as st

    x = np.sort(pareto_sample(jax.random.key(8), 3.0, 997))[::-1]
    ks = np.array([40, 150, 400])
    curve = ti.mle_curve(x, ks)
    np.testing.assert_array_equal(np.asarray(curve.k), ks)
    for k, xi, se in zip(ks, np.asarray(curve.xi), np.asarray(curve.se)):
        c, _, _ = st.genpareto.fit(x[:k] - x[k], floc=0)
        # Same optimum as scipy's float64 fit, to a small fraction of the statistical error.
        assert abs(xi - c) < 0.05 * se


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
    ks = ti.paper_k_range(n, figure=1)
    ref = np.array([np.mean(np.log(ref_x[:k]) - np.log(ref_x[k])) for k in ks])
    h = ti.hill(ti.preprocess(raw, demean=True, positive_only=True))
    np.testing.assert_allclose(np.asarray(h.xi)[ks - 1], ref, rtol=1e-3)
    # The paper reads "about 0.20 for large k": our last point, within 2 standard errors.
    xi, se = float(h.xi[ks[-1] - 1]), float(h.se[ks[-1] - 1])
    assert abs(xi - 0.20) < 2 * se


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present (the paper's published rewards)")
def test_paper_figure2_hill_reading():
    """plots_from-llama_starling.py: sort desc, no demeaning, k = int(n^0.1)..int(n^0.6)-1 = 2..332."""
    raw = np.load(DATA / "llama_starling_reward_values.npy").astype(np.float64)
    n = raw.shape[0]
    ks = ti.paper_k_range(n, figure=2)
    assert n == 16000 and ks[-1] == 332
    ref_x = np.sort(raw)[::-1]  # the authors' loop, in float64
    assert ref_x[ks[-1]] > 0  # every order statistic it reads is positive: --positive-only changes nothing
    ref = np.array([np.mean(np.log(ref_x[:k]) - np.log(ref_x[k])) for k in ks])
    h = ti.hill(ti.preprocess(raw, positive_only=True))
    np.testing.assert_allclose(np.asarray(h.xi)[ks - 1], ref, rtol=1e-3)
    # The paper: the Hill plot "does not stabilise". Over k = 100..332 it keeps rising,
    # by more than 3 standard errors of its last point.
    xi, se = np.asarray(h.xi), np.asarray(h.se)
    assert xi[ks[-1] - 1] - xi[100 - 1] > 3 * se[ks[-1] - 1]
