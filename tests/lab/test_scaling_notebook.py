"""notebooks/scaling_ensembles.ipynb runs headless, and what it computes matches float64 references.

Executed once (module fixture) with one cell appended that writes, per seed, pi0's terminal log-probabilities
and the gold; per scaling proxy its raw scores and `scaling.evaluate`'s points, fits and peaks; the summary and
trend rows; per ensemble the members' and the single proxy's raw scores, the objective tables and each exact
evaluation. The references, independent of the library: NumPy float64 enumeration of the 156 sequences
(pi*(beta)(x) = p0(x) e^{r(x)/beta} / Z; best-of-n's law P(best = x) = p0(x)/m(v) (F(v)^n - F(v-)^n) with ties
split by pi0 mass), np.linalg.lstsq for Gao's forms, the pi0 standardisation and the mean / min / mean - lambda Var
objectives recomputed from the raw tables, and SciPy's Student-t quantile for the intervals over seeds.
"""
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from scripts import run_notebook_with_dump  # noqa: E402
stats = pytest.importorskip("scipy.stats")

pytestmark = pytest.mark.slow  # executing the notebook: ~60-75 s of CPU, mostly compilation

NB = Path(__file__).resolve().parents[2] / "notebooks" / "scaling_ensembles.ipynb"
DUMP = r'''
import json as _json
from pathlib import Path as _Path
def _a(x):
    return np.asarray(x, np.float64).tolist()
def _curve(c):
    return dict(param=_a(c.param), KL=_a(c.KL), gold=_a(c.gold), proxy=_a(c.proxy))
def _peak(p):
    return dict(gold=p.gold, KL=p.KL, at=p.at, reason=p.reason)
_Path(OUT).write_text(_json.dumps({
    "seeds": list(SEEDS), "sizes": [list(s) for s in SIZES], "pairs": list(PAIRS), "betas": _a(betas),
    "ns": list(ns), "K": K, "labels": LABELS, "uwo_lambda": ensembles.UWO_LAMBDA,
    "base": {str(s): dict(log_p=_a(b.tree.log_p), gold=_a(b.gold.reward)) for s, b in bases.items()},
    "scaling": [dict(seed=c["seed"], size=c["size"], params=c["params"], pairs=c["pairs"],
                     raw=_a(raw_of[(c["seed"], c["size"], c["pairs"])]), proxy=c["evaluated"].proxy,
                     points=c["evaluated"].points, fits=c["evaluated"].fits, peaks=c["evaluated"].peaks,
                     stop_step=c.get("stop_step"))
                for c in cells],
    "summary": summ, "trends": tr,
    "ensembles": {str(s): dict(raw=_a(e.raw), single_raw=_a(e.single.raw),
                               tables={n: _a(t) for n, t in tables_of[s].items()},
                               evals={n: dict(exact=_curve(v.exact), bon=_curve(v.bon), exact_peak=_peak(v.exact_peak),
                                              bon_peak=_peak(v.bon_peak), kl_targets=_a(v.kl_targets),
                                              gold_at_kl=_a(v.gold_at_kl), beta_at_kl=_a(v.beta_at_kl))
                                     for n, v in evs[s].items()})
                  for s, e in ens_of.items()},
}))
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("ipykernel")
    values, text, images = run_notebook_with_dump(NB, DUMP, tmp_path_factory.mktemp("nb") / "values.json")
    return values, text, images


# ---------------------------------------------------------------- float64 references, NumPy only
def _log_p0(log_p):
    lp = np.asarray(log_p, np.float64)
    top = lp.max()
    return lp - (top + math.log(np.exp(lp - top).sum()))


def _standardise(raw, log_p0):
    """(r - E_p0 r) / sd_p0(r), float64."""
    p0 = np.exp(log_p0)
    r = np.asarray(raw, np.float64)
    mean = p0 @ r
    return (r - mean) / math.sqrt(p0 @ (r - mean) ** 2)


def _tilt(log_p0, proxy, gold, beta):
    """(E[gold], E[proxy], KL) of p0 e^{proxy / beta} / Z."""
    lw = log_p0 + proxy / beta
    top = lw.max()
    lp = lw - (top + math.log(np.exp(lw - top).sum()))
    p = np.exp(lp)
    return p @ gold, p @ proxy, p @ (lp - log_p0)


def _best_of_n(log_p0, proxy, gold, n):
    """(E[gold], E[proxy], KL) of the best of n draws from p0 by proxy: the value v wins with probability
    F(v)^n - F(v-)^n, split inside a tie in proportion to p0 (so the KL is the law of the values')."""
    p0 = np.exp(log_p0)
    vals, inv = np.unique(proxy, return_inverse=True)
    m = np.bincount(inv, weights=p0, minlength=vals.size)
    F = np.cumsum(m)
    q = F**n - (F - m) ** n
    px = p0 * (q / m)[inv]
    keep = q > 0
    return px @ gold, px @ proxy, q[keep] @ (np.log(q[keep]) - np.log(m[keep]))


def _features(d, method):
    """Gao's forms: gold = alpha d - beta d^2 (best-of-n), alpha d - beta d log d (the pi*(beta) path, RL's form)."""
    d = np.asarray(d, np.float64)
    second = d * d if method == "bon" else np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.stack([d, -second], axis=1)


def _close(got, want, tol=2e-4):
    # float32 on the library side; KLs reach ~5 nats at the smallest beta
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _quantities(cell):
    """{name: value} of one scaling proxy, named as scaling.QUANTITIES, from its dumped fits, peaks and proxy row."""
    out = {q: cell["proxy"][q] for q in ("pair_accuracy_unseen", "corr", "error_corr")}
    out["stop_step"] = cell["stop_step"]  # the kept step: null here (no early stopping in the notebook)
    for f in cell["fits"]:
        out[f"alpha_{f['method']}"], out[f"beta_{f['method']}"] = f["alpha"], f["beta"]
    for p in cell["peaks"]:
        out[f"peak_gold_{p['method']}"], out[f"peak_KL_{p['method']}"] = p["gold"], p["KL"]
    return out


# ---------------------------------------------------------------- scaling
def test_the_grid_is_the_small_one(lab):
    d, _, images = lab
    assert len(d["seeds"]) == 2 and len(d["sizes"]) == 2 and len(d["pairs"]) == 2 and d["K"] == 3
    assert len(d["scaling"]) == 8  # 2 sizes x 2 data sizes x 2 seeds
    params = sorted({c["params"] for c in d["scaling"]})
    assert len(params) == 2 and params[1] > 5 * params[0]  # the sizes differ by more than a factor of 5
    for s in d["seeds"]:
        log_p0, gold = _log_p0(d["base"][str(s)]["log_p"]), np.asarray(d["base"][str(s)]["gold"])
        assert log_p0.shape == (156,)  # A = 6, L = 3: 1 + 5 + 25 + 125
        p0 = np.exp(log_p0)
        assert abs(p0 @ gold) < 1e-5 and abs(p0 @ gold**2 - 1) < 1e-4  # gold standardised under pi0
    assert images >= 2  # the scaling curves and the ensembles' were drawn


def test_scaling_curves_match_enumeration(lab):
    d, _, _ = lab
    for cell in d["scaling"]:
        b = d["base"][str(cell["seed"])]
        log_p0, gold = _log_p0(b["log_p"]), np.asarray(b["gold"])
        z = _standardise(cell["raw"], log_p0)
        p0 = np.exp(log_p0)
        assert cell["proxy"]["corr"] == pytest.approx(p0 @ (z * gold), abs=1e-4)  # both sd 1, mean 0 under pi0
        exact = [p for p in cell["points"] if p["method"] == "exact"]
        assert [p["beta"] for p in exact] == pytest.approx(d["betas"])
        for p in exact:
            _close([p["gold"], p["proxy_reward"], p["KL"]], _tilt(log_p0, z, gold, p["beta"]))
            assert p["d"] == pytest.approx(math.sqrt(p["KL"]), abs=1e-6)
        bon = [p for p in cell["points"] if p["method"] == "bon"]
        assert [p["n"] for p in bon] == d["ns"]
        for p in bon:
            _close([p["gold"], p["proxy_reward"], p["KL"]], _best_of_n(log_p0, z, gold, p["n"]))
            n = p["n"]
            assert p["KL"] <= math.log(n) - (n - 1) / n + 1e-5  # best-of-n's KL bound


def test_gao_coefficients_match_least_squares(lab):
    d, _, _ = lab
    for cell in d["scaling"]:
        for f in cell["fits"]:
            pts = [p for p in cell["points"] if p["method"] == f["method"]]
            assert f["points"] == len(pts)
            dd = np.asarray([p["d"] for p in pts])
            gold = np.asarray([p["gold"] for p in pts])
            X = _features(dd, f["method"])
            coef = np.linalg.lstsq(X, gold, rcond=None)[0]
            res = gold - X @ coef
            r2 = 1 - res @ res / np.sum((gold - gold.mean()) ** 2)
            # the library: float32 L-BFGS on column-scaled features; the optimum is the least-squares one
            np.testing.assert_allclose([f["alpha"], f["beta"]], coef, rtol=2e-3, atol=2e-3)
            assert f["r2"] == pytest.approx(r2, abs=1e-3)


def test_peaks_are_the_largest_gold(lab):
    d, _, _ = lab
    for cell in d["scaling"]:
        for pk in cell["peaks"]:
            pts = sorted((p for p in cell["points"] if p["method"] == pk["method"]), key=lambda p: p["KL"])
            best = int(np.argmax([p["gold"] for p in pts]))
            assert pk["gold"] == pytest.approx(pts[best]["gold"], abs=1e-7)
            if best == len(pts) - 1:
                assert pk["KL"] is None and "still rising" in pk["reason"]
            else:
                assert pk["KL"] == pytest.approx(pts[best]["KL"], abs=1e-7)


def test_summary_and_trends_over_seeds(lab):
    """Mean and Student-t interval over seeds per (size, pairs), and the slope per decade of parameters per seed
    averaged over seeds, recomputed from the dumped per-proxy values."""
    d, text, _ = lab
    t = stats.t.ppf(0.975, len(d["seeds"]) - 1)
    qs = {(c["seed"], c["size"], c["pairs"]): _quantities(c) for c in d["scaling"]}
    params = {c["size"]: c["params"] for c in d["scaling"]}
    summ = [r for r in d["summary"] if r["kind"] == "summary"]
    assert len(summ) == 4 * len(next(iter(qs.values())))
    for r in summ:
        v = [qs[(s, r["size"], r["pairs"])][r["quantity"]] for s in d["seeds"]]
        v = np.asarray([x for x in v if x is not None], np.float64)
        assert r["seeds"] == v.size
        if v.size == 0:
            assert r["mean"] is None
            continue
        assert r["mean"] == pytest.approx(v.mean(), abs=1e-9)
        if v.size > 1:
            half = t * v.std(ddof=1) / math.sqrt(v.size)
            assert [r["lo"], r["hi"]] == pytest.approx([v.mean() - half, v.mean() + half], abs=1e-9)
    checked = 0
    for r in (r for r in d["trends"] if r["against"] == "params"):
        slopes = []
        for s in d["seeds"]:
            pts = [(math.log10(params[size]), qs[(s, size, r["at"])][r["quantity"]]) for size in params]
            pts = [p for p in pts if p[1] is not None]
            slopes.append(np.polyfit(*zip(*pts), 1)[0] if len(pts) >= 2 else None)
        assert r["per_seed"] == pytest.approx(slopes, abs=1e-9)
        fin = [x for x in slopes if x is not None]
        if fin:
            assert r["mean"] == pytest.approx(float(np.mean(fin)), abs=1e-9)
            checked += 1
    assert checked >= 10
    # the printed table is these rows
    for r in (r for r in summ if r["quantity"] == "alpha_bon" and r["lo"] is not None):
        assert f"alpha_bon {r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]" in text


def test_printed_proxy_lines(lab):
    d, text, _ = lab
    for c in d["scaling"]:
        fit = {f["method"]: f for f in c["fits"]}
        line = (f"seed {c['seed']} {c['size']:>6} ({c['params']:>5,} params) {c['pairs']:>3} pairs: held-out acc "
                f"{c['proxy']['pair_accuracy_unseen']:.3f}, corr {c['proxy']['corr']:.3f} | best-of-n alpha "
                f"{fit['bon']['alpha']:+.3f} beta {fit['bon']['beta']:+.3f}")
        assert line in text


# ---------------------------------------------------------------- ensembles
def _objectives(raw, log_p0, lam):
    """The objective tables from the members' raw tables: members standardised under pi0, combined, standardised."""
    z = np.stack([_standardise(r, log_p0) for r in raw])
    mean = z.mean(axis=0)
    out = {"mean": mean, "wco": z.min(axis=0), "uwo": mean - lam * ((z - mean) ** 2).mean(axis=0)}
    return {k: _standardise(v, log_p0) for k, v in out.items()}


def test_ensemble_objectives_and_curves_match_enumeration(lab):
    d, text, _ = lab
    for s in d["seeds"]:
        b, e = d["base"][str(s)], d["ensembles"][str(s)]
        log_p0, gold = _log_p0(b["log_p"]), np.asarray(b["gold"])
        raw = np.asarray(e["raw"])
        assert raw.shape == (d["K"], 156)
        tables = _objectives(raw, log_p0, d["uwo_lambda"])
        tables["single"] = _standardise(e["single_raw"], log_p0)
        assert set(e["evals"]) == set(e["tables"]) == {"single", "mean", "wco", "uwo"}
        for name, t in e["tables"].items():  # the notebook's tables: float32, the recomputation's rounding
            np.testing.assert_allclose(t, tables[name], rtol=0, atol=2e-5)
        for name, ev in e["evals"].items():
            table = tables[name]
            assert ev["exact"]["param"] == pytest.approx(sorted(d["betas"], reverse=True))
            for beta, kl, g, u in zip(*(ev["exact"][k] for k in ("param", "KL", "gold", "proxy"))):
                _close([g, u, kl], _tilt(log_p0, table, gold, beta))
            assert ev["bon"]["param"] == d["ns"]
            for n, kl, g, u in zip(*(ev["bon"][k] for k in ("param", "KL", "gold", "proxy"))):
                _close([g, u, kl], _best_of_n(log_p0, table, gold, int(n)))
            # pi* at a KL target: the solved beta spends the target, and gold is pi*(beta)'s there
            reached = 0
            for target, g, beta in zip(ev["kl_targets"], ev["gold_at_kl"], ev["beta_at_kl"]):
                if math.isnan(g):  # beyond the largest KL pi* reaches: -log p0 of the argmax set (beta -> 0)
                    assert -math.log(np.exp(log_p0)[table >= table.max() - 1e-6].sum()) < target + 1e-3
                    continue
                want_g, _, want_kl = _tilt(log_p0, table, gold, beta)
                assert want_kl == pytest.approx(target, rel=2e-3, abs=2e-3)
                assert g == pytest.approx(want_g, abs=2e-3)
                reached += 1
            assert reached >= 1
            # the peaks: the largest gold of each curve (checked against enumeration above; in sweep order, KL
            # rising), its KL unknown (None) where it is the curve's last point
            for method, pk in (("exact", ev["exact_peak"]), ("bon", ev["bon_peak"])):
                cv = ev[method]
                i = int(np.argmax(cv["gold"]))
                assert pk["gold"] == pytest.approx(cv["gold"][i], abs=1e-9) and pk["at"] == pytest.approx(cv["param"][i])
                if i == len(cv["gold"]) - 1:
                    assert pk["KL"] is None and "still rising" in pk["reason"]
                else:
                    assert pk["KL"] == pytest.approx(cv["KL"][i], abs=1e-9) and pk["reason"] == ""
            pk = ev["exact_peak"]
            want = max(_tilt(log_p0, table, gold, beta)[0] for beta in d["betas"])
            assert pk["gold"] == pytest.approx(want, abs=2e-4)  # float32 library, float64 enumeration
            where = f"at KL {pk['KL']:.2f}" if pk["KL"] is not None else "[gold still rising"
            assert f"seed {s} {name:<6} pi* peak gold {pk['gold']:+.3f} {where}" in text


def test_ensemble_differences_over_seeds(lab):
    """The printed paired differences of the pi* peak gold (objective minus the single proxy of the same labels),
    recomputed from the exact curves, with their Student-t interval over seeds."""
    d, text, _ = lab
    t = stats.t.ppf(0.975, len(d["seeds"]) - 1)
    for o in ("mean", "wco", "uwo"):
        ev = [d["ensembles"][str(s)]["evals"] for s in d["seeds"]]
        diffs = np.asarray([max(e[o]["exact"]["gold"]) - max(e["single"]["exact"]["gold"]) for e in ev])
        half = t * diffs.std(ddof=1) / math.sqrt(diffs.size)
        assert f"{o:<4} per seed {np.round(diffs, 3)}: {diffs.mean():+.3f} [{diffs.mean() - half:+.3f}, " \
               f"{diffs.mean() + half:+.3f}]" in text


def test_the_best_of_n_reference_splits_ties_by_pi0():
    """The reference law itself, against every n-tuple of draws of a 5-sequence law with a three-way tie at the
    top (the winner: the first draw attaining the largest proxy, as lab.best_of_n keeps it)."""
    import itertools

    p0 = np.array([0.1, 0.3, 0.2, 0.15, 0.25])
    proxy = np.array([0.5, 2.0, -1.0, 2.0, 2.0])
    gold = np.array([1.0, -2.0, 0.5, 3.0, 0.0])
    for n in (1, 2, 3):
        law = np.zeros(5)
        for draws in itertools.product(range(5), repeat=n):
            top = max(proxy[list(draws)])
            law[next(x for x in draws if proxy[x] == top)] += np.prod(p0[list(draws)])
        m = {v: p0[proxy == v].sum() for v in np.unique(proxy)}
        kl = sum(q * math.log(q / m[v]) for v in m if (q := law[proxy == v].sum()) > 0)
        np.testing.assert_allclose(_best_of_n(np.log(p0), proxy, gold, n), [law @ gold, law @ proxy, kl],
                                   rtol=1e-12, atol=1e-12)
