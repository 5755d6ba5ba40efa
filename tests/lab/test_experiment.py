"""lab.experiment's checks before any work: the annotator error the float32 lab can carry, the Gao fits' minimum
of points (against SciPy's least squares where they fit), and the peak-memory estimate's growth with each size."""
import jax
import jax.numpy as jnp
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
    [f] = experiment.gao_fits(_rows("bon", d3, [0.0, 0.08, 0.15, 0.15, 0.15, 0.2]))
    assert f["method"] == "bon" and "rl_beta" not in f
    assert f["alpha"] is None and f["beta"] is None and f["r2"] is None and f["points"] == 6
    assert "3 distinct d > 0" in f["reason"]

    d4 = np.asarray([0.0, 0.1, 0.2, 0.3, 0.45])
    gold = d4 * (1.2 - 0.7 * d4) + np.asarray([0.0, 0.01, -0.02, 0.015, -0.01])
    [f] = experiment.gao_fits(_rows("bon", d4, gold))
    (a, b), _ = so.curve_fit(lambda x, a, b: x * (a - b * x), d4, gold, p0=(0.0, 0.0))
    np.testing.assert_allclose([f["alpha"], f["beta"]], [a, b], rtol=2e-3)  # float32 normal equations
    assert f["points"] == 5 and "reason" not in f
    assert experiment.gao_fits(_rows("exact", d4, gold)) == []  # no bon or rl points: no fit rows


def test_rl_fits_one_per_beta():
    """RL's Gao fit is per beta (each its own objective): each equals SciPy's least squares on that beta's points
    alone, pooled steps; "bon" stays one fit over its points."""
    d = np.asarray([0.0, 0.2, 0.5, 0.9, 1.3])
    rows = []
    for b, (a, c) in {0.3: (1.0, 0.2), 1.0: (0.6, 0.5)}.items():  # two different curves, R = d (a - c log d)
        gold = d * (a - c * np.log(np.maximum(d, 1e-30)))
        rows += [experiment.point("rl", beta=b, step=10 * i, KL=float(x) ** 2, gold=float(g))
                 for i, (x, g) in enumerate(zip(d, gold))]
    rows += _rows("bon", d, d * (1.0 - 0.3 * d))
    out = experiment.gao_fits(rows)
    assert [(f["method"], f.get("rl_beta")) for f in out] == [("bon", None), ("rl", 0.3), ("rl", 1.0)]
    for f in out[1:]:
        pts = [r for r in rows if r["method"] == "rl" and r["beta"] == f["rl_beta"]]
        x, y = np.asarray([r["d"] for r in pts]), np.asarray([r["gold"] for r in pts])
        (a, c), _ = so.curve_fit(lambda x, a, c: x * (a - c * np.log(np.maximum(x, 1e-30))), x, y, p0=(0.0, 0.0))
        np.testing.assert_allclose([f["alpha"], f["beta"]], [a, c], rtol=2e-3, atol=1e-4)
        assert f["points"] == 5


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


def test_rl_points_share_closed():
    """share_closed = 1 - gap / gap at step 0 (0 at step 0, the gap from the exact evaluation); a proxy that is the
    same everywhere leaves pi0 optimal (gap0 = 0): share null with the reason. The residual policy starts at pi0."""
    from goodhart_jax.lab import lm, tree as lab_tree

    cfg = lm.LMConfig(vocab=3, depth=2, layers=1, width=16, heads=2)
    params, f = lm.init(jax.random.key(0), cfg), lm.make_logits(cfg)
    tree = lab_tree.exact_tree(f, params, cfg.depth)
    n = tree.log_p.shape[0]
    base = experiment.Base(f, params, tree, None, cfg)
    gold = jax.random.normal(jax.random.key(1), (n,))
    for proxy, closable in ((gold + jax.random.normal(jax.random.key(2), (n,)), True), (0 * gold + 0.5, False)):
        rows = experiment.rl_points(jax.random.key(3), base, lab_tree.mdp_tree(tree, gold, proxy), 0.5, steps=4,
                                    eval_every=2, batch=8)
        assert [r["step"] for r in rows] == [0, 2, 4] and rows[0]["KL"] == pytest.approx(0.0, abs=1e-6)
        if closable:
            gap0 = rows[0]["gap"]
            assert gap0 > 0.01 and rows[0]["share_closed"] == 0.0 and "reason" not in rows[0]
            assert all(r["share_closed"] == pytest.approx(1 - r["gap"] / gap0) for r in rows)
        else:
            assert abs(rows[0]["gap"]) < 1e-5
            assert all(r["share_closed"] is None and "pi0 is already optimal" in r["reason"] for r in rows)


def test_exact_mass_is_the_optimums_expectation_of_the_set():
    """exact_mass (closed form over terminals, float64) = E_pi*(beta)[1{x in S}] from the tree's own sweep
    (mdp.sweep_betas with V = the indicator, float64), for several betas and a set from a token map."""
    from goodhart_jax import mdp
    from goodhart_jax.lab import error_maps, lm
    from goodhart_jax.lab import tree as lab_tree

    with jax.enable_x64(True):
        cfg = lm.LMConfig(4, 3, layers=1, width=8, heads=2)
        params = jax.tree.map(lambda x: x.astype(jnp.float64), lm.init(jax.random.key(0), cfg))
        t = lab_tree.exact_tree(lm.make_logits(cfg), params, 3)
        proxy = jax.random.normal(jax.random.key(1), t.log_p.shape, jnp.float64)
        member = error_maps.hack_set("token:id=1+2", t.tokens)
        assert 0 < member.sum() < member.size
        betas = np.array([0.3, 1.0, 4.0])
        want = mdp.sweep_betas(lab_tree.mdp_tree(t, jnp.asarray(member, jnp.float64), proxy), jnp.asarray(betas)).E_V
        got = [experiment.exact_mass(t.log_p, proxy, b, member) for b in betas]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-9, atol=1e-12)
    assert error_maps.hack_set("feature", t.tokens) is None
