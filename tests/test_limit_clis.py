"""The limit-study scripts: files and JSON rows from tiny runs, exit status 2 on bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from goodhart_jax import cli

from scripts import load_script, unoptimised_compiles  # tests/scripts.py

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """Files, JSON rows and exit codes of small runs: compiled without XLA's optimisations, in process and in the
    scripts started here (tests/scripts.py)."""
    with unoptimised_compiles():
        yield


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "sims" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_sweep_threshold_json_and_files(tmp_path):
    p = _run("sweep_threshold.py", "--error", "normal", "pareto:alpha=2.5", "--t", "0", "10", "--mc-samples", "300",
             "--no-footnote4", "--out", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]  # stdout holds JSON lines only
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"threshold"}
    for r in rows:
        assert {"error", "utility", "t", "E_V", "E_V_mc", "E_V_mc_se", "log_p"} <= set(r)
        assert abs(r["E_V_mc"] - r["E_V"]) < 5 * r["E_V_mc_se"]
    for f in ("config.json", "results.jsonl", "results.csv", "threshold.png"):
        assert (tmp_path / f).stat().st_size > 0


def _leaf_tilt(U, V, f):
    """Brute force over the leaves of a tree with uniform pi0 (the trajectory KL is the leaves' KL):
    P ∝ exp(f) and its (E_U, E_V, KL), float64. U, V, f: [leaves]."""
    p = np.exp(f - f.max())
    p /= p.sum()
    return p @ U, p @ V, p @ np.log(p * len(U))


def _tree_quantilizer(U, V, vocab, q):
    """The capped policy pi <= pi0/q at each state of a depth-2 tree, filled in decreasing value (the best E[U]
    under the caps), from its leaves (leaf s*vocab + a below state s): (E_U, E_V, KL), float64."""
    def fill(values):  # one state: [A] values -> [A] probabilities, each at most 1/(A q)
        p, left = np.zeros(len(values)), 1.0
        for a in np.argsort(-values):
            p[a] = min(left, 1 / (len(values) * q))
            left -= p[a]
        return p
    U2, V2 = U.reshape(vocab, vocab), V.reshape(vocab, vocab)
    below = np.array([fill(u) for u in U2])  # [s, a]
    top = fill((below * U2).sum(1))  # [s]
    p = top[:, None] * below  # leaf probabilities
    nz = p > 0
    return (p * U2).sum(), (p * V2).sum(), (p[nz] * np.log(p[nz] * vocab**2)).sum()


def test_other_scripts_tiny_runs(tmp_path):
    from scipy import integrate, optimize, special, stats

    from goodhart_jax import mdp, tails

    sys.path.insert(0, str(ROOT / "sims"))
    try:
        import best_of_n as bon
        import mitigations as mit
        import tail_upweight as tu
        import theorem3 as t3
    finally:
        sys.path.pop(0)
    rows = tu.main(tu.Config(base=("student_t:df=3",), t=(2.0, 100.0, 1e4), frames=3, out=str(tmp_path / "tu")))
    assert [r["kind"] for r in rows] == ["upweight"] * 3 and rows[-1]["KL"] < rows[0]["KL"]
    assert rows[-1]["mean"] > rows[0]["mean"]
    assert (tmp_path / "tu" / "figure3.gif").stat().st_size > 0
    rows = t3.main(t3.Config(utility=("normal",), d=(0.1, 1.0), t=(2.0, 10.0), plots=False, out=str(tmp_path / "t3")))
    kl_bounded = [r for r in rows if r["kind"] == "kl_bounded"]
    assert [r["d"] for r in kl_bounded] == [0.1, 1.0]
    for r in kl_bounded:  # V ~ N(0, 1): the tilt e^{lam V} with KL = lam^2/2 = d has E_V = lam
        assert r["exists"] and r["E_V"] == pytest.approx(math.sqrt(2 * r["d"]), rel=1e-6) and r["KL"] == \
            pytest.approx(r["d"], rel=1e-6), r
    rows = bon.main(bon.Config(error=("normal",), utility=("normal",), n=(1, 4, 16), trials=20, plots=False,
                               out=str(tmp_path / "bon")))
    b = [r for r in rows if r["kind"] == "bon"]
    assert [r["n"] for r in b] == [1, 4, 16]
    for r in b:  # X, V ~ N(0, 1): the best of n by U ~ N(0, 2) has E_U = sqrt(2) E[max of n N(0, 1)], E_V = E_U / 2
        n = r["n"]
        e_max = integrate.quad(lambda z: z * n * stats.norm.pdf(z) * stats.norm.cdf(z) ** (n - 1), -40, 40,
                               epsabs=1e-13)[0]
        assert r["KL_bound"] == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-7), r
        assert r["E_U"] == pytest.approx(math.sqrt(2) * e_max, rel=1e-6, abs=1e-9), r
        assert r["E_V"] == pytest.approx(math.sqrt(2) * e_max / 2, rel=1e-6, abs=1e-9), r
        for mc, exact in (("E_U_mc", "E_U"), ("E_V_mc", "E_V")):  # 20 trials: within 5 standard errors
            assert abs(r[mc] - r[exact]) < 5 * r[f"{mc}_se"], r
    # Two budgets, one beta, 3^2 tree, 20000 draws: the programs of test_mitigations_json_and_files and of
    # test_cli_inputs' mitigations run (compiled once per suite run, via the JAX cache).
    rows = mit.main(mit.Config(error=("normal",), kl=(0.5, 1.0), bounded_betas=(1.0,), vocab=3, depth=2,
                               mc_samples=20_000, plots=False, out=str(tmp_path / "mit")))
    by = {(r["model"], r["method"], r["budget"]): r for r in rows}
    assert {r["method"] for r in rows} == {"kl_penalty", "kl_target", "bounded", "bounded_mean", "quantilizer"}
    models = ("tree", "continuous")
    assert sorted(by) == sorted([(m, k, d) for d in (0.5, 1.0) for m in models for k in ("kl_target", "quantilizer")]
                                + [("tree", "kl_penalty", 1.0), ("tree", "kl_penalty", 2.0)]
                                + [(m, k, 1.0) for m in models for k in ("bounded", "bounded_mean")])
    assert all(r["exists"] for r in rows)
    # The tree, brute force over its 9 leaves in float64: the same draw as the script's (mitigations.main's keys).
    tree = mdp.make_tree(jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[0], mdp.TreeSpec(3, 2),
                         tails.parse("normal"), tails.parse("normal"))
    assert [x.size for x in tree.X] == [0, 0, 9]  # returns at the leaves only
    X, V = (np.asarray(a[-1], np.float64) for a in (tree.X, tree.V))
    U = X + V
    close = dict(rel=1e-4, abs=1e-5)  # the script's tree is float32 (eps 1.2e-7); its solved knobs are bisected

    def same(row, ref):
        assert (row["E_U"], row["E_V"], row["KL"]) == (pytest.approx(ref[0], **close), pytest.approx(ref[1], **close),
                                                       pytest.approx(ref[2], **close)), (row, ref)

    for beta in (1.0, 2.0):  # the baseline: beta = 1 / D
        same(by["tree", "kl_penalty", beta], _leaf_tilt(U, V, U / beta))
    for d in (0.5, 1.0):
        lam = optimize.brentq(lambda lam: _leaf_tilt(U, V, lam * U)[2] - d, 1e-9, 50.0, xtol=1e-14)
        r = by["tree", "kl_target", d]
        same(r, _leaf_tilt(U, V, lam * U))
        assert r["param"] == pytest.approx(1 / lam, rel=1e-4), r  # beta = 1 / lam
        r = by["tree", "quantilizer", d]  # q solved so that KL = D (the largest KL <= D)
        q = optimize.brentq(lambda q: _tree_quantilizer(U, V, 3, q)[2] - d, 1 / 3 + 1e-12, 1.0, xtol=1e-14)
        same(r, _tree_quantilizer(U, V, 3, q))
        assert r["param"] == pytest.approx(q, rel=1e-4) and r["KL"] <= d, r
    # max E[sigmoid(U)] - KL: the tilt by sigmoid(U), the proxy of the row's E_U
    same(by["tree", "bounded", 1.0], _leaf_tilt(special.expit(U), V, special.expit(U) / 1.0))
    # max sigmoid(E[U]) - KL: the tilt e^{lam U} with lam = sigmoid'(E_lam[U]), the global maximum on a fine grid
    obj = lambda lam: special.expit(_leaf_tilt(U, V, lam * U)[0]) - _leaf_tilt(U, V, lam * U)[2]  # noqa: E731
    grid = np.linspace(1e-6, 0.25, 2001)  # lam <= sigmoid' <= 1/4
    best = grid[np.argmax([obj(g) for g in grid])]
    lam = optimize.brentq(lambda lam: lam - (lambda m: special.expit(m) * special.expit(-m))(
        _leaf_tilt(U, V, lam * U)[0]), best - 1.25e-4, best + 1.25e-4, xtol=1e-14)
    r = by["tree", "bounded_mean", 1.0]
    same(r, _leaf_tilt(U, V, lam * U))
    assert r["lam"] == pytest.approx(lam, rel=1e-4), r
    # The continuous model, X, V ~ N(0, 1): U ~ N(0, 2), E[V | U] = U / 2; float64 in the script.
    for d in (0.5, 1.0):
        r = by["continuous", "kl_target", d]  # the tilt e^{lam U} has KL = lam^2, E_U = 2 lam, E_V = lam
        assert (r["KL"], r["E_V"], r["E_U"], r["param"]) == pytest.approx((d, d**0.5, 2 * d**0.5, d**-0.5), rel=1e-6)
        r = by["continuous", "quantilizer", d]  # U >= t_q with P = q = e^-D: E_V = phi(z) / (sqrt(2) q), z = t_q/sqrt 2
        z = stats.norm.isf(math.exp(-d))
        assert r["t_q"] == pytest.approx(2**0.5 * z, rel=1e-4, abs=1e-6) and r["KL"] == pytest.approx(d, rel=1e-3)
        assert r["E_V"] == pytest.approx(stats.norm.pdf(z) / (2**0.5 * math.exp(-d)), abs=1e-4), r
    dsig = lambda m: special.expit(m) * special.expit(-m)  # noqa: E731
    lam = optimize.brentq(lambda x: 1.0 * x - dsig(2 * x), 1e-9, 5.0, xtol=1e-14)  # sigmoid(E[U]) - KL at beta 1
    r = by["continuous", "bounded_mean", 1.0]
    assert (r["lam"], r["E_V"], r["KL"], r["E_U"]) == pytest.approx((lam, lam, lam**2, 2 * lam), rel=1e-6), r
    w = lambda u, f: f(u) * stats.norm.pdf(u, scale=2**0.5) * math.exp(special.expit(u) / 1.0)  # noqa: E731
    ev = 0.5 * integrate.quad(w, -40, 40, args=(lambda u: u,))[0] / integrate.quad(w, -40, 40, args=(lambda u: 1,))[0]
    r = by["continuous", "bounded", 1.0]  # self-normalised Monte Carlo of P ∝ Q e^{sigmoid(U)}: 5 standard errors
    assert abs(r["E_V"] - ev) < 5 * r["E_V_se"], (r, ev)


@pytest.mark.parametrize("script,args,needle", [
    ("sweep_threshold.py", ["--t", "inf"], "finite"),
    ("sweep_threshold.py", ["--error", "cauchyish"], "unknown family"),
    ("best_of_n.py", ["--n", "0"], "n must be"),
    ("best_of_n.py", ["--error", "normal"], "--utility"),
    ("tail_upweight.py", ["--t", "nan"], "finite"),
    ("theorem3.py", ["--d", "-1"], "> 0"),
    ("mitigations.py", ["--error", "nope"], "unknown family"),
])
def test_bad_input_exits_2(tmp_path, script, args, needle, capsys):
    """In process, through the scripts' runner (`cli.run`, what `cli.main` exits with): a Python and JAX
    start costs ~1.7 s of CPU a case; test_bad_input_exits_2_as_a_process runs one case as a real process."""
    mod = load_script(script[:-3])
    rc = cli.run(mod.Config, mod.main, [*args, "--out", str(tmp_path)], prog=script)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert needle in err and err.strip().count("\n") == 0 and err.startswith(f"{script}: error: ")  # one line


def test_bad_input_exits_2_as_a_process(tmp_path):
    """The same as a process: `python sims/mitigations.py --error nope` exits with status 2 and one line."""
    p = _run("mitigations.py", "--error", "nope", "--out", str(tmp_path))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "unknown family" in p.stderr and p.stderr.strip().count("\n") == 0  # one clear line


def test_theorem3_json_and_files(tmp_path):
    p = _run("theorem3.py", "--utility", "normal", "student_t:df=3", "--d", "0.1", "2", "--t", "2", "100",
             "--out", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]  # stdout holds JSON lines only
    assert [r["kind"] for r in rows] == ["kl_bounded", "upweight_at_kl", "upweight_at_kl"] * 4
    for r in (r for r in rows if r["kind"] == "kl_bounded"):
        assert {"utility", "heavy", "d", "E_Q_V", "exists", "E_V", "KL", "lam", "E_V_upweight_best"} <= set(r)
        if r["utility"] == "normal":  # the tilt of N(0, 1) with KL = d has mean sqrt(2 d) = lam
            assert r["exists"] and abs(r["E_V"] - (2 * r["d"]) ** 0.5) < 1e-9 and abs(r["KL"] - r["d"]) < 1e-9
        else:
            assert r["heavy"] and not r["exists"] and r["E_V"] is None
    for r in (r for r in rows if r["kind"] == "upweight_at_kl"):
        assert {"utility", "d", "t", "E_V", "KL", "tail_mass", "valid"} <= set(r)
        assert r["valid"] and abs(r["KL"] - r["d"]) < 1e-9
    for f in ("config.json", "results.jsonl", "results.csv", "theorem3.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_mitigations_json_and_files(tmp_path):
    from scipy import integrate, optimize, stats

    p = _run("mitigations.py", "--error", "normal", "--kl", "0.5", "2", "--bounded-betas", "0.2", "--vocab", "3",
             "--depth", "2", "--mc-samples", "20000", "--out", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]  # stdout holds JSON lines only
    by = {(r["model"], r["method"], r["budget"]): r for r in rows}
    assert {m for m, _, _ in by} == {"tree", "continuous"}
    for r in rows:
        assert r["kind"] == "mitigation" and r["exists"] and r["error"] == "normal" and r["utility"] == "normal"
        assert {"budget", "KL", "E_V", "E_U"} <= set(r) and ("t_q" if r["method"] == "quantilizer"
                                                           and r["model"] == "continuous" else "param") in r
    # X, V ~ N(0, 1): U ~ N(0, 2) and E[V | U] = U / 2.
    for d in (0.5, 2.0):
        assert abs(by["continuous", "kl_target", d]["E_V"] - d ** 0.5) < 1e-3  # tilt: KL = 1/beta^2, E_V = 1/beta
        assert abs(by["tree", "kl_target", d]["KL"] - d) < 1e-2 * (1 + d)
        z = stats.norm.isf(math.exp(-d))  # quantilizer: E[V | U >= t_q] = phi(z) / (sqrt(2) q), z = t_q / sqrt 2
        assert abs(by["continuous", "quantilizer", d]["E_V"] - stats.norm.pdf(z) / (2 ** 0.5 * math.exp(-d))) < 1e-4
    w = lambda u, f: f(u) * stats.norm.pdf(u, scale=2 ** 0.5) * math.exp(1 / (1 + math.exp(-u)) / 0.2)  # noqa: E731
    ev = 0.5 * integrate.quad(w, -40, 40, args=(lambda u: u,))[0] / integrate.quad(w, -40, 40, args=(lambda u: 1,))[0]
    b = by["continuous", "bounded", 0.2]
    assert abs(b["E_V"] - ev) < 5 * b["E_V_se"]
    # Section 6.1's sigmoid(E[U]) - beta KL: the tilt e^{lam U} with lam = sigmoid'(E[U]) / beta, E[U] = 2 lam,
    # KL = lam^2 and E[V] = lam.
    dsig = lambda m: 1 / (2 + math.exp(m) + math.exp(-m))  # noqa: E731  sigmoid'(m)
    lam = optimize.brentq(lambda x: 0.2 * x - dsig(2 * x), 1e-9, 5.0, xtol=1e-14)
    for model, tol in (("continuous", 1e-6), ("tree", None)):
        r = by[model, "bounded_mean", 0.2]
        assert r["exists"] and r["param"] == 0.2 and "lam" in r
        if tol:
            assert abs(r["lam"] - lam) < tol and abs(r["E_V"] - lam) < tol and abs(r["KL"] - lam**2) < tol
        else:  # on the tree: the same stationarity condition holds at its own E_U
            assert abs(0.2 * r["lam"] - dsig(r["E_U"])) < 1e-4
    for f in ("config.json", "results.jsonl", "results.csv", "mitigations.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_best_of_n_monte_carlo_of_infinite_moments_is_null_with_a_reason(tmp_path):
    """A sample mean of a quantity with no finite mean, or a standard error where the variance is infinite, is
    null with the reason (Cauchy error printed E_U_mc = 4673379.5 +- 1014755.5); with no E[V] the Gao fit is
    null too, and the figure still draws (an infinite-variance E_V_mc without an error bar)."""
    mod = load_script("best_of_n")
    out = tmp_path / "r"
    assert cli.run(mod.Config, mod.main, ["--error", "student_t:df=1", "normal", "--utility", "student_t:df=1",
                                          "student_t:df=2", "--n", "1", "2", "4", "8", "16", "--trials", "4",
                                          "--no-exact", "--out", str(out)], prog="best_of_n.py") == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mc = ("E_U_mc", "E_U_mc_se", "E_V_mc", "E_V_mc_se")
    null = {(r["utility"], r["error"]): {k for k in mc if r[k] is None} for r in rows if r["kind"] == "bon"}
    assert null == {("student_t:df=1", "student_t:df=1"): set(mc), ("student_t:df=1", "normal"): set(mc),
                    ("student_t:df=2", "student_t:df=1"): {"E_U_mc", "E_U_mc_se", "E_V_mc_se"},
                    ("student_t:df=2", "normal"): {"E_U_mc_se", "E_V_mc_se"}}
    for r in (r for r in rows if r["kind"] == "bon"):
        assert all(k in r["reason"] for k in null[r["utility"], r["error"]]), r
    fits = {(r["utility"], r["error"]): r for r in rows if r["kind"] == "gao_fit"}
    no_v, fine = fits["student_t:df=1", "normal"], fits["student_t:df=2", "normal"]
    assert no_v["alpha"] is None and "no finite mean" in no_v["reason"]
    assert fine["source"] == "mc" and math.isfinite(fine["alpha"])
    assert (out / "best_of_n.png").stat().st_size > 0


def test_best_of_n_gao_fit_needs_four_distinct_d(tmp_path):
    """Gao's form has 2 parameters: fitted to n = 1, 4, 16 (2 distinct d > 0) it passed through its points (rmse
    1e-9) and printed alpha and beta as if measured; such a fit is null with a reason, as the lab's are."""
    mod = load_script("best_of_n")
    out = tmp_path / "r"
    assert cli.run(mod.Config, mod.main, ["--error", "normal", "--utility", "normal", "--n", "1", "4", "16",
                                          "--trials", "4", "--no-exact", "--no-plots", "--out", str(out)],
                   prog="best_of_n.py") == 0
    (fit,) = [r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r["kind"] == "gao_fit"]
    assert fit["alpha"] is None and fit["beta"] is None and fit["rmse"] is None
    assert "2 distinct d > 0 among 3 points" in fit["reason"] and ">= 4" in fit["reason"]


def test_tail_upweight_with_no_p_t_anywhere_still_draws(tmp_path):
    """--exponent 1e6: the tail mass 10^-1e6 underflows at every t, so no P_t exists; the row is null with its
    reason (tail_mass too: it printed 0.0), and the figures draw (the KL panel's log scale of no data ended in
    matplotlib's "Data cannot be log-scaled" traceback)."""
    mod = load_script("tail_upweight")
    out = tmp_path / "r"
    assert cli.run(mod.Config, mod.main, ["--base", "student_t:df=3", "--exponent", "1e6", "--t", "10", "--frames",
                                          "3", "--out", str(out)], prog="tail_upweight.py") == 0
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert not row["exists"] and row["mean"] is None and row["KL"] is None and row["tail_mass"] is None
    assert "below float64's smallest number" in row["reason"]
    for f in ("upweight_curves.png", "figure3_stills.png", "figure3.gif"):
        assert (out / f).stat().st_size > 0
