"""Figure of `sims/ensembles.py`: gold against KL for each ensemble objective beside the single proxy, per method
(exact pi*(beta), best-of-n, RL) and annotator error family, with the 95% interval over seeds."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax.lab.summary import interval  # noqa: E402

TITLES = {"bon": "best-of-n", "exact": "exact optimum pi*(beta)", "rl": "RL (RLOO), last step"}
STYLE = {"single": ("k", "-"), "mean": ("C0", "-"), "wco": ("C3", "-"), "uwo": ("C2", "-")}


def _place(r: dict):
    """A point's place on its curve, the same in every seed: n (best-of-n), beta (exact), (beta, step) (RL)."""
    return {"bon": r["n"], "exact": r["beta"], "rl": (r["beta"], r["step"])}[r["method"]]


def over_seeds(points: list[dict]) -> list[dict]:
    """Per place: the mean KL over seeds and the mean of gold with its Student-t 95% interval (lo = hi = the mean
    with one seed), sorted by mean KL.

    Args:
      points: one curve's point rows over seeds (each with "method", "KL", "gold" and its place: "n", "beta",
        or "beta" and "step" for RL).
    Returns:
      one dict per place: KL, y (mean gold), lo, hi, seeds.
    """
    groups: dict = {}
    for r in points:
        groups.setdefault(_place(r), []).append(r)
    out = []
    for k, rs in groups.items():
        iv = interval([r["gold"] for r in rs])
        lo, hi = (iv.lo, iv.hi) if iv.n > 1 else (iv.mean, iv.mean)
        out.append(dict(KL=float(np.mean([r["KL"] for r in rs])), y=iv.mean, lo=lo, hi=hi, seeds=iv.n))
    return sorted(out, key=lambda p: p["KL"])


def gold_vs_kl(rows: list[dict]) -> plt.Figure:
    """Rows = (noise family, label kind), columns = methods; one curve per proxy (single: black; mean, wco, uwo),
    gold (sd units under pi0) against KL (nats, log x), the band the 95% interval over seeds.

    Args:
      rows: the study's result rows; those of kind "lab" with a KL and a gold are drawn (proxy labels
        "loss:objective", e.g. "bt:mean").
    """
    lab = [r for r in rows if r["kind"] == "lab" and r["KL"] is not None and r["gold"] is not None]
    seeds = len({r["seed"] for r in lab})
    panels = list(dict.fromkeys((r["noise"], r["proxy"].split(":")[0]) for r in lab))
    methods = [m for m in ("exact", "bon", "rl") if any(r["method"] == m for r in lab)]
    fig, axes = plt.subplots(max(len(panels), 1), max(len(methods), 1), squeeze=False,
                             figsize=(4.4 * max(len(methods), 1), 3.4 * max(len(panels), 1)))
    for i, (noise, loss) in enumerate(panels):
        for j, m in enumerate(methods):
            ax = axes[i, j]
            mine = [r for r in lab if r["noise"] == noise and r["proxy"].startswith(loss + ":") and r["method"] == m]
            if m == "rl":  # one point per RL beta: its last step
                last = max((r["step"] for r in mine), default=0)
                mine = [r for r in mine if r["step"] == last]
            for label in dict.fromkeys(r["proxy"] for r in mine):
                obj = label.split(":", 1)[1]
                colour, ls = STYLE.get(obj.split("(")[0], ("C4", "-"))
                pts = over_seeds([r for r in mine if r["proxy"] == label])
                x = np.maximum([p["KL"] for p in pts], 1e-3)
                ax.plot(x, [p["y"] for p in pts], ls, marker="o", ms=3, color=colour, label=obj,
                        lw=2.0 if obj == "single" else 1.2)
                ax.fill_between(x, [p["lo"] for p in pts], [p["hi"] for p in pts], color=colour, alpha=0.12)
            ax.set_xscale("log" if m != "rl" else "linear")
            ax.set_xlabel("KL(pi || pi0), nats")
            ax.set_ylabel("E[gold] (sd under pi0)")
            ax.set_title(f"{TITLES[m]}; {loss} labels, error {noise}" + (f" ({seeds} seeds)" if seeds > 1 else ""),
                         fontsize=8)
            ax.axhline(0.0, color="grey", lw=0.5)
            if ax.get_lines():
                ax.legend(fontsize=7)
    fig.suptitle("ensemble objectives against a single proxy: gold vs KL (band: 95% interval over seeds)",
                 fontsize=10)
    fig.tight_layout()
    return fig
