"""Figures of the main job, `sims/sweep_beta.py`, from its `frontier.FamilySweep` results."""
from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax.frontier import FamilySweep  # noqa: E402

TILT = ("E_U", "E_V", "KL")  # the tilt's numbers in the result rows


def _curve(x, y, ok, key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, mean ys, sd ys) over seeds of the points where x and y are finite and `ok`, one per column with any.

    Args:
      x, y: [S, K] or [K] coordinates and values (S seeds).
      ok: [S, K] or [K]: where the point is shown (`_shown`).
      key: [K] the columns' order (e.g. beta); a column's x is the mean of its seeds' x.
    """
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    ok = np.broadcast_to(ok, x.shape) & np.isfinite(x) & np.isfinite(y)
    cols = [j for j in np.argsort(np.asarray(key, float), kind="stable") if ok[:, j].any()]
    pts = [(x[ok[:, j], j], y[ok[:, j], j]) for j in cols]
    return (np.array([xs.mean() for xs, _ in pts], float), np.array([ys.mean() for _, ys in pts], float),
            np.array([ys.std() for _, ys in pts], float))


def _shown(result, exists=True, fields=("E_U", "E_V", "KL", "KL_per_state")) -> np.ndarray:
    """Where a point is shown: it exists and all its numbers are finite (as in the result rows, where one
    non-finite number nulls the row's numbers)."""
    return np.asarray(exists, bool) & np.all([np.isfinite(np.asarray(getattr(result, f), float)) for f in fields], 0)


def _style(f: FamilySweep) -> dict:
    return dict(ls="--" if f.heavy else "-", marker="o" if f.heavy else "s", ms=3)


def figures(families: list[FamilySweep], utility: str) -> dict[str, plt.Figure]:
    """The headline figure and its two companions, by file name.

    Args:
      families: one `FamilySweep` per error family.
      utility: the utility family, as given (for the title).
    """
    figs = {}

    # Headline: E[V] against KL on the tree, light vs heavy error.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for f in families:
        kl, ev, sd = _curve(f.tree.KL, f.tree.E_V, _shown(f.tree), f.betas)
        if not kl.size:
            continue
        line, = ax.plot(kl, ev, label=f"{f.label} ({'heavy' if f.heavy else 'light'})", **_style(f))
        ax.fill_between(kl, ev - sd, ev + sd, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("KL(Tr(pi*) || Tr(pi0))  [nats]")
    ax.set_ylabel("E[V] under pi*(beta)")
    ax.set_title("Token tree: true utility against KL spent")
    ax.legend(fontsize=8)
    ax = axes[1]
    for f in families:
        kl, ev, _ = _curve(f.tilt.KL, f.tilt.E_V, _shown(f.tilt, f.tilt.exists, TILT), f.tilt.KL)
        if kl.size:
            ax.plot(kl, ev, label=f.label, **_style(f))
    missing = [f"{f.label}: {'no beta' if not v.any() else f'{v.sum()} of {v.size} betas'}"
               for f in families for v in [np.asarray(f.tilt.exists, bool)] if not v.all()]
    ax.set_xscale("log")
    ax.set_xlabel("KL(P_beta || Q)  [nats]")
    ax.set_ylabel("E[V] under P_beta")
    ax.set_title("Continuous tilt P ∝ Q exp(U/beta)")
    if missing:
        ax.text(0.02, 0.98, "optimum exists for:\n" + "\n".join(missing), transform=ax.transAxes,
                va="top", fontsize=8, color="0.3")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Light-tailed error: E[V] climbs with KL.  Heavy-tailed error: E[V] stays flat.  (V ~ {utility})")
    figs["ev_vs_kl.png"] = fig

    # E[U] against beta.
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for f in families:
        b, eu, _ = _curve(np.broadcast_to(f.betas, f.tree.E_U.shape), f.tree.E_U, _shown(f.tree), f.betas)
        if b.size:
            ax.plot(b, eu, label=f"tree: {f.label}", **_style(f))
    for f in families:
        b, eu, _ = _curve(f.betas, f.tilt.E_U, _shown(f.tilt, f.tilt.exists, TILT), f.betas)
        if b.size:
            ax.plot(b, eu, color="k", lw=0.8, alpha=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=-1.0)
    ax.set_xlabel("beta")
    ax.set_ylabel("E[U] under the optimum")
    ax.set_title("Proxy reward against beta (dotted: continuous tilt)")
    ax.legend(fontsize=8)
    figs["eu_vs_beta.png"] = fig

    # Theorem 2: E[U] and KL against t.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for f in families:
        ts = np.broadcast_to(f.ts, f.thm2.E_U.shape)
        for ax, y in zip(axes, (f.thm2.E_U, f.thm2.KL)):
            t, v, _ = _curve(ts, y, _shown(f.thm2, f.thm2_exists), f.ts)
            if t.size:
                ax.plot(t, v, label=f.label, **_style(f))
    for ax, lab in zip(axes, ("E[U] under rho_t", "KL(rho_t || rho0)  [nats]")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("threshold t")
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle("Theorem 2 construction on the tree (tail mass c/t above t; defined while some leaf has U > t)")
    figs["thm2_vs_t.png"] = fig
    return figs
