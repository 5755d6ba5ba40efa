"""Integration: sims/acg_search.py on tiny random checkpoints (goodhart_jax.models)."""
import importlib.util
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # make_tiny_checkpoint draws its weights with transformers' classes

from goodhart_jax import models  # noqa: E402
from goodhart_jax.models.testing import make_tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("acg_search", ROOT / "sims" / "acg_search.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["acg_search"] = mod     # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    rm = make_tiny_checkpoint(d / "rm", "gpt_neox", "oasst", seed=0)
    lm = make_tiny_checkpoint(d / "lm", "gpt_neox", "causal_lm", seed=1)
    return rm.path, lm.path


def test_cli_runs_writes_plots_and_rows(ckpts, tmp_path, capsys):
    acg = _load_script()
    rm, lm = ckpts
    out = tmp_path / "run"
    argv = ["--model", str(rm), "--base-model", str(lm), "--length", "8", "--iters", "6",
            "--topk", "3", "--candidates", "8", "--restarts", "2", "--schedule", "paper",
            "--seed", "0", "--penalty", "0.1", "--chunk", "4", "--out", str(out), "--json"]
    assert acg.cli(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["restart"] for r in rows] == [0, 1]
    assert all(r["kind"] == "acg" and len(r["tokens"]) == 8 and "logprob" in r for r in rows)
    for name in ("config.json", "best.json", "results.json", "rows.jsonl", "traces.npz",
                 "mixture_kl.csv", "reward_vs_iteration.png", "reward_vs_logprob.png"):
        assert (out / name).is_file(), name
    # The reported reward and log-probability are the models' own scores of the tokens.
    ids = jnp.asarray([r["tokens"] for r in rows], jnp.int32)
    mask = jnp.ones(ids.shape, jnp.int32)
    rs = models.reward_scorer(models.load_model(rm))
    ls = models.logprob_scorer(models.load_model(lm))
    np.testing.assert_allclose([r["reward"] for r in rows],
                               np.asarray(rs.score_tokens(rs.params, ids, mask)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["logprob"] for r in rows],
                               np.asarray(ls.score_tokens(ls.params, ids, mask)), rtol=1e-5, atol=1e-4)
    traces = np.load(out / "traces.npz")
    assert traces["best_objective"].shape == (2, 6)
    assert np.all(np.diff(traces["best_objective"], axis=1) >= 0)
    best = json.loads((out / "best.json").read_text())
    assert best["iteration"] == 6 and not best["interrupted"]
    # Special tokens (the config's bos/eos/pad ids) are banned by default.
    banned = json.loads((out / "config.json").read_text())["banned_resolved"]
    assert banned and not np.isin(np.asarray(ids), banned).any()


def test_cli_interrupt_keeps_best_so_far(ckpts, tmp_path, monkeypatch):
    acg = _load_script()
    import tqdm

    class Interrupting(tqdm.tqdm):
        def update(self, n=1):
            super().update(n)
            if self.n >= 4:            # after the first chunk of 4 steps is on disk
                raise KeyboardInterrupt

    monkeypatch.setattr(tqdm, "tqdm", Interrupting)
    rm, _ = ckpts
    out = tmp_path / "run"
    argv = ["--model", str(rm), "--length", "6", "--iters", "12", "--topk", "3",
            "--candidates", "4", "--restarts", "2", "--schedule", "gcg", "--chunk", "4",
            "--out", str(out)]
    assert acg.cli(argv) == 130
    best = json.loads((out / "best.json").read_text())
    assert best["interrupted"] and best["iteration"] == 4
    assert len(best["restarts"]) == 2 and all(len(r["tokens"]) == 6 for r in best["restarts"])
    assert not list(out.glob(".*.tmp"))          # atomic writes leave no temp files


@pytest.mark.parametrize("argv, needle", [
    (["--length", "0"], "--length"),
    (["--schedule", "cosine"], "invalid choice"),
    (["--penalty", "1"], "--penalty needs --base-model"),
    (["--banned", "100000"], "outside the vocabulary"),
    (["--model", "/nonexistent/dir"], "not a directory"),
])
def test_cli_bad_input_exits_2(ckpts, argv, needle, capsys):
    acg = _load_script()
    rm, _ = ckpts
    if "--model" not in argv:
        argv = ["--model", str(rm)] + argv
    with pytest.raises(SystemExit) as e:
        sys.exit(acg.cli(argv + ["--out", "/tmp/unused-acg"]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
