"""Issue 12, the CLI/IO layer: every bad input to a sims script is one line and exit 2, before any work.

Each case here was a traceback before the scripts moved onto the one runner (d8eb997 and earlier:
io.start_run's bare mkdir gave FileExistsError / NotADirectoryError / PermissionError, np.load's EOFError on
a 0-byte .npy, OverflowError for a seed above 2^63, RESOURCE_EXHAUSTED for sweep_beta's largest trees), or
a number the model never meant (score_rewards on masks with holes, or past max_position_embeddings).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from goodhart_jax import cli, io
from goodhart_jax.models.scoring import check_batch

from scripts import ROOT, SCRIPTS, load_script, unoptimised_compiles  # tests/scripts.py

SEEDED = tuple(s for s in SCRIPTS if "seed: int" in (ROOT / "sims" / f"{s}.py").read_text())


def run(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of the script's runner, in process."""
    mod = load_script(name)
    rc = cli.run(mod.Config, mod.main, argv, prog=f"{name}.py")
    return rc, capsys.readouterr().err


def one_line_error(name: str, err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}.py: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny GPT-NeoX reward model (max_position_embeddings 128)."""
    pytest.importorskip("torch")  # make_tiny_checkpoint draws its weights with transformers' classes
    from goodhart_jax.models.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "rm", "gpt_neox", "oasst", seed=0).path


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "r.npy"
    np.save(path, np.random.default_rng(0).standard_normal(300))
    return path


def required_args(name: str, request) -> list[str]:
    """The flags a script needs before it reaches its output (a model, a sample)."""
    if name in ("acg_search", "score_rewards"):
        ck = str(request.getfixturevalue("ckpt"))
        return ["--model", ck] + (["--random-tokens", "2", "--length", "4"] if name == "score_rewards" else [])
    if name == "reward_tails":
        return ["--rewards", str(request.getfixturevalue("rewards"))]
    return []


def _unwritable(tmp_path) -> Path | None:
    """An existing directory where no file can be created, or None (root on a machine without one)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro
    for d in (Path("/sys"), Path("/proc/self")):  # root may write anywhere else
        try:
            tempfile.mkstemp(dir=d)
        except OSError:
            return d
    return None


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("case", ["existing_file", "under_a_file", "unwritable_dir", "under_unwritable_dir"])
def test_bad_out_is_one_line_before_any_work(name, case, tmp_path, capsys, request, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    ro = _unwritable(tmp_path) if "unwritable" in case else None
    if "unwritable" in case and ro is None:
        pytest.skip("no unwritable directory here")
    suffix = ".npy" if name == "score_rewards" else ""  # score_rewards' --out is one FILE
    out = {"existing_file": afile, "under_a_file": afile / f"sub{suffix}",
           "unwritable_dir": ro and (ro / "s.npy" if suffix else ro),
           "under_unwritable_dir": ro and ro / f"sub/x{suffix}"}
    if name == "score_rewards" and case == "existing_file":
        out[case] = tmp_path  # a FILE that exists is overwritten; a directory is the bad case here
    mod = load_script(name)
    if hasattr(mod, "load"):  # the model is never loaded: --out is checked first
        monkeypatch.setattr(mod, "load", lambda cfg: pytest.fail("loaded the model before checking --out"))
    before = set(tmp_path.rglob("*"))
    rc, err = run(name, required_args(name, request) + ["--out", str(out[case])], capsys)
    assert rc == 2, err
    line = one_line_error(name, err)
    assert str(out[case]) in line or str(Path(out[case]).parent) in line, line
    assert set(tmp_path.rglob("*")) == before  # nothing created
    assert afile.read_text() == "x"


def test_check_out_dir_creates_nothing_and_prepare_creates(tmp_path):
    cli.check_out_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    assert cli.prepare_out_dir(tmp_path / "a" / "b").is_dir()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".write-test")]  # the probe is removed


