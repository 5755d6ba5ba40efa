"""Figures of the main job, `sims/sweep_beta.py`."""
from __future__ import annotations

from collections import defaultdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from goodhart_jax import tails  # noqa: E402


def _by(rows, kind, x, y):
    """{error: (xs, mean ys over seeds, sd ys)} for rows of one kind with finite values."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == kind and r.get(y) is not None and r.get(x) is not None:
            acc[r["error"]][r[x] if kind != "tree" or x != "KL" else r["beta"]].append((r[x], r[y]))
    out = {}
    for err, groups in acc.items():
        keys = sorted(groups)
        xs = np.array([np.mean([p[0] for p in groups[k]]) for k in keys], float)
        ys = np.array([[p[1] for p in groups[k]] for k in keys], dtype=object)
        m = np.array([np.mean(v) for v in ys], float)
        sd = np.array([np.std(v) for v in ys], float)
        out[err] = (xs, m, sd)
    return out


def _style(err):
    heavy = bool(tails.parse(err).heavy)
    return dict(ls="--" if heavy else "-", marker="o" if heavy else "s", ms=3)


def figures(rows: list[dict], utility: str) -> dict[str, plt.Figure]:
    """The headline figure and its two companions, by file name."""
    figs = {}

    # Headline: E[V] against KL on the tree, light vs heavy error.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for err, (kl, ev, sd) in _by(rows, "tree", "KL", "E_V").items():
        line, = ax.plot(kl, ev, label=f"{err} ({'heavy' if tails.parse(err).heavy else 'light'})", **_style(err))
        ax.fill_between(kl, ev - sd, ev + sd, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("KL(Tr(pi*) || Tr(pi0))  [nats]")
    ax.set_ylabel("E[V] under pi*(beta)")
    ax.set_title("Token tree: true utility against KL spent")
    ax.legend(fontsize=8)
    ax = axes[1]
    for err, (kl, ev, _) in _by(rows, "tilt", "KL", "E_V").items():
        ax.plot(kl, ev, label=err, **_style(err))
    missing = defaultdict(list)
    for r in rows:
        if r["kind"] == "tilt":
            missing[r["error"]].append(r["exists"])
    missing = [f"{e}: {'no beta' if not any(v) else f'{sum(v)} of {len(v)} betas'}"
               for e, v in missing.items() if not all(v)]
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
    for err, (b, eu, sd) in _by(rows, "tree", "beta", "E_U").items():
        ax.plot(b, eu, label=f"tree: {err}", **_style(err))
    for err, (b, eu, _) in _by(rows, "tilt", "beta", "E_U").items():
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
    for err, (t, eu, _) in _by(rows, "thm2", "t", "E_U").items():
        axes[0].plot(t, eu, label=err, **_style(err))
    for err, (t, kl, _) in _by(rows, "thm2", "t", "KL").items():
        axes[1].plot(t, kl, label=err, **_style(err))
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
