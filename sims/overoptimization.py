"""Overoptimization lab: a tiny causal LM optimised against learned and direct proxies, scored by a gold reward.

pi0 is a small GPT-NeoX LM trained on a random Markov source (or --policy on --tokens); its tree is enumerated,
so every method is exact: best-of-n's law, the KL-penalised optimum pi*(beta), RLOO from pi0 (with its
gap to pi*'s objective), and GCG on the learned proxy against the enumerated argmax. Annotator error eps per
sequence from each --noise family, i.i.d. or through --error-map (lab.error_maps); proxies "learned"
(Bradley-Terry on --pairs comparisons) and "direct" (gold + eps), each standardised to mean 0, sd 1 under pi0.
Gao et al.'s forms are fitted to gold against d = sqrt(KL).
Each of --seeds seeds redraws everything random; summary.json and the end-of-run tables give the mean and a 95%
interval over the seeds of the headline numbers (`lab.summary`).

    python sims/overoptimization.py                       # defaults: A=16, L=4 (54,241 sequences), 3 seeds
    python sims/overoptimization.py --noise normal --proxy direct --rl-betas --json
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax
import jax.numpy as jnp

from goodhart_jax import planning, tails
from goodhart_jax.cli import lab_flags
from goodhart_jax.lab import error_maps, experiment, summary
from goodhart_jax.lab import tree as lab_tree


@dataclasses.dataclass(frozen=True)
class Config(lab_flags.LabRLConfig):
    noise: tuple[str, ...] = cli.arg(("normal", "student_t:df=2"), "annotator error families", metavar="FAMILY")
    proxy: tuple[str, ...] = cli.arg(("learned", "direct"), "proxy kinds", choices=("learned", "direct"))
    pairs: tuple[int, ...] = cli.arg((4000,), "BT comparisons per learned proxy", metavar="N",
                                     check=cli.count("--pairs"))
    rl_betas: tuple[float, ...] = lab_flags.rl_betas((0.3, 1.0))
    search: bool = cli.arg(True, "GCG on each learned proxy")
    bt_steps: int = cli.arg(600, "Bradley-Terry training steps per learned proxy", metavar="S",
                            check=cli.count("--bt-steps"))
    policy: str = cli.arg("", "causal-LM checkpoint as pi0 (with --tokens)", metavar="DIR", show_default=False)
    tokens: tuple[int, ...] = cli.arg((), "model ids of the lab tokens, the last EOS", metavar="ID")
    gold: str = cli.arg("", "reward-model checkpoint as gold (default: a random lab reward model)", metavar="DIR",
                        show_default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.policy and not self.tokens:
            raise cli.InputError("--policy needs --tokens: the model ids of the lab tokens, the last EOS")
        if self.tokens and not self.policy and (not self.gold or len(self.tokens) != self.vocab):
            raise cli.InputError("--tokens without --policy names --gold's model ids: give --gold and --vocab ids")


def prepare(cfg: Config):
    """Read and check every input before anything is written (config.json included): families, betas, sizes,
    checkpoints, memory, and each family's annotator error on this tree. Returns (checkpoints, N, proxy keys)."""
    with cli.inputs({"tokens": "--tokens", "error map": "--error-map"}):
        for s in cfg.noise:
            tails.parse(s)
        planning.check_float32(cfg.betas + cfg.rl_betas, [])
        ck = experiment.load_checkpoints(cfg.vocab, cfg.depth, cfg.policy or None, cfg.tokens, cfg.gold or None)
        error_maps.check(cfg.error_map, len(ck.policy.tokens) if ck.policy is not None else cfg.vocab)
    vocab = len(ck.policy.tokens) if ck.policy is not None else cfg.vocab
    n = experiment.check_size(vocab, cfg.depth)
    cli.check_memory(estimate_bytes(cfg, ck), f"the lab's tree of {n:,} sequences (A={vocab}, L={cfg.depth})")
    keys = {s: [jax.random.fold_in(jax.random.fold_in(jax.random.key(s), 1), i) for i in range(len(cfg.noise))]
            for s in cfg.seed_values}
    for seed, ks in keys.items() if error_maps.is_iid(cfg.error_map) else ():  # other maps: build_proxy checks
        for noise, k in zip(cfg.noise, ks):
            try:
                experiment.check_error(experiment.annotator_error(k, noise, n, cfg.noise_scale),
                                       cfg.betas + cfg.rl_betas)
            except ValueError as e:
                at = f" (seed {seed})" if cfg.seeds > 1 else ""
                raise cli.InputError(f"--noise-scale {cfg.noise_scale:g}, --noise {noise}{at}: {e}") from None
    return ck, n, keys


