"""sims/rm_scaling.py: a tiny scaling run (A=4, L=3): rows and fields; each proxy's exact curves against an mdp
re-computation; summaries and trends recomputed from the per-seed rows with SciPy; bad input exits 2."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from goodhart_jax.lab import rewards

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("rm_scaling", ROOT / "sims" / "rm_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rm_scaling"] = mod
    spec.loader.exec_module(mod)
    return mod


sim = _load()
TINY = dict(vocab=4, depth=3, sizes=("1x8x2", "1x16x2", "2x16x2"), pairs=(40, 160), betas=(0.1, 0.3, 1.0, 3.0, 10.0),
            ns=(1, 2, 4, 8, 16), bt_steps=20, lm_steps=20, plots=False, seed=5, seeds=3, rl_betas=(1.0,), rl_steps=20,
            eval_every=5)


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """Compiling, not running, is the cost at this size."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
    jax.clear_caches()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = sim.Config(out=str(tmp_path_factory.mktemp("scaling")), **TINY)
    return cfg, sim.main(cfg)


def test_rows(tiny):
    cfg, rows = tiny
    assert {r["kind"] for r in rows} == {"base", "proxy", "lab", "fit", "peak", "summary", "trend"}
    proxies = [r for r in rows if r["kind"] == "proxy"]
    assert len(proxies) == 3 * 2 * 3  # sizes x pairs x seeds
    assert sorted({r["params"] for r in proxies}) == sorted(
        sim.scaling.num_params(sim.scaling.size_config(4, 3, *sim.parse_size(s))) for s in cfg.sizes)
    marks = rewards.checkpoints(cfg.bt_steps, cfg.val_every)
    for r in proxies:
        assert 0.0 <= r["pair_accuracy_unseen"] <= 1.0 and -1.0 <= r["corr"] <= 1.0
        # early stopping (the default): a checkpoint's step, ceil(val_frac P) validation pairs
        assert r["stop"] == "val" and r["stop_step"] in marks and r["val_pairs"] == math.ceil(cfg.val_frac * r["pairs"])
        assert r["val_loss"] <= r["val_loss_last"]
    fits = [r for r in rows if r["kind"] == "fit"]
    assert {(f["method"], f["form"]) for f in fits} == {("bon", "bon"), ("exact", "rl"), ("rl", "rl")}
    assert all(f["rl_beta"] == 1.0 for f in fits if f["method"] == "rl")
    # RL against each proxy: evaluated at steps 0, 5, .., 20, never above the exact optimum of its objective
    rl = [r for r in rows if r["kind"] == "lab" and r["method"] == "rl"]
    assert len(rl) == 3 * 2 * 3 * 5 and all(r["beta"] == 1.0 for r in rl)
    assert all(r["objective"] <= r["optimum"] + 1e-5 * (1 + abs(r["optimum"])) for r in rl)
    # each fit is the least-squares line through its own curve's (d, gold) with Gao's features
    for f in fits[:9]:
        pts = [r for r in rows if r["kind"] == "lab" and r["method"] == f["method"] and
               all(r[k] == f[k] for k in ("seed", "size", "pairs"))]
        d = np.asarray([p["d"] for p in pts])
        g = np.asarray([p["gold"] for p in pts])
        f2 = d * d if f["form"] == "bon" else np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        coef = np.linalg.lstsq(np.stack([d, -f2], 1), g, rcond=None)[0]
        np.testing.assert_allclose([f["alpha"], f["beta"]], coef, rtol=2e-3, atol=2e-4)
    # peaks: the largest gold of the curve; KL null exactly when it is the curve's end (best-of-n's and pi*'s
    # largest KL, an RL run's last step: its KL need not rise with the step)
    for pk in [r for r in rows if r["kind"] == "peak"][:9]:
        pts = sorted((r for r in rows if r["kind"] == "lab" and r["method"] == pk["method"] and
                      all(r[k] == pk[k] for k in ("seed", "size", "pairs"))),
                     key=lambda r: r["step"] if r["method"] == "rl" else r["KL"])
        i = int(np.argmax([p["gold"] for p in pts]))
        assert pk["gold"] == pts[i]["gold"]
        assert (pk["KL"] is None) == (i == len(pts) - 1) and (pk["KL"] is None or pk["KL"] == pts[i]["KL"])


