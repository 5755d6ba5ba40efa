"""The scoring CLI on tiny checkpoints in each layout, and its one-line errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from goodhart_jax import cli, models
from goodhart_jax.models.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sims"))
import score_rewards  # noqa: E402


def _cli(argv) -> int:
    return cli.run(score_rewards.Config, score_rewards.main, argv, prog="score_rewards.py")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {"oasst": make_tiny_checkpoint(d / "oasst", "gpt_neox", "oasst", seed=1),
            "starling": make_tiny_checkpoint(d / "starling", "llama", "starling", seed=2),
            "lm": make_tiny_checkpoint(d / "lm", "gpt_neox", "causal_lm", seed=3, fmt="sharded_bin")}


def _tokens(tmp_path, vocab=103, shape=(5, 9), seed=0):
    ids = np.random.default_rng(seed).integers(0, vocab, shape)
    mask = np.ones(shape, dtype=np.int32)
    mask[1, 6:] = 0
    mask[3, :2] = 0
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    return ids, mask


@pytest.mark.parametrize("name,logprob", [("oasst", False), ("starling", False), ("starling", True), ("lm", True)])
def test_cli_json_rows_match_library(ckpts, tmp_path, capsys, name, logprob):
    c = ckpts[name]
    ids, mask = _tokens(tmp_path)
    argv = ["--model", str(c.path), "--input", str(tmp_path / "ids.npy"), "--mask", str(tmp_path / "mask.npy"),
            "--json", "--batch", "4", "--out", str(tmp_path / "scores.json")]
    if c.base_model:
        argv += ["--base-model", str(c.base_model)]
    if logprob:
        argv.append("--logprob")
    assert _cli(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kind = "logprob" if logprob else "reward"
    assert [r["index"] for r in rows] == list(range(5)) and all(kind in r for r in rows)
    model = models.load_model(c.path, base_model=c.base_model)
    fn = models.make_logprob_fn(model) if logprob else models.make_reward_fn(model)
    want = np.asarray(jax.jit(fn)(model.params, ids, mask))
    # Batches of 4 padded to bucket 16 vs one batch of 9: same maths, float32 summation order.
    np.testing.assert_allclose([r[kind] for r in rows], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert json.loads((tmp_path / "scores.json").read_text()) == rows
    assert json.loads((tmp_path / "scores.config.json").read_text())["model"] == str(c.path)


def test_cli_random_tokens(ckpts, tmp_path, capsys):
    c = ckpts["oasst"]
    out = tmp_path / "r.npy"
    argv = ["--model", str(c.path), "--random-tokens", "6", "--length", "5", "--seed", "3", "--out", str(out)]
    assert _cli(argv) == 0
    assert capsys.readouterr().out.startswith("reward: n=6")
    scores = np.load(out)
    assert scores.shape == (6,) and np.all(np.isfinite(scores)) and np.unique(scores).size == 6
    res = score_rewards.main(cli.parse_config(score_rewards.Config, argv))  # same seed, same tokens
    np.testing.assert_array_equal(res["scores"], scores)


@pytest.mark.parametrize("case,match", [
    ("bad_token", r"token id 103 at \[2, 4\] is outside the vocabulary \[0, 103\)"),
    ("negative_token", r"token id -1 at \[0, 0\] is outside the vocabulary"),
    ("mask_shape", r"--mask has shape \(5, 8\) but the tokens have shape \(5, 9\)"),
    ("float_tokens", r"--input must be an integer array"),
    ("not_checkpoint", r"is not a checkpoint"),
    ("starling_no_base", r"needs base_model"),
    ("both_inputs", r"exactly one of --input"),
    ("lm_no_logprob", r"no reward head; use --logprob"),
    ("oasst_logprob", r"has no language-model head"),
    ("not_ported", r"hidden_act 'relu2' is not ported"),
    ("out_is_dir", r"--out .* is a directory; give a FILE"),
])
def test_cli_bad_input_one_line_exit_2(ckpts, tmp_path, capsys, case, match):
    ids, mask = _tokens(tmp_path)
    model, extra = str(ckpts["oasst"].path), []
    inp = ["--input", str(tmp_path / "ids.npy")]
    if case == "bad_token":
        ids[2, 4] = 103
        np.save(tmp_path / "ids.npy", ids)
    elif case == "negative_token":
        ids[0, 0] = -1
        np.save(tmp_path / "ids.npy", ids)
    elif case == "mask_shape":
        np.save(tmp_path / "m.npy", mask[:, :8])
        extra = ["--mask", str(tmp_path / "m.npy")]
    elif case == "float_tokens":
        np.save(tmp_path / "ids.npy", ids.astype(np.float32))
    elif case == "not_checkpoint":
        model = str(tmp_path)
    elif case == "starling_no_base":
        model = str(ckpts["starling"].path)
    elif case == "both_inputs":
        extra = ["--random-tokens", "3", "--length", "4"]
    elif case == "lm_no_logprob":
        model = str(ckpts["lm"].path)
    elif case == "oasst_logprob":
        extra = ["--logprob"]
    elif case == "not_ported":  # a feature the port lacks is bad input too, not a traceback
        model = str(tmp_path / "relu2")
        shutil.copytree(ckpts["oasst"].path, model)
        cfg = json.loads((ckpts["oasst"].path / "config.json").read_text())
        (Path(model) / "config.json").write_text(json.dumps(cfg | {"hidden_act": "relu2"}))
    elif case == "out_is_dir":
        extra = ["--out", str(tmp_path)]
    assert _cli(["--model", model, *inp, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("score_rewards.py: error:")
    assert __import__("re").search(match, err[0]), err[0]


def test_cli_subprocess_exit_status(ckpts, tmp_path):
    """End to end as a script: success prints a summary; a bad flag value exits 2 in one line."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    script = str(ROOT / "sims" / "score_rewards.py")
    ok = subprocess.run([sys.executable, script, "--model", str(ckpts["oasst"].path), "--random-tokens", "2",
                         "--length", "4"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("reward: n=2")
    bad = subprocess.run([sys.executable, script, "--model", str(ckpts["oasst"].path), "--random-tokens", "2",
                          "--length", "4", "--dtype", "float16"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
