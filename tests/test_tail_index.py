"""Tail-index estimators, the double bootstrap and the verdict, against independent references."""
import re
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


def naive_moment(x_desc, k):
    d = np.log(x_desc[:k]) - np.log(x_desc[k])
    m1, m2 = d.mean(), (d**2).mean()
    return m1 + 1 - 0.5 / (1 - m1**2 / m2)


@pytest.mark.parametrize("case", ["pareto_1e300", "pareto_1e-300", "subnormal", "normals_and_1e300", "offset"])
def test_curves_in_float64_at_any_magnitude(case):
    """Hill and moment at magnitudes float32 cannot hold (or resolve) equal NumPy's float64 formulas.

    Before: float32 made 1e300 inf and 1e-300 zero (every Hill value NaN) and merged 1000 + 1e-5 z into ties."""
    rng = np.random.default_rng(11)
    pareto = rng.pareto(1.5, 397) + 1.0  # Pareto(1.5, scale 1): xi = 2/3
    x = {"pareto_1e300": pareto * 1e300, "pareto_1e-300": pareto * 1e-300,
         "subnormal": pareto * 1e-315,  # below float64's normal range: XLA would flush it to 0
         "normals_and_1e300": np.r_[rng.standard_normal(396), 1e300],
         "offset": 1000.0 + 1e-5 * rng.standard_normal(397)}[case]
    h, m, p = ti.curves(ti.preprocess(x, positive_only=True))
    x_desc = np.sort(x[x > 0])[::-1]  # the reference reads the float64 values themselves
    ks = [k for k in (2, 5, 10, 40, 150) if k < x_desc.shape[0]]
    ref_h = np.array([naive_hill(x_desc, k) for k in ks])
    ref_m = np.array([naive_moment(x_desc, k) for k in ks])
    assert np.all(np.isfinite(ref_h)) and np.all(np.isfinite(ref_m))  # (assert_allclose takes NaN == NaN)
    # float64 cumulative sums of logs against a direct float64 sum: ~1e-15 relative per term; the offset
    # case's log-spacings (~1e-8) cancel ~7 digits of log(1000) away.
    rtol = 1e-6 if case == "offset" else 1e-10
    np.testing.assert_allclose(h.xi[np.array(ks) - 1], ref_h, rtol=rtol)
    np.testing.assert_allclose(m.xi[np.array(ks) - 1], ref_m, rtol=rtol if case != "offset" else 1e-3)
    kp = np.array([k for k in (1, 5, 20, 60) if 4 * k <= x_desc.shape[0]])
    ref_p = np.log((x_desc[kp - 1] - x_desc[2 * kp - 1]) / (x_desc[2 * kp - 1] - x_desc[4 * kp - 1])) / np.log(2)
    assert np.all(np.isfinite(ref_p))
    np.testing.assert_allclose(p.xi[kp - 1], ref_p, rtol=1e-10)  # differences of float64 values: no cancellation


def test_diagnose_scale_equivariant_and_gpd_against_scipy_at_1e300():
    """diagnose(c x) for c = 1e300: every xi as for x (to rounding), the threshold and GPD scale c times larger;
    the GPD MLE against scipy's float64 fit of the unscaled excesses (scipy itself fails at 1e300)."""
    import scipy.stats as st

    x = pareto_sample(jax.random.key(9), 1.5, 16000)  # 16000: the buckets of test_diagnose_verdicts
    run = lambda v: ti.diagnose(jax.random.key(7), v, demean=True, positive_only=True, bayes=False, num_boot=20)
    d1, d2 = run(x), run(x * 1e300)
    np.testing.assert_allclose(d2.hill.xi, d1.hill.xi, rtol=1e-11)
    np.testing.assert_allclose(d2.moment.xi, d1.moment.xi, rtol=1e-9, atol=1e-12)
    assert d2.threshold == pytest.approx(d1.threshold * 1e300, rel=1e-15)
    assert float(d2.gpd_mle.xi) == pytest.approx(float(d1.gpd_mle.xi), abs=1e-6)
    assert d2.verdict.verdict == d1.verdict.verdict == "heavy"
    x_desc = np.sort(x)[::-1]
    m = int(d1.gpd_mle.n)
    c, _, scale = st.genpareto.fit(x_desc[:m] - x_desc[m], floc=0)
    assert abs(float(d2.gpd_mle.xi) - c) < 0.05 * float(d2.gpd_mle.xi_se)
    assert float(d2.gpd_mle.sigma) == pytest.approx(scale * 1e300, rel=1e-3)
    # Hill at k = 10 of the paper's recipe (demeaned, positives) against NumPy in float64.
    z = np.sort(x * 1e300 - np.mean(x) * 1e300)[::-1]
    assert float(d2.hill.xi[9]) == pytest.approx(naive_hill(z, 10), rel=1e-9)


@pytest.mark.parametrize(
    "x, fraction, message, fixed_by",
    [
        (np.full(500, 3.5), 0.1, "all 500 values equal 3.5: a constant sample has no tail", None),
        (np.r_[np.zeros(400), np.ones(100)], 0.1,
         "no tail_fraction below 0.5 gives that: the sample has only 2 distinct values (100 tied at the maximum 1)",
         None),
        (np.r_[np.zeros(250), np.ones(250)], 0.3, "only 2 distinct values", None),
        (np.linspace(0.0, 1.0, 100), 0.05, "only 5 of 100 values lie above the POT threshold", 0.1),
        (np.r_[np.linspace(0.0, 1.0, 900), np.full(100, 5.0)], 0.1, "the 100 values above the POT threshold", 0.101),
        (np.r_[np.linspace(0.0, 1.0, 997), np.full(3, 5.0)], 0.005, "only 5 of 1000", 0.01),
    ],
)
def test_check_tail_says_what_the_data_lack(x, fraction, message, fixed_by):
    with pytest.raises(ti.TailInputError, match=re.escape(message)) as e:
        ti.check_tail(x, fraction)
    if fixed_by is None:
        assert "or more would give that" not in str(e.value)
        return
    assert f"tail_fraction {fixed_by:g} or more would give that" in str(e.value)
    # The advice is right: that fraction gives >= MIN_EXCEED excesses, not all equal; 0.001 less does not.
    y, _ = ti.exceedances(x, fixed_by)
    assert ti.check_tail(x, fixed_by) == y.shape[0] >= ti.MIN_EXCEED and y.max() > y.min()
    with pytest.raises(ti.TailInputError):
        ti.check_tail(x, fixed_by - 0.001)


def test_mle_problem_nulls_shapes_without_a_maximum():
    """Tied excesses drive the MLE below xi = -1, where the likelihood has no maximum: no shape, with a reason."""
    y = np.repeat([1.0, 2.0, 3.0, 4.0, 5.0], 20)  # the top 10% of 50 integer levels, 20 each
    fit = ti.fit_excesses_mle(y)
    xi_why, se_why = ti.mle_problem(fit.xi, fit.xi_se)
    assert float(fit.xi) <= -1 and "no maximum" in xi_why and se_why == xi_why
    assert ti.mle_problem(0.2, 0.05) == ("", "") and ti.mle_problem(0.2, np.nan)[1].startswith("no standard error")