def test_summary_and_trends_recomputed(tiny):
    cfg, rows = tiny
    fits = {(r["seed"], r["size"], r["pairs"], r["method"]): r for r in rows if r["kind"] == "fit"}
    proxies = {(r["seed"], r["size"], r["pairs"]): r for r in rows if r["kind"] == "proxy"}
    seeds = sorted({k[0] for k in proxies})
    summ = {(r["size"], r["pairs"], r["quantity"]): r for r in rows if r["kind"] == "summary"}
    for size in cfg.sizes:
        for p in cfg.pairs:
            v = np.asarray([fits[(s, size, p, "bon")]["alpha"] for s in seeds])
            r = summ[(size, p, "alpha_bon")]
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
            np.testing.assert_allclose([r["mean"], r["lo"], r["hi"]], [v.mean(), v.mean() - half, v.mean() + half],
                                       rtol=1e-9, atol=1e-12)
            acc = [proxies[(s, size, p)]["pair_accuracy_unseen"] for s in seeds]
            np.testing.assert_allclose(summ[(size, p, "pair_accuracy_unseen")]["mean"], np.mean(acc), rtol=1e-12)
            kept = [proxies[(s, size, p)]["stop_step"] for s in seeds]
            np.testing.assert_allclose(summ[(size, p, "stop_step")]["mean"], np.mean(kept), rtol=1e-12)
    trend = {(r["against"], r["at"], r["quantity"]): r for r in rows if r["kind"] == "trend"}
    for p in cfg.pairs:
        slopes = []
        for s in seeds:
            x = [math.log10(proxies[(s, size, p)]["params"]) for size in cfg.sizes]
            y = [fits[(s, size, p, "exact")]["beta"] for size in cfg.sizes]
            slopes.append(stats.linregress(x, y).slope)
        r = trend[("params", p, "beta_exact")]
        np.testing.assert_allclose(r["per_seed"], slopes, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r["mean"], np.mean(slopes), rtol=1e-9, atol=1e-12)
    for size in cfg.sizes:  # RL's quantities, named by its beta, summarised like the others
        for p in cfg.pairs:
            v = [fits[(s, size, p, "rl")]["alpha"] for s in seeds]
            r = summ[(size, p, "alpha_rl_b1")]
            assert r["seeds"] == sum(x is not None for x in v)
            if r["mean"] is not None:
                np.testing.assert_allclose(r["mean"], np.mean([x for x in v if x is not None]), rtol=1e-9)
    assert json.loads(json.dumps(rows, allow_nan=False))  # strict JSON


@pytest.mark.parametrize("argv, needle", [
    (["--sizes", "1x7x2"], "--sizes"),
    (["--sizes", "big"], "--sizes"),
    (["--pairs", "0"], "--pairs"),
    (["--pairs", "500", "500"], "--pairs"),
    (["--sizes", "1x8x2", "1x8x2"], "--sizes"),
    (["--noise", "nope"], "--noise"),
    (["--betas", "-1"], "beta"),
    (["--stop", "never"], "--stop"),
    (["--val-frac", "0"], "--val-frac"),
    (["--val-every", "0"], "--val-every"),
    (["--pretrain", "-1"], "--pretrain"),
    (["--lr", "0"], "--lr"),
])
def test_bad_input_exits_2(argv, needle, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "sims" / "rm_scaling.py"), "--out", str(tmp_path / "o"), *argv],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rm_scaling.py: error:") and needle in lines[0], p.stderr
    assert not (tmp_path / "o").exists()
