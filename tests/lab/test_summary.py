"""lab.summary: Student-t intervals against SciPy, exact gold at a KL against a brute-force tilt, headline rows."""
import math

import jax
import numpy as np
import pytest
from scipy import optimize, special, stats

from goodhart_jax import mdp
from goodhart_jax.lab import summary
from goodhart_jax.lab.tree import flatten, terminal_logprobs
from goodhart_jax.tails import parse


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.975, 0.999])
def test_t_quantile_against_scipy(df, p):
    np.testing.assert_allclose(summary.t_quantile(p, df), stats.t.ppf(p, df), rtol=1e-10, atol=1e-12)


def test_interval_against_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        v = rng.normal(1.0, 2.0, n)
        iv = summary.interval(list(v) + [None, float("nan")])  # missing values are left out
        lo, hi = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=stats.sem(v))
        assert iv.n == n and iv.reason == ""
        np.testing.assert_allclose([iv.mean, iv.lo, iv.hi, iv.sd], [v.mean(), lo, hi, v.std(ddof=1)], rtol=1e-9)
    one = summary.interval([2.5])
    assert one.mean == 2.5 and math.isnan(one.lo) and math.isnan(one.hi) and "one seed" in one.reason
    none = summary.interval([None])
    assert none.n == 0 and math.isnan(none.mean) and none.reason


def test_at_kl_interpolates_between_adjacent_points():
    pts = [dict(method="bon", n=n, KL=k, gold=g) for n, k, g in ((1, 0.0, 0.0), (4, 1.0, 2.0), (16, 3.0, 4.0))]
    gold, how = summary.at_kl(pts, 2.0)
    assert gold == pytest.approx(3.0) and "n = 4" in how and "n = 16" in how
    assert summary.at_kl(pts, 1.0)[0] == pytest.approx(2.0)
    gold, how = summary.at_kl(pts, 4.0)
    assert gold is None and "reaches KL 3 at most" in how
    down = [dict(method="exact", beta=b, KL=k, gold=g) for b, k, g in ((0.1, 3.0, 1.0), (1.0, 1.0, 0.5))]
    assert summary.at_kl(down, 2.0)[0] == pytest.approx(0.75)  # either order along the curve
    gap = [dict(method="rl", step=s, KL=k, gold=g) for s, k, g in ((0, 0.0, 0.0), (40, None, None), (80, 2.0, 1.0))]
    assert summary.at_kl(gap, 1.0)[0] == pytest.approx(0.5)  # a nulled point is left out


def test_exact_at_kl_against_a_brute_force_tilt():
    spec = mdp.TreeSpec(3, 3, eos=True)
    fam = parse("normal")
    tree = jax.jit(lambda k: mdp.make_tree(k, spec, fam, fam, pi0="random"))(jax.random.key(3))
    lp = np.asarray(terminal_logprobs(tree.log_pi0), float)
    u = np.asarray(flatten(mdp.terminal_values(tree)), float)
    v = np.asarray(flatten(tree.V), float)
    p0 = np.exp(lp - np.logaddexp.reduce(lp))

    def tilt(beta):
        w = np.log(p0) + u / beta
        p = np.exp(w - np.logaddexp.reduce(w))
        return p, float(np.sum(special.rel_entr(p, p0)))

    top = -np.log(p0[u == u.max()].sum())  # the largest KL: all mass on the argmax
    rows = summary.exact_at_kl(tree, (0.5, 1.0, top + 1.0))
    for r in rows[:2]:
        beta = optimize.brentq(lambda lb: tilt(math.exp(lb))[1] - r["at"], -10, 10, xtol=1e-14)
        p, _ = tilt(math.exp(beta))
        assert r["KL"] == pytest.approx(r["at"], rel=1e-4)
        assert r["beta"] == pytest.approx(math.exp(beta), rel=1e-3)
        assert r["gold"] == pytest.approx(float(p @ v), abs=2e-5)
    assert rows[2]["gold"] is None and "reaches KL" in rows[2]["reason"]