def _npy_cases(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.npy"
    np.save(good, np.arange(12.0))
    raw = good.read_bytes()
    huge = BytesIO()  # a valid header promising 2^40 float64 values (8 TiB) that are not there
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    cases = {"empty": b"", "garbage": np.random.default_rng(1).bytes(300), "truncated": raw[:-40],
             "header_only": raw[:128], "huge_shape": huge.getvalue() + raw[128:]}
    paths = {}
    for k, data in cases.items():
        paths[k] = tmp_path / f"{k}.npy"
        paths[k].write_bytes(data)
    paths["object"] = tmp_path / "object.npy"
    np.save(paths["object"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return paths


def test_io_load_array_refuses_bad_npy_files(tmp_path):
    for kind, path in _npy_cases(tmp_path).items():
        with pytest.raises(io.UsageError, match=str(path)) as e:
            io.load_array(path)
        assert "\n" not in str(e.value), kind


@pytest.mark.parametrize("flag", ["--rewards", "--compare"])
def test_reward_tails_bad_files(flag, tmp_path, capsys, rewards):
    text = tmp_path / "junk.txt"
    text.write_bytes(b"1.0\n\xff\xfe not a number\n")
    for kind, path in {**_npy_cases(tmp_path), "text": text}.items():
        argv = ["--rewards", str(path if flag == "--rewards" else rewards), "--out", str(tmp_path / "o"), "--no-plots"]
        if flag == "--compare":
            argv += ["--compare", str(path)]
        rc, err = run("reward_tails", argv, capsys)
        assert rc == 2, (kind, err)
        assert str(path) in one_line_error("reward_tails", err), kind
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--input", "--mask"])
def test_score_rewards_bad_npy_files(flag, ckpt, tmp_path, capsys):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 5), np.int64))
    for kind, path in _npy_cases(tmp_path).items():
        argv = ["--model", str(ckpt), "--input", str(path if flag == "--input" else ids)]
        if flag == "--mask":
            argv += ["--mask", str(path)]
        rc, err = run("score_rewards", argv, capsys)
        assert rc == 2, (kind, err)
        assert str(path) in one_line_error("score_rewards", err), kind


@pytest.mark.parametrize("name", SEEDED)
@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**64 + 5])
def test_seed_out_of_range_is_one_line(name, seed, capsys):
    argv = (["--model", "unused"] if name in ("acg_search", "score_rewards") else []) + ["--seed", str(seed)]
    rc, err = run(name, argv, capsys)
    assert rc == 2, err
    line = one_line_error(name, err)
    why = "[0, 2^32 - 1" if seed < 2**63 else "does not fit in 64 bits"
    assert line.startswith(f"{name}.py: error: --seed") and str(seed) in line and why in line, line


@pytest.mark.parametrize("name", SEEDED)
def test_seed_range_ends_are_accepted(name):
    mod = load_script(name)
    base = ["--model", "unused"] if name in ("acg_search", "score_rewards") else []
    for seed in (0, 2**32 - 1):
        assert cli.parse_config(mod.Config, base + ["--seed", str(seed)]).seed == seed


@pytest.mark.parametrize("name,argv", [
    ("sweep_beta", ["--vocab", str(2**64)]),
    ("sweep_beta", ["--seeds", str(2**70)]),
    ("best_of_n", ["--trials", str(-(2**63) - 1)]),
    ("acg_search", ["--model", "unused", "--length", str(2**64)]),
    ("score_rewards", ["--model", "unused", "--random-tokens", str(2**64)]),
    ("reward_tails", ["--k", "5", str(2**80)]),
])
def test_ints_beyond_64_bits_are_one_line(name, argv, capsys):
    rc, err = run(name, argv, capsys)
    assert rc == 2, err
    assert "does not fit in 64 bits" in one_line_error(name, err)


# ---------------------------------------------------------------- sweep_beta's memory

def test_sweep_beta_refuses_a_tree_too_large_for_memory(tmp_path, capsys, monkeypatch):
    """--vocab 2 --depth 26 --seeds 4 ran out of memory (RESOURCE_EXHAUSTED) after minutes; now one line
    with the estimate and what is available, before any work. Seeds run one tree at a time (issue 13), so the
    estimate is one tree's: 40 bytes a terminal + 0.5 GiB (planning.sweep_peak_bytes)."""
    sb = load_script("sweep_beta")
    big = sb.Config(vocab=2, depth=30, seeds=4)
    assert sb.estimate_bytes(big) == 2**30 * 40 + 2**29  # ~40.5 GiB
    assert sb.estimate_bytes(dataclasses.replace(big, seeds=1)) == sb.estimate_bytes(big)
    monkeypatch.setattr(io, "available_memory", lambda: 16 * 2**30)
    rc, err = run("sweep_beta", ["--vocab", "2", "--depth", "30", "--seeds", "4", "--out", str(tmp_path / "o")],
                  capsys)
    assert rc == 2, err
    line = one_line_error("sweep_beta", err)
    assert "GiB (estimated)" in line and "16.0 GiB is available" in line and "2^30 tree" in line, line
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()  # on any machine: 2^38 leaves needs terabytes
    rc, err = run("sweep_beta", ["--vocab", "2", "--depth", "38", "--seeds", "256"], capsys)
    assert rc == 2 and "GiB (estimated)" in one_line_error("sweep_beta", err)


