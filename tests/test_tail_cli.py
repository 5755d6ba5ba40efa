"""sims/reward_tails.py: bad input exits 2 with one line; a small run writes its files and JSON rows."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from goodhart_jax import cli

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reward_tails", ROOT / "sims" / "reward_tails.py")
reward_tails = importlib.util.module_from_spec(spec)
sys.modules.setdefault("reward_tails", reward_tails)
spec.loader.exec_module(reward_tails)


def _run(argv, capsys):
    rc = cli.run(reward_tails.Config, reward_tails.main, argv, prog="reward_tails.py")
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}

    def save(name, arr):
        p = tmp_path / name
        np.save(p, arr)
        paths[name] = str(p)

    save("few.npy", rng.standard_normal(40))
    save("nan.npy", np.r_[rng.standard_normal(500), np.nan])
    save("inf.npy", np.r_[rng.standard_normal(500), np.inf])
    save("two_d.npy", rng.standard_normal((50, 20)))
    save("strings.npy", np.array(["x"] * 500))
    save("good.npy", rng.standard_normal(1000))
    save("constant.npy", np.full(500, 2.5))
    save("two_valued.npy", np.r_[np.zeros(400), np.ones(100)])
    save("small.npy", rng.standard_normal(100))
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    paths["junk.txt"] = str(tmp_path / "junk.txt")
    (tmp_path / "pickle.npy").write_bytes(b"not an npy file")
    paths["pickle.npy"] = str(tmp_path / "pickle.npy")
    return paths


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("few.npy", [], "too few samples"),
        ("nan.npy", [], "non-finite"),
        ("inf.npy", [], "non-finite"),
        ("two_d.npy", [], "1-D"),
        ("strings.npy", [], "numeric"),
        ("junk.txt", [], "not a numeric array"),
        ("pickle.npy", [], "not a numeric array"),
        ("good.npy", ["--k", "1000"], "k = 1000 is out of range"),
        ("good.npy", ["--k", "5", "600"], "needs the 601 largest values positive"),
        ("good.npy", ["--paper-figure", "3"], "--paper-figure must be 1 or 2"),
        (None, [], "exactly one of"),
        # The sample's tail, checked before anything is written (was: after config.json, "raise --tail-fraction").
        ("constant.npy", [], "all 500 values equal 2.5: a constant sample has no tail to fit"),
        ("two_valued.npy", [], "no --tail-fraction below 0.5 gives that: the sample has only 2 distinct values"),
        ("small.npy", ["--tail-fraction", "0.05"], "only 5 of 100 values lie above the POT threshold"),
        ("small.npy", ["--tail-fraction", "0.05"], "--tail-fraction 0.1 or more would give that"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, name, extra, message):
    argv = (["--rewards", files[name]] if name else []) + extra + ["--out", str(tmp_path / "o"), "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    lines = [line for line in err.splitlines() if line.startswith("reward_tails.py: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o").exists()  # every input is checked before the output directory is made


def test_missing_file_and_model_mode(tmp_path, capsys):
    rc, _, err = _run(["--rewards", str(tmp_path / "absent.npy")], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = _run(["--model", str(tmp_path / "no_model"), "--random-tokens", "4", "--length", "8"], capsys)
    assert rc == 2 and "reward_tails.py: error:" in err
    rc, _, err = _run(["--model", str(tmp_path / "no_model")], capsys)
    assert rc == 2 and "--random-tokens" in err


def test_small_run_writes_outputs_and_json(files, tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["--rewards", files["good.npy"], "--demean", "--positive-only", "--no-bayes",
            "--num-boot", "10", "--k", "3", "17", "--out", str(out_dir), "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    hill = [r for r in rows if r["kind"] == "hill"]
    assert [r["k"] for r in hill] == [3, 17]
    x = np.load(files["good.npy"])
    x = np.sort(x - x.mean())[::-1]
    for r in hill:
        k = r["k"]
        ref = np.mean(np.log(x[:k])) - np.log(x[k])
        assert r["xi"] == pytest.approx(ref, rel=1e-4) and r["se"] == pytest.approx(ref / np.sqrt(k), rel=1e-4)
    (verdict,) = [r for r in rows if r["kind"] == "verdict"]
    assert verdict["verdict"] in ("light", "heavy", "inconclusive") and verdict["n"] == 1000
    assert verdict["gpd_mle"]["lo"] < verdict["gpd_mle"]["xi"] < verdict["gpd_mle"]["hi"]
    for f in ("diagnostics.png", "estimators.png", "results.json", "config.json"):
        assert (out_dir / f).is_file()
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["demean"] is True and cfg["k"] == [3, 17]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    # The POT shape curve (vmapped masked fits) against scipy's fit at one threshold.
    import scipy.stats as st

    row = json.loads((out_dir / "results.json").read_text())["gpd_mle_curve"][-1]
    raw = np.sort(np.load(files["good.npy"]))[::-1]
    k = row["k"]
    c, _, _ = st.genpareto.fit(raw[:k] - raw[k], floc=0)
    assert abs(row["xi"] - c) < 0.05 * row["se"]


def test_paper_figure_range_and_compare_rows(files, tmp_path, capsys):
    """--paper-figure 2 selects k < int(n^0.6); --compare rows are the fitted POT tail (scipy reference)."""
    import scipy.stats as st

    extra = tmp_path / "extra.txt"
    np.savetxt(extra, [-1.0, 0.5, 1.5, 2.5, 3.0, 60.0])
    argv = ["--rewards", files["good.npy"], "--demean", "--positive-only", "--no-bayes", "--num-boot", "10",
            "--paper-figure", "2", "--compare", str(extra), "--out", str(tmp_path / "o"), "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    # n = 1000: int(1000^0.1) = 1 .. int(1000^0.6) - 1 = 62 (Figure 1's range would stop at 30).
    assert [r["k"] for r in rows if r["kind"] == "hill"] == list(range(1, 63))
    (v,) = [r for r in rows if r["kind"] == "verdict"]
    assert v["hill_paper_range"]["k_max"] == 62
    u, n, m, xi, sigma = v["threshold"], v["n"], v["n_exceed"], v["gpd_mle"]["xi"], v["gpd_mle"]["sigma"]
    ref = st.genpareto(xi, loc=u, scale=sigma)
    end = ref.support()[1]
    compare = [r for r in rows if r["kind"] == "compare"]
    assert [r["value"] for r in compare] == [-1.0, 0.5, 1.5, 2.5, 3.0, 60.0]
    for r in compare:
        a = r["value"]
        log_p = np.log(m / n) + ref.logsf(a) if a > u else np.nan
        if np.isfinite(log_p):
            # float32 log tail of a few units: ~1e-6 relative.
            assert r["gpd_log10_tail_prob"] == pytest.approx(log_p / np.log(10), rel=1e-5)
        else:  # below the threshold, or beyond a fitted end point
            assert r["gpd_log10_tail_prob"] is None
        assert r["beyond_gpd_end_point"] == bool(a > end)
        assert r["gpd_end_point"] == (None if np.isinf(end) else pytest.approx(end, rel=1e-5))
    assert compare[-1]["frac_sample_above"] == 0.0 and compare[0]["gpd_log10_tail_prob"] is None


def test_model_mode_scores_random_tokens(tmp_path, capsys):
    """--model: the Hill rows are those of the reward model's own scores of the documented token draw
    (N x L ids uniform on the vocabulary, key seed + 1); without --json a summary goes to stdout."""
    pytest.importorskip("torch")  # make_tiny_checkpoint draws its weights with transformers' classes
    import jax

    from goodhart_jax import models
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "rm", "gpt_neox", "oasst", seed=0)
    out_dir = tmp_path / "run"
    argv = ["--model", str(ckpt.path), "--random-tokens", "150", "--length", "6", "--batch", "16", "--seed", "4",
            "--demean", "--positive-only", "--no-bayes", "--num-boot", "10", "--k", "3", "17", "--out", str(out_dir)]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    model = models.load_model(ckpt.path)
    ids = jax.random.randint(jax.random.key(5), (150, 6), 0, model.vocab_size)
    r = np.asarray(jax.jit(models.make_reward_fn(model))(model.params, ids, np.ones((150, 6), np.int32)), np.float64)
    x = np.sort(r - r.mean())[::-1]
    res = json.loads((out_dir / "results.json").read_text())
    assert res["verdict"]["n"] == 150 and "150 random sequences of 6 tokens" in res["verdict"]["source"]
    for row in res["hill"]:
        k = row["k"]
        ref = np.mean(np.log(x[:k])) - np.log(x[k])
        # float32 scores, batched by 16 vs one batch of 150: Hill of a few log-spacings to ~1e-4.
        assert row["xi"] == pytest.approx(ref, rel=1e-3, abs=1e-5), k
    assert out.startswith(f"verdict: {res['verdict']['verdict']} - ")
    for e in res["verdict"]["evidence"]:  # one summary line per piece of evidence, with its numbers
        assert f"{e['name']:>12}: xi = {e['xi']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] (k = {e['k']}" in out


def test_model_not_ported_is_one_line_exit_2(tmp_path, capsys):
    """An unported activation in a checkpoint's config is bad input: one line, exit 2 (was a traceback)."""
    pytest.importorskip("torch")
    from goodhart_jax import models
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "rm", "gpt_neox", "oasst", seed=0)
    cfg_file = ckpt.path / "config.json"
    cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()) | {"hidden_act": "relu2"}))
    with pytest.raises(NotImplementedError, match="hidden_act 'relu2' is not ported"):
        models.load_model(ckpt.path)  # still a NotImplementedError for library callers ...
    with pytest.raises(models.CheckpointError):
        models.load_model(ckpt.path)  # ... and a CheckpointError, i.e. cli.InputError
    rc, out, err = _run(["--model", str(ckpt.path), "--random-tokens", "120", "--length", "4",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("reward_tails.py: error: ") and "hidden_act 'relu2' is not ported" in err


def _nulls_without_reason(obj, where="results"):
    """Paths of null numbers in a JSON tree whose dict carries no "reason" (whole null sections excepted:
    gpd_bayes without NUTS, hill_k_star without k*, ...)."""
    bad = []
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _nulls_without_reason(v, f"{where}[{i}]")
    elif isinstance(obj, dict):
        if any(v is None for k, v in obj.items() if k not in ("gpd_bayes", "hill_k_star", "hill_paper_range")) \
                and not obj.get("reason"):
            bad.append(where)
        for k, v in obj.items():
            bad += _nulls_without_reason(v, f"{where}.{k}")
    return bad


def test_huge_rewards_match_float64_references(tmp_path, capsys):
    """Rewards near 1e300 (float32: inf; every Hill row was null): Hill against NumPy in float64, the GPD fit
    against scipy's fit of the same excesses / 1e300 (the MLE is scale equivariant; scipy fails at 1e300), and
    the --compare rows against scipy's GPD tail."""
    import scipy.stats as st

    rng = np.random.default_rng(3)
    base = rng.pareto(1.5, 1000) + 1.0  # Pareto(1.5): xi = 2/3
    rewards, extra = tmp_path / "huge.npy", tmp_path / "extra.txt"
    np.save(rewards, base * 1e300)
    np.savetxt(extra, [1e300, 3e301, 1e303])
    out_dir = tmp_path / "run"
    argv = ["--rewards", str(rewards), "--no-bayes", "--num-boot", "10", "--k", "10", "40", "--no-plots",
            "--compare", str(extra), "--out", str(out_dir), "--json"]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    x = np.sort(base * 1e300)[::-1]
    for r in (r for r in rows if r["kind"] == "hill"):
        ref = np.mean(np.log(x[:r["k"]])) - np.log(x[r["k"]])
        # float64 cumulative sums against a direct float64 mean: ~1e-15 relative per term.
        assert r["xi"] == pytest.approx(ref, rel=1e-10) and r["se"] == pytest.approx(ref / np.sqrt(r["k"]), rel=1e-10)
    (v,) = [r for r in rows if r["kind"] == "verdict"]
    u, m, xi, sigma = v["threshold"], v["n_exceed"], v["gpd_mle"]["xi"], v["gpd_mle"]["sigma"]
    assert u == x[m] and v["verdict"] == "heavy"
    c, _, scale = st.genpareto.fit((x[:m] - x[m]) / 1e300, floc=0)
    assert abs(xi - c) < 0.05 * v["gpd_mle"]["se"] and sigma / 1e300 == pytest.approx(scale, rel=1e-3)
    ref = st.genpareto(xi, loc=u / 1e300, scale=sigma / 1e300)
    compare = [r for r in rows if r["kind"] == "compare"]
    assert [r["value"] > u for r in compare] == [False, True, True]
    for r in compare:
        a = r["value"] / 1e300
        if r["value"] > u:
            log_p = (np.log(m / 1000) + ref.logsf(a)) / np.log(10)
            assert r["gpd_log10_tail_prob"] == pytest.approx(log_p, rel=1e-9)
        else:
            assert r["gpd_log10_tail_prob"] is None and "at or below the POT threshold" in r["reason"]
        assert r["z"] == pytest.approx((a - np.mean(x / 1e300)) / np.std(x / 1e300), rel=1e-9)
        assert r["gpd_end_point"] is None and "unbounded" in r["reason"]  # xi > 0: no end point
    assert _nulls_without_reason(json.loads((out_dir / "results.json").read_text())) == []


def test_tied_rewards_every_null_has_a_reason(tmp_path, capsys):
    """Integer rewards 1..50, 20 of each: the POT MLE runs below xi = -1, where the likelihood has no maximum.
    Its shape is null and says why (it printed xi = -5.3, converged false), and so does every other null."""
    rewards = tmp_path / "ties.npy"
    np.save(rewards, np.repeat(np.arange(1, 51), 20))
    out_dir = tmp_path / "run"
    rc, out, err = _run(["--rewards", str(rewards), "--no-bayes", "--num-boot", "2", "--no-plots",
                         "--out", str(out_dir), "--json"], capsys)
    assert rc == 0, err
    res = json.loads((out_dir / "results.json").read_text())
    assert res["verdict"]["gpd_mle"]["xi"] is None and "no maximum" in res["verdict"]["gpd_mle"]["reason"]
    assert res["verdict"]["verdict"] == "inconclusive" and "no maximum" in res["verdict"]["reason"]
    assert _nulls_without_reason(res) == []
    assert [json.loads(line) for line in out.splitlines()][-1]["kind"] == "verdict"
