"""sims/overoptimization.py: a tiny lab run (A=4, L=3; slow: compiling every method is its cost): row kinds and
fields (proxy rows' nulls with reasons, tail rows, proxies standardised), exact KL against mdp, no method's
objective above the exact optimum's at the same beta; bad input exits 2 in one line; the default sizes (A=16,
L=4) pass the enumeration check; every row carries its seed, and the summary is the mean over seeds."""
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import cli, mdp
from goodhart_jax.lab import experiment
from goodhart_jax.lab import tree as lab_tree

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
            rl_steps=10, eval_every=5, lm_steps=30, bt_steps=30, plots=False, seed=3, seeds=2)


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """At these sizes compiling, not running, is the cost (~100 s of CPU with XLA's optimisations, most of it
    for RL's scan, GCG and the fits); without them the module runs in a fraction of that."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
    jax.clear_caches()  # the flag is not in the in-memory caches' keys: later tests must not reuse these executables


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = sim.Config(out=str(tmp_path_factory.mktemp("lab")), **TINY)
    return cfg, sim.main(cfg)


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_rows_and_fields(tiny):
    cfg, every = tiny
    assert {r["kind"] for r in every} == {"base", "lab", "proxy", "fit", "tail", "headline", "summary"}
    assert {r["seed"] for r in every if r["kind"] != "summary"} == {3, 4}  # every row carries its seed
    rows = [r for r in every if r.get("seed") == cfg.seed]
    base = [r for r in rows if r["kind"] == "base"]  # pi0's law, first: one row a seed
    assert rows[0] is base[0] and len(base) == 1 and set(base[0]) == {"kind", "seed", "N", "entropy", "perplexity",
                                                                        "top_mass", "n90"}
    b = base[0]
    assert b["N"] == 40 and 0 < b["entropy"] <= np.log(40) and b["perplexity"] == pytest.approx(np.exp(b["entropy"]))
    assert 1 / 40 <= b["top_mass"] <= 1 and 1 <= b["n90"] <= 40
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
    for r in (r for r in lab if r["method"] == "rl"):  # share closed = 1 - gap / gap at step 0: 0 at step 0
        gap0 = next(q["gap"] for q in lab if q["method"] == "rl" and q["proxy"] == r["proxy"] and q["step"] == 0)
        assert r["share_closed"] == pytest.approx(1 - r["gap"] / gap0) and (r["step"] > 0 or r["share_closed"] == 0)
    proxies = {r["proxy"]: r for r in rows if r["kind"] == "proxy"}
    assert len(proxies) == 2 and all(-1 <= r["corr"] <= 1 for r in proxies.values())
    for r in proxies.values():  # N = 40 < 100: no tail fit, and the null says why
        assert r["xi"] is None and r["verdict"].startswith("n/a") and f"xi: {r['verdict']}" in r["reason"]
    learned, direct = proxies["learned"], proxies["direct"]
    assert 0.5 < learned["pair_accuracy_seen"] <= 1 and 0 < learned["seen_mass"] <= 1
    # 600 draws may cover all 40 sequences: then no unseen pair, and the null says so
    assert (0.5 < learned["pair_accuracy_unseen"] <= 1 if learned["pair_accuracy_unseen"] is not None
            else "pair_accuracy_unseen: every sequence (40)" in learned["reason"])
    assert 0.5 < direct["pair_accuracy_unseen"] <= 1 and direct["pair_accuracy_seen"] is None
    assert 0 < direct["error_corr_unseen"] <= 1 and direct["error_corr_seen"] is None  # X of gold + eps: eps
    assert -1 <= learned["error_corr_seen"] <= 1
    assert "pair_accuracy_seen: a direct proxy has no training pairs" in direct["reason"]
    # proxies standardised under pi0: best-of-1 (pi0 itself) has E[proxy] = 0 for both
    assert all(abs(r["proxy_reward"]) < 1e-5 for r in lab if r["method"] == "bon" and r["n"] == 1)
    tails = [r for r in rows if r["kind"] == "tail"]
    assert len(tails) == 2 * 2 * (1 + len(BETAS)) * 6  # proxies x (X, proxy) x (pi0, pi*(beta)) x quantiles
    assert {(r["law"], r["beta"]) for r in tails} == {("pi0", None)} | {("pi*", b) for b in BETAS}
    for r in tails:
        assert (r["mean_excess"] is None) == ("reason" in r)
        assert r["mean_excess"] is None or (r["mean_excess"] > 0 and 0 < r["mass_above"] <= 1 - r["q"] + 1e-9)
    fit = {(r["proxy"], r["method"]) for r in rows if r["kind"] == "fit"}
    assert fit == {(p, m) for p in ("learned", "direct") for m in ("bon", "rl")}
    assert all((r.get("rl_beta") == 1.0) == (r["method"] == "rl") for r in rows if r["kind"] == "fit")  # per beta
    for r in (r for r in rows if r["kind"] == "fit"):  # a fit, or nulls with the reason (too few distinct d)
        assert (r["r2"] is None) == ("reason" in r) and r["points"] == (4 if r["method"] == "bon" else 3)
    assert (Path(cfg.out) / "results.jsonl").is_file() and (Path(cfg.out) / "results.csv").is_file()


@pytest.mark.slow  # a second tiny run, its programs mostly compiled by the first
def test_token_map_reports_the_hack_mass(tmp_path):
    """Under a token map the base row carries pi0's mass on the n-gram's sequences and the headlines pi*'s at each
    KL target: against pi0 summed in NumPy and mdp.sweep_betas with V = the indicator at the solved beta."""
    cfg = sim.Config(out=str(tmp_path / "tok"), **dict(TINY, error_map="token:id=1", seeds=1, rl_betas=(),
                                                       search=False, proxy=("direct",)))
    rows = sim.main(cfg)
    key = jax.random.key(cfg.seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps)
    member = np.array([1 in r for r in np.asarray(base.tree.tokens).tolist()])  # EOS-continued: no 1 after EOS
    pi0 = np.exp(np.asarray(base.tree.log_p, np.float64))
    row = next(r for r in rows if r["kind"] == "base")
    assert row["hack_mass"] == pytest.approx(pi0[member].sum() / pi0.sum(), rel=1e-6)
    built = experiment.build_proxy(jax.random.fold_in(jax.random.fold_in(key, 1), 0), base, "normal",
                                   cfg.noise_scale, "direct", None, error_map=cfg.error_map)
    heads = {r["at"]: r for r in rows if r["kind"] == "headline" and r["quantity"] == "hack_mass_at_KL"}
    solved = sim.summary.exact_at_kl(built.tree)
    assert sorted(heads) == [r["at"] for r in solved]
    ind = lab_tree.mdp_tree(base.tree, jnp.asarray(member, jnp.float32), built.proxy.reward)
    for r in solved:
        if r["beta"] is None:
            assert heads[r["at"]]["value"] is None and heads[r["at"]]["reason"]
            continue
        want = float(mdp.sweep_betas(ind, jnp.asarray([r["beta"]], jnp.float32)).E_V[0])
        assert heads[r["at"]]["value"] == pytest.approx(want, rel=2e-4, abs=1e-6)
    assert any(r["kind"] == "summary" and r["quantity"] == "hack_mass_at_KL" for r in rows)
    summ = [r for r in rows if r["kind"] == "summary"]
    table = next(t for t in sim.summary.tables(summ, [r for r in rows if r["kind"] == "proxy"], 1) if "n-gram" in t[2])
    assert [c for c in table[0][0] if c.startswith("KL")] == ["KL1", "KL2", "KL4"]  # one row, a cell a KL target


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_exact_rows_against_mdp(tiny):
    """KL, gold and proxy of the exact rows = mdp.soft_optimum on the same (rebuilt, same-key) tree."""
    cfg, rows = tiny
    rows = [r for r in rows if r.get("seed") == cfg.seed]
    key = jax.random.key(cfg.seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, lm_steps=cfg.lm_steps)
    k = jax.random.fold_in(jax.random.fold_in(key, 1), 0)
    law = lab_tree.law_stats(base.tree.log_p)  # the base row is the rebuilt pi0's law
    row = next(r for r in rows if r["kind"] == "base")
    assert (row["N"], row["n90"]) == (law.num, law.n90)
    np.testing.assert_allclose([row["entropy"], row["perplexity"], row["top_mass"]],
                               [law.entropy, law.perplexity, law.top_mass], rtol=1e-6)
    built = experiment.build_proxy(k, base, "normal", cfg.noise_scale, "direct", None)
    # the error checked before the run (experiment.annotator_error) is the one the proxy was built from
    np.testing.assert_array_equal(built.proxy.error, experiment.annotator_error(k, "normal", 40, cfg.noise_scale))
    soft_optimum = jax.jit(mdp.soft_optimum)  # one program for the betas, not each operation on its own
    for r in (r for r in rows if r["kind"] == "lab" and r["method"] == "exact" and r["proxy"] == "direct"):
        res = soft_optimum(built.tree, jnp.float32(r["beta"]))
        np.testing.assert_allclose([r["KL"], r["gold"], r["proxy_reward"]],
                                   [float(res.KL), float(res.E_V), float(res.E_U)], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_no_method_beats_the_exact_optimum(tiny):
    """At every beta of the grid: E[proxy] - beta KL of every bon, rl and search point <= the exact optimum's."""
    _, rows = tiny
    lab = [r for r in rows if r["kind"] == "lab"]
    for seed, proxy in ((s, p) for s in (3, 4) for p in ("learned", "direct")):
        mine = [r for r in lab if r["proxy"] == proxy and r["seed"] == seed]
        best = {r["beta"]: r["objective"] for r in mine if r["method"] == "exact"}
        others = [r for r in mine if r["method"] != "exact"]
        for beta, opt in best.items():
            for r in others:
                if r["method"] == "rl" and r["beta"] != beta:
                    continue
                assert r["proxy_reward"] - beta * r["KL"] <= opt + 1e-4 * max(1.0, abs(opt)), (proxy, beta, r)
        for r in (r for r in others if r["method"] == "rl"):
            assert r["gap"] >= -1e-4 and r["objective"] == pytest.approx(best[r["beta"]] - r["gap"], abs=1e-3)