def test_sweep_beta_small_tree_passes_the_memory_check(monkeypatch):
    """A 3^3 tree needs 27 x 40 bytes + 0.5 GiB: prepare passes with exactly that much memory and refuses with a
    byte less; it returns the default families, centred by scipy's means, and the tree's shape."""
    from scipy import stats

    sb = load_script("sweep_beta")
    cfg = sb.Config(vocab=3, depth=3, seeds=2)
    leaves = len(list(itertools.product(range(3), repeat=3)))  # every sequence of 3 tokens of 3 (no EOS)
    need = leaves * 40 + 2**29  # planning.sweep_peak_bytes: 40 bytes a terminal + 0.5 GiB, one seed at a time
    assert sb.estimate_bytes(cfg) == need
    monkeypatch.setattr(io, "available_memory", lambda: need)
    errors, utility, spec = sb.prepare(cfg)
    assert (spec.vocab, spec.depth, spec.eos, spec.num_terminals) == (3, 3, False, leaves)
    means = dict(normal=stats.norm.mean(), laplace=stats.laplace.mean(), **{"student_t:df=3": stats.t(3).mean()},
                 lognormal=stats.lognorm(1).mean(), pareto=stats.pareto(2).mean())  # e^(1/2), 2
    assert list(cfg.error) == list(means)
    assert [(e.name, {k: float(v) for k, v in e.params.items()}) for e in errors] == [
        ("normal", dict(loc=0, scale=1)), ("laplace", dict(loc=0, scale=1)), ("student_t", dict(df=3, loc=0, scale=1)),
        ("lognormal", dict(loc=0, scale=1)), ("pareto", dict(scale=1, alpha=2))]
    for e, m in zip(errors, means.values()):  # float32 means
        assert float(e.shift) == pytest.approx(-m, rel=1e-6, abs=1e-12), e
    assert str(utility) == "normal" and float(utility.shift) == 0.0
    monkeypatch.setattr(io, "available_memory", lambda: need - 1)
    with pytest.raises(cli.InputError, match=r"a 3\^3 tree \(27 terminals\) .* needs about 0\.5 GiB \(estimated\)"):
        sb.prepare(cfg)


# ---------------------------------------------------------------- score_rewards: masks and lengths

def test_check_batch_masks():
    check_batch(np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), max_len=5)  # right, left, none
    for mask, match in [([[1, 0, 1, 1, 0]], "mask row 0 has a hole at position 1"),
                        ([[1, 1, 1], [0, 1, 0], [1, 1, 0]], None),
                        ([[1, 1], [0, 0]], "mask row 1 has no real tokens"),
                        ([[1, 2]], "only 0 and 1"),
                        ([[1, 1, 1, 1]], "row 0 has 4 tokens; the model takes at most 3")]:
        if match is None:
            check_batch(np.array(mask), 3)
            continue
        with pytest.raises(ValueError, match=match):
            check_batch(np.array(mask), 3)