def test_peak_of_a_curve():
    pts = [dict(method="exact", beta=b, KL=k, gold=g) for b, k, g in
           [(10.0, 0.01, 0.05), (1.0, 0.5, 0.4), (0.3, 2.0, 0.3), (0.1, 5.0, None), (0.05, math.nan, 9.0)]]
    p = summary.peak(pts[::-1])  # order does not matter: sorted by KL; None and nan left out
    assert p == summary.Peak(0.4, 0.5, 1.0, "", 3)
    rising = [dict(method="bon", n=n, KL=k, gold=g) for n, k, g in [(1, 0.0, 0.0), (4, 0.6, 0.3), (16, 1.8, 0.5)]]
    p = summary.peak(rising)
    assert p.gold == 0.5 and p.KL is None and p.at == 16 and "still rising" in p.reason and "1.8" in p.reason
    assert summary.peak([dict(method="bon", n=1, KL=None, gold=1.0)]).gold is None
    assert summary.peak([]) == summary.Peak(None, None, None, "no point has a finite gold and KL", 0)
    # a saturated pi* curve: equal KL and gold at the smallest betas; the first along the sweep (largest beta)
    flat = [dict(method="exact", beta=b, KL=k, gold=g) for b, k, g in
            [(0.05, 3.0, 0.7), (0.1, 3.0, 0.7), (0.3, 3.0, 0.7), (1.0, 1.0, 0.5)]]
    assert summary.peak(flat) == summary.peak(flat[::-1]) == summary.Peak(0.7, 3.0, 0.3, "", 4)
    with pytest.raises(ValueError, match="one curve"):
        summary.peak(pts + rising)


def test_peak_of_an_rl_run_is_along_its_steps():
    """An RL run's KL need not rise with the step: its curve ends at its last step, not at its largest KL."""
    run = [dict(method="rl", beta=0.3, step=s, KL=k, gold=g) for s, k, g in
           [(0, 0.0, 0.0), (50, 2.5, 0.8), (100, 2.0, 0.6), (150, 2.2, 0.7)]]
    assert summary.peak(run[::-1]) == summary.Peak(0.8, 2.5, 50, "", 4)  # gold fell after step 50: a peak
    p = summary.peak(run, order="KL")  # by KL instead, step 50 is the curve's end
    assert p.gold == 0.8 and p.KL is None and p.at == 50
    rising = run[:3] + [dict(method="rl", beta=0.3, step=150, KL=1.9, gold=0.9)]
    p = summary.peak(rising)  # the largest gold at the last step, at less KL than step 50's: still rising
    assert (p.gold, p.KL, p.at) == (0.9, None, 150) and "KL 1.9" in p.reason


def _seed_rows(seed, shift):
    tag = dict(noise="normal", proxy="direct", pairs=None)
    lab = [dict(kind="lab", **tag, method="bon", n=n, beta=None, step=None, KL=k, gold=g + shift)
           for n, k, g in ((1, 0.0, 0.0), (4, 0.5, 1.0), (16, 1.5, 1.5), (64, 3.0, 1.2), (256, 4.5, 0.9))]
    lab += [dict(kind="lab", **tag, method="rl", n=None, beta=0.3, step=s, KL=k, gold=g, gap=gap)
            for s, k, g, gap in ((0, 0.0, 0.0, 2.0), (40, 1.0, 1.0, 0.5 + shift), (80, 2.0, 1.5, 0.1))]
    proxy = [dict(kind="proxy", **tag, pair_accuracy_unseen=0.8 + shift / 10, corr=0.7, xi=None,
                  reason="pair_accuracy_seen: a direct proxy has no training pairs; xi: not finite")]
    exact = [dict(kind="exact_at_kl", **tag, at=1.0, beta=0.4, KL=1.0, gold=1.0 + shift)]
    base = [dict(kind="base", entropy=3.0 + shift, perplexity=math.exp(3.0 + shift), top_mass=0.04, n90=100)]
    return base + proxy + exact + lab


