"""sims/overoptimization.py: a tiny lab run (A=4, L=3; slow: compiling every method is its cost): row kinds and
fields, exact KL against mdp, no method's objective above the exact optimum's at the same beta; bad input exits 2
in one line; the default sizes (A=16, L=5) pass the enumeration check."""
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import cli, mdp
from goodhart_jax.lab import experiment

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("overoptimization", ROOT / "sims" / "overoptimization.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["overoptimization"] = mod
    spec.loader.exec_module(mod)
    return mod


sim = _load()
BETAS = (0.3, 1.0, 3.0)  # the exact grid holds the RL beta
TINY = dict(vocab=4, depth=3, noise=("normal",), pairs=(300,), betas=BETAS, ns=(1, 2, 8, 64), rl_betas=(1.0,),
            rl_steps=10, eval_every=5, lm_steps=30, bt_steps=30, plots=False, seed=3)


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """At these sizes compiling, not running, is the cost (~100 s of CPU with XLA's optimisations, most of it
    for RL's scan, GCG and the fits); without them the module runs in a fraction of that."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = sim.Config(out=str(tmp_path_factory.mktemp("lab")), **TINY)
    return cfg, sim.main(cfg)


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_rows_and_fields(tiny):
    cfg, rows = tiny
    assert {r["kind"] for r in rows} == {"lab", "proxy", "fit"}
    lab = [r for r in rows if r["kind"] == "lab"]
    assert {(r["proxy"], r["method"]) for r in lab} == {(p, m) for p in ("learned", "direct")
                                                         for m in ("bon", "exact", "rl")} | {("learned", "search")}
    for r in lab:
        assert set(experiment.FIELDS) | {"noise", "proxy", "pairs"} <= set(r)
        assert r["pairs"] == (300 if r["proxy"] == "learned" else None)
        assert r["d"] == pytest.approx(np.sqrt(r["KL"]))
        assert (r["n"] is None) == (r["method"] != "bon") and (r["KL_bound"] is None) == (r["method"] != "bon")
        assert (r["beta"] is None) == (r["method"] in ("bon", "search"))
        assert (r["step"] is None) == (r["method"] != "rl")
        if r["method"] == "bon":
            assert r["KL"] <= r["KL_bound"] + 1e-5
    assert sorted(r["step"] for r in lab if r["method"] == "rl" and r["proxy"] == "direct") == [0, 5, 10]
    proxies = [r for r in rows if r["kind"] == "proxy"]
    assert len(proxies) == 2 and all(0.5 < r["pair_accuracy"] <= 1 and -1 <= r["corr"] <= 1 for r in proxies)
    assert all(r["xi"] is None and r["verdict"].startswith("n/a") for r in proxies)  # N = 40 < 100: no tail fit
    fit = {(r["proxy"], r["method"]) for r in rows if r["kind"] == "fit"}
    assert fit == {(p, m) for p in ("learned", "direct") for m in ("bon", "rl")}
    assert (Path(cfg.out) / "results.jsonl").is_file() and (Path(cfg.out) / "results.csv").is_file()


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_exact_rows_against_mdp(tiny):
    """KL, gold and proxy of the exact rows = mdp.soft_optimum on the same (rebuilt, same-key) tree."""
    cfg, rows = tiny
    key = jax.random.key(cfg.seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps)
    built = experiment.build_proxy(jax.random.fold_in(jax.random.fold_in(key, 1), 0), base, "normal",
                                   cfg.noise_scale, "direct", None)
    for r in (r for r in rows if r["kind"] == "lab" and r["method"] == "exact" and r["proxy"] == "direct"):
        res = mdp.soft_optimum(built.tree, jnp.float32(r["beta"]))
        np.testing.assert_allclose([r["KL"], r["gold"], r["proxy_reward"]],
                                   [float(res.KL), float(res.E_V), float(res.E_U)], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_no_method_beats_the_exact_optimum(tiny):
    """At every beta of the grid: E[proxy] - beta KL of every bon, rl and search point <= the exact optimum's."""
    _, rows = tiny
    lab = [r for r in rows if r["kind"] == "lab"]
    for proxy in ("learned", "direct"):
        best = {r["beta"]: r["objective"] for r in lab if r["proxy"] == proxy and r["method"] == "exact"}
        others = [r for r in lab if r["proxy"] == proxy and r["method"] != "exact"]
        for beta, opt in best.items():
            for r in others:
                if r["method"] == "rl" and r["beta"] != beta:
                    continue
                assert r["proxy_reward"] - beta * r["KL"] <= opt + 1e-4 * max(1.0, abs(opt)), (proxy, beta, r)
        for r in (r for r in others if r["method"] == "rl"):
            assert r["gap"] >= -1e-4 and r["objective"] == pytest.approx(best[r["beta"]] - r["gap"], abs=1e-3)


def test_defaults_are_the_issue_sizes():
    cfg = sim.Config()
    assert (cfg.vocab, cfg.depth) == (16, 5) and experiment.check_size(cfg.vocab, cfg.depth) == 813_616
    assert cfg.rl_steps % cfg.eval_every == 0


@pytest.mark.parametrize("argv, message", [
    (["--noise", "nosuch"], "nosuch"),
    (["--vocab", "64", "--depth", "6"], "terminal sequences"),
    (["--ns", "0"], "n must be"),
    (["--betas", "0"], "beta"),
    (["--rl-betas", "-1"], "--rl-betas"),
    (["--rl-steps", "10", "--eval-every", "3"], "divide"),
    (["--policy", "/nonexistent"], "--tokens"),
])
def test_bad_input_exits_2(argv, message, tmp_path, capsys):
    assert cli.run(sim.Config, sim.main, argv + ["--out", str(tmp_path / "o")], prog="overoptimization") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