def test_defaults_are_the_issue_sizes():
    cfg = sim.Config()
    assert (cfg.vocab, cfg.depth) == (16, 4) and experiment.check_size(cfg.vocab, cfg.depth) == 54_241
    assert cfg.seeds >= 3  # a finding is an interval over seeds
    assert cfg.rl_steps % cfg.eval_every == 0


@pytest.mark.parametrize("argv, message", [
    (["--noise", "nosuch"], "nosuch"),
    (["--vocab", "64", "--depth", "6"], "terminal sequences"),
    (["--ns", "0"], "n must be"),
    (["--betas", "0"], "beta"),
    (["--rl-betas", "-1"], "--rl-betas"),
    (["--rl-steps", "10", "--eval-every", "3"], "divide"),
    (["--policy", "/nonexistent"], "--tokens"),
    # counts past int32, which the jitted programs take (were OverflowError tracebacks after the LM's training)
    (["--pairs", "1000000000000"], "--pairs must be an integer in [1, 2147483647]"),
    (["--lm-steps", "1099511627776"], "--lm-steps must be"),
    (["--bt-steps", "1099511627776"], "--bt-steps must be"),
    (["--rl-steps", "1099511627776", "--eval-every", "1099511627776"], "--rl-steps must be"),
    (["--ns", "1", "16777217"], "2^24"),
    (["--vocab", "3", "--depth", "1000000000"], "more than 4194304"),  # was a hang: 2^(10^9) formed
    (["--vocab", "2", "--depth", "1000000"], "GiB (estimated)"),  # 10^6 + 1 sequences, but an LM of 10^6 positions
    (["--betas", "1e-31"], "beta=1e-31"),
    (["--noise-scale", "1e308"], "inf"),  # was accepted: float32 eps = inf, NaN comparisons, a fit printed
    (["--noise", "normal", "--noise-scale", "1e16"], "--noise-scale 1e+16, --noise normal"),
    (["--sharpness", "-1"], "--sharpness must be in [0, 100]"),  # the source's knobs (lab.lm.check_source)
    (["--sharpness", "inf"], "--sharpness must be"),
    (["--eos-bias", "nan"], "--eos-bias must be in [-100, 100]"),
    (["--eos-bias", "1e3"], "--eos-bias must be"),
    (["--error-map", "bogus"], "unknown --error-map 'bogus'"),  # lab.error_maps' specs
    (["--error-map", "token:id=15"], "--error-map token: parameter id=15"),  # A = 16: 15 is EOS
    (["--gold", "/nonexistent/rm"], "/nonexistent/rm"),  # was read after config.json and 10 s of the LM's training
])
def test_bad_input_exits_2(argv, message, tmp_path, capsys):
    """One line, exit 2, and nothing written: every input is read and checked before the output directory."""
    out = tmp_path / "o"
    assert cli.run(sim.Config, sim.main, argv + ["--out", str(out), "--lm-steps", "1"] * ("--lm-steps" not in argv),
                   prog="overoptimization") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_memory_estimate_refuses_what_cannot_fit(tmp_path, capsys, monkeypatch):
    """The 4.19M-sequence tree (A=2048, L=2) against 2 GiB available: refused before anything is written; with
    enough memory the same flags pass the check (refused later here only by --noise-scale, before any work)."""
    from goodhart_jax import io

    argv = ["--vocab", "2048", "--depth", "2", "--out", str(tmp_path / "o")]
    monkeypatch.setattr(io, "available_memory", lambda: 2 * 2**30)
    assert cli.run(sim.Config, sim.main, argv, prog="overoptimization") == 2
    err = capsys.readouterr().err.strip()
    assert "4,192,257 sequences" in err and "2.0 GiB is available" in err, err
    monkeypatch.setattr(io, "available_memory", lambda: 2**40)
    assert cli.run(sim.Config, sim.main, argv + ["--noise-scale", "1e308"], prog="overoptimization") == 2
    assert "--noise-scale" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- a checkpoint as pi0
