"""The tour notebook runs headless, and what it computes matches closed forms and independent references.

The notebook is executed once (module fixture) with one extra cell appended that writes the values it
computed to a JSON file; each test then checks one section against a reference computed here with NumPy
and SciPy in float64: brute-force enumeration of the tree, the closed form of the Theorem 2 and Theorem 1
constructions, SciPy quadrature for conditioning and the tilt, NumPy Monte Carlo for best-of-n, and the
Hill estimator and a SciPy GPD fit for the tails.
"""
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from scipy import integrate, special, stats

NB = Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kwa2024" / "random_starling_reward_values.npy"

HEAD = r'''
import json as _json
def _a(x):
    return np.asarray(x, np.float64).tolist()
_values = {
    "errors": {n: {"name": X.name, "params": {k: float(v) for k, v in X.params.items()}, "shift": float(X.shift)}
               for n, X in errors.items()},
}
'''
SECTIONS = r'''
_values.update({
    "betas": _a(betas),
    "tilt": {n: {f: _a(getattr(r, f)) for f in ("exists", "E_V", "E_X", "E_U", "KL")} for n, r in tilts.items()},
    "trees": {n: {"X": [_a(x) for x in t.X], "V": [_a(v) for v in t.V], "log_pi0": [_a(l) for l in t.log_pi0]}
              for n, t in trees.items()},
    "tree_betas": _a(tree_betas),
    "optima": {n: {"E_V": _a(r.E_V), "KL": _a(r.KL)} for n, r in optima.items()},
    "thm2_ts": _a(thm2_ts), "c": float(c),
    "thm2": {n: {"exists": _a(ex), "E_U": _a(st.E_U), "E_V": _a(st.E_V), "KL": _a(st.KL),
                 "KL_per_state": _a(st.KL_per_state)} for n, (st, ex) in thm2_results.items()},
    "cond_ts": _a(cond_ts),
    "cond": {n: {"E_V": _a(r.E_V), "log_p": _a(r.log_p)} for n, r in conds.items()},
    "up_ts": _a(up_ts),
    "ups": {repr(float(p)): {"mean": _a(r.mean), "KL": _a(r.KL)} for p, r in ups.items()},
    "ns": _a(ns),
    "bon": {n: {"E_V": _a(r.E_V), "E_U": _a(r.E_U), "KL_bound": _a(r.KL_bound)} for n, r in bons.items()},
})
'''
TAILS = r'''
_values.update({
    "synthetic": true_xi is not None,
    "rewards": _a(rewards),
    "hill": {"k": _a(hill_k), "xi": _a(hill_xi), "se": _a(hill_se)},
    "gpd_xi": float(diag.gpd_mle.xi),
    "verdict": diag.verdict.verdict,
})
Path(OUT).write_text(_json.dumps(_values))
'''


