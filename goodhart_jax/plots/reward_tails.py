"""Figures of `sims/reward_tails.py`: reward-tail diagnostics (Kwa et al. 2024, Figures 1, 2 and 5).

`diagnostic_figure` draws the paper's 2x2 panel, clockwise from top left:
histogram, normal probability (Q-Q) plot, Hill plot with standard-error bars,
exponential probability plot of the upper half. `estimators_figure` overlays
the tail-index estimators of `goodhart_jax.tail_index` against k.

Plotting is host-side NumPy + matplotlib (Agg); the numbers come from the
library's estimators.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import ndtri  # noqa: E402

from goodhart_jax.tail_index import Diagnosis, TailCurve  # noqa: E402

__all__ = ["normal_qq", "exponential_upper_half", "diagnostic_figure", "estimators_figure", "figures"]


def normal_qq(x: np.ndarray):
    """Normal probability plot points: (theoretical quantiles [N], ordered sample [N]).

    Plotting positions (i - 0.375) / (N + 0.25) (Blom).

    Args:
      x: [N] the sample.
    """
    a = np.sort(np.asarray(x, np.float64))
    n = a.shape[0]
    p = (np.arange(1, n + 1) - 0.375) / (n + 0.25)
    return ndtri(p), a


def exponential_upper_half(x: np.ndarray):
    """Exponential probability plot of the values above the median.

    Returns (standard-exponential quantiles [M], ordered excesses over the median [M]).
    A straight line means an exponential tail; bending down, lighter; slope
    running off to infinity, heavier.

    Args:
      x: [N] the sample.
    """
    a = np.sort(np.asarray(x, np.float64))
    med = np.median(a)
    upper = a[a > med] - med
    m = upper.shape[0]
    p = (np.arange(1, m + 1) - 0.5) / m
    return -np.log1p(-p), upper


def diagnostic_figure(
    x: np.ndarray,
    hill_curve: TailCurve,
    k_range: Sequence[int],
    *,
    title: str = "",
    bins: int = 100,
    hill_label: str = "",
):
    """The paper's 2x2 figure.

    Args:
      x: [N] raw sample (histogram and probability plots).
      hill_curve: Hill TailCurve (k = 1..M-1) of the preprocessed sample.
      k_range: [K] k values shown in the Hill panel.
      title: figure title.
      bins: histogram bins.
      hill_label: note on the preprocessing, shown in the Hill panel.
    Returns:
      matplotlib Figure.
    """
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    ax_hist, ax_qq, ax_exp, ax_hill = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    ax_hist.hist(x, bins=bins, color="tab:blue", alpha=0.8)
    ax_hist.set(title="Histogram", xlabel="reward", ylabel="count")

    q, s = normal_qq(x)
    ax_qq.plot(q, s, ".", ms=2, color="tab:blue")
    lo, hi = np.quantile(s, [0.25, 0.75])
    slope = (hi - lo) / (ndtri(0.75) - ndtri(0.25))
    ax_qq.plot(q, np.median(s) + slope * q, "-", color="tab:red", lw=1, label="normal through quartiles")
    ax_qq.set(title="Normal probability plot", xlabel="normal quantile", ylabel="ordered reward")
    ax_qq.legend(fontsize=8)

    e, ex = exponential_upper_half(x)
    ax_exp.plot(e, ex, ".", ms=2, color="tab:blue")
    ax_exp.set(
        title="Exponential probability plot, upper half",
        xlabel="standard exponential quantile",
        ylabel="reward - median",
    )

    k = np.asarray(k_range)
    idx = k - 1
    ok = idx < np.asarray(hill_curve.xi).shape[0]
    k, idx = k[ok], idx[ok]
    xi = np.asarray(hill_curve.xi)[idx]
    se = np.asarray(hill_curve.se)[idx]
    ax_hill.errorbar(
        k, xi, yerr=se, fmt=".", ms=3, lw=0.6, color="tab:blue", ecolor="tab:gray", label=hill_label or None
    )
    ax_hill.set(title="Hill estimator (bars: one standard error)", xlabel="k", ylabel="xi(k)")
    if hill_label:
        ax_hill.legend(fontsize=8, loc="best")  # placed where it hides no point
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def estimators_figure(
    diag: Diagnosis,
    k_max: int,
    mle_curve: Optional[TailCurve] = None,
    *,
    title: str = "",
    z: float = 1.96,
):
    """Hill, moment, Pickands and POT-GPD shape estimates against k with z-sigma bands.

    Args:
      diag: a `tail_index.Diagnosis`.
      k_max: largest k shown.
      mle_curve: optional GPD MLE TailCurve over thresholds.
      title: figure title.
      z: band half-width in standard errors.
    Returns:
      matplotlib Figure.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, curve, color in (
        ("Hill", diag.hill, "tab:blue"),
        ("moment (DEdH)", diag.moment, "tab:orange"),
        ("Pickands", diag.pickands, "tab:green"),
    ):
        k = np.asarray(curve.k)
        sel = (k >= 5) & (k <= k_max)
        k, xi, se = k[sel], np.asarray(curve.xi)[sel], np.asarray(curve.se)[sel]
        ax.plot(k, xi, color=color, lw=1, label=name)
        ax.fill_between(k, xi - z * se, xi + z * se, color=color, alpha=0.15, lw=0)
    if mle_curve is not None:
        k, xi, se = (np.asarray(a) for a in mle_curve)
        ax.errorbar(k, xi, yerr=z * se, fmt="o", ms=3, color="tab:red", label="GPD MLE (POT)")
    if diag.k_star is not None:
        ax.axvline(int(diag.k_star.k), color="k", ls=":", lw=1, label=f"double-bootstrap k* = {int(diag.k_star.k)}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="k (upper order statistics)", ylabel="xi", title=title or "Tail-index estimators")
    finite = np.concatenate([np.asarray(diag.moment.xi)[:k_max], np.asarray(diag.hill.xi)[:k_max]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        lo, hi = np.quantile(finite, [0.02, 0.98])
        pad = 0.3 * (hi - lo + 0.1)
        ax.set_ylim(min(lo, -0.1) - pad, max(hi, 0.1) + pad)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def figures(x: np.ndarray, diag: Diagnosis, ks: Sequence[int], k_max: int, mle_curve: TailCurve, name: str,
            demean: bool = False, positive_only: bool = False) -> dict:
    """The run's figures: {"diagnostics.png": the 2x2 figure, "estimators.png": estimators against k}.

    Args:
      x: [N] raw sample; diag: its `tail_index.diagnose` result (run with `demean`, `positive_only`).
      ks: [K] k values of the Hill panel (empty: k = 1 only).
      k_max: largest k of the estimators figure; mle_curve: GPD MLE TailCurve over thresholds.
      name: the sample's name, in the titles.
    """
    label = ("demeaned, " if demean else "") + ("positives only" if positive_only else "raw values")
    ks = np.asarray(ks) if len(ks) else np.arange(1, 2)
    return {"diagnostics.png": diagnostic_figure(x, diag.hill, ks, title=f"{name}: n = {x.shape[0]}",
                                                 hill_label=label),
            "estimators.png": estimators_figure(diag, k_max, mle_curve,
                                                title=f"{name}: tail-index estimators ({diag.verdict.verdict})")}
