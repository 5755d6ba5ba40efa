"""Overoptimization lab: a tiny causal LM optimised against learned and direct proxies, scored by a gold reward.

pi0 is a small GPT-NeoX LM trained on a random Markov source (or --policy on --tokens); its tree is enumerated,
so every method is exact: best-of-n's law, the KL-penalised optimum pi*(beta), RLOO on the LM itself (with its
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

import jax
import numpy as np

from goodhart_jax import best_of_n, tails
from goodhart_jax.lab import experiment, fits


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    vocab: int = cli.arg(16, "lab tokens A, the last EOS (the tree has sum_k (A-1)^k sequences)", metavar="A")
    depth: int = cli.arg(5, "maximum length L", metavar="L")
    noise: tuple[str, ...] = cli.arg(("normal", "student_t:df=2"), "annotator error families", metavar="FAMILY")
    noise_scale: float = cli.arg(1.0, "scale of the annotator error (gold has sd 1 under pi0)", metavar="S",
                                 check=cli.positive("--noise-scale"))
    proxy: tuple[str, ...] = cli.arg(("learned", "direct"), "proxy kinds", choices=("learned", "direct"))
    pairs: tuple[int, ...] = cli.arg((4000,), "BT comparisons per learned proxy", metavar="N",
                                     check=cli.at_least("--pairs", 1))
    betas: tuple[float, ...] = cli.arg(tuple(float(b) for b in np.geomspace(0.05, 10.0, 12)),
                                       "KL coefficients of the exact optimum (default: 12, log grid 0.05 .. 10)",
                                       metavar="B", show_default=False, check=cli.positive("beta"))
    ns: tuple[int, ...] = cli.arg(tuple(4**k for k in range(9)), "best-of-n sizes", metavar="N",
                                  check=best_of_n.check_ns)
    rl_betas: tuple[float, ...] = cli.arg((0.3, 1.0), "KL coefficients of RL (none: no RL)", metavar="B", nargs="*")
    rl_steps: int = cli.arg(200, "RL steps", metavar="S", check=cli.at_least("--rl-steps", 1))
    eval_every: int = cli.arg(40, "RL steps between exact evaluations (divides --rl-steps)", metavar="E",
                              check=cli.at_least("--eval-every", 1))
    search: bool = cli.arg(True, "GCG on each learned proxy")
    lm_steps: int = cli.arg(600, "training steps of the lab LM", metavar="S", check=cli.at_least("--lm-steps", 1))
    bt_steps: int = cli.arg(600, "Bradley-Terry training steps per learned proxy", metavar="S",
                            check=cli.at_least("--bt-steps", 1))
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


def main(cfg: Config) -> list[dict]:
    """Build pi0, its tree and gold; per (noise, proxy, pairs): diagnostics, every method's points, Gao fits."""
    with cli.inputs():
        for s in cfg.noise:
            tails.parse(s)
        experiment.check_size(cfg.vocab if not cfg.policy else len(cfg.tokens), cfg.depth)
    key = jax.random.key(cfg.seed)
    jobs = [(i, s, k, p) for i, s in enumerate(cfg.noise) for k in cfg.proxy
            for p in (cfg.pairs if k == "learned" else (None,))]
    with cli.Run("overoptimization", cfg) as run:
        with cli.inputs():  # a bad checkpoint is one line: nothing is logged before it is read
            base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, cfg.policy or None,
                                         cfg.tokens, cfg.gold or None, cfg.lm_steps)
        run.log(f"overoptimization: pi0 and its tree built; {len(jobs)} proxies, writing to {run.dir}")
        for i, noise, kind, pairs in run.progress(jobs, "proxies"):
            k = jax.random.fold_in(jax.random.fold_in(key, 1), i)
            built = experiment.build_proxy(k, base, noise, cfg.noise_scale, kind, pairs, cfg.bt_steps)
            tag = dict(noise=noise, proxy=kind, pairs=pairs)
            r = built.report
            run.emit([dict(kind="proxy", **tag, pair_accuracy=r.pair_accuracy, corr=r.corr, xi=r.xi,
                           verdict=r.verdict)])
            pts = experiment.bon_points(built.tree, cfg.ns) + experiment.exact_points(built.tree, cfg.betas)
            for j, b in enumerate(cfg.rl_betas):
                pts += experiment.rl_points(jax.random.fold_in(jax.random.fold_in(k, 7), j), base, built.tree, b,
                                            cfg.rl_steps, cfg.eval_every)
            if cfg.search:
                pts += experiment.search_points(jax.random.fold_in(k, 8), built, base)
            run.emit([dict(kind="lab", **tag, **p) for p in pts])
            run.emit([dict(kind="fit", method=m, **tag, **f) for m, f in experiment.gao_fits(pts).items()])
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