def _execute(cells, out: Path, dump: str) -> tuple[dict, str]:
    """Run the cells, then `dump` (which writes the values to `out`); returns (values, all stream text)."""
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook(cells=list(cells) + [nbformat.v4.new_code_cell(f"OUT = {str(out)!r}\n" + dump)])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    return json.loads(out.read_text()), text


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    nb = nbformat.read(NB, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    return _execute(nb.cells, tmp_path_factory.mktemp("tour") / "values.json", HEAD + SECTIONS + TAILS)


# ---------------------------------------------------------------------------
# References.


def _weibull(d, name):
    """(shape k, scale lam, shift s) of the notebook's error family `name`: X = s + lam * Weibull(k)."""
    e = d["errors"][name]
    assert e["name"] == "weibull"
    return e["params"]["concentration"], e["params"]["scale"], e["shift"]


def _log_sf_x(x, k, lam, s):
    """log P(X > x) for X = s + lam * Weibull(k)."""
    return -(np.maximum(np.asarray(x, float) - s, 0.0) / lam) ** k


def _log_quad(log_f, lo, hi, points=()):
    """log of the integral of exp(log_f) over [lo, hi], scaled by its maximum on a grid, split at `points`."""
    grid = np.linspace(lo, hi, 20001)
    with np.errstate(divide="ignore"):
        on_grid = log_f(grid)
    top, mode = np.max(on_grid), grid[np.argmax(on_grid)]
    cuts = sorted({lo, hi, mode, *[p for p in points if lo < p < hi]})
    with np.errstate(divide="ignore"):
        total = sum(integrate.quad(lambda v: np.exp(log_f(v) - top), a, b, epsabs=0.0, epsrel=1e-12, limit=500)[0]
                    for a, b in zip(cuts[:-1], cuts[1:]))
    return top + math.log(total)


def _leaf_logprobs(log_pi0, depth):
    """log pi0 of each full-length sequence (no EOS), by walking its tokens."""
    n = np.asarray(log_pi0[0]).shape[-1]
    idx = np.arange(n**depth)
    out = np.zeros(n**depth)
    for k in range(depth):
        state = idx // n ** (depth - k)
        action = (idx // n ** (depth - k - 1)) % n
        out += np.asarray(log_pi0[k])[state, action]
    return out


# ---------------------------------------------------------------------------
# Section by section.


def test_tilt_exists_for_light_error_only(tour):
    d, text = tour
    betas = np.asarray(d["betas"])
    light, heavy = d["tilt"]["light"], d["tilt"]["heavy"]
    assert all(light["exists"]) and not any(heavy["exists"])
    assert np.all(np.isinf(heavy["E_V"]))
    # V ~ N(0, 1) tilted by e^{v/beta} is N(1/beta, 1): E[V] = 1/beta, KL_V = 1/(2 beta^2).
    np.testing.assert_allclose(light["E_V"], 1.0 / betas, rtol=1e-9)
    # The error's factor by SciPy quadrature: log Z_X, E[X] under the tilt, KL_X = E[X]/beta - log Z_X.
    k, lam, s = _weibull(d, "light")
    for i, b in enumerate(betas):
        log_f = lambda x: stats.weibull_min.logpdf(x, k, loc=s, scale=lam) + x / b  # noqa: E731
        hi = s + lam * 30 + 2 * lam**2 / b
        log_z = _log_quad(log_f, s, hi)
        mean = math.exp(_log_quad(lambda x: log_f(x) + np.log(x - s), s, hi) - log_z) + s
        np.testing.assert_allclose(light["E_X"][i], mean, rtol=1e-8)
        np.testing.assert_allclose(light["E_U"][i], mean + 1.0 / b, rtol=1e-8)
        np.testing.assert_allclose(light["KL"][i], mean / b - log_z + 0.5 / b**2, rtol=1e-8)
    # Laplace(1) has E[e^{sX}] < inf only for s < 1: a tilt needs beta > 1.
    assert "why_no_tilt(laplace, beta=0.5): E[exp(U/beta)] diverges" in text and "only beta > 1 works" in text
    assert "why_no_tilt(laplace, beta=2): None" in text
    assert "why_no_tilt(student_t:df=3, beta=10): E[exp(U/beta)] diverges: student_t:df=3 is heavy-tailed" in text
    assert "concentration=0.5, beta=10): E[exp(U/beta)] diverges" in text


def test_tree_optimum_matches_enumeration(tour):
    d, _ = tour
    betas = np.asarray(d["tree_betas"])
    at_kl1 = {}
    for name, tree in d["trees"].items():
        depth = len(tree["log_pi0"])
        assert all(len(x) == 0 for x in tree["X"][:-1])  # no EOS: every sequence has full length
        U = np.asarray(tree["X"][-1]) + np.asarray(tree["V"][-1])
        V = np.asarray(tree["V"][-1])
        lp0 = _leaf_logprobs(tree["log_pi0"], depth)
        E_V, KL = [], []
        for b in betas:  # the optimal trajectory law: p0 e^{U/beta} / Z
            lw = lp0 + U / b
            lp = lw - special.logsumexp(lw)
            p = np.exp(lp)
            E_V.append(p @ V)
            KL.append(p @ (lp - lp0))
        np.testing.assert_allclose(d["optima"][name]["E_V"], E_V, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(d["optima"][name]["KL"], KL, rtol=1e-6, atol=1e-10)
        assert max(KL) <= depth * math.log(8) + 1e-9
        order = np.argsort(KL)
        at_kl1[name] = np.interp(0.0, np.log(np.asarray(KL)[order]), np.asarray(E_V)[order])
    assert at_kl1["light"] > at_kl1["heavy"]  # at KL = 1 nat, heavy error buys less utility


def test_thm2_matches_the_two_part_closed_form(tour):
    d, _ = tour
    ts, c = np.asarray(d["thm2_ts"]), d["c"]
    for name, tree in d["trees"].items():
        depth = len(tree["log_pi0"])
        U = np.asarray(tree["X"][-1]) + np.asarray(tree["V"][-1])
        V = np.asarray(tree["V"][-1])
        p0 = np.exp(_leaf_logprobs(tree["log_pi0"], depth))
        r = d["thm2"][name]
        for i, t in enumerate(ts):
            above = U > t
            F, Fbar, m = p0[~above].sum(), p0[above].sum(), c / t
            defined = t > c and F > 0 and Fbar > 0
            assert bool(r["exists"][i]) == defined
            if not defined:
                continue
            # rho_t: mass 1 - m below t and m above, each in base proportions.
            e_u = (1 - m) * (p0[~above] @ U[~above]) / F + m * (p0[above] @ U[above]) / Fbar
            e_v = (1 - m) * (p0[~above] @ V[~above]) / F + m * (p0[above] @ V[above]) / Fbar
            kl = (1 - m) * math.log((1 - m) / F) + m * math.log(m / Fbar)
            np.testing.assert_allclose(r["E_U"][i], e_u, rtol=1e-9)
            np.testing.assert_allclose(r["E_V"][i], e_v, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(r["KL"][i], kl, rtol=1e-8)
            # chain rule: the trajectory KL is the sum over the depth visited states
            np.testing.assert_allclose(r["KL_per_state"][i], kl / depth, rtol=1e-8)
    heavy = d["thm2"]["heavy"]
    assert all(heavy["exists"])
    assert np.all(np.diff(heavy["KL"]) < 0)  # heavy error: KL falls with t ...
    assert min(heavy["E_U"]) > c  # ... while E[U] stays above c
    assert not all(d["thm2"]["light"]["exists"])  # light error: the tail runs out


def test_conditioning_matches_scipy_quadrature(tour):
    d, _ = tour
    ts = np.asarray(d["cond_ts"])
    for name in ("light", "heavy"):
        k, lam, s = _weibull(d, name)
        for i, t in enumerate(ts):
            # E[V | X + V >= t] = int v phi(v) Fbar_X(t - v) dv / int phi(v) Fbar_X(t - v) dv
            log_g = lambda v: stats.norm.logpdf(v) + _log_sf_x(t - v, k, lam, s)  # noqa: E731
            lo, hi, kink = -40.0, t - s + 40.0, t - s
            log_p = _log_quad(log_g, lo, hi, (kink,))
            pos = _log_quad(lambda v: log_g(v) + np.log(v), 1e-300, hi, (kink,))
            neg = _log_quad(lambda v: log_g(v) + np.log(-v), lo, -1e-300, (kink,))
            e_v = math.exp(pos - log_p) - math.exp(neg - log_p)
            np.testing.assert_allclose(d["cond"][name]["log_p"][i], log_p, rtol=1e-9)
            np.testing.assert_allclose(d["cond"][name]["E_V"][i], e_v, rtol=1e-7, atol=1e-10)
    light, heavy = d["cond"]["light"]["E_V"], d["cond"]["heavy"]["E_V"]
    assert np.all(np.diff(light) > 0) and light[-1] > 10  # Theorem 8: grows without bound
    assert heavy[-1] < 0.2 and np.all(np.diff(heavy[2:]) < 0)  # Theorem 5: back towards E[V] = 0


def test_thm1_matches_closed_form(tour):
    d, _ = tour
    ts = np.asarray(d["up_ts"])
    k, lam, s = _weibull(d, "heavy")
    assert abs(s + lam * math.gamma(1 + 1 / k)) < 1e-12  # Q has mean 0
    for p, r in d["ups"].items():
        p = float(p)
        for i, t in enumerate(ts):
            y = t - s
            log_sf = -((y / lam) ** k)
            sf = math.exp(log_sf)
            # E[X | X > t] = t + int_0^inf Fbar(t + u) / Fbar(t) du
            tail = t + integrate.quad(lambda u: math.exp(-(((y + u) / lam) ** k) - log_sf), 0, np.inf,
                                      epsabs=0.0, epsrel=1e-12, limit=500)[0]
            m = 1.0 / t**p
            mean = (1 - m) * (0.0 - sf * tail) / (1 - sf) + m * tail
            kl = (1 - m) * (math.log1p(-m) - math.log1p(-sf)) + m * (math.log(m) - log_sf)
            np.testing.assert_allclose(r["mean"][i], mean, rtol=1e-8)
            np.testing.assert_allclose(r["KL"][i], kl, rtol=1e-8)
    p1, p08 = d["ups"]["1.0"], d["ups"]["0.8"]
    assert 1.0 < p1["mean"][-1] < 1.01 and p1["KL"][-1] < 0.005 and np.all(np.diff(p1["KL"]) < 0)
    assert p08["mean"][-1] > 10 and np.all(np.diff(p08["mean"][2:]) > 0) and p08["KL"][-1] < 0.05


def _best_v(rng, k, lam, s, n, trials):
    """V of the best of n draws by U = X + V, X = s + lam * Weibull(k), V ~ N(0, 1): [trials]."""
    X = s + lam * rng.weibull(k, (trials, n))
    V = rng.standard_normal((trials, n))
    return V[np.arange(trials), np.argmax(X + V, axis=1)]


def test_best_of_n_matches_monte_carlo(tour):
    d, _ = tour
    ns = np.asarray(d["ns"])
    rng = np.random.default_rng(20240)
    for name in ("light", "heavy"):
        r = d["bon"][name]
        np.testing.assert_allclose(r["KL_bound"], np.log(ns) - (ns - 1) / ns, rtol=1e-12, atol=1e-15)
        assert abs(r["E_V"][0]) < 1e-8 and abs(r["E_U"][0]) < 1e-8  # n = 1: no selection, E[V] = E[X] = 0
        k, lam, s = _weibull(d, name)
        for n, trials in ((2, 1_000_000), (8, 500_000), (64, 200_000)):
            best = np.concatenate([_best_v(rng, k, lam, s, n, 50_000) for _ in range(trials // 50_000)])
            se = best.std() / math.sqrt(trials)
            i = int(np.flatnonzero(ns == n)[0])
            assert abs(r["E_V"][i] - best.mean()) < 4 * se, (name, n, r["E_V"][i], best.mean(), se)
    light, heavy = d["bon"]["light"]["E_V"], d["bon"]["heavy"]["E_V"]
    assert np.all(np.diff(light) > 0)
    assert heavy[-1] < 0.5 * max(heavy)  # heavy error: selection ends up picking outliers of X


def _hill(x_desc, ks):
    logs = np.log(x_desc)
    return np.array([logs[:k].mean() - logs[k] for k in ks])


def _check_tails(d):
    x = np.asarray(d["rewards"])
    n = x.size
    ks = np.arange(int(n**0.1), int(n**0.5))  # the paper's Figure 1 range
    np.testing.assert_array_equal(d["hill"]["k"], ks)
    if d["synthetic"]:
        x_desc = np.sort(x)[::-1]
    else:
        np.testing.assert_array_equal(x, np.load(DATA).astype(np.float64))
        z = x - x.mean()
        x_desc = np.sort(z[z > 0])[::-1]
    xi = _hill(x_desc, ks)
    np.testing.assert_allclose(d["hill"]["xi"], xi, rtol=1e-5)  # float32 rewards: ~1e-6 apart
    np.testing.assert_allclose(d["hill"]["se"], xi / np.sqrt(ks), rtol=1e-5)
    # The POT fit: the m = n/10 largest values minus the (m+1)-th, fitted by SciPy's GPD MLE.
    a = np.sort(x)[::-1]
    m = n // 10
    y = a[:m] - a[m]
    xi_ref = stats.genpareto.fit(y[y > 0], floc=0)[0]
    assert abs(d["gpd_xi"] - xi_ref) < 5e-4, (d["gpd_xi"], xi_ref)  # SciPy's Nelder-Mead stops near 1e-4
    if d["synthetic"]:  # Pareto(5): xi = 0.2, a power law
        assert abs(xi[-1] - 0.2) < 4 * xi[-1] / math.sqrt(ks[-1])
        assert d["verdict"] == "heavy"
    else:  # the README's Figure 1 row: Hill 0.201 +- 0.015 at k = 172, the GPD interval covers 0
        assert ks[-1] == 172 and abs(xi[-1] - 0.201) < 5e-4
        assert d["verdict"] == "inconclusive"


def test_tails_hill_and_gpd(tour):
    d, text = tour
    _check_tails(d)
    assert ("SYNTHETIC" in text) == d["synthetic"]


def test_tails_fallback_without_the_data(tmp_path):
    """Where ../shared is absent (a fresh clone), the tails cell says so and uses a synthetic Pareto sample."""
    if not DATA.exists():
        pytest.skip("the data is absent: the main run already took the synthetic branch")
    nb = nbformat.read(NB, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and set(c.metadata.get("tags", [])) & {"setup", "tails"}]
    assert len(cells) == 2
    absent = tmp_path / "absent"
    cells.insert(0, nbformat.v4.new_code_cell(f"import os\nos.environ['GOODHART_KWA2024_DATA'] = {str(absent)!r}"))
    d, text = _execute(cells, tmp_path / "values.json", HEAD + TAILS)
    assert d["synthetic"] and f"SYNTHETIC, not the paper's ({absent}/random_starling_reward_values.npy not found)" in text
    _check_tails(d)
