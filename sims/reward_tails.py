"""Reward-tail diagnostics: is a reward model's reward heavy-tailed?

    python sims/reward_tails.py --rewards ../shared/data/kwa2024/random_starling_reward_values.npy \
        [--k K [K ...]] [--demean] [--positive-only] [--out DIR] [--json]
    python sims/reward_tails.py --model DIR [--base-model DIR] --random-tokens N --length L ...

Writes DIR/diagnostics.png (the paper's 2x2 figure), DIR/estimators.png
(estimators against k), DIR/results.json and DIR/config.json. With --json,
stdout carries only JSON lines: one {"kind": "hill", "k", "xi", "se"} per k
(the paper's range when no --k is given: int(n^0.1)..int(n^0.5)-1 as in
Figure 1, or int(n^0.1)..int(n^0.6)-1 as in Figure 2 with --paper-figure 2), then
{"kind": "verdict", ...}, then {"kind": "compare", ...} per --compare value.
Bad input prints one line to stderr and exits with status 2.

--model scores uniformly random token sequences with the reward head of
`goodhart_jax.models.load_model` / `reward_scorer` (issue 4), imported only
when the flag is used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from goodhart_jax.io import log, save_figure, save_json  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    rewards: str = ""  # .npy (or .txt) 1-D array of rewards
    model: str = ""  # reward-model directory (issue 4's loader); alternative to --rewards
    base_model: str = ""  # base-model directory for checkpoints without a config (Starling)
    random_tokens: int = 0  # with --model: number of random sequences N
    length: int = 0  # with --model: sequence length L
    batch: int = 8  # with --model: scoring batch size
    k: tuple = ()  # Hill k values to report (default: the paper's range)
    paper_figure: int = 1  # whose Hill k range is the default: Figure 1 (k < n^0.5) or Figure 2 (k < n^0.6)
    demean: bool = False  # subtract the mean before the log-based estimators
    positive_only: bool = False  # keep only positive values for the log-based estimators
    tail_fraction: float = 0.1  # share of the sample above the POT threshold
    level: float = 0.95  # interval level
    bayes: bool = True  # NUTS posterior of the GPD shape (else MLE Wald interval)
    num_warmup: int = 400  # NUTS warm-up
    num_samples: int = 800  # NUTS draws
    num_boot: int = 200  # double-bootstrap replicates
    compare: str = ""  # file of extra values (e.g. ACG rewards) placed against the fitted tail
    out: str = "runs/reward_tails"  # output directory
    seed: int = 0  # PRNG seed
    json: bool = False  # JSON lines only on stdout


def build_parser() -> argparse.ArgumentParser:
    """argparse built from the Config fields."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"(default: {f.default!r})"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, type=int, nargs="+", default=f.default, metavar="K", help=help_)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=help_)
    return p


# ----------------------------------------------------------------------------
# Inputs.


def load_values(path: str) -> np.ndarray:
    """A 1-D numeric array from .npy or a text file (one value a line)."""
    from goodhart_jax.tail_index import TailInputError

    p = Path(path)
    if not p.is_file():
        raise TailInputError(f"no such file: {path}")
    try:
        if p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            a = np.loadtxt(p, ndmin=1)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TailInputError(f"{path} is not a numeric array file: {first}") from None
    if not isinstance(a, np.ndarray):
        raise TailInputError(f"{path} holds no single array")
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number)):
        raise TailInputError(f"{path}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise TailInputError(f"{path}: expected a 1-D array of rewards, got shape {a.shape}")
    return a


def score_random_tokens(cfg: Config) -> np.ndarray:
    """Rewards of N uniformly random token sequences of length L from the issue-4 scorer."""
    import jax
    import jax.numpy as jnp

    from goodhart_jax.tail_index import TailInputError

    if cfg.random_tokens <= 0 or cfg.length <= 0:
        raise TailInputError("--model needs --random-tokens N > 0 and --length L > 0")
    try:
        import goodhart_jax.models as models  # lazy: issue 4
    except ImportError as e:
        raise TailInputError(f"--model needs goodhart_jax.models (issue 4), which cannot be imported: {e}") from None
    load, to_scorer = getattr(models, "load_model", None), getattr(models, "reward_scorer", None)
    if load is None or to_scorer is None:
        raise TailInputError("--model needs goodhart_jax.models.load_model and reward_scorer (issue 4)")
    bad_checkpoint = (OSError, ValueError, KeyError) + ((models.CheckpointError,) if hasattr(models, "CheckpointError") else ())
    try:
        scorer = to_scorer(load(cfg.model, base_model=cfg.base_model or None))
    except bad_checkpoint as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TailInputError(f"cannot load reward model from {cfg.model}: {first}") from None
    score = jax.jit(scorer.score_tokens)
    key = jax.random.key(cfg.seed + 1)
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, cfg.random_tokens, cfg.batch), file=sys.stderr, desc="scoring"):
        b = min(cfg.batch, cfg.random_tokens - start)
        key, sub = jax.random.split(key)
        ids = jax.random.randint(sub, (cfg.batch, cfg.length), 0, scorer.vocab_size)
        mask = jnp.ones_like(ids)
        out.append(np.asarray(score(scorer.params, ids, mask))[:b])
    return np.concatenate(out)