def estimate_bytes(cfg: Config, ck: experiment.Checkpoints) -> float:
    """Peak memory of this process for the run (`experiment.peak_bytes`; loaded checkpoints are already held)."""
    vocab = len(ck.policy.tokens) if ck.policy is not None else cfg.vocab
    return experiment.peak_bytes(vocab, cfg.depth, ns=len(cfg.ns),
                                 pairs=max(cfg.pairs) if "learned" in cfg.proxy else 0, lm_steps=cfg.lm_steps,
                                 bt_steps=cfg.bt_steps if "learned" in cfg.proxy else 0,
                                 rl=bool(cfg.rl_betas), rl_steps=cfg.rl_steps, checkpoints=ck)


def one_seed(run: cli.Run, cfg: Config, ck, n: int, seed: int, keys: list) -> list[dict]:
    """Every row of one seed: pi0's law, per (noise, proxy, pairs) diagnostics, every method's points and Gao fits;
    then the seed's headline rows (`lab.summary.headlines`). Rows are emitted as they finish."""
    key = jax.random.key(seed)
    jobs = [(i, s, k, p) for i, s in enumerate(cfg.noise) for k in cfg.proxy
            for p in (cfg.pairs if k == "learned" else (None,))]
    first = len(run.rows)
    base = experiment.build_base(jax.random.fold_in(key, 0), cfg.vocab, cfg.depth, ck.policy, cfg.tokens,
                                 ck.gold, cfg.lm_steps, cfg.sharpness, cfg.eos_bias)
    law = lab_tree.law_stats(base.tree.log_p)  # how spread pi0 is: a spread law by default (lm.markov_source)
    hack = error_maps.hack_set(cfg.error_map, base.tree.tokens)  # token maps: the n-gram's sequences
    extra = {} if hack is None else dict(  # pi0's mass on it: pi* of a zero reward
        hack_mass=experiment.exact_mass(base.tree.log_p, jnp.zeros_like(base.tree.log_p), 1.0, hack))
    run.emit([dict(kind="base", seed=seed, N=law.num, entropy=law.entropy, perplexity=law.perplexity,
                   top_mass=law.top_mass, n90=law.n90, **extra)])
    run.log(f"overoptimization: seed {seed}: pi0 and its tree ({n:,} sequences) built; {len(jobs)} proxies; "
            f"about {estimate_bytes(cfg, ck) / 2**30:.1f} GiB at the peak; writing to {run.dir}")
    at_kl = []
    for i, noise, kind, pairs in run.progress(jobs, f"seed {seed}: proxies"):
        k = keys[i]
        with cli.inputs({"error map": "--error-map"}):  # a map's |eps| on this tree beyond float32's lab
            built = experiment.build_proxy(k, base, noise, cfg.noise_scale, kind, pairs, cfg.bt_steps, cfg.betas,
                                           cfg.error_map)
        tag = dict(seed=seed, noise=noise, proxy=kind, pairs=pairs, error_map=cfg.error_map)
        run.emit([dict(kind="proxy", **tag, **experiment.proxy_row(built))])  # nulls carry their reason
        run.emit([dict(kind="tail", **tag, **t) for t in experiment.tail_rows(built)])
        pts = experiment.method_points(k, base, built, cfg.betas, cfg.ns, cfg.rl_betas, cfg.rl_steps, cfg.eval_every,
                                       cfg.search)
        run.emit([dict(kind="lab", **tag, **p) for p in pts])
        run.emit([dict(kind="fit", **tag, **f) for f in experiment.gao_fits(pts)])  # "rl": one per beta
        rows = summary.exact_at_kl(built.tree)
        if hack is not None:  # pi*'s mass on the hack's sequences at each KL
            rows = [dict(r, hack_mass=None if r["beta"] is None else
                         experiment.exact_mass(base.tree.log_p, built.proxy.reward, r["beta"], hack)) for r in rows]
        at_kl += [dict(kind="exact_at_kl", **tag, **p) for p in rows]
    heads = summary.headlines(run.rows[first:] + at_kl, seed)
    run.emit(heads)
    return heads


def main(cfg: Config) -> list[dict]:
    """Per seed (`one_seed`): pi0, its tree and gold; per (noise, proxy, pairs): diagnostics, every method's
    points, Gao fits; headline rows. Then the summary over seeds (rows, summary.json), figures and tables."""
    ck, n, keys = prepare(cfg)
    with cli.Run("overoptimization", cfg) as run:
        heads = []
        for seed in cfg.seed_values:
            heads += one_seed(run, cfg, ck, n, seed, keys[seed])
        summ = summary.summarise(heads)
        run.emit(summ)
        run.save_json("summary.json", dict(seeds=cfg.seed_values, level=summary.LEVEL, rows=summ))
        if cfg.plots:
            from goodhart_jax.plots import overoptimization as plots

            for name, fig in plots.figures(run.rows).items():
                run.figure(name, fig)
        for rows, columns, title in summary.tables(summ, [r for r in run.rows if r["kind"] == "proxy"], cfg.seeds):
            run.table(rows, columns, title=title)
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
