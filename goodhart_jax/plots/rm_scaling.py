"""Figures of `sims/rm_scaling.py`: gold and proxy against d = sqrt(KL) per proxy size (Gao et al. 2023, Figures
1 and 3: best-of-n and the exact optimum pi*(beta), the largest data size, mean over seeds), and Gao's fitted
coefficients and the peak gold against proxy parameters (log x), one line a data size, 95% intervals over seeds."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax.plots.overoptimization import over_seeds  # noqa: E402

TITLES = {"bon": "best-of-n", "exact": "exact optimum pi*(beta)"}
COEFFICIENTS = (("alpha_bon", "best-of-n alpha"), ("beta_bon", "best-of-n beta"), ("alpha_exact", "pi* alpha (RL form)"),
                ("beta_exact", "pi* beta (RL form)"), ("peak_gold_exact", "peak gold, pi*"),
                ("peak_KL_exact", "KL at the pi* peak (nats; seeds with a peak)"),
                ("pair_accuracy_unseen", "held-out pair accuracy"), ("corr", "corr(proxy, gold) under pi0"),
                ("stop_step", "kept training step (early stopping)"))


def curves(rows: list[dict]):
    """Gold (solid) and proxy (dashed) against d per size, at the largest data size, for each method, from the
    run's "lab" `rows`."""
    lab = [r for r in rows if r["kind"] == "lab" and r.get("d") is not None and r.get("gold") is not None]
    top = max(r["pairs"] for r in lab)
    sizes = list(dict.fromkeys(r["size"] for r in lab))
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(sizes)))
    panels = [(m, None, TITLES[m]) for m in TITLES]  # and one panel an RL beta, where the run has RL
    panels += [("rl", b, f"RL, beta {b:g}") for b in sorted({r["beta"] for r in lab if r["method"] == "rl"})]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    for ax, (method, beta, title) in zip(axes, panels):
        for size, c in zip(sizes, colors):
            pts = [r for r in lab if r["method"] == method and r["size"] == size and r["pairs"] == top
                   and (beta is None or r["beta"] == beta)]
            if not pts:
                continue
            params = pts[0]["params"]
            g = sorted(over_seeds(pts), key=lambda p: p["d"])
            d = [p["d"] for p in g]
            ax.plot(d, [p["y"] for p in g], "-o", ms=3, color=c, label=f"{size} ({params:,} params)")
            ax.fill_between(d, [p["lo"] for p in g], [p["hi"] for p in g], color=c, alpha=0.15, lw=0)
            ax.plot(d, [p["proxy"] for p in g], "--", color=c, lw=1)
        ax.set_title(f"{title}, {top} pairs")
        ax.set_xlabel("d = sqrt(KL(pi || pi0))")
        ax.axhline(0.0, color="grey", lw=0.5)
    axes[0].set_ylabel("gold (solid) / proxy (dashed), sd under pi0")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def coefficients(rows: list[dict]):
    """Each quantity's mean and 95% interval over seeds against parameters (log x), one line a data size, from
    the run's "summary" `rows`."""
    summ = [r for r in rows if r["kind"] == "summary"]
    pairs = sorted({r["pairs"] for r in summ})
    colors = plt.cm.plasma(np.linspace(0.1, 0.85, len(pairs)))
    panels = list(COEFFICIENTS)  # and RL's alpha, beta and peak gold per RL beta, where the run has RL
    for q in dict.fromkeys(r["quantity"] for r in summ if "_rl_b" in r["quantity"] and "peak_KL" not in r["quantity"]):
        name, b = q.split("_rl_b")
        panels.append((q, f"RL (beta {b}) {name.replace('_', ' ')}"))
    fig, axes = plt.subplots(-(-len(panels) // 3), 3, figsize=(12, 3.2 * -(-len(panels) // 3)), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (q, title) in zip(axes.flat, panels):
        for p, c in zip(pairs, colors):
            pts = sorted((r for r in summ if r["quantity"] == q and r["pairs"] == p and r["mean"] is not None),
                         key=lambda r: r["params"])
            if not pts:
                continue
            x = np.asarray([r["params"] for r in pts], float)
            y = np.asarray([r["mean"] for r in pts], float)
            lo = np.asarray([np.nan if r["lo"] is None else r["lo"] for r in pts], float)
            hi = np.asarray([np.nan if r["hi"] is None else r["hi"] for r in pts], float)
            ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), fmt="-o", ms=3, color=c, capsize=2,
                        label=f"{p} pairs")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        if not ax.lines:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color="grey")
        ax.set_xlabel("proxy parameters")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def figures(rows: list[dict]) -> dict:
    """{file name: figure} for the run's `rows`."""
    out = {}
    if any(r["kind"] == "lab" for r in rows):
        out["rm_scaling_curves.png"] = curves(rows)
    if any(r["kind"] == "summary" for r in rows):
        out["rm_scaling_coefficients.png"] = coefficients(rows)
    return out
