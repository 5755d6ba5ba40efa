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

import argparse
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import conditioning, io, tails


@dataclasses.dataclass(frozen=True)
class Config:
    error: tuple[str, ...] = ("normal", "laplace", "exponential", "student_t:df=3", "pareto:alpha=2.5")
    utility: str = "normal"
    t: tuple[float, ...] = (0.0,) + tuple(float(x) for x in np.geomspace(1.0, 100.0, 11))
    mc_samples: int = 20_000
    seed: int = 0
    center: bool = False
    footnote4: bool = True
    x64: bool = True
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    """Check every input before any work; raise io.UsageError naming the problem."""
    if not cfg.error:
        raise io.UsageError("give at least one --error family")
    try:
        for spec in (*cfg.error, cfg.utility):
            tails.parse(spec, center=cfg.center)
        conditioning.check_thresholds(cfg.t)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    if cfg.mc_samples < 30:
        raise io.UsageError(f"--mc-samples must be >= 30, got {cfg.mc_samples}")
    return cfg


def main(cfg: Config) -> list[dict]:
    """Run the sweep, write results under cfg.out, and return the result rows."""
    cfg = validate(cfg)
    out = io.start_run("sweep_threshold", cfg.out, cfg)
    io.log(f"sweep_threshold: families {'centred to mean 0' if cfg.center else 'used as given'}; utility "
           f"{cfg.utility}; {len(cfg.t)} thresholds; {cfg.mc_samples} importance samples per point; writing to {out}")
    rows: list[dict] = []
    limits: dict[str, float] = {}
    with jax.enable_x64(cfg.x64):
        dtype = jnp.float64 if cfg.x64 else jnp.float32
        ts = jnp.asarray(cfg.t, dtype)
        utility = tails.parse(cfg.utility, center=cfg.center)
        key = jax.random.key(cfg.seed)
        jobs = list(cfg.error) + (["footnote4"] if cfg.footnote4 else [])
        for i, spec in enumerate(tqdm(jobs, desc="error families", file=sys.stderr, disable=None)):
            k = jax.random.fold_in(key, i)
            if spec == "footnote4":
                q = _fn4(ts)
                m = _fn4_mc(jax.random.split(k, len(cfg.t)), ts, cfg.mc_samples)
                common = dict(error="footnote4", utility="normal", dependent=True)
            else:
                error = tails.parse(spec, center=cfg.center)
                q = conditioning.sweep_threshold(error, utility, ts)
                m = conditioning.sweep_threshold_mc(k, error, utility, ts, cfg.mc_samples)
                common = dict(error=spec, utility=cfg.utility, dependent=False)
                if error.name == "exponential":
                    limits[spec] = float(conditioning.exponential_limit(jnp.asarray(error.params["rate"], dtype),
                                                                        utility))
            q, m = jax.device_get((q, m))
            for j, t in enumerate(cfg.t):
                row = dict(kind="threshold", **common, t=t, E_V=q.E_V[j], E_V_mc=m.E_V[j], E_V_mc_se=m.se[j],
                           log_p=q.log_p[j], log_p_mc=m.log_p[j], ess=m.ess[j])
                for name in ("E_V", "log_p"):
                    if not np.isfinite(row[name]):
                        raise FloatingPointError(f"{spec} at t={t:g}: {name} is not finite")
                rows.append(row)
            io.save_jsonl(out / "results.jsonl", rows)
            io.save_csv(out / "results.csv", rows)
    if cfg.plots:
        _plot(rows, cfg, limits, out)
    _summary(rows, cfg)
    if cfg.json:
        for r in rows:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.jsonl, results.csv, config.json" + (", threshold.png" if cfg.plots else ""))
    return rows


_fn4 = jax.jit(jax.vmap(conditioning.footnote4))
_fn4_mc = jax.jit(jax.vmap(conditioning.footnote4_mc, in_axes=(0, 0, None)), static_argnums=2)


def _plot(rows, cfg, limits, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name in dict.fromkeys(r["error"] for r in rows):
        rs = [r for r in rows if r["error"] == name]
        t = np.array([r["t"] for r in rs])
        e = np.array([r["E_V"] for r in rs])
        line, = ax.plot(t, e, "-", label=name + (" (dependent, fn. 4)" if name == "footnote4" else ""))
        ax.errorbar(t, [r["E_V_mc"] for r in rs], yerr=[2 * r["E_V_mc_se"] for r in rs], fmt="o", ms=3,
                    color=line.get_color(), alpha=0.7)
        if name in limits:
            ax.axhline(limits[name], color=line.get_color(), ls=":", lw=1)
    mean_v = float(tails.parse(cfg.utility, center=cfg.center).mean)
    ax.axhline(mean_v, color="k", ls="--", lw=0.8, label=f"E[V] = {mean_v:g}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(min(cfg.t), max(cfg.t))
    lo = min(min(r["E_V"] for r in rows), mean_v)
    ax.set_ylim(bottom=lo - 0.1 * (1 + abs(lo)))
    ax.set_xlabel("threshold t")
    ax.set_ylabel("E[V | X + V >= t]")
    ax.set_title(f"Conditioning on a high proxy (V ~ {cfg.utility}); lines: quadrature, dots: IS Monte Carlo ±2 se",
                 fontsize=9)
    ax.legend(fontsize=8)
    io.save_figure(fig, out / "threshold.png")


def _summary(rows, cfg):
    tmax = max(cfg.t)
    io.log(f"\n{'error':<22}{'E[V|U>=t] @t=' + format(tmax, 'g'):>18}{'MC':>11}{'se':>9}{'log P':>11}")
    for r in rows:
        if r["t"] == tmax:
            io.log(f"{r['error']:<22}{r['E_V']:>18.5g}{r['E_V_mc']:>11.5g}{r['E_V_mc_se']:>9.2g}{r['log_p']:>11.4g}")


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--error", nargs="+", default=list(d.error), metavar="FAMILY",
                   help="error families X (default: %(default)s)")
    p.add_argument("--utility", default=d.utility, metavar="FAMILY", help="utility family V (default: %(default)s)")
    p.add_argument("--t", nargs="+", type=float, default=list(d.t), metavar="T", help="thresholds (finite)")
    p.add_argument("--mc-samples", type=int, default=d.mc_samples, metavar="N",
                   help="importance samples per threshold (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="S", help="PRNG seed (default: %(default)s)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift every family to mean 0 (default: off, families as given)")
    p.add_argument("--footnote4", action=argparse.BooleanOptionalAction, default=d.footnote4,
                   help="add footnote 4's dependent pair (default: on)")
    p.add_argument("--x64", action=argparse.BooleanOptionalAction, default=d.x64,
                   help="compute in float64 (default: on; float32 holds to t ~ 100)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/sweep_threshold/<time>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plot")
    a = p.parse_args(argv)
    return Config(error=tuple(a.error), utility=a.utility, t=tuple(a.t), mc_samples=a.mc_samples, seed=a.seed,
                  center=a.center, footnote4=a.footnote4, x64=a.x64, out=a.out, json=a.json, plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
