"""Overoptimization lab: a tiny causal LM optimised against learned and direct proxies, scored by a gold reward.

pi0 is a small GPT-NeoX LM trained on a random Markov source (or --policy on --tokens); its tree is enumerated,
so every method is exact: best-of-n's law, the KL-penalised optimum pi*(beta), RLOO from pi0 (with its
gap to pi*'s objective), and GCG on the learned proxy against the enumerated argmax. Annotator error eps per
sequence from each --noise family; proxies "learned" (Bradley-Terry on --pairs comparisons) and "direct" (gold +
eps). Gao et al.'s forms are fitted to gold against d = sqrt(KL).

    python sims/overoptimization.py                       # defaults: A=16, L=5 (813,616 sequences)
    python sims/overoptimization.py --noise normal --proxy direct --rl-betas --json
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import math

import jax
import numpy as np

from goodhart_jax import best_of_n, io, mdp, tails
from goodhart_jax.lab import experiment, fits

LAB_NUMBERS = ("KL", "d", "gold", "proxy_reward", "objective", "KL_bound", "optimum", "gap", "argmax_proxy",
               "argmax_gold", "share_closed")
INT32_MAX = 2**31 - 1  # counts (steps, pairs) enter the jitted programs as int32 (lax.scan, randint, RL's step)
N_MAX = 2**24  # best-of-n sizes are float32 inside (bon's law): integers above 2^24 would round


def count(flag: str, hi: int = INT32_MAX, why: str = "2^31 - 1: it enters the jitted programs as int32"):
    """Check: every value is an integer in [1, hi] (one line naming `flag` and `why` otherwise)."""
    return cli.each(flag, lambda x: math.isfinite(x) and int(x) == x and 1 <= x <= hi,
                    f"an integer in [1, {hi}] ({why})")


check_n = count("n", N_MAX, "2^24: n is float32 in the exact law")


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    vocab: int = cli.arg(16, "lab tokens A, the last EOS (the tree has sum_k (A-1)^k sequences)", metavar="A")
    depth: int = cli.arg(5, "maximum length L", metavar="L")
    noise: tuple[str, ...] = cli.arg(("normal", "student_t:df=2"), "annotator error families", metavar="FAMILY")
    noise_scale: float = cli.arg(1.0, "scale of the annotator error (gold has sd 1 under pi0)", metavar="S",
                                 check=cli.positive("--noise-scale"))
    proxy: tuple[str, ...] = cli.arg(("learned", "direct"), "proxy kinds", choices=("learned", "direct"))
    pairs: tuple[int, ...] = cli.arg((4000,), "BT comparisons per learned proxy", metavar="N",
                                     check=count("--pairs"))
    betas: tuple[float, ...] = cli.arg(tuple(float(b) for b in np.geomspace(0.05, 10.0, 12)),
                                       "KL coefficients of the exact optimum (default: 12, log grid 0.05 .. 10)",
                                       metavar="B", show_default=False, check=cli.positive("beta"))
    ns: tuple[int, ...] = cli.arg(tuple(4**k for k in range(9)), "best-of-n sizes", metavar="N",
                                  check=lambda ns: (best_of_n.check_ns(ns), check_n(ns)))
    rl_betas: tuple[float, ...] = cli.arg((0.3, 1.0), "KL coefficients of RL (none: no RL)", metavar="B", nargs="*")
    rl_steps: int = cli.arg(500, "RL steps (batch 128)", metavar="S", check=count("--rl-steps"))
    eval_every: int = cli.arg(100, "RL steps between exact evaluations (divides --rl-steps)", metavar="E",
                              check=count("--eval-every"))
    search: bool = cli.arg(True, "GCG on each learned proxy")
    lm_steps: int = cli.arg(600, "training steps of the lab LM", metavar="S", check=count("--lm-steps"))
    bt_steps: int = cli.arg(600, "Bradley-Terry training steps per learned proxy", metavar="S",
                            check=count("--bt-steps"))
    policy: str = cli.arg("", "causal-LM checkpoint as pi0 (with --tokens)", metavar="DIR", show_default=False)
    tokens: tuple[int, ...] = cli.arg((), "model ids of the lab tokens, the last EOS", metavar="ID")
    gold: str = cli.arg("", "reward-model checkpoint as gold (default: a random lab reward model)", metavar="DIR",
                        show_default=False)
    seed: int = cli.arg(0, "PRNG seed", metavar="S", check=cli.seed)

    def __post_init__(self):
        super().__post_init__()
        if any(not (np.isfinite(b) and b > 0) for b in self.rl_betas):
            raise cli.InputError(f"--rl-betas: beta must be finite and > 0, got {list(self.rl_betas)}")
        if self.rl_steps % self.eval_every:
            raise cli.InputError(f"--eval-every {self.eval_every} must divide --rl-steps {self.rl_steps}")
        if self.policy and not self.tokens:
            raise cli.InputError("--policy needs --tokens: the model ids of the lab tokens, the last EOS")
        if self.tokens and not self.policy and (not self.gold or len(self.tokens) != self.vocab):
            raise cli.InputError("--tokens without --policy names --gold's model ids: give --gold and --vocab ids")


def prepare(cfg: Config):
    """Read and check every input before anything is written (config.json included): families, betas, sizes,
    checkpoints, memory, and each family's annotator error on this tree. Returns (checkpoints, N, proxy keys)."""
    with cli.inputs():
        for s in cfg.noise:
            tails.parse(s)
        mdp.check_float32(cfg.betas + cfg.rl_betas, [])
        ck = experiment.load_checkpoints(cfg.vocab, cfg.depth, cfg.policy or None, cfg.tokens, cfg.gold or None)
    vocab = len(ck.policy.tokens) if ck.policy is not None else cfg.vocab
    n = experiment.check_size(vocab, cfg.depth)
    cli.check_memory(estimate_bytes(cfg, ck), f"the lab's tree of {n:,} sequences (A={vocab}, L={cfg.depth})")
    key = jax.random.key(cfg.seed)
    keys = [jax.random.fold_in(jax.random.fold_in(key, 1), i) for i in range(len(cfg.noise))]
    for noise, k in zip(cfg.noise, keys):
        try:
            experiment.check_error(experiment.annotator_error(k, noise, n, cfg.noise_scale), cfg.betas + cfg.rl_betas)
        except ValueError as e:
            raise cli.InputError(f"--noise-scale {cfg.noise_scale:g}, --noise {noise}: {e}") from None
    return ck, n, keys


