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

import argparse
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import io, tails, upweighting


@dataclasses.dataclass(frozen=True)
class Config:
    utility: tuple[str, ...] = ("normal", "laplace", "gumbel", "student_t:df=3", "lognormal")
    d: tuple[float, ...] = tuple(float(x) for x in np.geomspace(1e-4, 10.0, 21))
    t: tuple[float, ...] = tuple(float(x) for x in np.geomspace(2.0, 1e8, 9))
    center: bool = False
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    if not cfg.utility:
        raise io.UsageError("give at least one --utility family")
    try:
        for spec in cfg.utility:
            tails.parse(spec, center=cfg.center)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    d = np.asarray(cfg.d, float)
    if d.size == 0 or not np.all(np.isfinite(d) & (d > 0)):
        raise io.UsageError("KL budgets d must be finite and > 0")
    t = np.asarray(cfg.t, float)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise io.UsageError("threshold t must be finite")
    return cfg


def main(cfg: Config) -> list[dict]:
    cfg = validate(cfg)
    out = io.start_run("theorem3", cfg.out, cfg)
    rows = []
    at_kl = jax.jit(jax.vmap(jax.vmap(upweighting.upweight_at_kl, (None, 0, None)), (None, None, 0)))
    with jax.enable_x64(True):
        ds = jnp.asarray(cfg.d, jnp.float64)
        ts = jnp.asarray(cfg.t, jnp.float64)
        for spec in tqdm(cfg.utility, desc="utility families", file=sys.stderr, disable=None):
            fam = tails.parse(spec, center=cfg.center)
            base_mean = float(fam.mean)
            r = jax.device_get(upweighting.sweep_kl_bounded(fam, ds))
            up = jax.device_get(at_kl(fam, ts, ds))  # [D, T]
            for i, d in enumerate(cfg.d):
                ok = bool(r.exists[i])
                rows.append(dict(kind="kl_bounded", utility=spec, heavy=bool(fam.heavy), d=d, E_Q_V=base_mean,
                                 exists=ok, E_V=r.E_V[i] if ok else None, KL=r.KL[i] if ok else None,
                                 lam=r.lam[i] if ok else None,
                                 E_V_upweight_best=float(np.max(np.where(up.valid[i], up.mean[i], -np.inf)))))
                for j, t in enumerate(cfg.t):
                    rows.append(dict(kind="upweight_at_kl", utility=spec, d=d, t=t, E_V=up.mean[i, j],
                                     KL=up.KL[i, j], tail_mass=up.tail_mass[i, j], valid=bool(up.valid[i, j])))
    io.save_jsonl(out / "results.jsonl", rows)
    io.save_csv(out / "results.csv", rows)
    if cfg.plots:
        _plot(rows, cfg, out)
    for spec in cfg.utility:
        rs = [r for r in rows if r["kind"] == "kl_bounded" and r["utility"] == spec]
        hi = rs[-1]
        io.log(f"{spec:<18} E_Q[V]={hi['E_Q_V']:<8.3g} max E_P[V] at d={hi['d']:g}: "
               f"{'tilt ' + format(hi['E_V'], '.4g') if hi['exists'] else 'no tilt (heavy)'}; "
               f"best upweighting over t: {hi['E_V_upweight_best']:.4g}")
    if cfg.json:
        for r in rows:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.jsonl, results.csv, config.json" + (", theorem3.png" if cfg.plots else ""))
    return rows


def _plot(rows, cfg, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 4))
    for spec in cfg.utility:
        rs = [r for r in rows if r["kind"] == "kl_bounded" and r["utility"] == spec and r["exists"]]
        if rs:
            a1.plot([r["d"] for r in rs], [r["E_V"] - r["E_Q_V"] for r in rs], label=spec)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("KL budget d")
    a1.set_ylabel("max E_P[V] - E_Q[V]")
    a1.set_title("light V: exponential tilt, -> 0 as d -> 0, finite", fontsize=9)
    a1.legend(fontsize=8)
    d_show = cfg.d[len(cfg.d) // 2]
    lowest = 0.0
    for spec in cfg.utility:
        rs = [r for r in rows if r["kind"] == "upweight_at_kl" and r["utility"] == spec and r["d"] == d_show]
        ys = [r["E_V"] for r in rs]
        a2.plot([r["t"] for r in rs], ys, "o-", ms=3, label=spec)
        lowest = min([lowest] + [y for y in ys if y is not None and np.isfinite(y)])
    a2.set_xscale("log")
    a2.set_yscale("symlog", linthresh=0.1)
    a2.set_ylim(bottom=lowest - 0.05)   # no empty negative decades
    a2.set_xlabel("threshold t of the upweighting")
    a2.set_ylabel(f"E_P[V] at KL = {d_show:.2g}")
    a2.set_title("Theorem 1 construction at fixed KL: heavy V unbounded", fontsize=9)
    a2.legend(fontsize=8)
    io.save_figure(fig, out / "theorem3.png")


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utility", nargs="+", default=list(d.utility), metavar="FAMILY", help="families of V")
    p.add_argument("--d", nargs="+", type=float, default=list(d.d), metavar="D", help="KL budgets (> 0)")
    p.add_argument("--t", nargs="+", type=float, default=list(d.t), metavar="T",
                   help="thresholds of the upweighting comparison")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift every family to mean 0 (default: off)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/theorem3/<time>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plot")
    a = p.parse_args(argv)
    return Config(utility=tuple(a.utility), d=tuple(a.d), t=tuple(a.t), center=a.center, out=a.out, json=a.json,
                  plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