def test_score_rewards_holes_and_long_rows_are_one_line(ckpt, tmp_path, capsys):
    ids, mask = np.zeros((3, 6), np.int64), np.ones((3, 6), np.int64)
    mask[1, 2] = 0  # a hole in the middle of row 1
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    rc, err = run("score_rewards", ["--model", str(ckpt), "--input", str(tmp_path / "ids.npy"),
                                    "--mask", str(tmp_path / "mask.npy")], capsys)
    assert rc == 2 and "mask row 1 has a hole at position 2" in one_line_error("score_rewards", err)
    np.save(tmp_path / "long.npy", np.zeros((2, 130), np.int64))  # max_position_embeddings = 128
    rc, err = run("score_rewards", ["--model", str(ckpt), "--input", str(tmp_path / "long.npy")], capsys)
    assert rc == 2 and "row 0 has 130 tokens; the model takes at most 128" in one_line_error("score_rewards", err)
    left = np.zeros((2, 130), np.int64)
    left[:, 10:] = 1  # 120 real tokens, left-padded to 130: scored
    np.save(tmp_path / "left.npy", left)
    rc, err = run("score_rewards", ["--model", str(ckpt), "--input", str(tmp_path / "long.npy"),
                                    "--mask", str(tmp_path / "left.npy"), "--json"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("name", ["score_rewards", "reward_tails", "acg_search"])
def test_length_past_the_models_positions_is_one_line(name, ckpt, tmp_path, capsys):
    argv = ["--model", str(ckpt), "--length", "129", "--out", str(tmp_path / ("o.npy" if name == "score_rewards"
                                                                              else "o"))]
    argv += ["--random-tokens", "2"] if name != "acg_search" else ["--iters", "1"]
    rc, err = run(name, argv, capsys)
    assert rc == 2, err
    assert "--length 129: the model" in one_line_error(name, err) and "at most 128 tokens" in err


# ---------------------------------------------------------------- mitigations: no NaN rows, no FloatingPointError

@pytest.fixture
def quick_compiles():
    with unoptimised_compiles():  # as in test_limit_clis, whose mitigations programs this test's run shares
        yield


@pytest.mark.usefixtures("quick_compiles")
def test_mitigations_unreachable_budget_is_flagged_not_raised(tmp_path, capsys):
    """--kl 150 200 on a 3^2 tree: the tree quantilizer's q = e^-200 underflows float32 (NaN), and no beta spends
    200 nats on 9 leaves. Rows said exists: true with null numbers, then FloatingPointError; now each such
    row is exists: false with its reason, and the run finishes. (Two budgets, one beta, 3^2 tree, 20000 draws:
    the compiled programs of test_limit_clis' mitigations runs.)"""
    import json

    argv = ["--vocab", "3", "--depth", "2", "--kl", "150", "200", "--error", "normal", "--bounded-betas", "1",
            "--mc-samples", "20000", "--no-plots", "--json", "--out", str(tmp_path)]
    mod = load_script("mitigations")
    assert cli.run(mod.Config, mod.main, argv, prog="mitigations.py") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by = {(r["model"], r["method"]): r for r in rows if r["budget"] == 200 or r["method"] == "bounded"}
    for r in rows:
        nulls = [k for k in ("E_U", "E_V", "KL") if r[k] is None]
        assert not nulls or r.get("reason"), r
        assert not (r["exists"] and {"E_V", "KL"} & set(nulls)), r
    assert not by["tree", "quantilizer"]["exists"] and "NaN" in by["tree", "quantilizer"]["reason"]
    assert not by["tree", "kl_target"]["exists"] and "no beta" in by["tree", "kl_target"]["reason"]
    # the continuous model can spend 200 nats: X, V ~ N(0, 1), the tilt has KL = 1/beta^2 and E_V = 1/beta
    assert by["continuous", "kl_target"]["E_V"] == pytest.approx(200**0.5, rel=1e-6)


@pytest.mark.usefixtures("quick_compiles")  # rows and reasons, not numbers: compiling is this run's cost
def test_best_of_n_exact_moments_refused_are_null_with_a_reason(tmp_path, monkeypatch):
    """Where the exact quadrature refuses (NaN), the row is null with a reason and the Gao fit falls back to the
    Monte Carlo; it ended in a FloatingPointError traceback before."""
    import json

    import jax.numpy as jnp

    mod = load_script("best_of_n")
    real = mod._exact
    monkeypatch.setattr(mod, "_exact", lambda e, u, ns: (lambda r: r._replace(E_V=r.E_V.at[-1].set(jnp.nan)))(
        real(e, u, ns)))
    out = tmp_path / "r"
    assert cli.run(mod.Config, mod.main, ["--error", "normal", "--utility", "normal", "--n", "1", "2", "4", "8",
                                          "16", "--trials", "4", "--no-plots", "--out", str(out)],
                   prog="best_of_n.py") == 0  # 4 distinct d > 0: enough for a Gao fit
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    bon, fit = [r for r in rows if r["kind"] == "bon"], [r for r in rows if r["kind"] == "gao_fit"]
    assert bon[0]["E_V"] is not None and "reason" not in bon[0]
    assert bon[-1]["E_V"] is None and bon[-1]["E_U"] is None and bon[-1]["E_V_mc"] is not None
    assert "Monte Carlo" in bon[-1]["reason"] and fit[0]["source"] == "mc"


def test_tail_upweight_unresolved_rows_are_null_with_a_reason(tmp_path, monkeypatch):
    """A threshold where P_t exists but its mean comes out non-finite is a null row with a reason (a
    FloatingPointError traceback before)."""
    import json

    mod = load_script("tail_upweight")
    real = mod.upweighting.sweep_upweight
    monkeypatch.setattr(mod.upweighting, "sweep_upweight",
                        lambda *a: (lambda r: r._replace(mean=r.mean.at[0].set(float("nan"))))(real(*a)))
    out = tmp_path / "r"
    assert cli.run(mod.Config, mod.main, ["--base", "normal", "--t", "2", "3", "--no-plots", "--out", str(out)],
                   prog="tail_upweight.py") == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["mean"] is None and rows[0]["KL"] is None and "not finite in float64" in rows[0]["reason"]
    assert rows[0]["exists"] and rows[1]["mean"] is not None and "reason" not in rows[1]
