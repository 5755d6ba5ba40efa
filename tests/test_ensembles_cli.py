"""sims/ensembles.py: bad input is one line and exit 2 with nothing written; a tiny run (A=3, L=2, 2 seeds, XLA's
optimisations off: compiling is its cost) with --json prints strict JSON rows: every proxy label and method, null
numbers with a reason, RL never above the exact optimum of its objective, paired differences equal to the headlines' differences, summary means over the seeds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from goodhart_jax import cli

from scripts import load_script, unoptimised_compiles  # tests/scripts.py

sim = load_script("ensembles")
TINY = ["--vocab", "3", "--depth", "2", "--noise", "student_t:df=2", "--losses", "bt", "--members", "2",
        "--labels", "100", "--bt-steps", "10", "--lm-steps", "10", "--betas", "0.5", "2", "--ns", "1", "4",
        "--seeds", "2", "--seed", "5", "--no-plots", "--rl-betas", "1", "--rl-steps", "10", "--eval-every", "5"]


@pytest.mark.parametrize("argv,says", [
    (["--members", "0"], "--members"),
    (["--uwo-lambda", "-1"], "--uwo-lambda"),
    (["--losses", "hinge"], "--losses"),
    (["--rl-betas", "0"], "--rl-betas"),
    (["--rl-steps", "10", "--eval-every", "3"], "--eval-every"),
    (["--noise", "bogus"], "bogus"),
    (["--noise-scale", "1e308"], "|eps| = inf"),
    (["--vocab", "3", "--depth", "1000000000"], "terminal sequences"),
])
def test_bad_input_exits_2(argv, says, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.run(sim.Config, sim.main, argv + ["--out", str(out)], prog="ensembles.py")
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("ensembles.py: error: ") and says in lines[0], lines
    assert not out.exists()


def _strict(line: str):
    def bad(c):
        raise ValueError(f"not JSON: {c}")
    return json.loads(line, parse_constant=bad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with unoptimised_compiles(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.run(sim.Config, sim.main, TINY + ["--json", "--out", str(out)], prog="ensembles.py")
    assert rc == 0
    return [_strict(line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.mark.slow  # the tiny run: ~150 s wall on the loaded 2-core box (nearly all compilation)
def test_tiny_run_rows(tiny):
    kinds = {r["kind"] for r in tiny}
    assert kinds == {"base", "proxy", "lab", "headline", "summary"}
    labels = {"bt:single", "bt:mean", "bt:wco", "bt:uwo(lambda=1)"}
    lab = [r for r in tiny if r["kind"] == "lab"]
    assert {r["proxy"] for r in lab} == labels and {r["seed"] for r in lab} == {5, 6}
    assert {r["method"] for r in lab} == {"exact", "bon", "rl"}
    for r in (r for r in lab if r["method"] == "rl"):  # RL on every objective: never above its exact optimum
        assert r["objective"] <= r["optimum"] + 1e-4 * (1 + abs(r["optimum"])) and r["step"] in (0, 5, 10)
    for r in tiny:
        for k, v in r.items():
            if v is None and k in ("KL", "gold", "value", "mean", "corr"):
                assert r.get("reason"), r
    for r in lab:
        if r["method"] == "bon":
            assert r["KL"] <= r["KL_bound"] + 1e-5
    heads = [r for r in tiny if r["kind"] == "headline"]
    for d in (r for r in heads if r["quantity"].endswith("_minus") and r["value"] is not None):
        key = lambda r: (r["seed"], r["method"], r["beta"], r["quantity"].removesuffix("_minus"), r["at"])  # noqa: E731
        mine = next(r for r in heads if r["proxy"] == d["proxy"] and key(r) == key(d))
        ref = next(r for r in heads if r["proxy"] == "bt:single" and key(r) == key(d))
        assert d["value"] == pytest.approx(mine["value"] - ref["value"])
    assert any(r["quantity"] == "peak_gold_minus" for r in heads)
    for s in (r for r in tiny if r["kind"] == "summary" and r["mean"] is not None and r["proxy"] is not None):
        vals = [r["value"] for r in heads if r["value"] is not None and all(
            r[k] == s[k] for k in ("noise", "proxy", "pairs", "method", "beta", "quantity", "at"))]
        assert s["mean"] == pytest.approx(np.mean(vals)) and s["seeds"] == len(vals)
        assert (s["lo"] is None) == (len(vals) < 2) and (s["lo"] is None or s["lo"] <= s["mean"] <= s["hi"])
    assert all(math.isfinite(r["corr"]) for r in tiny if r["kind"] == "proxy")
