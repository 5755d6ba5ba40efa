"""Figure of `sims/theorem3.py`: the KL-bounded optimum, light against heavy V."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure(rows: list[dict], utilities: list[str], d_show: float) -> plt.Figure:
    """Left: the tilt's gain max E_P[V] - E_Q[V] against d. Right: Theorem 1's construction at KL = d_show against t.

    Args:
      rows: the script's rows ("kl_bounded" and "upweight_at_kl").
      utilities: the family specs, in legend order.
      d_show: the KL budget of the right panel (one of the rows' d).
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 4))
    for spec in utilities:
        rs = [r for r in rows if r["kind"] == "kl_bounded" and r["utility"] == spec and r["exists"]]
        if rs:
            a1.plot([r["d"] for r in rs], [r["E_V"] - r["E_Q_V"] for r in rs], label=spec)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("KL budget d")
    a1.set_ylabel("max E_P[V] - E_Q[V]")
    a1.set_title("light V: exponential tilt, -> 0 as d -> 0, finite", fontsize=9)
    a1.legend(fontsize=8)
    lowest = 0.0
    for spec in utilities:
        rs = [r for r in rows if r["kind"] == "upweight_at_kl" and r["utility"] == spec and r["d"] == d_show]
        ys = [r["E_V"] for r in rs]
        a2.plot([r["t"] for r in rs], ys, "o-", ms=3, label=spec)
        lowest = min([lowest] + [y for y in ys if y is not None and np.isfinite(y)])
    a2.set_xscale("log")
    a2.set_yscale("symlog", linthresh=0.1)
    a2.set_ylim(bottom=lowest - 0.05)  # no empty negative decades
    a2.set_xlabel("threshold t of the upweighting")
    a2.set_ylabel(f"E_P[V] at KL = {d_show:.2g}")
    a2.set_title("Theorem 1 construction at fixed KL: heavy V unbounded", fontsize=9)
    a2.legend(fontsize=8)
    return fig
