"""Figure of `sims/sweep_threshold.py`: E[V | X + V >= t] against t, quadrature and Monte Carlo."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure(rows: list[dict], utility: str, mean_v: float, limits: dict[str, float] | None = None) -> plt.Figure:
    """Lines: quadrature; dots: importance-sampled Monte Carlo +- 2 se; one colour per error family.

    Args:
      rows: `kind="threshold"` rows (error, t, E_V, E_V_mc, E_V_mc_se); None marks a value that is not finite.
      utility: the utility family's spec, for the title.
      mean_v: E[V], drawn as the dashed level that heavy-tailed error returns to.
      limits: error spec -> its finite limit as t -> inf (exponential error), drawn dotted.
    """
    limits = limits or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    for name in dict.fromkeys(r["error"] for r in rows):
        rs = [r for r in rows if r["error"] == name]
        t = np.array([r["t"] for r in rs], float)
        line, = ax.plot(t, [nan(r["E_V"]) for r in rs], "-",
                        label=name + (" (dependent, fn. 4)" if name == "footnote4" else ""))
        ax.errorbar(t, [nan(r["E_V_mc"]) for r in rs], yerr=[2 * nan(r["E_V_mc_se"]) for r in rs], fmt="o", ms=3,
                    color=line.get_color(), alpha=0.7)
        if name in limits:
            ax.axhline(limits[name], color=line.get_color(), ls=":", lw=1)
    ax.axhline(mean_v, color="k", ls="--", lw=0.8, label=f"E[V] = {mean_v:g}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ts = [r["t"] for r in rows]
    ax.set_xlim(min(ts), max(ts))
    lo = min([r["E_V"] for r in rows if r["E_V"] is not None] + [mean_v])
    ax.set_ylim(bottom=lo - 0.1 * (1 + abs(lo)))
    ax.set_xlabel("threshold t")
    ax.set_ylabel("E[V | X + V >= t]")
    ax.set_title(f"Conditioning on a high proxy (V ~ {utility}); lines: quadrature, dots: IS Monte Carlo ±2 se",
                 fontsize=9)
    ax.legend(fontsize=8)
    return fig
