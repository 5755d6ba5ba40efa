"""The main job: does the KL-penalised optimum gain true utility, or collapse?

For each error family X (utility V fixed), over a log grid of beta:
  * "tilt": the continuous optimum P_beta ∝ Q exp((X + V)/beta), exact by
    quadrature, or the reason it does not exist (heavy-tailed X);
  * "tree": the exact optimum on a token tree (soft backward induction) with
    X, V drawn per terminal state, over several seeds;
  * "thm2": the Theorem 2 construction on the same trees over a grid of t.
Light-tailed error: E[V] climbs as KL grows. Heavy-tailed error: E[U] climbs
while E[V] stays flat (catastrophic Goodhart). The summary compares families
at equal KL (E[V] read off each seed's sweep at a few KL values).

    python sims/sweep_beta.py                  # defaults, ~1 minute on a laptop CPU
    python sims/sweep_beta.py --json | jq .    # JSON lines only on stdout
    python sims/sweep_beta.py --coordinator HOST:PORT --num-processes N --process-id I   # README: more than one machine
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import distributed, frontier, mdp, planning, tails, tilting

SUMMARY_KL = (0.5, 2.0, 8.0)  # nats at which the summary compares families
FIELDS = ("E_U", "E_V", "KL", "KL_per_state")


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig, distributed.Flags):
    error: tuple[str, ...] = cli.arg(("normal", "laplace", "student_t:df=3", "lognormal", "pareto"),
                                     "error families X, e.g. normal student_t:df=3 pareto:alpha=2.5", metavar="FAMILY")
    utility: str = cli.arg("normal", "utility family V", metavar="FAMILY")
    betas: tuple[float, ...] = cli.arg(tuple(float(b) for b in np.geomspace(0.1, 1000.0, 25)),
                                       "KL coefficients (> 0; default: 25 values, log grid 0.1 .. 1000)",
                                       metavar="B", show_default=False, check=cli.positive("beta"))
    center: bool = cli.arg(True, "shift every family to mean 0")
    vocab: int = cli.arg(8, "tokens per state", metavar="A")
    depth: int = cli.arg(6, "maximum length", metavar="L")
    eos: bool = cli.arg(False, "the last token ends the sequence")
    pi0: str = cli.arg("uniform", "base policy", choices=("uniform", "random"))
    temperature: float = cli.arg(1.0, "temperature of a random pi0 (> 0)", check=cli.positive("--temperature"))
    seeds: int = cli.arg(4, "trees for seeds 0..N-1", metavar="N", check=cli.at_least("--seeds", 1))
    thm2_t: tuple[float, ...] = cli.arg(tuple(float(t) for t in np.geomspace(2.0, 64.0, 11)),
                                        "Theorem 2 thresholds (default: 11 values, log grid 2 .. 64)",
                                        metavar="T", show_default=False)
    thm2_c: float = cli.arg(1.0, "Theorem 2 constant c (tail mass c/t)", metavar="C")


def prepare(cfg: Config):
    """Check every input before any work; returns (error families, utility family, tree spec)."""
    with cli.inputs():
        errors = [tails.parse(s, center=cfg.center) for s in cfg.error]
        utility = tails.parse(cfg.utility, center=cfg.center)
        spec = mdp.TreeSpec(cfg.vocab, cfg.depth, cfg.eos)
        planning.check_float32(cfg.betas, errors + [utility], cfg.temperature if cfg.pi0 == "random" else None,
                               temperature_name="--temperature")
    if not cfg.thm2_c > 0 or any(not (np.isfinite(t) and t > cfg.thm2_c) for t in cfg.thm2_t):
        raise cli.InputError(f"Theorem 2 needs t > c > 0; got c={cfg.thm2_c:g}, t={list(cfg.thm2_t)}")
    if spec.depth * np.log2(spec.n) > 40 or spec.depth > 64:  # in logs: --depth 1e18 is refused, not computed
        raise cli.InputError(f"a tree of {spec.n}^{spec.depth} leaves is too large (max 2^40 leaves, 64 levels)")
    cli.check_memory(estimate_bytes(cfg), f"a {spec.n}^{spec.depth} tree ({spec.num_terminals:,} terminals) on "
                                          f"{jax.local_device_count()} device(s) of this process")
    return errors, utility, spec


def estimate_bytes(cfg: Config) -> float:
    """Peak memory of this process (planning.sweep_peak_bytes): one seed's tree at a time, split over every device."""
    spec = mdp.TreeSpec(cfg.vocab, cfg.depth, cfg.eos)
    return planning.sweep_peak_bytes(spec, planning.leaf_shards(spec, jax.device_count())) * jax.local_device_count()


