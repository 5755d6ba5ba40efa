"""Figures of `sims/tail_upweight.py`: Theorem 1's curves and the paper's Figure 3 (stills and GIF frames)."""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax.tails import Family  # noqa: E402
from goodhart_jax.upweighting import UpweightResult  # noqa: E402


def curves(rows: list[dict], c: float, exponent: float) -> plt.Figure:
    """E_{P_t}[X] and KL(P_t || Q) against t, one line per base family (rows of kind "upweight").

    Rows with no numbers (P_t does not exist, or its mean or KL is null) are left out; where no row has a
    positive KL the KL axis stays linear (a log axis of nothing cannot be drawn), and a panel with no
    points says so.

    Args:
      c: Theorem 1's constant (tail mass c / t^exponent), for the title.
      exponent: the exponent p of the tail mass.
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = []
    for spec in dict.fromkeys(r["base"] for r in rows):
        rs = [r for r in rows if r["base"] == spec and r["exists"] and r["mean"] is not None and r["KL"] is not None]
        if rs:
            a1.plot([r["t"] for r in rs], [r["mean"] for r in rs], label=spec)
            a2.plot([r["t"] for r in rs], [r["KL"] for r in rs], label=spec)
        drawn += rs
    for a, lab in ((a1, "E_{P_t}[X]"), (a2, "KL(P_t || Q)")):
        a.set_xscale("log")
        a.set_xlabel("t")
        a.set_ylabel(lab)
        if not drawn:
            a.text(0.5, 0.5, "no P_t at these t (see the rows' reasons)", ha="center", va="center",
                   transform=a.transAxes, fontsize=9)
    a1.set_yscale("symlog", linthresh=1.0)
    if any(r["KL"] > 0 for r in drawn):
        a2.set_yscale("log")
    if drawn:
        a1.legend(fontsize=8)
    fig.suptitle(f"Theorem 1: tail mass {c:g}/t^{exponent:g} — heavy tails: mean up, KL down", fontsize=10)
    return fig


_log_sf = jax.jit(lambda fam, x: fam.log_sf(x))  # one program for every frame (eagerly, each operation compiles)


def _frame(ax_d, ax_b, base: Family, t: float, res: UpweightResult, top: float) -> None:
    """One Figure-3 frame: tail functions of Q and P_t (log-log), and bars of E[X] and KL.

    Where P_t does not exist (e.g. its tail mass c/t^p underflows) or its numbers are not finite, only Q is
    drawn, and the frame says so instead of printing them.
    """
    x = np.geomspace(0.1, 30 * t, 500)
    lsf = np.asarray(_log_sf(base, jnp.asarray(x)))
    m, lsf_t = float(res.tail_mass), float(res.log_sf_q)
    shown = bool(res.exists) and np.isfinite(float(res.mean)) and np.isfinite(float(res.KL))
    ax_d.plot(x, np.exp(lsf), color="0.5", label="Q(X > x)")
    if shown:
        F_q, F_t = -np.expm1(lsf), -np.expm1(lsf_t)
        sf_p = np.where(x > t, m * np.exp(lsf - lsf_t), 1.0 - (1.0 - m) * F_q / F_t)
        ax_d.plot(x, sf_p, color="C0", label="P_t(X > x)")
    ax_d.axvline(t, color="C3", ls=":", lw=1)
    ax_d.set_xscale("log")
    ax_d.set_yscale("log")
    ax_d.set_ylim(1e-12, 1.5)
    ax_d.set_xlabel("x")
    ax_d.set_title(f"t = {t:.3g}: " + (f"P_t puts {m:.3g} above t" if shown else "no P_t here (see the rows)"),
                   fontsize=9)
    ax_d.legend(fontsize=8, loc="lower left")
    ax_b.bar([0, 1], [float(res.mean), float(res.KL)] if shown else [0.0, 0.0], color=["C0", "C1"])
    ax_b.set_xticks([0, 1], ["E[X]", "KL"])
    ax_b.set_ylim(0, top * 1.05)
    ax_b.set_title(f"E[X]={float(res.mean):.3g}  KL={float(res.KL):.2g}" if shown else "no P_t", fontsize=8)


def _top(res: UpweightResult) -> float:
    """The bars' common height: the largest finite mean or KL over the frames."""
    ok = np.asarray(res.exists, bool)
    v = np.concatenate([np.asarray(res.mean)[ok], np.asarray(res.KL)[ok]])
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else 1.0


def figure3_stills(base: Family, ts: np.ndarray, res: UpweightResult, c: float, exponent: float) -> plt.Figure:
    """Three Figure-3 frames side by side (first, middle and last t).

    Args:
      base: the family of Q.
      ts: [K] thresholds, K >= 3.
      res: `sweep_upweight(base, ts, c, exponent)` on the host, fields [K].
    """
    top = _top(res)
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), gridspec_kw=dict(height_ratios=[2, 1]))
    for k, i in enumerate([0, len(ts) // 2, len(ts) - 1]):
        _frame(axes[0, k], axes[1, k], base, ts[i], jax.tree.map(lambda a: a[i], res), top)
    fig.suptitle(f"Figure 3: Q = {base}, tail upweighted to {c:g}/t^{exponent:g}: "
                 "E[X] (blue) grows, KL (orange) -> 0", fontsize=10)
    fig.tight_layout()
    return fig


def figure3_gif(base: Family, ts: np.ndarray, res: UpweightResult, ms_per_frame: int = 180) -> bytes:
    """The animated Figure 3: one frame per t (arguments as `figure3_stills`); GIF bytes.

    Args:
      base: the base family Q.
      ts: [T] thresholds, one frame each.
      res: `upweighting.upweight` at those thresholds.
      ms_per_frame: milliseconds a frame.
    """
    from PIL import Image

    top, frames = _top(res), []
    for i, t in enumerate(ts):
        fig, (a, b) = plt.subplots(1, 2, figsize=(6.4, 3.0), gridspec_kw=dict(width_ratios=[3, 1]))
        _frame(a, b, base, t, jax.tree.map(lambda x: x[i], res), top)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=70)
        plt.close(fig)
        buf.seek(0)
        frames.append(Image.open(buf).convert("P", palette=Image.ADAPTIVE, colors=32))
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0,
                   optimize=True)
    return gif.getvalue()