@pytest.mark.slow  # a second tiny run on a transformers checkpoint: compilation again
def test_checkpoint_policy_end_to_end(tmp_path, capsys):
    """--policy DIR --tokens: a tiny random transformers GPT-NeoX causal LM on 4 of its ids is pi0. The run's
    exact rows are the optimum on that LM's tree, whose sequence probabilities are the torch model's own
    (renormalised over the ids); RL starts at pi0 (KL 0) with gap >= 0. A reward checkpoint as --policy: exit 2."""
    torch = pytest.importorskip("torch")
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "lm", arch="gpt_neox", layout="causal_lm", seed=4)
    tokens = (7, 50, 3, 99)  # lab tokens 0..3; model id 99 is EOS
    cfg = sim.Config(out=str(tmp_path / "run"), policy=str(ckpt.path), tokens=tokens, depth=3, noise=("normal",),
                     proxy=("direct",), betas=BETAS, ns=(1, 4), rl_betas=(1.0,), rl_steps=4, eval_every=2,
                     plots=False, seed=5, seeds=1)
    rows = sim.main(cfg)
    lab = [r for r in rows if r["kind"] == "lab"]
    assert {r["method"] for r in lab} == {"bon", "exact", "rl"}  # a direct proxy has no model to search

    key = jax.random.key(cfg.seed)
    base = experiment.build_base(jax.random.fold_in(key, 0), 0, cfg.depth, cfg.policy, tokens)
    # the tree is the torch model's: log pi0(x) of every terminal, token by token, renormalised over `tokens`
    ids = torch.as_tensor([[0] + [tokens[a] for a in row] for row in np.asarray(base.tree.tokens)])
    with torch.no_grad():
        logits = ckpt.torch_model.lm_head(ckpt.torch_model.backbone(input_ids=ids).last_hidden_state).double()
    logp = torch.log_softmax(logits[:, :-1, list(tokens)], -1).numpy()
    x = np.asarray(base.tree.tokens)
    terms = np.take_along_axis(logp, x[..., None], -1)[..., 0]
    real = np.cumsum(x == 3, axis=1) - (x == 3) == 0
    np.testing.assert_allclose(np.asarray(base.tree.log_p), np.where(real, terms, 0).sum(1), atol=2e-5)

    built = experiment.build_proxy(jax.random.fold_in(jax.random.fold_in(key, 1), 0), base, "normal",
                                   cfg.noise_scale, "direct", None)
    for r in (r for r in lab if r["method"] == "exact"):
        res = mdp.soft_optimum(built.tree, jnp.float32(r["beta"]))
        np.testing.assert_allclose([r["KL"], r["gold"], r["proxy_reward"]],
                                   [float(res.KL), float(res.E_V), float(res.E_U)], rtol=1e-4, atol=1e-5)
    rl_rows = sorted((r for r in lab if r["method"] == "rl"), key=lambda r: r["step"])
    assert [r["step"] for r in rl_rows] == [0, 2, 4] and rl_rows[0]["KL"] == pytest.approx(0.0, abs=1e-5)
    assert all(r["gap"] >= -1e-4 for r in rl_rows)

    rm = make_tiny_checkpoint(tmp_path / "rm", arch="gpt_neox", layout="oasst")
    argv = ["--policy", str(rm.path), "--tokens", "1", "2", "3", "--depth", "2", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert cli.run(sim.Config, sim.main, argv, prog="overoptimization") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a causal LM" in err, err


def test_figures_skip_null_rows():
    """A fit nulled for too few points and a lab row nulled for overflow draw nothing (were a TypeError)."""
    from goodhart_jax.plots import overoptimization as plots

    tag = dict(noise="normal", proxy="direct", pairs=None)
    lab = [dict(kind="lab", **tag, **experiment.point("bon", n=n, KL=kl, gold=0.1 * kl, proxy_reward=kl,
                                                          KL_bound=kl + 1)) for n, kl in ((1, 0.0), (4, 0.5))]
    null = dict(kind="lab", **tag, **{f: None for f in experiment.FIELDS}, reason="overflow")
    null.update(method="rl", beta=1.0, step=0, gap=None)
    fit = dict(kind="fit", method="bon", **tag, alpha=None, beta=None, r2=None, points=2, reason="too few")
    figs = plots.figures(lab + [null, fit])
    lines = figs["overoptimization.png"].axes[0].get_lines()
    assert len(lines) == 3  # gold, proxy, the zero line: no fit curve
    assert not figs["rl_gap.png"].axes[0].get_lines()


@pytest.mark.slow  # the tiny run: ~65 s of CPU, nearly all compilation
def test_summary_is_the_mean_over_seeds(tiny):
    """Each summary row is the mean and Student-t interval of its headline rows over both seeds; summary.json
    holds the same rows; the exact optimum's gold at a KL is the optimum at the solved beta (KL = target)."""
    import json

    from scipy import stats

    cfg, rows = tiny
    heads = [r for r in rows if r["kind"] == "headline"]
    summ = [r for r in rows if r["kind"] == "summary"]
    assert summ and json.loads((Path(cfg.out) / "summary.json").read_text()) == dict(
        seeds=[3, 4], level=0.95, rows=summ)
    for s in summ:
        v = np.asarray([h["value"] for h in heads if all(h[k] == s[k] for k in sim.summary.GROUP)
                        and h["value"] is not None], float)
        assert s["seeds"] == len(v) and s["of"] == 2
        if len(v) == 2:
            lo, hi = stats.t.interval(0.95, 1, loc=v.mean(), scale=stats.sem(v)) if np.ptp(v) else (v[0], v[0])
            np.testing.assert_allclose([s["mean"], s["lo"], s["hi"]], [v.mean(), lo, hi], rtol=1e-9, atol=1e-12)
        else:
            assert s["lo"] is None and s["reason"]
    exact = [h for h in heads if h["method"] == "exact" and h["quantity"] == "gold_at_KL" and h["value"] is not None]
    assert exact and all(h["how"].startswith("exact: pi*(beta) at beta = ") for h in exact)


def test_mean_excess_figure():
    """The tail rows' curves: one line per (proxy, law) with a mean excess; null rows (no mass above u) draw
    nothing; no tail rows, no figure."""
    from goodhart_jax.plots import overoptimization as plots

    tag = dict(noise="normal", proxy="direct", pairs=None)
    rows = [dict(kind="tail", **tag, law=law, beta=beta, of=of, q=q, u=u, mean_excess=e, mass_above=0.1)
            for of in ("X", "proxy") for law, beta in (("pi0", None), ("pi*", 1.0), ("pi*", 0.05))
            for q, u, e in ((0.5, 0.0, 1.0), (0.9, 1.0, 0.8))]
    for r in rows:
        if r["beta"] == 0.05 or (r["beta"] == 1.0 and r["of"] == "proxy"):
            r.update(mean_excess=None, reason="no mass above u")
    x_ax, proxy_ax = plots.mean_excess(rows).axes[:2]
    assert [len(line.get_xdata()) for line in x_ax.get_lines()] == [2, 2]  # pi0 and pi*(1); pi*(0.05) all null
    assert len(proxy_ax.get_lines()) == 1
    lab = [dict(kind="lab", **tag, **experiment.point("bon", n=n, KL=kl, gold=0.1 * kl, proxy_reward=kl,
                                                          KL_bound=kl + 1)) for n, kl in ((1, 0.0), (4, 0.5))]
    assert "mean_excess.png" in plots.figures(lab + rows)
    assert "mean_excess.png" not in plots.figures(lab + [dict(r, mean_excess=None) for r in rows])
