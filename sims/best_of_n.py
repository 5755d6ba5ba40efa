"""Best-of-n on the proxy U = X + V: exact E[U], E[V] by quadrature, the authors' Monte-Carlo grid, Gao fits.

Default: the authors' synthetic grid (utility 2 x normal or 2 x Student-t(10)
at unit variance; error normal, log-normal(log 2) - 1, Student-t(3) and (5) at
unit variance; n = 4^0 ... 4^8; 100 trials), with exact values beside every
Monte-Carlo point and Gao et al.'s R(d) = d (alpha - beta d) fitted to each
pair. With --error/--utility, those families instead (used exactly as given
unless --center). n here is exactly 4^k: the authors' script truncated
np.geomspace to ints (63, 4095, 16383 for 64, 4096, 16384).

    python sims/best_of_n.py                  # the authors' grid, ~1-2 minutes
    python sims/best_of_n.py --error normal student_t:df=3 --utility normal --json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from goodhart_jax import best_of_n, io, tails


@dataclasses.dataclass(frozen=True)
class Config:
    error: tuple[str, ...] = ()  # empty: the authors' grid
    utility: tuple[str, ...] = ()
    n: tuple[int, ...] = tuple(4**k for k in range(9))
    trials: int = 100
    seed: int = 0
    center: bool = False
    exact: bool = True
    out: str = ""
    json: bool = False
    plots: bool = True


def validate(cfg: Config) -> Config:
    if bool(cfg.error) != bool(cfg.utility):
        raise io.UsageError("give both --error and --utility, or neither (the authors' grid)")
    try:
        for spec in (*cfg.error, *cfg.utility):
            tails.parse(spec, center=cfg.center)
        best_of_n.check_ns(cfg.n)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    if cfg.trials < 2:
        raise io.UsageError(f"--trials must be >= 2, got {cfg.trials}")
    if max(cfg.n) * cfg.trials > 2**28:
        raise io.UsageError(f"n_max x trials = {max(cfg.n) * cfg.trials} draws is too many (max 2^28)")
    return cfg


def _pairs(cfg):
    if not cfg.error:
        utilities, errors = best_of_n.authors_grid()
        return [(u, e) for u in utilities for e in errors]
    fam = lambda s: tails.parse(s, center=cfg.center)  # noqa: E731
    return [((u, fam(u)), (e, fam(e))) for u in cfg.utility for e in cfg.error]


_exact = jax.jit(best_of_n.bon_exact)
_mc = jax.jit(best_of_n.bon_mc, static_argnums=(3, 4))
_fit = jax.jit(best_of_n.fit_gao)


def main(cfg: Config) -> list[dict]:
    cfg = validate(cfg)
    out = io.start_run("best_of_n", cfg.out, cfg)
    ns = best_of_n.check_ns(cfg.n)
    pairs = _pairs(cfg)
    io.log(f"best_of_n: {len(pairs)} (utility, error) pairs; n = {list(ns)}; {cfg.trials} trials; writing to {out}")
    rows, fits = [], []
    key = jax.random.key(cfg.seed)
    mc_seconds = []
    for i, ((ulab, util), (elab, err)) in enumerate(tqdm(pairs, desc="pairs", file=sys.stderr, disable=None)):
        k = jax.random.fold_in(key, i)
        jax.block_until_ready(_mc(k, err, util, ns, cfg.trials))  # compile
        t0 = time.perf_counter()
        mc = jax.device_get(_mc(k, err, util, ns, cfg.trials))
        mc_seconds.append(time.perf_counter() - t0)
        with jax.enable_x64(True):
            ex = jax.device_get(_exact(err, util, jnp.asarray(ns, jnp.float64))) if cfg.exact else None
        base_v = float(util.mean)
        for j, n in enumerate(ns):
            row = dict(kind="bon", error=elab, utility=ulab, n=n, KL_bound=float(best_of_n.kl_bound(float(n))),
                       E_U=ex.E_U[j] if ex else None, E_V=ex.E_V[j] if ex else None,
                       E_V_mc=mc.E_V[j], E_V_mc_se=mc.E_V_se[j], E_U_mc=mc.E_U[j], E_U_mc_se=mc.E_U_se[j])
            if ex is not None and not (np.isfinite(row["E_U"]) and np.isfinite(row["E_V"])):
                raise FloatingPointError(f"{elab}/{ulab} at n={n}: exact moments are not finite")
            rows.append(row)
        # Gao's best-of-n form on the gain in true utility against d = sqrt(KL).
        d = np.sqrt([r["KL_bound"] for r in rows[-len(ns):]])
        R = np.array([(r["E_V"] if ex else r["E_V_mc"]) - base_v for r in rows[-len(ns):]])
        f = jax.device_get(_fit(jnp.asarray(d, jnp.float32), jnp.asarray(R, jnp.float32)))
        fits.append(dict(kind="gao_fit", error=elab, utility=ulab, source="exact" if ex else "mc",
                         alpha=f.alpha, beta=f.beta, rmse=f.rmse, residuals=list(map(float, f.residuals)),
                         n=list(ns)))
        io.save_jsonl(out / "results.jsonl", rows + fits)
        io.save_csv(out / "results.csv", rows)
    if cfg.plots:
        _plot(rows, fits, ns, out)
    io.log(f"\nMonte Carlo: {np.median(mc_seconds) * 1e3:.0f} ms per pair (median; {cfg.trials} trials, "
           f"n up to {max(ns)}; the authors' NumPy script: 0.84 s, see benchmarks/README.md)")
    io.log(f"{'utility':<12}{'error':<20}{'E[V] best-of-' + str(max(ns)):>20}{'MC':>10}{'alpha':>9}{'beta':>9}{'rmse':>8}")
    for f in fits:
        last = [r for r in rows if r["error"] == f["error"] and r["utility"] == f["utility"]][-1]
        ev = "" if last["E_V"] is None else f"{last['E_V']:.4g}"
        io.log(f"{f['utility']:<12}{f['error']:<20}{ev:>20}{last['E_V_mc']:>10.4g}{f['alpha']:>9.3g}"
               f"{f['beta']:>9.3g}{f['rmse']:>8.2g}")
    if cfg.json:
        for r in rows + fits:
            print(json.dumps(io.json_safe(r)))
    io.log(f"wrote {out}/results.jsonl, results.csv, config.json" + (", best_of_n.png" if cfg.plots else ""))
    return rows + fits


def _plot(rows, fits, ns, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    utilities = list(dict.fromkeys(r["utility"] for r in rows))
    fig, axes = plt.subplots(1, len(utilities), figsize=(5.5 * len(utilities), 4.2), squeeze=False)
    for ax, ulab in zip(axes[0], utilities):
        for f in [f for f in fits if f["utility"] == ulab]:
            rs = [r for r in rows if r["utility"] == ulab and r["error"] == f["error"]]
            d = np.sqrt([r["KL_bound"] for r in rs])
            base = rs[0]["E_V"] if rs[0]["E_V"] is not None else rs[0]["E_V_mc"]
            line = None
            if rs[0]["E_V"] is not None:
                line, = ax.plot(d, [r["E_V"] - base for r in rs], "-", label=f["error"])
            ax.errorbar(d, [r["E_V_mc"] - base for r in rs], yerr=[2 * r["E_V_mc_se"] for r in rs], fmt="o", ms=3,
                        color=None if line is None else line.get_color(), alpha=0.6,
                        label=None if line is not None else f["error"])
            dd = np.linspace(0, d.max(), 100)
            ax.plot(dd, dd * (f["alpha"] - f["beta"] * dd), ":", lw=1,
                    color=None if line is None else line.get_color())
        ax.set_xlabel("d = sqrt(log n - (n-1)/n)")
        ax.set_ylabel("E[V of best-of-n] - E[V]")
        ax.set_title(f"utility {ulab}: lines exact, dots MC ±2 se, dotted Gao fit", fontsize=9)
        ax.legend(fontsize=8)
    io.save_figure(fig, out / "best_of_n.png")


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--error", nargs="+", default=list(d.error), metavar="FAMILY",
                   help="error families (default: the authors' grid)")
    p.add_argument("--utility", nargs="+", default=list(d.utility), metavar="FAMILY",
                   help="utility families (default: the authors' grid)")
    p.add_argument("--n", nargs="+", type=float, default=list(d.n), metavar="N", help="values of n (integers >= 1)")
    p.add_argument("--trials", type=int, default=d.trials, help="Monte-Carlo trials (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="S", help="PRNG seed (default: %(default)s)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=d.center,
                   help="shift --error/--utility families to mean 0 (default: off)")
    p.add_argument("--exact", action=argparse.BooleanOptionalAction, default=d.exact,
                   help="exact quadrature beside the Monte Carlo (default: on)")
    p.add_argument("--out", default=d.out, metavar="DIR", help="output directory (default: runs/best_of_n/<time>)")
    p.add_argument("--json", action="store_true", help="print result rows as JSON lines on stdout")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plot")
    a = p.parse_args(argv)
    try:
        ns = best_of_n.check_ns(a.n)
    except ValueError as e:
        raise io.UsageError(str(e)) from None
    return Config(error=tuple(a.error), utility=tuple(a.utility), n=ns, trials=a.trials, seed=a.seed,
                  center=a.center, exact=a.exact, out=a.out, json=a.json, plots=a.plots)


if __name__ == "__main__":
    io.run_cli(lambda argv: main(parse_args(argv)))