# ----------------------------------------------------------------------------
# Main.


def _f(v) -> float:
    v = float(v)
    return v if np.isfinite(v) else None


def main(cfg: Config) -> dict:
    """Run the diagnostics; returns the results dict (also written to cfg.out)."""
    import jax

    from goodhart_jax import tail_index as ti
    from goodhart_jax.plots import reward_tails as tail_plots  # moved from goodhart_jax/tail_plots.py
    from goodhart_jax.gpd import pot_tail

    if bool(cfg.rewards) == bool(cfg.model):
        raise ti.TailInputError("give exactly one of --rewards FILE or --model DIR")
    if not 0.0 < cfg.tail_fraction < 0.5:
        raise ti.TailInputError(f"--tail-fraction must be in (0, 0.5), got {cfg.tail_fraction}")
    if not 0.0 < cfg.level < 1.0:
        raise ti.TailInputError(f"--level must be in (0, 1), got {cfg.level}")
    if cfg.paper_figure not in ti.PAPER_K_EXPONENTS:
        raise ti.TailInputError(f"--paper-figure must be 1 or 2, got {cfg.paper_figure}")
    raw = load_values(cfg.rewards) if cfg.rewards else score_random_tokens(cfg)
    x = ti.check_sample(raw)
    n = x.shape[0]
    source = cfg.rewards or f"{cfg.model} ({cfg.random_tokens} random sequences of {cfg.length} tokens)"
    log(f"{source}: n = {n}, mean = {x.mean():.4g}, sd = {x.std():.4g}")

    x_desc = np.asarray(ti.preprocess(x, demean=cfg.demean, positive_only=cfg.positive_only))
    n_pos = int((x_desc > 0).sum())
    if cfg.k:
        for k in cfg.k:
            if k < 1 or k >= n:
                raise ti.TailInputError(f"k = {k} is out of range: need 1 <= k < n = {n}")
            if k >= n_pos:
                raise ti.TailInputError(
                    f"Hill at k = {k} needs the {k + 1} largest values positive; only {n_pos} are "
                    "(try --demean --positive-only)"
                )
        ks = np.asarray(sorted(set(cfg.k)))
    else:
        ks = ti.paper_k_range(n, cfg.paper_figure)
        ks = ks[ks < n_pos]
        if ks.size == 0:
            log(f"no Hill rows: only {n_pos} positive values (try --demean --positive-only)")

    key = jax.random.key(cfg.seed)
    diag = ti.diagnose(
        key,
        x,
        demean=cfg.demean,
        positive_only=cfg.positive_only,
        tail_fraction=cfg.tail_fraction,
        level=cfg.level,
        bayes=cfg.bayes,
        num_warmup=cfg.num_warmup,
        num_samples=cfg.num_samples,
        num_boot=cfg.num_boot,
    )
    hill_rows = [
        {"kind": "hill", "k": int(k), "xi": _f(diag.hill.xi[k - 1]), "se": _f(diag.hill.se[k - 1])} for k in ks
    ]

    # POT shape over a grid of thresholds, for the estimators plot.
    k_hi = max(min(n // 4, 5000), 40)
    grid = np.unique(np.geomspace(30, k_hi, 14).astype(int))
    x_raw_desc = np.sort(x)[::-1]
    mle_curve = ti.mle_curve(x_raw_desc, grid)

    fit, post = diag.gpd_mle, diag.gpd_bayes
    z = ti.two_sided_z(cfg.level)
    m = int(fit.n)
    verdict = {
        "kind": "verdict",
        "verdict": diag.verdict.verdict,
        "reason": diag.verdict.reason,
        "source": source,
        "n": n,
        "demean": cfg.demean,
        "positive_only": cfg.positive_only,
        "level": cfg.level,
        "threshold": diag.threshold,
        "n_exceed": m,
        "gpd_mle": {
            "xi": _f(fit.xi),
            "se": _f(fit.xi_se),
            "lo": _f(fit.xi - z * fit.xi_se),
            "hi": _f(fit.xi + z * fit.xi_se),
            "sigma": _f(fit.sigma),
            "converged": bool(fit.converged),
        },
        "gpd_bayes": None
        if post is None
        else {
            "xi_mean": _f(post.xi_mean),
            "lo": _f(post.xi_lo),
            "hi": _f(post.xi_hi),
            "p_heavy": _f(post.p_heavy),
            "sigma_mean": _f(post.sigma.mean()),
            "num_divergent": int(post.num_divergent),
            "r_hat": _f(post.r_hat),
        },
        "hill_k_star": None
        if diag.k_star is None
        else {
            "k": int(diag.k_star.k),
            "k1": int(diag.k_star.k1),
            "k2": int(diag.k_star.k2),
            "xi": _f(diag.hill.xi[int(diag.k_star.k) - 1]),
            "se": _f(diag.hill.se[int(diag.k_star.k) - 1]),
        },
        "hill_paper_range": None
        if ks.size == 0 or cfg.k
        else {
            "k_min": int(ks[0]),
            "k_max": int(ks[-1]),
            "xi_at_k_max": _f(diag.hill.xi[ks[-1] - 1]),
            "se_at_k_max": _f(diag.hill.se[ks[-1] - 1]),
        },
        "evidence": [e._asdict() for e in diag.verdict.evidence],
    }

    compare_rows = []
    if cfg.compare:
        extra = load_values(cfg.compare).astype(np.float64)
        tail = pot_tail(extra, diag.threshold, fit.sigma, fit.xi, m / n)
        for i, a in enumerate(extra):
            log_tail = float(tail.log_sf[i])
            compare_rows.append(
                {
                    "kind": "compare",
                    "index": i,
                    "value": float(a),
                    "z": float((a - x.mean()) / x.std()),
                    "frac_sample_above": float((x >= a).mean()),
                    "gpd_log10_tail_prob": log_tail / np.log(10.0) if np.isfinite(log_tail) else None,
                    "beyond_gpd_end_point": bool(tail.beyond_end[i]),
                    "gpd_end_point": _f(tail.end_point),
                }
            )

    out = Path(cfg.out)
    label = ("demeaned, " if cfg.demean else "") + ("positives only" if cfg.positive_only else "raw values")
    name = Path(cfg.rewards).name if cfg.rewards else Path(cfg.model).name
    fig = tail_plots.diagnostic_figure(
        x,
        diag.hill,
        ks if ks.size else np.arange(1, 2),
        title=f"{name}: n = {n}",
        hill_label=label,
    )
    save_figure(fig, out / "diagnostics.png", dpi=80)
    fig = tail_plots.estimators_figure(
        diag, k_hi, mle_curve, title=f"{name}: tail-index estimators ({verdict['verdict']})"
    )
    save_figure(fig, out / "estimators.png", dpi=80)

    results = {
        "hill": hill_rows,
        "verdict": verdict,
        "compare": compare_rows,
        "gpd_mle_curve": [
            {"k": int(k), "xi": _f(a), "se": _f(b)} for k, a, b in zip(mle_curve.k, mle_curve.xi, mle_curve.se)
        ],
    }
    save_json(out / "results.json", results)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["k"] = list(cfg.k)
    save_json(out / "config.json", cfg_dict)
    log(f"wrote {out}/diagnostics.png, estimators.png, results.json, config.json")
    return results


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = Config(**{f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v) for f in dataclasses.fields(Config)})
    from goodhart_jax.tail_index import TailInputError

    try:
        results = main(cfg)
    except TailInputError as e:
        print(f"reward_tails: error: {e}", file=sys.stderr)
        return 2
    if cfg.json:
        for row in results["hill"] + [results["verdict"]] + results["compare"]:
            print(json.dumps(row))
    else:
        v = results["verdict"]
        print(f"verdict: {v['verdict']} - {v['reason']}")
        for e in v["evidence"]:
            print(f"  {e['name']:>12}: xi = {e['xi']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] (k = {e['k']}, vote {e['vote']})")
        if v["hill_paper_range"]:
            h = v["hill_paper_range"]
            print(f"  Hill over k = {h['k_min']}..{h['k_max']}: xi(k_max) = {h['xi_at_k_max']:.3f} +- {h['se_at_k_max']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
