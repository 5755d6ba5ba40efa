"""Reward-tail diagnostics: is a reward model's reward heavy-tailed? (Kwa et al. 2024, Figures 1, 2 and 5)

Hill (the paper's k range), moment, Pickands, double-bootstrap k*, POT GPD fits (MLE, NUTS) and a verdict,
on a file of rewards or on the rewards of N random token sequences (--model). Writes diagnostics.png (the
paper's 2x2 figure), estimators.png, results.json, config.json; --json rows: "hill", "verdict", "compare".

    python sims/reward_tails.py --rewards ../shared/data/kwa2024/random_starling_reward_values.npy --demean
    python sims/reward_tails.py --model DIR [--base-model DIR] --random-tokens N --length L --json
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
from pathlib import Path

import jax
import numpy as np

from goodhart_jax import tail_index as ti


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    out: str = cli.arg("runs/reward_tails", "output directory", metavar="DIR")
    rewards: str = cli.arg("", "1-D array of rewards: .npy, or text with one value a line", metavar="FILE")
    model: str = cli.arg("", "reward-model directory: score --random-tokens sequences instead", metavar="DIR")
    base_model: str = cli.arg("", "config directory for a checkpoint that ships none (Starling)", metavar="DIR")
    random_tokens: int = cli.arg(0, "with --model: N random sequences", metavar="N", check=cli.at_least("N", 0))
    length: int = cli.arg(0, "with --model: their length L", metavar="L", check=cli.at_least("L", 0))
    batch: int = cli.arg(8, "with --model: scoring batch size", metavar="B", check=cli.at_least("batch size", 1))
    k: tuple[int, ...] = cli.arg((), "Hill k values to report (default: the paper's range)", metavar="K", nargs="+")
    paper_figure: int = cli.arg(1, "default k range: Figure 1 (k < n^0.5) or Figure 2 (k < n^0.6)",
                                metavar="{1,2}",
                                check=cli.each("--paper-figure", lambda v: v in ti.PAPER_K_EXPONENTS, "1 or 2"))
    demean: bool = cli.arg(False, "subtract the mean before the log-based estimators (Hill, moment)")
    positive_only: bool = cli.arg(False, "keep only positive values for the log-based estimators")
    tail_fraction: float = cli.arg(0.1, "share of the sample above the POT threshold", metavar="F",
                                   check=cli.within("--tail-fraction", 0.0, 0.5))
    level: float = cli.arg(0.95, "interval level", metavar="P", check=cli.within("--level", 0.0, 1.0))
    bayes: bool = cli.arg(True, "NUTS posterior of the GPD shape (else the MLE's Wald interval)")
    num_warmup: int = cli.arg(400, "NUTS warm-up steps", metavar="N", check=cli.at_least("NUTS warm-up", 0))
    num_samples: int = cli.arg(800, "NUTS draws", metavar="N", check=cli.at_least("NUTS draws", 1))
    num_boot: int = cli.arg(200, "double-bootstrap replicates", metavar="N", check=cli.at_least("replicates", 1))
    compare: str = cli.arg("", "values (e.g. ACG rewards) placed against the fitted tail", metavar="FILE")
    seed: int = cli.arg(0, "PRNG seed (the random tokens use seed + 1)", metavar="S", check=cli.seed)


def score_random_tokens(cfg: Config) -> np.ndarray:
    """Rewards [N] of N sequences of L token ids drawn uniformly (key seed + 1), scored by the reward head."""
    from goodhart_jax import models
    from goodhart_jax.models.scoring import max_length

    model = models.load_model(cfg.model, base_model=cfg.base_model or None)  # CheckpointError: bad input
    if model.reward_head is None:
        raise cli.InputError(f"--model {cfg.model} is a causal LM with no reward head")
    if (m := max_length(model)) is not None and cfg.length > m:
        raise cli.InputError(f"--length {cfg.length}: the model takes at most {m} tokens")
    cli.check_out_dir(cfg.out)  # fail now, not after the scoring, if --out cannot be written (creates nothing)
    ids = jax.random.randint(jax.random.key(cfg.seed + 1), (cfg.random_tokens, cfg.length), 0, model.vocab_size)
    mesh = models.data_mesh()
    with cli.Run.progress(None, "scoring", total=cfg.random_tokens) as bar:
        return models.score_array(models.make_reward_fn(model), models.shard_params(model.params, mesh), ids,
                                  batch_size=cfg.batch, mesh=mesh, progress=bar.update)


def hill_row(diag: ti.Diagnosis, k: int) -> dict:
    """One "hill" row; a NaN says why (`tail_index.hill_problem`)."""
    row = dict(kind="hill", k=k, xi=float(diag.hill.xi[k - 1]), se=float(diag.hill.se[k - 1]))
    return row | (dict(reason=why) if (why := ti.hill_problem(diag, k)) else {})


def mle_row(k: int, xi: float, se: float) -> dict:
    """One gpd_mle_curve point: the POT MLE over the top k; a shape or se that cannot be reported is null."""
    xi_why, se_why = ti.mle_problem(xi, se)
    row = dict(k=k, xi=np.nan if xi_why else float(xi), se=np.nan if se_why else float(se))
    return row | (dict(reason=xi_why or se_why) if xi_why or se_why else {})


def validate(cfg: Config) -> None:
    """The flags together (each field checks itself); bad input raises InputError."""
    if bool(cfg.rewards) == bool(cfg.model):
        raise cli.InputError("give exactly one of --rewards FILE or --model DIR")
    if cfg.model and (cfg.random_tokens <= 0 or cfg.length <= 0):
        raise cli.InputError("--model needs --random-tokens N > 0 and --length L > 0")


def main(cfg: Config) -> dict:
    """Diagnose the sample; returns results.json's dict {"hill", "verdict", "compare", "gpd_mle_curve"}.

    Every input (flags, files, the sample's tail) is read and checked before the output directory is made.
    """
    validate(cfg)
    hint = "" if cfg.demean and cfg.positive_only else " (try --demean --positive-only)"
    with cli.inputs():  # a TailInputError (a ValueError) is bad input: the sample, or a k it cannot give
        extra = ti.load_sample(cfg.compare, min_samples=1).astype(np.float64) if cfg.compare else None
    scores = None if cfg.rewards else score_random_tokens(cfg)  # outside: a ValueError in the model is a bug
    source = cfg.rewards or f"{cfg.model} ({cfg.random_tokens} random sequences of {cfg.length} tokens)"
    with cli.inputs():
        x = ti.load_sample(cfg.rewards) if cfg.rewards else ti.check_sample(scores)
        ti.check_tail(x, cfg.tail_fraction, what="--tail-fraction")  # a tail to fit, before anything is written
        # Positives in float64, as diagnose sees them.
        x_pos = ti.preprocess(x.astype(np.float64), demean=cfg.demean, positive_only=cfg.positive_only)
        n, n_pos = x.shape[0], int((x_pos > 0).sum())
        try:
            ks = ti.hill_k_values(n, n_pos, cfg.k, cfg.paper_figure)
        except ti.TailInputError as e:  # too few positive values: the flags that make more
            raise ti.TailInputError(f"{e}{hint}" if str(e).startswith("Hill at k") else str(e)) from None
    with cli.Run("reward_tails", cfg, results=None) as run:
        mean, sd = ti.mean_sd(x)
        run.log(f"{source}: n = {n}, mean = {mean:.4g}, sd = {sd:.4g}; writing to {run.dir}")
        if ks.size == 0:
            run.log(f"no Hill rows: only {n_pos} positive values{hint}")
        diag = ti.diagnose(jax.random.key(cfg.seed), x, demean=cfg.demean, positive_only=cfg.positive_only,
                           tail_fraction=cfg.tail_fraction, level=cfg.level, bayes=cfg.bayes,
                           num_warmup=cfg.num_warmup, num_samples=cfg.num_samples, num_boot=cfg.num_boot)
        k_hi = max(min(n // 4, 5000), 40)  # POT shape over a grid of thresholds, for the estimators plot
        grid = np.unique(np.geomspace(30, k_hi, 14).astype(int))
        mle_rows = [mle_row(int(k), a, b) for k, a, b in zip(*ti.mle_curve(np.sort(x)[::-1], grid))]
        mle = ti.TailCurve(*(np.array([r[f] for r in mle_rows]) for f in ("k", "xi", "se")))  # NaN where null
        verdict = dict(kind="verdict", **ti.summary(diag, cfg.level, None if cfg.k else ks), source=source, n=n,
                       demean=cfg.demean, positive_only=cfg.positive_only, level=cfg.level)
        compare = [dict(kind="compare", **r) for r in ti.place_values(extra, x, diag)] if extra is not None else []
        if cfg.plots:
            from goodhart_jax.plots import reward_tails as plots
            for fname, fig in plots.figures(x, diag, ks, k_hi, mle, Path(cfg.rewards or cfg.model).name,
                                            cfg.demean, cfg.positive_only).items():
                run.figure(fname, fig, dpi=80)  # the README's figures' size
        hill = [hill_row(diag, int(k)) for k in ks]
        results = dict(hill=hill, verdict=verdict, compare=compare, gpd_mle_curve=mle_rows)
        run.save_json("results.json", results)
        run.emit(hill + [verdict] + compare)  # stdout with --json
        if not cfg.json:  # a summary on stdout
            h = verdict["hill_paper_range"]
            print(diag.verdict.text() + ("" if h is None else f"\n  Hill over k = {h['k_min']}..{h['k_max']}: "
                                         f"xi(k_max) = {h['xi_at_k_max']:.3f} +- {h['se_at_k_max']:.3f}"))
    return results


if __name__ == "__main__":
    cli.main(Config, main)
