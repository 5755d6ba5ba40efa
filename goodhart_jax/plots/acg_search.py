"""Figures of `sims/acg_search.py`: reward traces of the search, and reward against base log-probability (Figure 6)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reward_vs_iteration(best_reward: np.ndarray, reward: np.ndarray) -> plt.Figure:
    """Best-so-far reward (thick) and the current candidate's reward (thin) of each restart against iteration.

    Args:
      best_reward: [R, I] best reward after each step.
      reward: [R, I] reward of the candidate moved to at each step.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    it = np.arange(1, best_reward.shape[1] + 1)
    legend = best_reward.shape[0] <= 8
    for r in range(best_reward.shape[0]):
        line, = ax.plot(it, best_reward[r], lw=1.5, label=f"restart {r}" if legend else None)
        ax.plot(it, reward[r], lw=0.5, alpha=0.35, color=line.get_color())
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_title("coordinate-gradient search: best so far (thick), current (thin)")
    if legend:
        ax.legend(fontsize=7)
    return fig


def reward_vs_logprob(logprobs: np.ndarray, rewards: np.ndarray) -> plt.Figure:
    """The searched sequences' reward against their base log-probability (the paper's Figure 6).

    Args:
      logprobs: [R] log pi0(x) of each restart's best sequence.
      rewards: [R] its reward.
    """
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(logprobs, rewards, s=25)
    ax.set_xlabel("base log-probability log pi0(x) (nats)")
    ax.set_ylabel("reward r(x)")
    ax.set_title("searched sequences (paper Figure 6)")
    return fig
