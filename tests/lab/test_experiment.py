"""lab.experiment's checks before any work: the annotator error the float32 lab can carry, the Gao fits' minimum
of points (against SciPy's least squares where they fit), and the peak-memory estimate's growth with each size."""
import jax
import numpy as np
import pytest
import scipy.optimize as so

from goodhart_jax.lab import experiment


def test_check_error_bounds():
    """max |eps| is returned where it is carried; past ERROR_MAX, inf, nan, or |eps| / beta past
    MAX_U_OVER_BETA: ValueError."""
    eps = np.asarray([0.5, -3.0, 2.0], np.float32)
    assert experiment.check_error(eps, (0.05, 10.0)) == 3.0
    for bad in (np.inf, -np.inf, np.nan, 10 * experiment.ERROR_MAX):
        with pytest.raises(ValueError, match="annotator error"):
            experiment.check_error(np.asarray([1.0, bad], np.float32), (1.0,))
    big = np.asarray([1e7], np.float32)  # 1e7 / 1e-30 = 1e37 > 1e36
    experiment.check_error(big, (1e-29,))
    with pytest.raises(ValueError, match="beta = 1e-30"):
        experiment.check_error(big, (1e-30, 1.0))


def test_annotator_error_overflow_is_caught():
    """--noise-scale 1e308 on a float32 normal draw is inf: refused, not carried into the proxies."""
    eps = experiment.annotator_error(jax.random.key(0), "normal", 40, 1e308)
    with pytest.raises(ValueError, match="inf"):
        experiment.check_error(eps, (1.0,))


def _rows(method, d, gold):
    return [experiment.point(method, KL=float(x) ** 2, gold=float(g)) for x, g in zip(d, gold)]


def test_gao_fits_need_four_distinct_d():
    """Fewer than MIN_FIT_POINTS distinct d > 0 (a 2-sequence tree: best-of-n's d saturates at once): alpha, beta,
    r2 null with a reason. With 4: the least-squares fit (SciPy's curve_fit as the reference)."""
    d3 = [0.0, 0.1, 0.2, 0.2, 0.2, 0.3]  # 3 distinct d > 0, 6 points
    f = experiment.gao_fits(_rows("bon", d3, [0.0, 0.08, 0.15, 0.15, 0.15, 0.2]))["bon"]
    assert f["alpha"] is None and f["beta"] is None and f["r2"] is None and f["points"] == 6
    assert "3 distinct d > 0" in f["reason"]

    d4 = np.asarray([0.0, 0.1, 0.2, 0.3, 0.45])
    gold = d4 * (1.2 - 0.7 * d4) + np.asarray([0.0, 0.01, -0.02, 0.015, -0.01])
    f = experiment.gao_fits(_rows("bon", d4, gold))["bon"]
    (a, b), _ = so.curve_fit(lambda x, a, b: x * (a - b * x), d4, gold, p0=(0.0, 0.0))
    np.testing.assert_allclose([f["alpha"], f["beta"]], [a, b], rtol=2e-3)  # float32 normal equations
    assert f["points"] == 5 and "reason" not in f
    assert experiment.gao_fits(_rows("exact", d4, gold)) == {}  # no bon or rl points: no fit rows


def test_peak_bytes_grows_with_every_size():
    """Each term moves the estimate the way its size does; an LM of 10^6 positions (A=2, L=10^6: only 10^6 + 1
    sequences) needs its attention's L^2, far beyond any machine."""
    base = dict(pairs=4000, lm_steps=600, bt_steps=600, rl_steps=200)
    small = experiment.peak_bytes(16, 4, **base)
    assert experiment.peak_bytes(16, 5, **base) > small
    assert experiment.peak_bytes(16, 4, **dict(base, pairs=10**9)) > small + 40e9
    assert experiment.peak_bytes(16, 4, **dict(base, lm_steps=2**31 - 1)) > small + 30e9
    assert experiment.peak_bytes(16, 4, ns=1000, **base) > experiment.peak_bytes(16, 4, ns=9, **base)
    assert experiment.peak_bytes(2, 10**6, **base) > 2**50


def test_proxy_and_tail_rows():
    """proxy_row: the report's numbers, nulls with their reasons (a direct proxy has no seen pairs; a tree of
    fewer than MIN_TAIL_SAMPLES sequences no xi); tail_rows: one row per (of, law, q) in order, pi0 first with
    beta null, the curves' values, a null mean excess with its reason."""
    import jax.numpy as jnp

    from goodhart_jax.lab import rewards

    for n in (200, 30):
        rng = np.random.default_rng(n)
        lp = jnp.asarray(np.log(rng.dirichlet(np.ones(n))), jnp.float32)
        gold = jnp.asarray(rng.normal(size=n), jnp.float32)
        px = rewards.direct_proxy(gold, jnp.asarray(rng.normal(size=n), jnp.float32), lp)
        rep = rewards.diagnose_proxy(jax.random.key(0), px.reward, gold, lp, None, heldout_pairs=500,
                                     betas=(0.01, 1.0))
        built = experiment.ProxyBuild(px, rep, None, None)
        row = experiment.proxy_row(built)
        assert row["pair_accuracy_unseen"] == rep.pair_accuracy_unseen and row["corr"] == rep.corr
        assert row["pair_accuracy_seen"] is None and row["seen_mass"] is None and row["seen_sequences"] == 0
        assert "pair_accuracy_seen: a direct proxy has no training pairs" in row["reason"]
        assert row["raw_sd"] == float(px.sd)
        if n < experiment.MIN_TAIL_SAMPLES:
            assert row["xi"] is None and row["xi_proxy"] is None and row["tail_law"] is None
            assert f"xi: n/a (N = {n} < 100 sequences)" in row["reason"]
        else:
            assert row["xi"] == rep.xi and row["tail_law"].startswith("pi0: 20000 i.i.d. draws")
        tails = experiment.tail_rows(built)
        nq = len(rewards.QUANTILES)
        assert len(tails) == 2 * 3 * nq
        for i, t in enumerate(tails):
            of, k, j = ("X", "proxy")[i // (3 * nq)], (i // nq) % 3, i % nq
            c = rep.tails.x if of == "X" else rep.tails.proxy
            assert (t["of"], t["law"], t["beta"], t["q"]) == (of, "pi0" if k == 0 else "pi*",
                                                              None if k == 0 else (0.01, 1.0)[k - 1],
                                                              rewards.QUANTILES[j])
            assert t["u"] == c.u[k, j] and t["mass_above"] == c.mass_above[k, j]
            if np.isnan(c.mean_excess[k, j]):
                assert t["mean_excess"] is None and "no mass above u" in t["reason"]
            else:
                assert t["mean_excess"] == c.mean_excess[k, j] and "reason" not in t
        # pi*(0.01) puts nearly all its mass on the proxy's argmax: no mass above its quantiles of the proxy
        assert any(t["mean_excess"] is None for t in tails if t["of"] == "proxy" and t["beta"] == 0.01)
