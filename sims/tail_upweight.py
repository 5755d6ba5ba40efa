"""Theorem 1: upweight a heavy tail to tail mass c/t^p; the mean grows while KL(P_t || Q) -> 0.

For each base family Q over a grid of t: the exact mean of P_t and KL(P_t || Q)
(log-space quadrature of Q's tail). The paper's Figure 3 (Student-t df=3,
tail mass 1/t^0.8) as stills and an animated GIF. A light-tailed base (normal)
for contrast: its KL grows instead.

    python sims/tail_upweight.py                    # defaults, ~20 s
    python sims/tail_upweight.py --json | jq .

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

FIGURE3_BASE = "student_t:df=3"  # the paper's Figure 3


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    base: tuple[str, ...] = cli.arg(("student_t:df=3", "pareto:alpha=1.5", "lognormal", "normal"),
                                    "base families Q", metavar="FAMILY")
    t: tuple[float, ...] = cli.arg(tuple(float(x) for x in np.geomspace(2.0, 1e6, 41)),
                                   "thresholds (> 0, c/t^p < 1; default: 41 points from 2 to 1e6)", metavar="T",
                                   show_default=False, check=cli.finite("threshold t"))
    c: float = cli.arg(1.0, "tail-mass constant c", metavar="C", check=cli.positive("c"))
    exponent: float = cli.arg(0.8, "tail mass c/t^P (0.8: the paper's Figure 3; 1: Theorem 1's c/t)", metavar="P",
                                check=cli.positive("exponent p"))
    center: bool = cli.arg(False, "shift every family to mean 0")
    frames: int = cli.arg(36, "GIF frames (0: no GIF)", metavar="N", check=cli.at_least("GIF frames", 0))


def validate(cfg: Config) -> list[tails.Family]:
    """Check the families and t against c, p before any work (fields check themselves); the families, parsed once."""
    with cli.inputs():
        if not cfg.base:
            raise ValueError("give at least one --base family")
        bases = [tails.parse(s, center=cfg.center) for s in cfg.base]
        t = np.asarray(cfg.t, float)
        if np.any(t <= 0) or np.any(np.log(cfg.c) - cfg.exponent * np.log(np.where(t > 0, t, 1.0)) >= 0):
            raise ValueError(f"every t needs 0 < c/t^p < 1 (c={cfg.c:g}, p={cfg.exponent:g}); got t={t.min():g}")
    return bases


NOT_FINITE = "P_t exists here, but its mean or KL is not finite in float64 (the base's tail is beyond the quadrature)"


def main(cfg: Config) -> list[dict]:
    """Sweep t for every base family; rows of kind "upweight"; figures and the Figure 3 GIF."""
    bases = validate(cfg)
    with cli.Run("tail_upweight", cfg) as run, jax.enable_x64(True):
        run.log(f"tail_upweight: tail mass {cfg.c:g}/t^{cfg.exponent:g}; {len(cfg.t)} thresholds; "
                f"writing to {run.dir}")
        ts = jnp.asarray(cfg.t, jnp.float64)
        for spec, base in run.progress(list(zip(cfg.base, bases)), "base families"):
            r = jax.device_get(upweighting.sweep_upweight(base, ts, cfg.c, cfg.exponent))
            ok = np.asarray(r.valid, bool)
            fine = ok & np.isfinite(r.mean) & np.isfinite(r.KL)  # P_t exists but float64 cannot resolve it: null
            run.emit([dict(kind="upweight", base=spec, heavy=bool(base.heavy), t=t, c=cfg.c, exponent=cfg.exponent,
                           mean=r.mean[j] if fine[j] else None, KL=r.KL[j] if fine[j] else None,
                           tail_mass=r.tail_mass[j] if r.tail_mass[j] > 0 else None,  # c/t^p > 0: 0 is underflow
                           log_sf_q=r.log_sf_q[j], exists=bool(ok[j]),
                           valid=bool(ok[j]),  # `valid`: the README's name, kept
                           **({} if fine[j] else dict(reason=NOT_FINITE if ok[j] else upweighting.why_no_upweight(
                               base, t, cfg.c, cfg.exponent, float(r.log_sf_q[j])) or "P_t is not defined here")))
                      for j, t in enumerate(cfg.t)])
        if cfg.plots:
            from goodhart_jax.plots import tail_upweight as plots

            run.figure("upweight_curves.png", plots.curves(run.rows, cfg.c, cfg.exponent))
            # Figure 3's frames: t from 2 to 1e6 (from 2x where c/t^p < 1 begins, for a large c).
            q = tails.parse(FIGURE3_BASE, center=cfg.center)
            lo = max(2.0, 2.0 * cfg.c ** (1 / cfg.exponent))
            t3 = np.geomspace(lo, max(1e6, 1e3 * lo), max(cfg.frames, 3))
            res = jax.device_get(upweighting.sweep_upweight(q, jnp.asarray(t3), cfg.c, cfg.exponent))
            run.figure("figure3_stills.png", plots.figure3_stills(q, t3, res, cfg.c, cfg.exponent))
            if cfg.frames:
                run.write("figure3.gif", plots.figure3_gif(q, t3, res))
        ends = [(rs[0], rs[-1]) for rs in ([r for r in run.rows if r["base"] == b and r["exists"]] for b in cfg.base)
                if rs]
        run.table(ends, [("base", lambda e: e[0]["base"], "")] + [(f"{h} {w}", lambda e, i=i, k=k: e[i][k], ".4g")
                  for i, w in enumerate(("first", "last")) for h, k in (("t", "t"), ("mean", "mean"), ("KL", "KL"))])
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
