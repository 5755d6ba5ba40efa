"""Theorem 3: the largest E_P[V] with KL(P || Q) <= d, light against heavy V.

Light-tailed V: the maximiser is an exponential tilt of Q (multiplier solved
numerically); E_P[V] -> E_Q[V] as d -> 0 and stays finite for every d.
Heavy-tailed V: no tilt exists; Theorem 1's upweighting with its tail mass set
so that KL = d reaches any mean as its threshold t grows (unbounded).

    python sims/theorem3.py                    # defaults, ~20 s
    python sims/theorem3.py --json | jq .

Families are used exactly as specified unless --center is given.
"""
from __future__ import annotations

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import tails, upweighting


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    utility: tuple[str, ...] = cli.arg(("normal", "laplace", "gumbel", "student_t:df=3", "lognormal"),
                                       "families of V", metavar="FAMILY")
    d: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(1e-4, 10.0, 21)),
                                   "KL budgets, > 0 (default: 21 points from 1e-4 to 10, log-spaced)",
                                   metavar="D", show_default=False, check=cli.positive("KL budget d"))
    t: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(2.0, 1e8, 9)),
                                   "thresholds of the upweighting comparison (default: 9 points from 2 to 1e8, "
                                   "log-spaced)", metavar="T", show_default=False, check=cli.finite("threshold t"))
    center: bool = cli.arg(False, "shift every family to mean 0")


def validate(cfg: Config) -> list[tails.Family]:
    """The utility families, parsed once; bad input raises `cli.InputError` (one line, exit 2)."""
    with cli.inputs():
        if not cfg.utility:
            raise ValueError("give at least one --utility family")
        return [tails.parse(spec, center=cfg.center) for spec in cfg.utility]


# upweight_at_kl over thresholds (inner) and budgets (outer): [D, T] fields.
_at_kl = jax.jit(jax.vmap(jax.vmap(upweighting.upweight_at_kl, (None, 0, None)), (None, None, 0)))


def main(cfg: Config) -> list[dict]:
    families = validate(cfg)
    with cli.Run("theorem3", cfg) as run:
        for spec, fam in run.progress(list(zip(cfg.utility, families)), "utility families"):
            with jax.enable_x64(True):
                ds, ts = jnp.asarray(cfg.d, jnp.float64), jnp.asarray(cfg.t, jnp.float64)
                base_mean = float(fam.mean)
                r = jax.device_get(upweighting.sweep_kl_bounded(fam, ds))  # [D]
                up = jax.device_get(_at_kl(fam, ts, ds))  # [D, T]
            rows = []
            for i, d in enumerate(cfg.d):
                ok, why = bool(r.exists[i]), upweighting.why_no_kl_bounded(fam, d, jax.tree.map(lambda a: a[i], r))
                fine = up.valid[i] & np.isfinite(up.mean[i]) & np.isfinite(up.KL[i])
                best = float(np.max(np.where(fine, up.mean[i], -np.inf))) if fine.any() else None
                rows.append(dict(kind="kl_bounded", utility=spec, heavy=bool(fam.heavy), d=d, E_Q_V=base_mean,
                                 exists=ok, **{f: None if why else getattr(r, f)[i] for f in ("E_V", "KL", "lam")},
                                 E_V_upweight_best=best, **(dict(reason=why) if why else {})))
                rows += [dict(kind="upweight_at_kl", utility=spec, d=d, t=t, tail_mass=up.tail_mass[i, j],
                              valid=bool(fine[j]), **(dict(E_V=up.mean[i, j], KL=up.KL[i, j]) if fine[j] else dict(
                                  E_V=None, KL=None, reason=upweighting.why_no_upweight(
                                      fam, t, log_sf_q=float(up.log_sf_q[i, j])) or "not finite in float64")))
                         for j, t in enumerate(cfg.t)]
            run.emit(rows)
            hi = rows[-1 - len(cfg.t)]  # the last budget's kl_bounded row
            run.log(f"{spec:<18} E_Q[V]={base_mean:<8.3g} max E_P[V] at d={hi['d']:g}: "
                    f"{'tilt ' + format(hi['E_V'], '.4g') if hi['E_V'] is not None else 'none: ' + hi['reason']}; "
                    f"best upweighting over t: {hi['E_V_upweight_best']}")
        if cfg.plots:
            from goodhart_jax.plots import theorem3 as plots

            run.figure("theorem3.png", plots.figure(run.rows, list(cfg.utility), cfg.d[len(cfg.d) // 2]))
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
