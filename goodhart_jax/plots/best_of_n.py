"""Figure of `sims/best_of_n.py`: gain in true utility of best-of-n against d = sqrt(KL bound)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure(rows: list[dict]) -> plt.Figure:
    """One panel per utility: exact lines, Monte-Carlo dots +- 2 se, Gao's fit dotted; one colour per error.

    Args:
      rows: the study's rows: kind "bon" (error, utility, KL_bound, E_V or None, E_V_mc, E_V_mc_se) and
        kind "gao_fit" (error, utility, alpha, beta).
    """
    bon = [r for r in rows if r["kind"] == "bon"]
    fits = [r for r in rows if r["kind"] == "gao_fit"]
    utilities = list(dict.fromkeys(r["utility"] for r in bon))
    fig, axes = plt.subplots(1, len(utilities), figsize=(5.5 * len(utilities), 4.2), squeeze=False)
    for ax, ulab in zip(axes[0], utilities):
        for f in (f for f in fits if f["utility"] == ulab):
            rs = [r for r in bon if r["utility"] == ulab and r["error"] == f["error"]]
            d = np.sqrt([r["KL_bound"] for r in rs])
            exact = rs[0]["E_V"] is not None
            base = rs[0]["E_V"] if exact else rs[0]["E_V_mc"]  # n = 1: E[V]
            color = None
            if exact:
                line, = ax.plot(d, [r["E_V"] - base for r in rs], "-", label=f["error"])
                color = line.get_color()
            dots = ax.errorbar(d, [r["E_V_mc"] - base for r in rs], yerr=[2 * r["E_V_mc_se"] for r in rs], fmt="o",
                               ms=3, color=color, alpha=0.6, label=None if exact else f["error"])
            dd = np.linspace(0, d.max(), 100)
            ax.plot(dd, dd * (f["alpha"] - f["beta"] * dd), ":", lw=1, color=color or dots.lines[0].get_color())
        ax.set_xlabel("d = sqrt(log n - (n-1)/n)")
        ax.set_ylabel("E[V of best-of-n] - E[V]")
        ax.set_title(f"utility {ulab}: lines exact, dots MC ±2 se, dotted Gao fit", fontsize=9)
        ax.legend(fontsize=8)
    return fig