def estimate_bytes(cfg: Config, ck: experiment.Checkpoints) -> float:
    """Peak memory of this process for the run (`experiment.peak_bytes`; loaded checkpoints are already held)."""
    vocab = len(ck.policy.tokens) if ck.policy is not None else cfg.vocab
    return experiment.peak_bytes(vocab, cfg.depth, ns=len(cfg.ns),
                                 pairs=max(cfg.pairs) if "learned" in cfg.proxy else 0, lm_steps=cfg.lm_steps,
                                 bt_steps=cfg.bt_steps if "learned" in cfg.proxy else 0,
                                 rl=bool(cfg.rl_betas), rl_steps=cfg.rl_steps, checkpoints=ck)


def main(cfg: Config) -> list[dict]:
    """Build pi0, its tree and gold; per (noise, proxy, pairs): diagnostics, every method's points, Gao fits."""
    ck, n, keys = prepare(cfg)
    key = jax.random.key(cfg.seed)
    jobs = [(i, s, k, p) for i, s in enumerate(cfg.noise) for k in cfg.proxy
            for p in (cfg.pairs if k == "learned" else (None,))]
    with cli.Run("overoptimization", cfg) as run:
        base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, ck.policy, cfg.tokens,
                                     ck.gold, cfg.lm_steps)
        run.log(f"overoptimization: pi0 and its tree ({n:,} sequences) built; {len(jobs)} proxies; about "
                f"{estimate_bytes(cfg, ck) / 2**30:.1f} GiB at the peak; writing to {run.dir}")
        for i, noise, kind, pairs in run.progress(jobs, "proxies"):
            k = keys[i]
            built = experiment.build_proxy(k, base, noise, cfg.noise_scale, kind, pairs, cfg.bt_steps)
            tag = dict(noise=noise, proxy=kind, pairs=pairs)
            r = built.report
            row = dict(kind="proxy", **tag, pair_accuracy=r.pair_accuracy, corr=r.corr, xi=r.xi, verdict=r.verdict)
            bad = [f for f in ("pair_accuracy", "corr", "xi") if not np.isfinite(row[f])]
            if bad:  # null in the files: say why (a small tree has no tail fit; anything else is not finite)
                row["reason"] = r.verdict if bad == ["xi"] and r.verdict.startswith("n/a") else \
                    f"{', '.join(bad)} not finite"
            run.emit([row])
            pts = experiment.bon_points(built.tree, cfg.ns) + experiment.exact_points(built.tree, cfg.betas)
            for j, b in enumerate(cfg.rl_betas):
                pts += experiment.rl_points(jax.random.fold_in(jax.random.fold_in(k, 7), j), base, built.tree, b,
                                            cfg.rl_steps, cfg.eval_every)
            if cfg.search:
                pts += experiment.search_points(jax.random.fold_in(k, 8), built, base)
            pts = [io.null_nonfinite(p, [f for f in LAB_NUMBERS if f in p]) for p in pts]  # a safety net
            run.emit([dict(kind="lab", **tag, **p) for p in pts])
            run.emit([dict(kind="fit", **tag, **f) for f in experiment.gao_fits(pts)])  # "rl": one per beta
        if cfg.plots:
            from goodhart_jax.plots import overoptimization as plots

            for name, fig in plots.figures(run.rows).items():
                run.figure(name, fig)
        run.table([r for r in run.rows if r["kind"] == "proxy"], [
            ("noise", "noise", ""), ("proxy", "proxy", ""), ("pairs", "pairs", "d"),
            ("pair accuracy", "pair_accuracy", ".3f"), ("corr", "corr", ".3f"), ("xi of X", "xi", ".2f"),
            ("verdict", "verdict", "")], title="proxies against gold:")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