def test_headlines_and_their_summary_over_seeds():
    shifts = (0.0, 0.3, -0.1)
    rows = [h for s, d in enumerate(shifts) for h in summary.headlines(_seed_rows(s, d), seed=s)]
    assert {r["seed"] for r in rows} == {0, 1, 2}

    def one(seed, method, quantity, at=None):
        (r,) = [h for h in rows if h["seed"] == seed and h["method"] == method and h["quantity"] == quantity
                and h["at"] == at]
        return r

    assert one(0, "bon", "gold_at_KL", 1.0)["value"] == pytest.approx(1.25)  # between n = 4 and 16
    assert one(0, "bon", "gold_at_KL", 4.0)["value"] == pytest.approx(1.0)
    assert one(0, "bon", "peak_gold")["value"] == 1.5 and one(0, "bon", "KL_at_peak")["value"] == 1.5
    assert one(0, "rl", "gold_at_KL", 4.0)["value"] is None  # RL ends at KL 2
    assert one(0, "rl", "share_closed")["value"] == pytest.approx(0.95)
    assert "still rising" in one(0, "rl", "peak_gold")["how"]
    kl = one(0, "rl", "KL_at_peak")  # the peak is beyond the curve's end: its KL is not known
    assert kl["value"] is None and "still rising" in kl["reason"]
    assert one(1, "exact", "gold_at_KL", 1.0)["value"] == pytest.approx(1.3)
    assert one(0, "proxy", "xi")["value"] is None and one(0, "proxy", "xi")["reason"] == "xi: not finite"
    assert one(0, "proxy", "corr")["how"] == ""  # the row's reason is xi's, not corr's

    out = {(r["method"], r["quantity"], r["at"]): r for r in summary.summarise(rows)}
    s = out[("exact", "gold_at_KL", 1.0)]
    v = np.asarray([1.0 + d for d in shifts])
    lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
    assert s["seeds"] == 3 and s["of"] == 3 and "reason" not in s
    np.testing.assert_allclose([s["mean"], s["lo"], s["hi"]], [v.mean(), lo, hi], rtol=1e-9)
    acc = out[("proxy", "pair_accuracy_unseen", None)]
    assert acc["mean"] == pytest.approx(0.8 + np.mean(shifts) / 10)
    xi = out[("proxy", "xi", None)]
    assert xi["mean"] is None and xi["lo"] is None and xi["seeds"] == 0 and "3 of 3 seeds" in xi["reason"]
    assert out[("pi0", "top_mass", None)]["mean"] == pytest.approx(0.04)


def test_cells_and_tables():
    """'mean [lo, hi]', the mean alone with one seed, '(k/n seeds)' where some seeds have no value, 'n/a'; the
    tables: pi0's law, two of the proxies (with the verdicts tallied), gold by method."""
    row = dict(mean=1.234, lo=0.5, hi=2.0, seeds=3, of=3)
    assert summary.cell(row) == "1.23 [0.50, 2.00]"
    assert summary.cell(dict(row, lo=None, hi=None, seeds=1)) == "1.23 (1/3 seeds)"
    assert summary.cell(dict(row, mean=None)) == "n/a" and summary.cell(None) == "n/a"
    rows = [h for s, d in enumerate((0.0, 0.3, -0.1)) for h in summary.headlines(_seed_rows(s, d), seed=s)]
    proxies = [dict(noise="normal", proxy="direct", pairs=None, verdict=v) for v in ("light", "light", "heavy")]
    out = summary.tables(summary.summarise(rows), proxies, 3)
    assert [t[2].split(" (")[0] for t in out][0] == "pi0's law" and len(out) == 4
    assert out[2][0][0]["verdict"] == "light 2/3, heavy 1/3"
    (bon,) = [r for r in out[3][0] if r["method"] == "bon"]
    assert bon["KL1"].startswith("1.") and "[" in bon["KL1"]
