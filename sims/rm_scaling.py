"""Reward-model scaling in the lab, as Gao et al. (2023) measured it, with every optimisation curve exact.

Per seed: pi0 (the lab LM), its tree and a gold reward model; the annotator error eps (--noise, i.i.d. or through
--error-map: lab.error_maps); one set of
comparisons of gold + eps. Then proxies of each --sizes (layers x width x heads) trained on the first P of
those comparisons for each P in --pairs (`lab.scaling.train_members`), each measured exactly: agreement with
gold (held-out pair accuracy, corr), best-of-n's and pi*(beta)'s gold against d = sqrt(KL), Gao's coefficients
(best-of-n form on best-of-n, RL form on the pi*(beta) path), the peak gold and the KL there. By default
(--stop val) each proxy is early-stopped: it gets ceil(--val-frac x P) validation comparisons of the same
annotators on sequences in none of its training pairs, its validation BT loss is measured every --val-every
steps inside the vmapped training scan, and the parameters of the least one are kept (the held-out pairs then
avoid the validation sequences too); --stop steps keeps the last of --bt-steps. With --pretrain S each proxy's
decoder is first trained as a language model on pi0's corpus for S steps (`lab.scaling.pretrained_init`), as
Gao et al.'s reward models were pretrained LMs (by default proxies start from random weights). With --rl-betas
RL runs against every proxy (`experiment.rl_points`, evaluated exactly every --eval-every steps), each path fitted
with Gao's RL form (quantities "alpha_rl_b0.3", ... at beta 0.3: `lab.scaling.rl_quantities`). Summary rows give
the mean and 95% interval over seeds per (size, pairs); trend rows the slope of each quantity against log10
parameters and log10 pairs, per seed, with its interval over seeds.

    python sims/rm_scaling.py                          # 4 sizes x 4 data sizes x 3 seeds, A=16, L=4
    python sims/rm_scaling.py --sizes 1x8x2 2x64x4 --pairs 1000 4000 --seeds 2 --json
    python sims/rm_scaling.py --stop steps             # no early stopping: 400 steps, the last parameters
    python sims/rm_scaling.py --pretrain 600           # Gao's regime: each proxy's decoder first trained as an LM
    python sims/rm_scaling.py --rl-betas 0.3           # and RL against every proxy, fitted with Gao's RL form
    python sims/rm_scaling.py --coordinator HOST:PORT --num-processes N --process-id I   # the units over N processes
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax

from goodhart_jax import distributed, planning, tails
from goodhart_jax.cli import lab_flags
from goodhart_jax.lab import error_maps, experiment, scaling, scaling_study

# The library's names for what the flags set (`lab.scaling_study` names cfg's fields in its errors).
FLAGS = {"noise_scale": "--noise-scale", "noise": "--noise", "error_map": "--error-map", "error map": "--error-map",
         "stop": "--stop"}


def parse_size(spec: str) -> tuple[int, int, int]:
    """"LxWxH" -> (layers, width, heads), checked as `lab.lm.LMConfig` checks them."""
    try:
        layers, width, heads = (int(x) for x in spec.lower().split("x"))
        experiment.lm.LMConfig(2, 1, layers, width, heads)
    except ValueError as e:
        why = str(e) if "split" in str(e) or "need" in str(e) else "three integers LxWxH, e.g. 2x32x4"
        raise cli.InputError(f"--sizes: {spec!r}: {why}") from None
    return layers, width, heads


@dataclasses.dataclass(frozen=True)
class Config(lab_flags.LabRLConfig, cli.ProcessFlags):
    sizes: tuple[str, ...] = cli.arg(tuple(f"{l}x{w}x{h}" for l, w, h in scaling.SIZES),
                                     "proxy sizes, layers x width x heads", metavar="LxWxH",
                                     check=lambda v: [parse_size(s) for s in v])
    pairs: tuple[int, ...] = cli.arg(scaling.PAIRS, "comparisons per proxy (nested subsets of one dataset a seed)",
                                     metavar="P", check=cli.count("--pairs"))
    noise: str = cli.arg("normal", "annotator error family (goodhart_jax.tails spec)", metavar="FAMILY")
    rl_betas: tuple[float, ...] = lab_flags.rl_betas((), "KL coefficients of RL against every proxy, each fitted with "
                                                     "Gao's RL form (none: no RL; about 15 s of CPU a run at the "
                                                     "default size)")
    bt_steps: int = cli.arg(400, "Bradley-Terry steps per proxy (batch 256); with --stop val the most it trains",
                            metavar="S", check=cli.count("--bt-steps"))
    stop: str = cli.arg("val", "which parameters a proxy keeps: val (early stopping: the checkpoint of least BT loss "
                        "on its validation pairs) or steps (the last of --bt-steps)", choices=("val", "steps"))
    val_frac: float = cli.arg(0.25, "with --stop val: validation pairs per training pair (same annotators, on "
                              "sequences in none of its training pairs)", metavar="F", check=cli.positive("--val-frac"))
    val_every: int = cli.arg(10, "with --stop val: steps between validation checkpoints", metavar="K",
                             check=cli.count("--val-every"))
    pretrain: int = cli.arg(0, "steps of language-model pretraining of each proxy's decoder on pi0's corpus (the "
                            "lab LM's Markov source, batch 256) before its Bradley-Terry training, as Gao et al.'s "
                            "reward models were pretrained LMs (0: from scratch)", metavar="S",
                            check=cli.at_least("--pretrain", 0))
    lr: float = cli.arg(3e-3, "peak learning rate of the Bradley-Terry training (AdamW, cosine to lr / 10)",
                        metavar="LR", check=cli.positive("--lr"))


def prepare(cfg: Config):
    """Check every input before anything is written; returns (sizes [(layers, width, heads)], N)."""
    try:
        tails.parse(cfg.noise)
    except ValueError as e:
        raise cli.InputError(f"--noise: {e}") from None
    with cli.inputs(FLAGS):
        planning.check_float32(cfg.betas + cfg.rl_betas, [])
        error_maps.check(cfg.error_map, cfg.vocab)
    n = experiment.check_size(cfg.vocab, cfg.depth)
    sizes = [parse_size(s) for s in cfg.sizes]
    for flag, values in (("--sizes", sizes), ("--pairs", cfg.pairs)):
        if len(set(values)) != len(values):  # a repeat would count twice in every summary and trend
            raise cli.InputError(f"{flag}: each value once, got {list(getattr(cfg, flag[2:]))}")
    cli.check_memory(experiment.peak_bytes(cfg.vocab, cfg.depth, ns=len(cfg.ns), pairs=max(cfg.pairs),
                                           lm_steps=cfg.lm_steps, bt_steps=cfg.bt_steps, rl=bool(cfg.rl_betas),
                                           rl_steps=cfg.rl_steps),
                     f"the lab's tree of {n:,} sequences (A={cfg.vocab}, L={cfg.depth})")
    with cli.inputs(FLAGS):
        for s in cfg.seed_values if error_maps.is_iid(cfg.error_map) else ():  # other maps need pi0's tree
            scaling_study.annotator_error(cfg, jax.random.fold_in(jax.random.key(s), 1), n)
    return sizes, n


def run_units(run: cli.Run, cfg: Config, sizes) -> list[dict]:
    """Every (seed, size) unit (`lab.scaling_study.make_unit`), in the run's order; returns the cells of all of them.

    In one process the rows of each unit are written as it finishes. With several processes (--coordinator)
    each trains its share of the units and process 0 writes every row in the same order as one process would
    (`distributed.run_units`): the same flags give the same rows on any number of processes (keys are folded
    from each seed, never from the process). Bad input found in a unit ends every process with exit 2.
    """
    unit = scaling_study.make_unit(cfg, sizes)

    def checked(u):
        with cli.inputs(FLAGS):
            return unit(u)

    done = distributed.run_units(scaling_study.units(cfg.seed_values, len(sizes)), checked,
                                 emit=lambda result: run.emit(result[0]),
                                 progress=lambda mine: run.progress(mine, "(seed, size) units"),
                                 carried=(cli.InputError,))
    return [c for _, cells in done for c in cells]


def main(cfg: Config) -> list[dict]:
    """Every (seed, size) unit (`run_units`), then the summary over seeds, the trends, summary.json, figures and a
    table."""
    distributed.initialize(cfg)  # first: before anything touches a device
    sizes, n = prepare(cfg)
    with cli.open_run("rm_scaling", cfg) as run:
        run.log(f"rm_scaling: {len(sizes)} sizes x {len(cfg.pairs)} data sizes x {cfg.seeds} seeds on a tree of "
                f"{n:,} sequences, {jax.process_count()} process(es); writing to {run.dir}")
        cells = run_units(run, cfg, sizes)
        summ, tr = scaling.summarise(cells), scaling.trends(cells)
        run.emit(summ + tr)
        run.save_json("summary.json", dict(seeds=cfg.seed_values, level=0.95, summary=summ, trends=tr))
        if cfg.plots:
            from goodhart_jax.plots import rm_scaling as plots

            for name, fig in plots.figures(run.rows).items():
                run.figure(name, fig)
        cell = lambda r: "n/a" if r.get("mean") is None else (  # noqa: E731
            f"{r['mean']:.3g}" + ("" if r.get("lo") is None else f" [{r['lo']:.3g}, {r['hi']:.3g}]"))
        by = {(r["size"], r["pairs"], r["quantity"]): r for r in summ}
        rl = [(f"{q} RL {b:g}", n) for b in cfg.rl_betas
              for q, n in zip(("alpha", "beta", "peak gold"), scaling.rl_quantities(b))]
        shown = ("pair_accuracy_unseen", "alpha_bon", "beta_bon", "peak_gold_exact", "peak_KL_exact",
                 "stop_step") + tuple(n for _, n in rl)
        run.table([dict(size=s, params=by[(s, p, "corr")]["params"], pairs=p, **{q: cell(by[(s, p, q)]) for q in shown})
                   for s in cfg.sizes for p in cfg.pairs],
                  [("size", "size", ""), ("params", "params", ""), ("pairs", "pairs", ""),
                   ("held-out acc", "pair_accuracy_unseen", ""), ("alpha bon", "alpha_bon", ""),
                   ("beta bon", "beta_bon", ""), ("peak gold pi*", "peak_gold_exact", ""),
                   ("KL at peak", "peak_KL_exact", ""), ("kept step", "stop_step", "")]
                  + [(title, n, "") for title, n in rl],
                  title=f"mean [95% interval] over {cfg.seeds} seeds")
        slope = [r for r in tr if r["against"] == "params" and r["quantity"] in
                 ("alpha_bon", "beta_bon", "peak_gold_exact") + tuple(n for _, n in rl)]
        run.table([dict(pairs=r["at"], quantity=r["quantity"], slope=cell(r)) for r in slope],
                  [("pairs", "pairs", ""), ("quantity", "quantity", ""), ("slope per decade of parameters", "slope",
                                                                         "")],
                  title="trend with proxy size (slope per seed; mean [95% interval] over seeds)")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
