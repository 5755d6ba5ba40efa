"""Optimisation as conditioning: E[V | X + V >= t] against the threshold t.

For each error family X (utility V fixed) over a grid of t: the exact value by
log-space quadrature, an importance-sampled Monte-Carlo estimate with its
standard error, and log P(X + V >= t). Heavy-tailed error: E[V | U >= t] -> E[V]
(Theorem 5, catastrophic Goodhart). Light error: -> infinity (Theorem 8).
Exponential error: a finite limit (V's exponential tilt). Also footnote 4's
dependent pair (light-tailed given V, yet bounded).

    python sims/sweep_threshold.py                 # defaults, well under a minute
    python sims/sweep_threshold.py --json | jq .   # JSON lines only on stdout

Families are used exactly as specified unless --center is given.
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import conditioning, tails


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    error: tuple[str, ...] = cli.arg(("normal", "laplace", "exponential", "student_t:df=3", "pareto:alpha=2.5"),
                                     "error families X", metavar="FAMILY")
    utility: str = cli.arg("normal", "utility family V", metavar="FAMILY")
    t: tuple[float, ...] = cli.arg((0.0,) + tuple(float(x) for x in np.geomspace(1.0, 100.0, 11)),
                                   "thresholds (finite; default: 0 and 11 points from 1 to 100)", metavar="T",
                                   show_default=False, check=cli.finite("threshold t"))
    mc_samples: int = cli.arg(20_000, "importance samples per threshold (>= 30)", metavar="N",
                              check=cli.at_least("importance samples per threshold", 30))
    seed: int = cli.arg(0, "PRNG seed", metavar="S", check=cli.seed)
    center: bool = cli.arg(False, "shift every family to mean 0 (off: families as given)")
    footnote4: bool = cli.arg(True, "add footnote 4's dependent pair")
    x64: bool = cli.arg(True, "compute in float64 (float32 holds to t ~ 100)")


def validate(cfg: Config) -> tuple[list[tails.Family], tails.Family]:
    """Check the families before any work (the fields check themselves); returns (errors, utility), parsed once."""
    with cli.inputs():
        if not cfg.error:
            raise ValueError("give at least one --error family")
        errors = [tails.parse(s, center=cfg.center) for s in cfg.error]
        utility = tails.parse(cfg.utility, center=cfg.center)
    return errors, utility


def _row(r: dict) -> dict:
    """Null what the library refused (NaN), with its reason: the quadrature's, then the Monte Carlo's."""
    for fields, why in ((("E_V", "log_p"), conditioning.WHY_NOT), (("E_V_mc", "E_V_mc_se", "log_p_mc"),
                                                                    conditioning.WHY_NOT_MC)):
        if not all(np.isfinite(r[f]) for f in fields):
            r.update({f: None for f in fields}, reason="; ".join(filter(None, (r.get("reason"), why))))
    return r


def main(cfg: Config) -> list[dict]:
    """Run the sweep, write results under cfg.out, and return the result rows."""
    errors, utility = validate(cfg)
    jobs = list(zip(cfg.error, errors)) + ([("footnote4", None)] if cfg.footnote4 else [])
    limits: dict[str, float] = {}  # exponential error: lim_t E[V | U >= t]
    with cli.Run("sweep_threshold", cfg) as run, jax.enable_x64(cfg.x64):
        run.log(f"sweep_threshold: families {'centred to mean 0' if cfg.center else 'used as given'}; utility "
                f"{cfg.utility}; {len(cfg.t)} thresholds; {cfg.mc_samples} importance samples per point; "
                f"writing to {run.dir}")
        ts = jnp.asarray(cfg.t, jnp.float64 if cfg.x64 else jnp.float32)
        key = jax.random.key(cfg.seed)
        for i, (spec, error) in enumerate(run.progress(jobs, "error families")):
            k = jax.random.fold_in(key, i)
            if error is None:
                q, m = conditioning.sweep_footnote4(ts), conditioning.sweep_footnote4_mc(k, ts, cfg.mc_samples)
                common = dict(error="footnote4", utility="normal", dependent=True)
            else:
                q = conditioning.sweep_threshold(error, utility, ts)
                m = conditioning.sweep_threshold_mc(k, error, utility, ts, cfg.mc_samples)
                common = dict(error=spec, utility=cfg.utility, dependent=False)
                if error.name == "exponential":
                    rate = jnp.asarray(error.params["rate"], ts.dtype)
                    limits[spec] = float(conditioning.exponential_limit(rate, utility))
            q, m = jax.device_get((q, m))
            run.emit([_row(dict(kind="threshold", **common, t=t, E_V=q.E_V[j], log_p=q.log_p[j], E_V_mc=m.E_V[j],
                                E_V_mc_se=m.se[j], log_p_mc=m.log_p[j], ess=m.ess[j])) for j, t in enumerate(cfg.t)])
        if cfg.plots:
            from goodhart_jax.plots import threshold as plots

            run.figure("threshold.png", plots.figure(run.rows, cfg.utility, float(utility.mean), limits))
        tmax = max(cfg.t)
        run.table([r for r in run.rows if r["t"] == tmax], [
            ("error", "error", ""), (f"E[V|U>=t] @t={tmax:g}", "E_V", ".5g"), ("MC", "E_V_mc", ".5g"),
            ("se", "E_V_mc_se", ".2g"), ("log P", "log_p", ".4g")])
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
