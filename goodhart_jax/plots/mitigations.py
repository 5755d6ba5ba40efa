"""Figure and summary table of `sims/mitigations.py`: E[V] against the KL spent, one panel per model and error."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ("continuous", "tree")
LABELS = {  # method -> legend label, in legend order
    "kl_penalty": "kl_penalty: E[U] - beta KL, beta = 1/D",
    "kl_target": "kl_target: beta solved for KL = D",
    "bounded": "bounded: E[sigmoid(U)] - beta KL",
    "bounded_mean": "bounded_mean: sigmoid(E[U]) - beta KL",
    "quantilizer": "quantilizer: pi/pi0 <= 1/q, q = e^-D",
}


def figure(rows: list[dict], errors: list[str]) -> plt.Figure:
    """E_P[V] against KL(P || Q) for every method: rows = models, columns = error families.

    Args:
      rows: the script's "mitigation" rows.
      errors: the error family specs, in column order.
    """
    seen = set(r["method"] for r in rows)
    methods = [m for m in LABELS if m in seen] + sorted(seen - set(LABELS))
    fig, axes = plt.subplots(len(MODELS), len(errors), figsize=(5.2 * len(errors), 7.5), squeeze=False)
    for a, model in enumerate(MODELS):
        for b, err in enumerate(errors):
            ax = axes[a, b]
            missing, unvalued = [], []  # methods computed here with no optimum / no E[V] (null) at any budget
            for i, method in enumerate(methods):  # one colour per method in every panel
                here = [r for r in rows if r["model"] == model and r["error"] == err and r["method"] == method]
                found = [r for r in here if r["exists"]]
                rs = sorted((r for r in found if r["E_V"] is not None and r["KL"] is not None), key=lambda r: r["KL"])
                missing += [method] if here and not found else []
                unvalued += [method] if found and not rs else []
                if rs:
                    ax.plot([r["KL"] for r in rs], [r["E_V"] for r in rs], "o-", ms=3, color=f"C{i}",
                            label=LABELS.get(method, method))
            ax.set_xscale("log")
            ax.set_xlabel("KL(P || Q) spent")
            ax.set_ylabel("E_P[V]")
            notes = [f"\n({what}: {', '.join(ms)})" for what, ms in (("no optimum", missing),
                                                                  ("E[V] not finite", unvalued)) if ms]
            ax.set_title(f"{model}: error {err}" + "".join(notes), fontsize=9)
            if ax.get_legend_handles_labels()[0]:  # a panel with nothing drawn has no legend
                ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def summary(rows: list[dict]) -> str:
    """One line per (model, method, error): the largest KL reached and E[V] there.

    Args:
      rows: the study's `mitigation` rows.
    """
    lines = [f"{'model':<11}{'method':<14}{'error':<16}{'max KL':>8}{'E[V] there':>12}"]
    errors = list(dict.fromkeys(r["error"] for r in rows))
    rank = {m: i for i, m in enumerate(LABELS)}
    keys = sorted(dict.fromkeys((r["model"], r["method"], r["error"]) for r in rows),
                  key=lambda k: (errors.index(k[2]), MODELS.index(k[0]), rank.get(k[1], len(rank)), k[1]))
    notes = {}  # why an E[V] is null, numbered in order of appearance
    for key in keys:
        rs = [r for r in rows if (r["model"], r["method"], r["error"]) == key and r["exists"] and r["KL"] is not None]
        head = f"{key[0]:<11}{key[1]:<14}{key[2]:<16}"
        if not rs:
            lines.append(f"{head}{'—':>8}{'no optimum':>12}")
            continue
        top = max(rs, key=lambda r: r["KL"])
        if top["E_V"] is None:
            mark = f"null [{notes.setdefault(top.get('reason', 'not computed'), len(notes) + 1)}]"
            lines.append(f"{head}{top['KL']:>8.3g}{mark:>12}")
        else:
            lines.append(f"{head}{top['KL']:>8.3g}{top['E_V']:>12.4g}")
    lines += [f"[{i}] {why}" for why, i in notes.items()]
    return "\n".join(lines)