def main(cfg: Config) -> list[dict]:
    """Run the sweep, write results under cfg.out (process 0), and return the result rows."""
    distributed.initialize(cfg)  # first: before anything touches a device
    errors, utility, spec = prepare(cfg)
    betas, ts = np.asarray(cfg.betas, float), np.asarray(cfg.thm2_t, float)
    one_seed = planning.seed_sweep(spec, cfg.pi0, cfg.temperature, len(betas))
    host = lambda f: jax.tree.map(np.asarray, f)  # noqa: E731  (host values: the same input on every process)
    big = spec.num_terminals >= 2**24
    where = planning.sweep_layout(spec, len(betas))
    with distributed.open_run("sweep_beta", cfg) as run:
        run.log(f"sweep_beta: families {'centred to mean 0 (--no-center to use them as given)' if cfg.center else 'used as given'}; "
                f"utility {cfg.utility}; {len(betas)} betas; tree {cfg.vocab}^{cfg.depth}"
                f"{' with EOS' if cfg.eos else ''} x {cfg.seeds} seeds on {jax.device_count()} device(s), "
                f"{jax.process_count()} process(es){f' ({where})' if where else ''}; "
                f"about {estimate_bytes(cfg) / 2**30:.1f} GiB a process; "
                f"writing to {run.dir}")
        summary, curves = [], []
        for spec_x, error in run.progress(list(zip(cfg.error, errors)), "error families"):
            common = dict(error=spec_x, utility=cfg.utility)
            res = jax.device_get(tilting.sweep_tilt(error, utility, jnp.asarray(betas, jnp.float32)))
            rows = frontier.sweep_rows("tilt", common, dict(beta=betas), res, ("E_U", "E_V", "KL"), res.exists,
                                       lambda i: tilting.why_no_tilt(error, utility, betas[i], jnp.float32))
            seeds = []
            for s in range(cfg.seeds):
                t0 = time.perf_counter()
                sweep, (thm2, exists) = distributed.fetch(one_seed(
                    np.uint32(s), host(error), host(utility), betas.astype(np.float32), ts.astype(np.float32),
                    np.float32(cfg.thm2_c)))
                if big:
                    run.log(f"  {spec_x}: seed {s} in {time.perf_counter() - t0:.1f} s")
                seeds.append((sweep, thm2, exists))
                rows += frontier.sweep_rows("tree", common, dict(beta=betas, seed=[s] * len(betas)), sweep, FIELDS)
                rows += frontier.sweep_rows("thm2", common, dict(t=ts, c=[cfg.thm2_c] * len(ts), seed=[s] * len(ts)),
                                            thm2, FIELDS, exists, lambda j: f"Theorem 2 needs terminals with U > "
                                            f"t={ts[j]:g} and with U <= t (finite); this tree has not")
            run.emit(rows)  # on disk now: an interrupt keeps every finished family
            tree, thm2, exists = jax.tree.map(lambda *xs: np.stack(xs), *seeds)  # fields [S, K], [S, M]
            curves.append(frontier.FamilySweep(spec_x, bool(error.heavy), betas, res, tree, ts, thm2, exists))
            summary.append(frontier.FamilySummary(spec_x, "heavy" if error.heavy else "light", int(res.exists.sum()),
                                                  frontier.value_at_kl(tree.KL, tree.E_V, SUMMARY_KL)))
        if cfg.plots:
            from goodhart_jax.plots import sweep_beta as figures

            for name, fig in figures.figures(curves, cfg.utility).items():
                run.figure(name, fig)
        rows, text = frontier.summarize(summary, SUMMARY_KL, cfg.vocab, cfg.depth, betas_name="--betas")
        run.save_json("summary.json", rows)
        run.log("\n" + text)
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
