"""Integration: sims/acg_search.py on tiny random checkpoints (goodhart_jax.models)."""
import importlib.util
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")  # make_tiny_checkpoint draws its weights with transformers' classes

from goodhart_jax import cli, models  # noqa: E402
from goodhart_jax.models.testing import make_tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("acg_search", ROOT / "sims" / "acg_search.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["acg_search"] = mod     # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _cli(acg, argv) -> int:
    return cli.run(acg.Config, acg.main, argv, prog="acg_search.py")


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
    assert _cli(acg, argv) == 0
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
        done = 0                       # counted here: a bar on a non-terminal is disabled and keeps n = 0

        def update(self, n=1):
            super().update(n)
            Interrupting.done += n
            if Interrupting.done >= 4:  # after the first chunk of 4 steps is on disk
                raise KeyboardInterrupt

    monkeypatch.setattr(tqdm, "tqdm", Interrupting)
    rm, _ = ckpts
    out = tmp_path / "run"
    argv = ["--model", str(rm), "--length", "6", "--iters", "12", "--topk", "3",
            "--candidates", "4", "--restarts", "2", "--schedule", "gcg", "--chunk", "4",
            "--out", str(out)]
    assert _cli(acg, argv) == 130
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
        sys.exit(_cli(acg, argv + ["--out", "/tmp/unused-acg"]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_cli_interrupt_before_any_step_says_only_config_is_on_disk(ckpts, tmp_path, monkeypatch, capsys):
    """Ctrl-C before a step finished: exit 130 and one true line (it used to claim best sequences were on disk)."""
    acg = _load_script()

    def interrupted(*args, **kwargs):
        def chunks():
            raise KeyboardInterrupt
            yield  # a generator, as search_chunks returns
        return chunks()

    monkeypatch.setattr(acg, "search_chunks", interrupted)
    rm, _ = ckpts
    out = tmp_path / "run"
    assert _cli(acg, ["--model", str(rm), "--length", "6", "--iters", "4", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    # (the runner names the program by sys.argv[0]: pytest's here, acg_search.py when run as a script)
    assert err[-1].endswith(f": interrupted: no results yet: only config.json is in {out}"), err
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_search_chunks_equal_search_and_rescore(ckpts):
    """search_chunks (3 chunks of 4 for 10 steps, the last padded) = search in one scan; rescore = the models'
    own scores and the closed-form mixture KL in float64; special_token_ids = the config's ids."""
    import jax

    from goodhart_jax.models.loading import load_reward_and_base, special_token_ids
    from goodhart_jax.search import SearchConfig, rescore, search, search_chunks

    rm_dir, lm_dir = ckpts
    rm, lm = load_reward_and_base(rm_dir, lm_dir)
    reward, base = models.reward_scorer(rm), models.logprob_scorer(lm)
    cfg_json = json.loads((rm_dir / "config.json").read_text())
    want = sorted({cfg_json[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if isinstance(cfg_json.get(k), int)})
    banned = special_token_ids((rm_dir, lm_dir), rm.vocab_size)
    assert list(banned) == want and banned
    cfg = SearchConfig(length=5, topk=3, num_candidates=6, num_iters=10, schedule="gcg", edits=2, banned_ids=banned)
    key = jax.random.key(3)
    state, info = search(key, cfg, reward, base, penalty=0.1, num_restarts=2)
    chunks = list(search_chunks(key, cfg, reward, base, penalty=0.1, num_restarts=2, chunk=4))
    assert [int(s.iteration[0]) for s, _ in chunks] == [4, 8, 10]
    c_state, c_info = chunks[-1]
    for a, b in zip(state, c_state):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(info, c_info):
        np.testing.assert_array_equal(np.asarray(a), b)
    alphas = (1e-3, 0.1)
    found = rescore(c_state.best_tokens, reward, base, alphas)
    ids = jnp.asarray(found.tokens)
    mask = jnp.ones(ids.shape, jnp.int32)
    np.testing.assert_allclose(found.reward, reward.score_tokens(reward.params, ids, mask), rtol=1e-6)
    np.testing.assert_allclose(found.logprob, base.score_tokens(base.params, ids, mask), rtol=1e-6)
    rows = found.kl_rows()
    assert [(r["restart"], r["alpha"]) for r in rows] == [(0, 1e-3), (0, 0.1), (1, 1e-3), (1, 0.1)]
    for r in rows:
        # log q ~ -20 here, so q itself is a float64 number: the closed form, directly.
        a, q = r["alpha"], np.exp(np.float64(r["logprob"]))
        exact = ((1 - a) * q + a) * np.log(((1 - a) * q + a) / q) + (1 - a) * (1 - q) * np.log1p(-a)
        assert r["kl_exact"] == pytest.approx(exact, rel=1e-5)        # float32 log-space evaluation
        assert r["kl_approx"] == pytest.approx(a * (np.log(a) - r["logprob"]), rel=1e-5)
    assert [r["restart"] for r in found.rows()] == [0, 1] and all("logprob" in r for r in found.rows())


def test_load_reward_and_base_roles(tmp_path):
    """A Starling RM's base-model dir holding only its config gives no base LM; a causal LM is no reward model."""
    from goodhart_jax.models.loading import load_reward_and_base

    st = make_tiny_checkpoint(tmp_path / "st", "llama", "starling", seed=2)
    rm, lm = load_reward_and_base(st.path, st.base_model)
    assert rm.reward_head is not None and lm is None
    causal = make_tiny_checkpoint(tmp_path / "lm", "gpt_neox", "causal_lm", seed=3)
    with pytest.raises(models.CheckpointError, match="no reward head"):
        load_reward_and_base(causal.path)



@pytest.mark.parametrize("arch,layout,pooling", [("gpt_neox", "oasst", None), ("llama", "starling", None),
                                                 ("llama", "starling", "before_first_pad")])
def test_one_position_reward_equals_every_position(arch, layout, pooling, tmp_path):
    """The fast path (the last layer computes only the pooled position) = every position computed (the plain
    path) on left- and right-padded rows, for tokens and one-hot inputs."""
    import jax

    ck = make_tiny_checkpoint(tmp_path / "m", arch, layout, seed=4)
    m = models.load_model(ck.path, base_model=ck.base_model, pooling=pooling, pad_id=3 if pooling else None)
    ids = np.array(jax.random.randint(jax.random.key(0), (5, 11), 4, m.vocab_size))
    ids[0, 0], ids[1, 6:], ids[2, 10] = 3, 3, 3                     # pads, for before_first_pad
    mask = np.ones(ids.shape, np.int32)
    mask[1, 6:], mask[3, :2], mask[4, :1] = 0, 0, 0                 # right and left padding
    for onehot in (False, True):
        x = jax.nn.one_hot(ids, m.vocab_size) if onehot else ids
        fast = jax.jit(models.make_reward_fn(m, onehot))(m.params, x, mask)
        plain = jax.jit(models.make_reward_fn(m, onehot, one_position=False))(m.params, x, mask)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)   # float32: summation order only


@pytest.mark.slow  # two scanned searches to compile: ~15 s on an idle 2-core machine, 76 s at load 18
def test_search_fast_path_equals_plain_path(ckpts):
    """GCG on the one-position scorer (the default) takes the same steps as on the every-position scorer."""
    import jax

    from goodhart_jax.scorer import Scorer
    from goodhart_jax.search import SearchConfig, search

    m = models.load_model(ckpts[0])
    plain = Scorer(m.params, models.make_reward_fn(m, one_position=False),
                   models.make_reward_fn(m, True, one_position=False), m.vocab_size)
    cfg = SearchConfig(length=7, topk=3, num_candidates=8, num_iters=6, schedule="gcg", edits=2)
    (fs, fi), (ps, pi) = (search(jax.random.key(1), cfg, s, num_restarts=2) for s in (models.reward_scorer(m), plain))
    np.testing.assert_array_equal(np.asarray(fs.best_tokens), np.asarray(ps.best_tokens))
    np.testing.assert_array_equal(np.asarray(fs.tokens), np.asarray(ps.tokens))
    np.testing.assert_allclose(np.asarray(fi.objective), np.asarray(pi.objective), rtol=1e-5, atol=1e-6)
