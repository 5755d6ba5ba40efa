"""Figures of `sims/overoptimization.py`: gold and proxy against d = sqrt(KL) (Gao et al. 2023, Figure 1 layout),
RL's objective gap to the exact optimum against steps, and the exact mean-excess curves of X and of the proxy
under pi0 and pi*(beta) (`mean_excess`)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax.lab.fits import gao_curve  # noqa: E402
from goodhart_jax.lab.summary import interval  # noqa: E402

METHODS = ("bon", "exact", "rl")
TITLES = {"bon": "best-of-n", "exact": "exact optimum pi*(beta)", "rl": "RL (RLOO)"}


def _label(r: dict) -> str:
    return r["proxy"] + ("" if r["pairs"] is None else f" ({r['pairs']} pairs)")


def _key(r: dict):
    """A point's place on its curve, the same in every seed: n (best-of-n), beta (exact), (beta, step) (RL)."""
    return {"bon": r["n"], "exact": r["beta"], "rl": (r["beta"], r["step"]), "search": r.get("restart")}[r["method"]]


def over_seeds(points: list[dict], field: str = "gold") -> list[dict]:
    """One curve's points pooled over seeds: per place (`_key`) the mean d, the mean of `field` and its Student-t
    95% interval over the seeds (lo = hi = the mean with one seed), in the order of the places' first rows.

    Returns:
      [{"key", "d", "y", "lo", "hi", "seeds", "proxy"}] (proxy: the mean proxy_reward).
    """
    groups: dict = {}
    for r in points:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for k, rs in groups.items():
        iv = interval([r[field] for r in rs])
        lo, hi = (iv.lo, iv.hi) if iv.n > 1 else (iv.mean, iv.mean)
        out.append(dict(key=k, d=float(np.mean([r["d"] for r in rs])), y=iv.mean, lo=lo, hi=hi, seeds=iv.n,
                        proxy=float(np.mean([r["proxy_reward"] for r in rs]))))
    return out


