"""One overoptimization lab run, assembled: pi0, its exact tree, gold, proxies, and every method's points.

The pieces live in `lab.lm`, `lab.tree`, `lab.rewards`, `lab.best_of_n`,
`lab.rl`, `lab.search`; this module builds them from a few sizes and returns
each method's points as plain dicts (the "lab" rows of `sims/overoptimization.py`):

    {"method", "n", "beta", "step", "KL", "d", "gold", "proxy_reward", "objective", "KL_bound"}

with None where a field does not apply; d = sqrt(KL); every KL and expectation is exact (enumeration).

Public API:
  Base(logits_fn, params, tree: LMTree, gold: Gold, lm: LMConfig | None, gold_cfg: LMConfig | None)
  build_base(key, vocab, depth, policy=None, tokens=(), gold=None, lm_steps=600) -> Base
  ProxyBuild(proxy: Proxy, report: ProxyReport, tree: mdp.Tree, cfg: LMConfig | None)
  build_proxy(key, base, noise, scale, kind, pairs, bt_steps=1500) -> ProxyBuild
  exact_points(tree, betas [K]) -> rows;  bon_points(tree, ns [K]) -> rows
  rl_points(key, base, tree, beta, steps, eval_every, batch=64, lr=3e-3) -> rows (with "gap", "optimum")
  search_points(key, built, base, restarts=4, iters=40) -> rows (one per restart, with "rank")
  point(method, **fields) -> row
  gao_fits(rows) -> {"bon": {alpha, beta, r2}, "rl": {...}}   # Gao's forms on gold against d (lab.fits)
  check_size = lab_tree.check_size
MIN_TAIL_SAMPLES = 100  # tail_index.diagnose's minimum; smaller trees get no tail verdict

Glossary: A vocabulary (EOS last), L depth, N terminals, K sweep points.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import mdp
from goodhart_jax import search as gcg
from goodhart_jax.lab import best_of_n as lab_bon
from goodhart_jax.lab import fits
from goodhart_jax.lab import lm, rewards, rl
from goodhart_jax.lab import search as lab_search
from goodhart_jax.lab import tree as lab_tree

__all__ = ["Base", "ProxyBuild", "build_base", "build_proxy", "point", "exact_points", "bon_points", "rl_points",
           "search_points", "gao_fits", "check_size", "FIELDS"]

check_size = lab_tree.check_size
MIN_TAIL_SAMPLES = 100  # tail_index.diagnose's minimum; smaller trees get no tail verdict

FIELDS = ("method", "n", "beta", "step", "KL", "d", "gold", "proxy_reward", "objective", "KL_bound")


class Base(NamedTuple):
    """pi0 and what does not depend on the proxy."""

    logits_fn: Any  # policy convention (lab.lm)
    params: Any  # pi0's parameters
    tree: lab_tree.LMTree  # the exact tree of pi0
    gold: rewards.Gold  # standardised gold on every terminal
    lm: Any  # lm.LMConfig of the lab LM (None for a checkpoint policy)


class ProxyBuild(NamedTuple):
    """One proxy and its diagnostics."""

    proxy: rewards.Proxy
    report: rewards.ProxyReport
    tree: mdp.Tree  # mdp.Tree(log pi0, X = proxy - gold, V = gold)
    cfg: Any  # the learned proxy model's lm.LMConfig (None for direct)


def build_base(key, vocab: int, depth: int, policy: str | None = None, tokens: tuple = (),
               gold: str | None = None, lm_steps: int = 600) -> Base:
    """pi0 (the lab LM trained on a random Markov source, or a checkpoint on --tokens), its tree, the gold.

    Args:
      key: PRNG key (source, LM training, gold initialisation).
      vocab, depth: A and L of the lab LM (a checkpoint policy's A is len(tokens)).
      policy: a causal-LM checkpoint directory, or None for the lab LM.
      tokens: the checkpoint's model ids of the lab tokens (last = EOS); also the gold checkpoint's.
      gold: a reward-model checkpoint directory, or None for a random lab reward model.
      lm_steps: training steps of the lab LM.
    Raises:
      UsageError: the tree is too large to enumerate; a bad checkpoint or token list.
    """
    k_src, k_lm, k_gold = jax.random.split(key, 3)
    if policy:
        pol = lm.load_policy(policy, tokens)
        vocab, logits_fn, params, cfg = len(pol.tokens), pol.logits_fn, pol.params, None
        lab_tree.check_size(vocab, depth)
    else:
        lab_tree.check_size(vocab, depth)
        cfg = lm.LMConfig(vocab, depth)
        source = lm.markov_source(k_src, vocab)
        params = lm.train_lm(k_lm, cfg, source, lm_steps).params
        logits_fn = lm.make_logits(cfg)
    tree = lab_tree.exact_tree(logits_fn, params, depth)
    if gold:
        ck = rewards.load_reward(gold, tokens if tokens else tuple(range(vocab)))
        g = rewards.gold_from(ck.reward_fn, ck.params, tree)
    else:
        g = rewards.gold_reward(k_gold, rewards.gold_config(vocab, depth), tree)
    return Base(logits_fn, params, tree, g, cfg)


def build_proxy(key, base: Base, noise: str, scale: float, kind: str, pairs: int | None,
                bt_steps: int = 1500) -> ProxyBuild:
    """A "learned" (Bradley-Terry on `pairs` comparisons) or "direct" (gold + eps) proxy, with diagnostics.

    The annotator error eps = scale * Z, Z ~ `noise`, is drawn from `fold_in(key, 0)` for both kinds, so the
    learned and direct proxies of one family share the same eps. A tree of fewer than MIN_TAIL_SAMPLES
    sequences gets no tail diagnosis (report.xi nan, verdict "n/a ...").
    """
    k_eps, k_fit, k_diag = (jax.random.fold_in(key, i) for i in range(3))
    n = base.tree.log_p.shape[0]
    eps = rewards.annotator_error(k_eps, noise, n, scale).astype(base.gold.reward.dtype)
    cfg = None
    if kind == "direct":
        px = rewards.direct_proxy(base.gold.reward, eps)
    else:
        a, depth = base.tree.log_pi0[0].shape[-1], len(base.tree.log_pi0)
        cfg = rewards.proxy_config(a, depth)
        px = rewards.learned_proxy(k_fit, cfg, base.tree, base.gold.reward, eps, pairs, steps=bt_steps)
    if n >= MIN_TAIL_SAMPLES:
        report = rewards.diagnose_proxy(k_diag, px.reward, base.gold.reward, base.tree.log_p)
    else:  # too few sequences for a tail fit: accuracy and corr only, xi nan
        a, b = rewards.sample_pairs(k_diag, base.tree.log_p, 10_000)
        x = rewards.standardise(px.reward, base.tree.log_p) - base.gold.reward
        report = rewards.ProxyReport(float(rewards.pair_accuracy(px.reward, base.gold.reward, a, b)),
                                     float(rewards.pi0_corr(px.reward, base.gold.reward, base.tree.log_p)),
                                     float("nan"), f"n/a (N = {n} < {MIN_TAIL_SAMPLES} sequences)", x, None)
    return ProxyBuild(px, report, lab_tree.mdp_tree(base.tree, base.gold.reward, px.reward), cfg)


def point(method: str, **fields) -> dict:
    """A lab row: every field of FIELDS (None where absent), d = sqrt(KL), numbers as Python floats."""
    row = {f: None for f in FIELDS}
    row.update(method=method, **{k: (v.item() if hasattr(v, "item") else v) for k, v in fields.items()})
    if row["KL"] is not None:
        row["d"] = float(np.sqrt(max(row["KL"], 0.0)))
    return row


@jax.jit
def _exact(tree: mdp.Tree, betas):
    return mdp.sweep_betas(tree, betas)


def exact_points(tree: mdp.Tree, betas) -> list[dict]:
    """The exact optimum pi*(beta) on the proxy, per beta: E[gold], E[proxy], trajectory KL, objective."""
    b = np.asarray(betas, float)
    res = jax.device_get(_exact(tree, jnp.asarray(b, tree.V[-1].dtype)))
    return [point("exact", beta=float(bi), KL=max(float(res.KL[i]), 0.0), gold=res.E_V[i], proxy_reward=res.E_U[i],
                  objective=float(res.E_U[i]) - float(bi) * max(float(res.KL[i]), 0.0)) for i, bi in enumerate(b)]


@jax.jit
def _bon(tree: mdp.Tree, ns):
    return lab_bon.bon_tree(tree, ns)


def bon_points(tree: mdp.Tree, ns) -> list[dict]:
    """Exact best-of-n from pi0 on the proxy, per n: E[gold], E[proxy], exact KL and the bound log n - (n-1)/n."""
    n = np.asarray(ns, float)
    res = jax.device_get(_bon(tree, jnp.asarray(n, tree.V[-1].dtype)))
    return [point("bon", n=int(ni), KL=res.KL[i], gold=res.gold[i], proxy_reward=res.proxy[i],
                  KL_bound=res.KL_bound[i]) for i, ni in enumerate(n)]


@functools.lru_cache(maxsize=None)
def _rl_train(config: rl.RLConfig, logits_fn):
    return rl.make_train(config, logits_fn)  # jitted; one compilation per (config, policy), reused across betas


def rl_points(key, base: Base, tree: mdp.Tree, beta: float, steps: int, eval_every: int, batch: int = 64,
              lr: float = 3e-3) -> list[dict]:
    """RLOO on pi0 itself against the proxy with penalty beta, evaluated exactly every `eval_every` steps.

    Rows per evaluation (steps 0, E, .., S) with the objective E[proxy] - beta KL, the exact optimum's
    objective ("optimum") and the gap optimum - objective (>= 0 up to round-off).
    """
    a, depth = base.tree.log_pi0[0].shape[-1], len(base.tree.log_pi0)
    config = rl.RLConfig(a, depth, batch=batch, learning_rate=lr, num_steps=steps, eval_every=eval_every)
    task = rl.RLTask(tree, jnp.asarray(beta, tree.V[-1].dtype))
    _, _, ev = jax.device_get(_rl_train(config, base.logits_fn)(key, base.params, task))
    return [dict(point("rl", beta=float(beta), step=int(ev.step[i]), KL=ev.KL[i], gold=ev.gold[i],
                       proxy_reward=ev.proxy[i], objective=ev.objective[i]), optimum=float(ev.optimum[i]),
                 gap=float(ev.gap[i])) for i in range(len(ev.step))]


def search_points(key, built: ProxyBuild, base: Base, restarts: int = 4, iters: int = 40) -> list[dict]:
    """GCG on the learned proxy model; each restart's best sequence as a point mass.

    KL of a point mass at x is -log pi0(x). Rows carry the sequence's rank among all N by proxy (0: an
    argmax), and the enumerated argmax's proxy and gold. A direct proxy has no model to differentiate: [].
    """
    if built.cfg is None:
        return []
    a, depth = built.cfg.vocab, built.cfg.depth
    config = gcg.SearchConfig(length=depth, topk=min(4, a), num_candidates=32, num_iters=iters, schedule="gcg")
    proxy, gold, log_p = built.proxy.reward, base.gold.reward, base.tree.log_p
    f = lab_search.search_proxy(key, config, lab_search.rm_scorer(built.cfg, built.proxy.params), proxy, gold,
                                log_p, vocab=a, num_restarts=restarts)
    f = jax.device_get(f)
    return [dict(point("search", KL=-float(f.found.log_p0[r]), gold=f.found.gold[r], proxy_reward=f.found.proxy[r]),
                 restart=r, rank=int(f.found.rank[r]), argmax_proxy=float(f.best.proxy[0]),
                 argmax_gold=float(f.best.gold[0])) for r in range(restarts)]


_fit = jax.jit(fits.fit_gao, static_argnames=("form", "steps"))


def gao_fits(rows: list[dict]) -> dict:
    """Gao's best-of-n form on the "bon" rows and the RL form on the "rl" rows (all betas and steps pooled).

    The gain is E[gold] itself: gold is standardised to mean 0 under pi0. A method with fewer than two points
    at d > 0 is left out.

    Returns:
      {method: {"alpha", "beta", "r2"}} for method in ("bon", "rl") that have points.
    """
    out = {}
    for method in fits.FORMS:
        pts = [r for r in rows if r["method"] == method]
        d = np.asarray([r["d"] for r in pts], float)
        if np.sum(d > 0) < 2:
            continue
        f = jax.device_get(_fit(d, np.asarray([r["gold"] for r in pts], float), form=method))
        out[method] = dict(alpha=float(f.alpha), beta=float(f.beta), r2=float(f.r2))
    return out
