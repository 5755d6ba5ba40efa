"""The main job, sims/sweep_beta.py: files, JSON lines, bad input."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from goodhart_jax import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sims" / "sweep_beta.py"
spec = importlib.util.spec_from_file_location("sweep_beta", SCRIPT)
sweep_beta = sys.modules["sweep_beta"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep_beta)

SMALL = dict(error=("normal", "student_t:df=3"), betas=(0.3, 1.0, 3.0), vocab=4, depth=3, seeds=2,
             thm2_t=(2.0, 4.0))


def test_small_run_writes_everything(tmp_path):
    cfg = sweep_beta.Config(**SMALL, out=str(tmp_path))
    rows = sweep_beta.main(cfg)
    for name in ("results.csv", "results.jsonl", "config.json", "ev_vs_kl.png", "eu_vs_beta.png", "thm2_vs_t.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    lines = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows) == 2 * 3 + 2 * (2 * 3 + 2 * 2)
    kinds = {r["kind"] for r in lines}
    assert kinds == {"tilt", "tree", "thm2"}
    tilt_t = [r for r in lines if r["kind"] == "tilt" and r["error"] == "student_t:df=3"]
    assert all(r["exists"] is False and r["E_V"] is None and "heavy-tailed" in r["reason"] for r in tilt_t)
    tilt_n = [r for r in lines if r["kind"] == "tilt" and r["error"] == "normal"]
    # Centred unit normals: E[V] = 1/beta exactly (float32 quadrature).
    np.testing.assert_allclose([r["E_V"] for r in tilt_n], [1 / 0.3, 1.0, 1 / 3.0], rtol=1e-4)
    tree = [r for r in lines if r["kind"] == "tree"]
    assert {r["seed"] for r in tree} == {0, 1}
    assert all(set(r) >= {"beta", "E_U", "E_V", "KL", "KL_per_state"} for r in tree)
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    assert cfg_json["error"] == ["normal", "student_t:df=3"] and cfg_json["center"] is True


def test_same_config_same_numbers(tmp_path):
    a = sweep_beta.main(sweep_beta.Config(**SMALL, out=str(tmp_path / "a"), plots=False))
    b = sweep_beta.main(sweep_beta.Config(**SMALL, out=str(tmp_path / "b"), plots=False))
    assert a == b


def test_cli_json_stdout_is_only_json(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--error", "laplace", "--utility", "normal", "--betas", "0.5", "2",
           "--vocab", "3", "--depth", "2", "--seeds", "1", "--thm2-t", "3", "--out", str(tmp_path), "--json",
           "--no-plots"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    assert len(rows) == 2 + 2 + 1
    assert rows[0]["kind"] == "tilt" and rows[0]["exists"] is False  # laplace: only beta > 1
    assert "only beta > 1 works" in rows[0]["reason"]
    assert rows[1]["exists"] is True and rows[1]["error"] == "laplace"
    assert "centred to mean 0" in out.stderr


@pytest.mark.parametrize("args,msg", [
    (["--error", "cauchy"], "unknown family 'cauchy'"),
    (["--betas", "1", "0"], "beta must be finite and > 0"),
    (["--betas", "-2"], "beta must be finite and > 0"),
    (["--vocab", "1"], "vocab must be an integer >= 2"),
    (["--depth", "0"], "depth must be an integer >= 1"),
    (["--error", "student_t:nu=2"], "unknown parameter 'nu'"),
    (["--error", "pareto:alpha=0.5"], "cannot centre"),
    # float32 cannot carry these (issue 12): refused with the limit, not printed as null rows or wrong numbers
    (["--betas", "1e300"], "beta=1e+300 is outside [1e-30, 1e+30]"),
    (["--pi0", "random", "--temperature", "1e-30"], "--temperature 1e-30 is below 1e-06"),
    (["--error", "normal:scale=1e30"], "|scale|=1e+30 is outside [1e-10, 1000]"),
    (["--error", "normal:scale=1e-300"], "|scale|=1e-300 is outside [1e-10, 1000]"),
])
def test_bad_input_one_line_exit_2(args, msg, tmp_path, capsys):
    """In process, through the script's runner (`cli.run`, what `cli.main` exits with): a Python and JAX start
    costs ~1.7 s of CPU a case; test_bad_input_exits_2_as_a_process runs one case as a real process."""
    rc = cli.run(sweep_beta.Config, sweep_beta.main, [*args, "--out", str(tmp_path)], prog="sweep_beta.py")
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep_beta.py: error: ") and msg in lines[0], err


def test_bad_input_exits_2_as_a_process(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--error", "cauchy", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown family 'cauchy'" in lines[0], out.stderr


def test_rows_with_null_numbers_say_why(tmp_path):
    """lognormal:scale=1000 overflows float32 draws (exp(1000 N)); t=1e6 is above every U: no Theorem 2 policy."""
    cfg = sweep_beta.Config(error=("lognormal:scale=1000", "normal"), betas=(1.0,), center=False, vocab=3, depth=2,
                            seeds=1, thm2_t=(1e6,), out=str(tmp_path), plots=False)
    rows = sweep_beta.main(cfg)
    nulls = [r for r in rows if any(r.get(f) is None for f in ("E_U", "E_V", "KL"))]
    assert {r["kind"] for r in nulls} == {"tilt", "tree", "thm2"}
    assert all(r.get("reason") for r in nulls), [r for r in nulls if not r.get("reason")]
    tree = [r for r in nulls if r["kind"] == "tree"]
    assert tree and "not finite in float32" in tree[0]["reason"]


def test_figures_from_typed_results():
    """The figures take `frontier.FamilySweep`s: per beta (in beta order, whatever the given order) the mean and sd
    over the seeds whose numbers are all finite; a tilt or Theorem 2 point that does not exist is not drawn."""
    from goodhart_jax import frontier, mdp, tilting
    from goodhart_jax.plots import sweep_beta as plots

    betas, ts = np.array([3.0, 0.3, 1.0]), np.array([2.0, 4.0])
    kl = np.array([[1.0, 4.0, 2.0], [3.0, 6.0, np.inf]])  # seed 1's beta = 1 overflowed: not drawn
    ev = np.array([[0.1, 0.4, 0.2], [0.3, 0.6, 9.0]])
    tree = mdp.TreeResult(ev + 1, ev, kl, kl / 3)
    inf3 = np.full(3, np.inf)
    tilt = tilting.TiltResult(np.array([True, False, True]), np.array([1.0, np.inf, 2.0]), np.array([0.5, np.inf, 0.7]),
                              inf3, np.array([0.2, np.inf, 0.4]), inf3)
    thm2 = mdp.TreeResult(*[np.array([[1.0, 2.0], [3.0, 4.0]])] * 4)
    fam = frontier.FamilySweep("normal", False, betas, tilt, tree, ts, thm2, np.array([[True, False], [True, True]]))
    figs = plots.figures([fam], "normal")
    assert set(figs) == {"ev_vs_kl.png", "eu_vs_beta.png", "thm2_vs_t.png"}
    (line,) = figs["ev_vs_kl.png"].axes[0].lines  # beta order 0.3, 1, 3
    np.testing.assert_allclose(line.get_xdata(), [5.0, 2.0, 2.0])
    np.testing.assert_allclose(line.get_ydata(), [0.5, 0.2, 0.2])
    (tilt_line,) = figs["ev_vs_kl.png"].axes[1].lines  # the tilt exists at beta = 3 and 1 only; in KL order
    np.testing.assert_allclose(tilt_line.get_xdata(), [0.2, 0.4])
    np.testing.assert_allclose(tilt_line.get_ydata(), [0.5, 0.7])
    eu, kl_t = (ax.lines[0] for ax in figs["thm2_vs_t.png"].axes)
    np.testing.assert_allclose(eu.get_xdata(), ts)
    np.testing.assert_allclose(eu.get_ydata(), [2.0, 4.0])  # t = 4: seed 0's construction is undefined
