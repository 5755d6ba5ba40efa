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

from goodhart_jax import cli  # first: Ctrl-C during the slow imports below is one line, exit 130
cli.guard_startup(__name__)

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import best_of_n, tails


@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig):
    error: tuple[str, ...] = cli.arg((), "error families (default: the authors' grid)", metavar="FAMILY")
    utility: tuple[str, ...] = cli.arg((), "utility families (default: the authors' grid)", metavar="FAMILY")
    n: tuple[float, ...] = cli.arg(tuple(4**k for k in range(9)), "values of n (integers >= 1)", metavar="N",
                                 check=best_of_n.check_ns)
    trials: int = cli.arg(100, "Monte-Carlo trials (>= 2)", metavar="T", check=cli.at_least("Monte-Carlo trials", 2))
    seed: int = cli.arg(0, "PRNG seed", metavar="S", check=cli.seed)
    center: bool = cli.arg(False, "shift --error/--utility families to mean 0")
    exact: bool = cli.arg(True, "exact quadrature beside the Monte Carlo")


def validate(cfg: Config) -> tuple[list, tuple[int, ...]]:
    """Check every input before any work; returns ([((u label, V), (x label, X)), ...], ns)."""
    with cli.inputs():
        if bool(cfg.error) != bool(cfg.utility):
            raise ValueError("give both --error and --utility, or neither (the authors' grid)")
        utilities = [(s, tails.parse(s, center=cfg.center)) for s in cfg.utility]
        errors = [(s, tails.parse(s, center=cfg.center)) for s in cfg.error]
        ns = best_of_n.check_ns(cfg.n)
        if max(ns) * cfg.trials > 2**28:
            raise ValueError(f"n_max x trials = {max(ns) * cfg.trials} draws is too many (max 2^28)")
    if not errors:
        utilities, errors = best_of_n.authors_grid()
    return [(u, e) for u in utilities for e in errors], ns


_exact = jax.jit(best_of_n.bon_exact)
_mc = jax.jit(best_of_n.bon_mc, static_argnums=(3, 4))
_fit = jax.jit(best_of_n.fit_gao)


MC_FIELDS = dict(E_V_mc="E_V", E_V_mc_se="E_V_se", E_U_mc="E_U", E_U_mc_se="E_U_se")  # row field -> `BonMC` field
NOT_EXACT = ("the exact moments are not finite in float64 here (the quadrature cannot resolve this pair's tails); "
             "E_V_mc is the Monte Carlo estimate")
NOT_EXACT_NO_MC = NOT_EXACT.split(";")[0]


def main(cfg: Config) -> list[dict]:
    """Run every (utility, error) pair; rows of kind "bon" per n and one "gao_fit" per pair."""
    pairs, ns = validate(cfg)
    kl = [float(best_of_n.kl_bound(float(n))) for n in ns]
    key, mc_seconds, last = jax.random.key(cfg.seed), [], []
    with cli.Run("best_of_n", cfg, csv_rows=lambda r: r["kind"] == "bon") as run:  # the n table in the CSV
        run.log(f"best_of_n: {len(pairs)} (utility, error) pairs; n = {list(ns)}; {cfg.trials} trials; "
                f"writing to {run.dir}")
        for i, ((ulab, util), (elab, err)) in enumerate(run.progress(pairs, "pairs")):
            k = jax.random.fold_in(key, i)
            jax.block_until_ready(_mc(k, err, util, ns, cfg.trials))  # compile, so the timing below is the run
            t0 = time.perf_counter()
            mc = jax.device_get(_mc(k, err, util, ns, cfg.trials))
            mc_seconds.append(time.perf_counter() - t0)
            with jax.enable_x64(True):
                ex = jax.device_get(_exact(err, util, jnp.asarray(ns, jnp.float64))) if cfg.exact else None
            ok = np.zeros(len(ns), bool) if ex is None else np.isfinite(ex.E_U) & np.isfinite(ex.E_V)  # NaN: refused
            infinite = best_of_n.why_not_finite(err, util)  # {BonMC field: why}
            no_mc = {k: why for k, f in MC_FIELDS.items() if (why := infinite.get(f))}  # infinite moments: no MC
            named = {**{k: infinite[k] for k in ("E_U", "E_V") if k in infinite}, **no_mc}  # exact means too
            mc_reason = [f"{', '.join(k for k in named if named[k] == w)}: {w}" for w in dict.fromkeys(named.values())]
            rows = []
            for j, n in enumerate(ns):
                exact_why = [] if ex is None or ok[j] or {"E_U", "E_V"} <= set(infinite) else [
                    NOT_EXACT if "E_V_mc" not in no_mc else NOT_EXACT_NO_MC]  # else mc_reason says why
                why = exact_why + mc_reason
                rows.append(dict(kind="bon", error=elab, utility=ulab, n=n, KL_bound=kl[j],
                                 E_U=ex.E_U[j] if ok[j] else None, E_V=ex.E_V[j] if ok[j] else None,
                                 **{k: None if k in no_mc else getattr(mc, f)[j] for k, f in MC_FIELDS.items()},
                                 **(dict(reason="; ".join(why)) if why else {})))
            # Gao's best-of-n form on the gain in true utility against d = sqrt(KL); Monte Carlo unless all exact.
            ex = ex if np.all(ok) else None
            few = best_of_n.too_few_fit_points(np.sqrt(kl))
            if ex is None and "E_V_mc" in no_mc:
                fit = dict(source=None, alpha=None, beta=None, rmse=None, residuals=None, n=list(ns),
                           reason=f"no E[V] to fit: {no_mc['E_V_mc']}")
            elif few:
                fit = dict(source=None, alpha=None, beta=None, rmse=None, residuals=None, n=list(ns),
                           reason=f"{few} (d = sqrt(KL bound): 0 at n = 1)")
            else:
                gain = (mc.E_V if ex is None else ex.E_V) - float(util.mean)
                f = jax.device_get(_fit(jnp.asarray(np.sqrt(kl), jnp.float32), jnp.asarray(gain, jnp.float32)))
                fit = dict(source="mc" if ex is None else "exact", alpha=f.alpha, beta=f.beta, rmse=f.rmse,
                           residuals=list(map(float, f.residuals)), n=list(ns))
            rows.append(dict(kind="gao_fit", error=elab, utility=ulab, **fit))
            run.emit(rows)
            last.append((rows[-2], rows[-1]))
        if cfg.plots:
            from goodhart_jax.plots import best_of_n as plots

            # Pairs with no Monte Carlo E[V] are left out; an infinite-variance one is drawn with no error bar.
            fig_rows = [dict(r, E_V_mc_se=np.nan) if r.get("E_V_mc_se", 0) is None else r for r in run.rows
                        if not (r["kind"] == "gao_fit" and r["alpha"] is None)]
            run.figure("best_of_n.png", plots.figure(fig_rows))
        run.log(f"\nMonte Carlo: {np.median(mc_seconds) * 1e3:.0f} ms per pair (median; {cfg.trials} trials, "
                f"n up to {max(ns)}; against NumPy: benchmarks/bench_bon.py)")
        run.table([dict(f, E_V=b["E_V"], E_V_mc=b["E_V_mc"]) for b, f in last],
                  [("utility", "utility", ""), ("error", "error", ""), (f"E[V] best-of-{max(ns)}", "E_V", ".4g"),
                   ("MC", "E_V_mc", ".4g"), ("alpha", "alpha", ".3g"), ("beta", "beta", ".3g"),
                   ("rmse", "rmse", ".2g")])
    return run.rows


if __name__ == "__main__":
    cli.main(Config, main)
