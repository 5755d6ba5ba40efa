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
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import frontier, io, mdp, tails, tilting

SUMMARY_KL = (0.5, 2.0, 8.0)  # nats at which the summary compares families
FIELDS = ("E_U", "E_V", "KL", "KL_per_state")


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
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
    with cli.inputs():
        mdp.check_float32(cfg.betas, errors + [utility], cfg.temperature if cfg.pi0 == "random" else None)
    if not cfg.thm2_c > 0 or any(not (np.isfinite(t) and t > cfg.thm2_c) for t in cfg.thm2_t):
        raise cli.InputError(f"Theorem 2 needs t > c > 0; got c={cfg.thm2_c:g}, t={list(cfg.thm2_t)}")
    if spec.depth * np.log2(spec.n) > 26 or spec.depth > 64:  # in logs: --depth 1e18 is refused, not computed
        raise cli.InputError(f"a tree of {spec.n}^{spec.depth} leaves is too large (max 2^26 leaves, 64 levels)")
    cli.check_memory(estimate_bytes(cfg), f"a {spec.n}^{spec.depth} tree x {cfg.seeds} seeds")
    return errors, utility, spec


def estimate_bytes(cfg: Config) -> float:
    """Peak memory of the run (see mdp.sweep_peak_bytes)."""
    return mdp.sweep_peak_bytes(mdp.TreeSpec(cfg.vocab, cfg.depth, cfg.eos), cfg.seeds, len(cfg.thm2_t))


def _tree_fn(spec: mdp.TreeSpec, pi0: str, temperature: float, mesh):
    """jit(vmap over seeds): keys [S], families, betas [K], ts [M] -> per-seed results."""

    def one_seed(key, error, utility, betas, ts, c):
        tree = mdp.make_tree(key, spec, error, utility, pi0=pi0, temperature=temperature)
        thm2, exists = jax.vmap(lambda t: mdp.thm2(tree, t, c))(ts)
        return mdp.sweep_betas(tree, betas, mesh=mesh), thm2, exists

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None, None)))


def main(cfg: Config) -> list[dict]:
    """Run the sweep, write results under cfg.out, and return the result rows."""
    errors, utility, spec = prepare(cfg)
    betas, ts = np.asarray(cfg.betas, float), np.asarray(cfg.thm2_t, float)
    ndev = jax.device_count()
    mesh = jax.make_mesh((ndev,), ("beta",)) if ndev > 1 and len(betas) % ndev == 0 else None
    tree_fn = _tree_fn(spec, cfg.pi0, cfg.temperature, mesh)
    keys = jax.vmap(jax.random.key)(jnp.arange(cfg.seeds))  # seed s -> jax.random.key(s)
    with cli.Run("sweep_beta", cfg) as run:
        run.log(f"sweep_beta: families {'centred to mean 0 (--no-center to use them as given)' if cfg.center else 'used as given'}; "
                f"utility {cfg.utility}; {len(betas)} betas; tree {cfg.vocab}^{cfg.depth}"
                f"{' with EOS' if cfg.eos else ''} x {cfg.seeds} seeds; writing to {run.dir}")
        summary = []
        for spec_x, error in run.progress(list(zip(cfg.error, errors)), "error families"):
            common = dict(error=spec_x, utility=cfg.utility)
            res = jax.device_get(tilting.sweep_tilt(error, utility, jnp.asarray(betas, jnp.float32)))
            rows = []
            for i, b in enumerate(betas):
                row = dict(kind="tilt", **common, beta=b, exists=bool(res.exists[i]), E_U=res.E_U[i],
                           E_V=res.E_V[i], KL=res.KL[i])
                if not row["exists"]:
                    row.update(E_U=None, E_V=None, KL=None, reason=tilting.why_no_tilt(error, utility, b))
                rows.append(io.null_nonfinite(row, ("E_U", "E_V", "KL")))
            sweep, thm2, exists = jax.device_get(tree_fn(keys, error, utility, jnp.asarray(betas, jnp.float32),
                                                         jnp.asarray(ts, jnp.float32), jnp.float32(cfg.thm2_c)))
            for s in range(cfg.seeds):
                rows += [io.null_nonfinite(dict(kind="tree", **common, beta=b, seed=s, **{f: getattr(sweep, f)[s, i]
                                                                                    for f in FIELDS}), FIELDS)
                         for i, b in enumerate(betas)]
                for j, t in enumerate(ts):
                    ok = bool(exists[s, j])
                    row = dict(kind="thm2", **common, t=t, c=cfg.thm2_c, seed=s, exists=ok,
                               **{f: (getattr(thm2, f)[s, j] if ok else None) for f in FIELDS})
                    rows.append(io.null_nonfinite(row, FIELDS) if ok else
                                dict(row, reason=f"Theorem 2 needs terminals with U > t={t:g} and with U <= t "
                                                        f"(finite); this tree has not"))
            run.emit(rows)  # on disk now: an interrupt keeps every finished family
            at = frontier.value_at_kl(sweep.KL, sweep.E_V, SUMMARY_KL)
            summary.append((spec_x, "heavy" if error.heavy else "light", int(res.exists.sum()), at))
        if cfg.plots:
            from goodhart_jax.plots import sweep_beta as figures

            for name, fig in figures.figures(run.rows, cfg.utility).items():
                run.figure(name, fig)
        run.save_json("summary.json", [dict(error=e, tail=h, tilt_betas=n, KL=SUMMARY_KL, E_V_at_KL=at.value,
                                            KL_max=at.kl_max) for e, h, n, at in summary])
        labels, tail, n_tilt, at = zip(*summary)
        run.log("\n" + frontier.table(labels, at, SUMMARY_KL, columns={"tail": tail, "tilt exists": n_tilt},
                                       label="error"))
        run.log(f"(E[V] of the tree optimum read off each seed's sweep at equal KL, mean +- sd over seeds; 'KL max' "
                f"is the KL at the smallest beta, where the tree saturates: a uniform pi0's ceiling is "
                f"log({cfg.vocab}^{cfg.depth}) = {cfg.depth * np.log(cfg.vocab):.1f} nats, and E[V] there is the V "
                f"of a few top-U leaves)")
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
