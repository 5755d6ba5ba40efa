"""The main job: does the KL-penalised optimum gain true utility, or collapse?

For each error family X (utility V fixed), over a log grid of beta:
  * "tilt": the continuous optimum P_beta ∝ Q exp((X + V)/beta), exact by
    quadrature, or the reason it does not exist (heavy-tailed X);
  * "tree": the exact optimum on a token tree (soft backward induction) with
    X, V drawn per terminal state, over several seeds;
  * "thm2": the Theorem 2 construction on the same trees over a grid of t.
Light-tailed error: E[V] climbs as KL grows. Heavy-tailed error: E[U] climbs
while E[V] stays flat (catastrophic Goodhart).

    python sims/sweep_beta.py                  # defaults, ~1 minute on a laptop CPU
    python sims/sweep_beta.py --json | jq .    # JSON lines only on stdout
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import io, mdp, tails, tilting


@dataclasses.dataclass(frozen=True)
class Config:
    error: tuple[str, ...] = ("normal", "laplace", "student_t:df=3", "lognormal", "pareto")
    utility: str = "normal"
    betas: tuple[float, ...] = tuple(float(b) for b in np.geomspace(0.1, 1000.0, 25))
    center: bool = True
    vocab: int = 8
    depth: int = 6
    eos: bool = False
    pi0: str = "uniform"
    temperature: float = 1.0
    seeds: int = 4
    thm2_t: tuple[float, ...] = tuple(float(t) for t in np.geomspace(2.0, 64.0, 11))
    thm2_c: float = 1.0
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    """Check every input before any work; raise io.UsageError naming the problem."""
    try:
        for spec in (*cfg.error, cfg.utility):
            tails.parse(spec, center=cfg.center)
        tilting.check_betas(cfg.betas)
        mdp.TreeSpec(cfg.vocab, cfg.depth, cfg.eos)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    if not cfg.error:
        raise io.UsageError("give at least one --error family")
    if cfg.seeds < 1:
        raise io.UsageError(f"--seeds must be >= 1, got {cfg.seeds}")
    if cfg.pi0 not in ("uniform", "random"):
        raise io.UsageError(f"--pi0 must be uniform or random, got {cfg.pi0!r}")
    if not cfg.temperature > 0:
        raise io.UsageError(f"--temperature must be > 0, got {cfg.temperature}")
    if not cfg.thm2_c > 0 or any(not (np.isfinite(t) and t > cfg.thm2_c) for t in cfg.thm2_t):
        raise io.UsageError(f"Theorem 2 needs t > c > 0; got c={cfg.thm2_c:g}, t={list(cfg.thm2_t)}")
    leaves = (cfg.vocab - cfg.eos) ** cfg.depth
    if leaves > 2**26:
        raise io.UsageError(f"a tree with {leaves} leaves is too large (max 2^26)")
    return cfg


def _tree_fn(spec: mdp.TreeSpec, pi0: str, temperature: float, mesh):
    """jit(vmap over seeds): keys [S], families, betas [K], ts [M] -> per-seed results."""

    def one_seed(key, error, utility, betas, ts, c):
        tree = mdp.make_tree(key, spec, error, utility, pi0=pi0, temperature=temperature)
        sweep = mdp.sweep_betas(tree, betas, mesh=mesh)
        thm2, valid = jax.vmap(lambda t: mdp.thm2(tree, t, c))(ts)
        base = mdp.trajectory_stats(tree, tuple(jnp.exp(l) for l in tree.log_pi0))
        return sweep, thm2, valid, base

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, None, None, None, None)))


def main(cfg: Config) -> list[dict]:
    """Run the sweep, write results under cfg.out, and return the result rows."""
    cfg = validate(cfg)
    out = io.start_run("sweep_beta", cfg.out, cfg)
    io.log(f"sweep_beta: families {'centred to mean 0 (--no-center to use them as given)' if cfg.center else 'used as given'}; "
           f"utility {cfg.utility}; {len(cfg.betas)} betas; tree {cfg.vocab}^{cfg.depth}"
           f"{' with EOS' if cfg.eos else ''} x {cfg.seeds} seeds; writing to {out}")

    spec = mdp.TreeSpec(cfg.vocab, cfg.depth, cfg.eos)
    betas = np.asarray(cfg.betas, float)
    ts = np.asarray(cfg.thm2_t, float)
    ndev = jax.device_count()
    mesh = None
    if ndev > 1 and len(betas) % ndev == 0:
        mesh = jax.make_mesh((ndev,), ("beta",))
    tree_fn = _tree_fn(spec, cfg.pi0, cfg.temperature, mesh)
    keys = jax.vmap(jax.random.key)(jnp.arange(cfg.seeds))  # seed s -> jax.random.key(s)
    utility = tails.parse(cfg.utility, center=cfg.center)

    rows: list[dict] = []
    summary = []
    for spec_x in tqdm(cfg.error, desc="error families", file=sys.stderr, disable=None):
        error = tails.parse(spec_x, center=cfg.center)
        common = dict(error=spec_x, utility=cfg.utility)
        # Continuous tilt.
        res = jax.device_get(tilting.sweep_tilt(error, utility, jnp.asarray(betas, jnp.float32)))
        for i, b in enumerate(betas):
            row = dict(kind="tilt", **common, beta=b, exists=bool(res.exists[i]), E_U=res.E_U[i],
                       E_V=res.E_V[i], KL=res.KL[i])
            if not row["exists"]:
                row.update(E_U=None, E_V=None, KL=None, reason=tilting.why_no_tilt(error, utility, b))
            rows.append(row)
        # Token tree, every seed at once.
        sweep, thm2, valid, base = jax.device_get(
            tree_fn(keys, error, utility, jnp.asarray(betas, jnp.float32), jnp.asarray(ts, jnp.float32),
                    jnp.float32(cfg.thm2_c)))
        for s in range(cfg.seeds):
            for i, b in enumerate(betas):
                rows.append(dict(kind="tree", **common, beta=b, seed=s, E_U=sweep.E_U[s, i], E_V=sweep.E_V[s, i],
                                 KL=sweep.KL[s, i], KL_per_state=sweep.KL_per_state[s, i]))
            for j, t in enumerate(ts):
                ok = bool(valid[s, j])
                rows.append(dict(kind="thm2", **common, t=t, c=cfg.thm2_c, seed=s, exists=ok,
                                 E_U=thm2.E_U[s, j] if ok else None, E_V=thm2.E_V[s, j] if ok else None,
                                 KL=thm2.KL[s, j] if ok else None,
                                 KL_per_state=thm2.KL_per_state[s, j] if ok else None))
        summary.append(dict(
            error=spec_x, heavy=bool(error.heavy),
            tilt_betas=int(res.exists.sum()),
            base_E_V=float(base.E_V.mean()),
            E_V_small_beta=float(sweep.E_V[:, 0].mean()),
            E_U_small_beta=float(sweep.E_U[:, 0].mean()),
            KL_small_beta=float(sweep.KL[:, 0].mean()),
        ))
        # Write what is finished so far: an interrupt keeps every completed family.
        io.save_jsonl(out / "results.jsonl", rows)
        io.save_csv(out / "results.csv", rows)

    if cfg.plots:
        from goodhart_jax.plots.sweep import sweep_beta_figures

        sweep_beta_figures(rows, out, cfg.utility)
    _print_summary(summary, betas[0])
    if cfg.json:
        import json

        for r in rows:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.csv, results.jsonl, config.json" + (" and PNG plots" if cfg.plots else ""))
    return rows


def _print_summary(summary: list[dict], beta0: float) -> None:
    io.log(f"\n{'error':<22}{'tail':<7}{'tilt exists':>12}{'E[V] base':>11}"
           f"{'E[U] @b=' + format(beta0, 'g'):>13}{'E[V] @b=' + format(beta0, 'g'):>13}{'KL':>9}")
    for s in summary:
        io.log(f"{s['error']:<22}{'heavy' if s['heavy'] else 'light':<7}{s['tilt_betas']:>12}"
               f"{s['base_E_V']:>11.3f}{s['E_U_small_beta']:>13.3f}{s['E_V_small_beta']:>13.3f}{s['KL_small_beta']:>9.2f}")
    io.log("(tree figures are means over seeds at the smallest beta; 'tilt exists' counts betas with a continuous optimum)")


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--error", nargs="+", default=list(d.error), metavar="FAMILY",
                   help="error families X, e.g. normal student_t:df=3 pareto:alpha=2.5 (default: %(default)s)")
    p.add_argument("--utility", default=d.utility, metavar="FAMILY", help="utility family V (default: %(default)s)")
    p.add_argument("--betas", nargs="+", type=float, default=list(d.betas), metavar="B", help="KL coefficients (> 0)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift every family to mean 0 (default: on)")
    p.add_argument("--vocab", type=int, default=d.vocab, metavar="A", help="tokens per state (default: %(default)s)")
    p.add_argument("--depth", type=int, default=d.depth, metavar="L", help="maximum length (default: %(default)s)")
    p.add_argument("--eos", action="store_true", help="the last token ends the sequence")
    p.add_argument("--pi0", choices=["uniform", "random"], default=d.pi0, help="base policy (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="temperature of a random pi0")
    p.add_argument("--seeds", type=int, default=d.seeds, metavar="N", help="trees for seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--thm2-t", nargs="+", type=float, default=list(d.thm2_t), metavar="T", help="Theorem 2 thresholds")
    p.add_argument("--thm2-c", type=float, default=d.thm2_c, metavar="C", help="Theorem 2 constant c (tail mass c/t)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/sweep_beta/<timestamp>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    a = p.parse_args(argv)
    return Config(error=tuple(a.error), utility=a.utility, betas=tuple(a.betas), center=a.center, vocab=a.vocab,
                  depth=a.depth, eos=a.eos, pi0=a.pi0, temperature=a.temperature, seeds=a.seeds,
                  thm2_t=tuple(a.thm2_t), thm2_c=a.thm2_c, out=a.out, json=a.json, plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