def curves(rows: list[dict]) -> plt.Figure:
    """Rows = noise families, columns = methods; gold solid, proxy dashed, one colour per proxy, Gao fit dotted.

    Over several seeds (rows with a "seed"), each point is the mean over seeds at one n (beta; RL: beta and
    step), at the mean d, and the shaded band is the 95% interval of gold over the seeds. Search results (learned
    proxies) appear as crosses (gold, every seed) in the exact-optimum panel, at their point-mass KL.
    """
    lab = [r for r in rows if r["kind"] == "lab" and r["d"] is not None]  # nulled rows (overflow) have no point
    fits = [r for r in rows if r["kind"] == "fit" and r["alpha"] is not None]  # too few points: no curve
    seeds = len({r.get("seed") for r in lab})
    noises = list(dict.fromkeys(r["noise"] for r in lab))
    methods = [m for m in METHODS if any(r["method"] == m for r in lab)]
    fig, axes = plt.subplots(len(noises), len(methods), figsize=(4.6 * len(methods), 3.6 * len(noises)),
                             squeeze=False)
    for i, noise in enumerate(noises):
        labels = list(dict.fromkeys(_label(r) for r in lab if r["noise"] == noise))
        for j, m in enumerate(methods):
            ax = axes[i, j]
            for c, lab_ in enumerate(labels):
                color = f"C{c}"
                pts = [r for r in lab if r["noise"] == noise and _label(r) == lab_ and r["method"] == m]
                if not pts:
                    continue
                groups = {}
                for r in pts:  # RL: one line per beta, in step order; others: one line in d order
                    groups.setdefault(r["beta"] if m == "rl" else None, []).append(r)
                for g, rs in groups.items():
                    line = sorted(over_seeds(rs), key=lambda p: p["key"][1] if m == "rl" else p["d"])
                    dg = [p["d"] for p in line]
                    first = g == next(iter(groups))
                    ax.plot(dg, [p["y"] for p in line], "-o", ms=2.5, color=color,
                            label=f"{lab_}: gold" if first else None)
                    if seeds > 1:
                        ax.fill_between(dg, [p["lo"] for p in line], [p["hi"] for p in line], color=color,
                                        alpha=0.15, lw=0)
                    ax.plot(dg, [p["proxy"] for p in line], "--", color=color, alpha=0.7,
                            marker="^" if np.ptp(dg) <= 1e-6 * max(dg) else None,  # one point: a marker
                            label=f"{lab_}: proxy" if first else None)
                d = np.asarray([r["d"] for r in pts])
                mine = [f for f in fits if f["method"] == m and f["noise"] == noise and _label(f) == lab_]
                for b in dict.fromkeys(f.get("rl_beta") for f in mine):  # RL: one fit a beta
                    fs = [f for f in mine if f.get("rl_beta") == b]
                    dd = np.linspace(0, d.max(), 100)
                    alpha, beta = np.mean([f["alpha"] for f in fs]), np.mean([f["beta"] for f in fs])
                    ax.plot(dd, np.asarray(gao_curve(dd, alpha, beta, m)), ":", color=color, lw=1)
                if m == "exact":
                    s = [r for r in lab if r["noise"] == noise and _label(r) == lab_ and r["method"] == "search"]
                    if s:
                        ax.plot([r["d"] for r in s], [r["gold"] for r in s], "x", color=color, ms=6)
            ax.axhline(0.0, color="0.7", lw=0.8)
            gold = max([abs(r["gold"]) for r in lab if r["noise"] == noise and r["method"] == m] + [1.0])
            top = max((abs(y) for line in ax.get_lines() for y in line.get_ydata()), default=0.0)
            if top > 20 * gold:
                ax.set_yscale("symlog", linthresh=gold)  # a proxy far above gold (one huge error): log beyond it
                ax.set_ylim(top=3 * top)  # the highest point inside the frame
            ax.set_xlabel("d = sqrt(KL(pi || pi0))")
            ax.set_ylabel("E[reward] (each in sd units under pi0)")
            ax.set_title(f"{TITLES[m]}; error {noise}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    over = f"; mean over {seeds} seeds, band: 95% interval of gold" if seeds > 1 else ""
    fig.suptitle(f"gold (solid) and proxy (dashed) reward, both mean 0 and sd 1 under pi0; dotted: Gao fit; "
                 f"x: GCG on the proxy{over}", fontsize=9)
    fig.tight_layout()
    return fig


def rl_gap(rows: list[dict]) -> plt.Figure:
    """RL's objective gap J(pi*) - J(pi) against steps: one panel per noise family, a line per (proxy, beta);
    over several seeds the mean gap with its 95% interval as a band.

    Args:
      rows: the lab's rows (those with method "rl" are drawn).
    """
    rl = [r for r in rows if r["kind"] == "lab" and r["method"] == "rl" and r["gap"] is not None and r["d"] is not None]
    noises = list(dict.fromkeys(r["noise"] for r in rl))
    seeds = len({r.get("seed") for r in rl})
    fig, axes = plt.subplots(1, max(len(noises), 1), figsize=(4.6 * max(len(noises), 1), 3.6), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for c, key in enumerate(dict.fromkeys((_label(r), r["beta"]) for r in rl if r["noise"] == noise)):
            pts = [r for r in rl if r["noise"] == noise and (_label(r), r["beta"]) == key]
            line = sorted(over_seeds(pts, "gap"), key=lambda p: p["key"][1])
            steps = [p["key"][1] for p in line]
            ax.plot(steps, [max(p["y"], 1e-8) for p in line], "-o", ms=2.5, color=f"C{c}",
                    label=f"{key[0]}, beta {key[1]:g}")
            if seeds > 1:
                ax.fill_between(steps, [max(p["lo"], 1e-8) for p in line], [max(p["hi"], 1e-8) for p in line],
                                color=f"C{c}", alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("RL step")
        ax.set_ylabel("J(pi*) - J(pi), J = E[proxy] - beta KL")
        title = f"RL gap to the exact optimum; error {noise}"
        ax.set_title(title + (f" ({seeds} seeds)" if seeds > 1 else ""), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mean_excess(rows: list[dict]) -> plt.Figure:
    """The exact mean-excess curves of the "tail" rows: e(u) = E[Z - u | Z > u] against u, the law's q-quantiles.

    Rows = noise families, columns = Z ("X" = proxy - gold, "proxy"); one colour per proxy; pi0 solid, pi*(beta)
    dashed at the grid's beta nearest 1 (each law's own quantiles). A rising curve is a heavy tail (GPD xi > 0:
    e(u) linear in u with slope xi / (1 - xi)), a flat one exponential, a falling one bounded.
    """
    tail = [r for r in rows if r["kind"] == "tail" and r["mean_excess"] is not None]
    noises = list(dict.fromkeys(r["noise"] for r in tail))
    betas = sorted({r["beta"] for r in tail if r["beta"] is not None})
    near = min(betas, key=lambda b: abs(np.log(b)), default=None)
    fig, axes = plt.subplots(max(len(noises), 1), 2, figsize=(9.2, 3.6 * max(len(noises), 1)), squeeze=False)
    for i, noise in enumerate(noises):
        labels = list(dict.fromkeys(_label(r) for r in tail if r["noise"] == noise))
        for j, of in enumerate(("X", "proxy")):
            ax = axes[i, j]
            for c, lab_ in enumerate(labels):
                for law, beta, style in (("pi0", None, "-o"), ("pi*", near, "--^")):
                    pts = sorted((r for r in tail if r["noise"] == noise and _label(r) == lab_ and r["of"] == of
                                  and r["law"] == law and r["beta"] == beta), key=lambda r: r["q"])
                    if pts:
                        name = "pi0" if law == "pi0" else f"pi*(beta={beta:.2g})"
                        ax.plot([r["u"] for r in pts], [r["mean_excess"] for r in pts], style, ms=3, color=f"C{c}",
                                alpha=1.0 if law == "pi0" else 0.6, label=f"{lab_}, {name}")
            ax.set_xlabel(f"u: the law's q-quantile of {'X = proxy - gold' if of == 'X' else 'the proxy'}")
            ax.set_ylabel("mean excess E[Z - u | Z > u]")
            ax.set_title(f"{'X' if of == 'X' else 'proxy'}: error {noise}", fontsize=9)
            if ax.get_lines():
                ax.legend(fontsize=6)
    fig.suptitle("exact mean-excess curves, q = 0.5 .. 0.999 (proxy and gold in sd units under pi0)", fontsize=10)
    fig.tight_layout()
    return fig


def figures(rows: list[dict]) -> dict:
    """{file name: figure} for the run's rows."""
    out = {"overoptimization.png": curves(rows)}
    if any(r["kind"] == "lab" and r["method"] == "rl" for r in rows):
        out["rl_gap.png"] = rl_gap(rows)
    if any(r["kind"] == "tail" and r["mean_excess"] is not None for r in rows):
        out["mean_excess.png"] = mean_excess(rows)
    return out
