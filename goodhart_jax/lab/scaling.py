"""Reward-model scaling in the lab, as Gao, Schulman & Hilton (2023) measured it, but exactly.

Gao et al. trained proxy reward models of several sizes on several amounts of gold-labelled comparisons and
fitted their forms R(d) = d (alpha - beta d) (best-of-n) and d (alpha - beta log d) (RL) to the gold reward of
sampled optimisation. Here every proxy's curves are exact (`experiment.bon_points`: best-of-n's law;
`experiment.exact_points`: the KL-regularised optimum pi*(beta) over a beta grid), so what moves with size and
data is the proxy, not the sampling.

One grid cell is (size, data size P, seed). For one seed, the comparisons are drawn once (`rewards.comparisons`,
max P pairs) and a proxy trained on P pairs sees their first P (nested subsets, as more labels would add to a
dataset); proxies of one size and seed share their initialisation and minibatch keys across P (common random
numbers: a difference between data sizes is the data's). The proxies of one size and seed are trained together,
vmapped over P in one program (`train_members`); member i equals `rewards.train_bt` on the first P_i pairs.

Gao's forms on the pi*(beta) curve: the optimum traced over beta is a path in d = sqrt(KL) as an RL run's is; the
lab fits Gao's RL form (d log d) to it and says so (`method` "exact", `form` "rl").

Public API:
  SIZES = ((1, 8, 2), (1, 16, 2), (2, 32, 4), (2, 48, 4))     # (layers, width, heads): 1,033 .. 57,505 parameters at A=16 (56x)
  PAIRS = (500, 1000, 2000, 4000)
  size_config(vocab, depth, layers, width, heads) -> lm.LMConfig
  num_params(cfg) -> int                                   # the reward model's parameter count
  Members(params [M] stacked, loss [M, steps], raw [M, N], pairs [M], stop [M], val_loss [M, C], val [M, V],
          val_pairs [M])
  member_validation(key, tree, utility [N], data, pairs, val_frac, temperature=1.0)
      -> (Comparisons [M, V], weights [M, V], V_i [M])     # each member's pairs off its training sequences
  pretrained_init(key, cfg, source, steps, batch=256, lr=3e-3, weight_decay=0.01) -> params
                                                        # the decoder first trained as an LM on pi0's corpus
  train_members(key, cfg, tree, utility [N], pairs, steps, batch=256, lr=3e-3, weight_decay=0.01, temperature=1.0,
                chunk=8192, val_frac=None, every=10, init=None) -> (Members, Comparisons [max P])
                                                        # val_frac: early stopping on validation pairs;
                                                        # init: e.g. pretrained_init's (Gao's regime)
  Trend(slope, intercept, lo, hi, r2, n, reason)
  trend(x [K], y [K], level=0.95) -> Trend                 # OLS of y on x, Student-t interval of the slope
  FORM = {"bon": "bon", "exact": "rl", "rl": "rl"};  fit_curve(points, method) -> fit row   # Gao's form on one curve
  evaluate(key, raw [N], pairs, data, base, error [N], betas, ns, heldout_pairs=10000, val=None, rl_betas=(),
           rl_steps=250, eval_every=50) -> Evaluated(proxy row, points, fits, peaks)
                                                          # agreement with gold; exact best-of-n and pi*(beta); RL
  QUANTITIES   # alpha_/beta_/peak_gold_/peak_KL_ of "bon" and "exact", pair_accuracy_unseen, corr, error_corr,
               # stop_step
  rl_quantities(rl_beta) -> ("alpha_rl_b0.3", "beta_rl_b0.3", "peak_gold_rl_b0.3", "peak_KL_rl_b0.3") at rl_beta 0.3
  summarise(cells, level=0.95) -> "summary" rows          # per (size, pairs): mean and interval over seeds
  trends(cells, level=0.95) -> "trend" rows               # slope per seed against log10 params / log10 pairs,
                                                          # mean and interval over seeds

Glossary: N terminal sequences, M members (data sizes), P pairs, K points.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.lab import experiment, lm, rewards
from goodhart_jax.lab import tree as lab_tree
from goodhart_jax.lab.summary import interval, peak, t_quantile
from goodhart_jax.lab.tree import LMTree
from goodhart_jax.scaling_laws import fit_gao, too_few_fit_points

__all__ = ["SIZES", "PAIRS", "size_config", "num_params", "Members", "member_validation", "pretrained_init",
           "train_members", "Trend", "trend", "FORM", "fit_curve", "Evaluated", "evaluate", "QUANTITIES",
           "rl_quantities", "summarise", "trends"]

SIZES = ((1, 8, 2), (1, 16, 2), (2, 32, 4), (2, 48, 4))
PAIRS = (500, 1000, 2000, 4000)


def size_config(vocab: int, depth: int, layers: int, width: int, heads: int) -> lm.LMConfig:
    """A proxy reward model's sizes: `lm.LMConfig(vocab, depth, layers, width, heads)` (the registry's small
    decoder; its embedding has vocab + 1 rows, BOS included)."""
    return lm.LMConfig(vocab, depth, layers=layers, width=width, heads=heads)


@functools.lru_cache(maxsize=None)
def num_params(cfg: lm.LMConfig) -> int:
    """The number of parameters of the lab reward model `cfg` (body and head; shapes only, nothing computed)."""
    shapes = jax.eval_shape(lambda k: rewards.rm_init(k, cfg), jax.random.key(0))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


class Members(NamedTuple):
    """Proxies of one size and seed, one per data size."""

    params: Any  # the reward models' parameters, stacked on a leading axis [M] (early stopping: the kept ones)
    loss: Array  # [M, steps] minibatch BT log-loss per step
    raw: Array  # [M, N] each model's scores of every terminal
    pairs: Array  # [M] int32: the number of comparisons each was trained on (the first P of the shared data)
    stop: Any = None  # [M] int32: the step whose parameters were kept (steps without validation)
    val_loss: Any = None  # [M, C] validation BT loss at each checkpoint (`rewards.checkpoints`); [M, 0] without
    val: Any = None  # Comparisons [M, V]: member i's validation pairs are the first val_pairs[i] of row i; None without
    val_pairs: Any = None  # [M] int32: V_i = ceil(val_frac P_i) (0 without validation)


@functools.partial(jax.jit, static_argnames=("reward_fn", "steps", "batch", "every"))
def _train(keys, reward_fn, params, tokens, data, nums, val, val_weights, steps, batch, lr, weight_decay, every):
    def one(num, v, w):
        check = None if v is None else (lambda p: rewards.bt_loss(reward_fn, p, tokens, v, w))
        return rewards.fit_minibatched(lambda p, rows: rewards.bt_loss(reward_fn, p, tokens, rows), params, keys,
                                       data, num, batch, lr, weight_decay, check, every)

    return jax.vmap(one)(nums, val, val_weights)


def member_validation(key: Array, tree: LMTree, utility: Array, data: rewards.Comparisons, pairs, val_frac: float,
                      temperature: float = 1.0) -> tuple[rewards.Comparisons, Array, Array]:
    """Each member's validation comparisons: V_i = ceil(val_frac P_i) pairs of the same annotators on sequences in
    none of its first P_i training pairs (`rewards.validation_comparisons`, one key for all members), padded to
    max V_i.

    Args:
      key: PRNG key (validation pairs and labels).
      tree: the LM's tree (pi0).
      utility: [N] the annotators' u = gold + eps.
      data: the shared training comparisons; member i saw the first pairs[i].
      pairs: [M] data sizes P_i.
      val_frac: validation pairs per training pair, > 0.
      temperature: BT label noise (`rewards.comparisons`).
    Returns:
      (Comparisons [M, V] stacked, weights [M, V] (1 on the first V_i, 0 after), V_i [M] int32).
    Raises:
      ValueError: val_frac not > 0, or a member saw every sequence.
    """
    if not (math.isfinite(val_frac) and val_frac > 0):
        raise ValueError(f"val_frac must be a finite number > 0, got {val_frac}")
    counts = [max(1, math.ceil(val_frac * int(p))) for p in pairs]
    v = max(counts)
    sets = [rewards.validation_comparisons(key, tree.log_p, utility,
                                           rewards.Comparisons(data.a[:p], data.b[:p], data.label[:p]), v,
                                           temperature) for p in pairs]
    val = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    weights = (jnp.arange(v)[None, :] < jnp.asarray(counts)[:, None]).astype(jnp.float32)
    return val, weights, jnp.asarray(counts, jnp.int32)


def pretrained_init(key: Array, cfg: lm.LMConfig, source: lm.MarkovSource, steps: int, batch: int = 256,
                    lr: float = 3e-3, weight_decay: float = 0.01) -> dict:
    """Reward-model parameters whose decoder was first pretrained as a language model, as Gao et al.'s reward models
    were: the decoder of `lm.train_lm(k_lm, cfg, source, steps, ...)` (next-token prediction on `steps` x `batch`
    sequences of the Markov source, pi0's own corpus) under a fresh scalar head (`rewards.rm_init`'s, from k_head).

    The lab LM and the reward models share one decoder (`lm.module`), so the pretrained body drops into the reward
    model as it is; only the LM head is left behind.

    Args:
      key: PRNG key, split into (k_lm, k_head).
      cfg: the reward model's sizes (`size_config`).
      source: the corpus (`experiment.Base.source`, the lab LM's; vocabulary cfg.vocab).
      steps: pretraining steps (>= 1).
      batch, lr, weight_decay: `lm.train_lm`'s.
    Returns:
      {"backbone": the pretrained decoder, "score": {"kernel": [D, 1], "bias": [1]}} (`rewards.rm_init`'s form).
    Raises:
      ValueError: steps < 1, or source's vocabulary is not cfg.vocab.
    """
    if steps < 1:
        raise ValueError(f"pretraining steps must be >= 1, got {steps}")
    if source.log_p_first.shape[-1] != cfg.vocab:
        raise ValueError(f"the source has {source.log_p_first.shape[-1]} tokens, the reward model {cfg.vocab}")
    k_lm, k_head = jax.random.split(key)
    body = lm.train_lm(k_lm, cfg, source, steps, batch, lr, weight_decay).params["backbone"]
    return {"backbone": body, "score": rewards.rm_init_jit(k_head, cfg)["score"]}


def train_members(key: Array, cfg: lm.LMConfig, tree: LMTree, utility: Array, pairs, steps: int,
                  batch: int = 256, lr: float = 3e-3, weight_decay: float = 0.01, temperature: float = 1.0,
                  chunk: int = 8192, val_frac: float | None = None, every: int = 10,
                  init: Any = None) -> tuple[Members, rewards.Comparisons]:
    """Bradley-Terry proxies of size `cfg`, one per data size in `pairs`, on nested subsets of one dataset.

    The key is split as `rewards.learned_proxy` splits it (comparisons, initialisation, minibatches), so without
    validation the member trained on max(pairs) comparisons is `learned_proxy(key, cfg, tree, ...)`'s model, up to
    float rounding of the vmapped program. Every member starts from the same initialisation and draws its minibatch
    indices from the same keys (uniform in [0, P_i)).

    With `val_frac`, early stopping: member i also gets ceil(val_frac P_i) validation comparisons on sequences in
    none of its training pairs (`member_validation`, key `jax.random.fold_in(k_data, 1)`), its validation BT loss
    is measured every `every` steps inside the vmapped scan (`rewards.fit_minibatched`) and the parameters of the
    least one are kept. Member i is then `rewards.train_bt(..., val=its pairs, val_weights=its weights, every)`.

    Args:
      key: PRNG key (one seed).
      cfg: the proxies' sizes.
      tree: the LM's tree (pairs drawn from its pi0).
      utility: [N] the annotators' utility gold + eps.
      pairs: data sizes P_i >= 1 (each <= 2^31 - 1).
      steps, batch, lr, weight_decay: training (`rewards.train_bt`); temperature: BT label noise
        (`rewards.comparisons`).
      chunk: rows a call when scoring the tree.
      val_frac: None (train `steps` steps, keep the last parameters) or validation pairs per training pair (> 0).
      every: steps between validation checkpoints (`rewards.checkpoints`).
      init: None (a random reward model, `rewards.rm_init` from k_init) or every member's initial parameters in
        `rm_init`'s form (e.g. `pretrained_init`'s); the keys are split as without it.
    Returns:
      (Members, the max(pairs) comparisons; member i saw the first pairs[i]).
    Raises:
      ValueError: pairs empty or not positive integers; steps, batch or every < 1; val_frac not > 0; a member saw
        every sequence (no validation pair possible).
    """
    sizes = [int(p) for p in pairs]
    if not sizes or any(p < 1 or p != q for p, q in zip(sizes, pairs)):
        raise ValueError(f"pairs must be positive integers, got {list(pairs)}")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    k_data, k_init, k_train = jax.random.split(key, 3)
    data = rewards.comparisons(k_data, tree.log_p, utility, max(sizes), temperature)
    val = weights = None
    counts = jnp.zeros(len(sizes), jnp.int32)
    if val_frac is not None:
        rewards.checkpoints(steps, every)  # refuses every < 1
        val, weights, counts = member_validation(jax.random.fold_in(k_data, 1), tree, utility, data, sizes, val_frac,
                                                 temperature)
    fn = rewards.make_rm_reward(cfg)
    params0 = rewards.rm_init_jit(k_init, cfg) if init is None else init
    nums = jnp.asarray(sizes, jnp.int32)
    fit = _train(jax.random.split(k_train, steps), fn, params0, tree.tokens, data, nums, val, weights, steps, batch,
                 lr, weight_decay, every)
    raw = jnp.stack([rewards.score_terminals(fn, jax.tree.map(lambda x: x[i], fit.params), tree.tokens, chunk)
                     for i in range(len(sizes))])
    return Members(fit.params, fit.loss, raw, nums, fit.stop, fit.val_loss, val, counts), data


class Trend(NamedTuple):
    """Least-squares line y = intercept + slope x, with a Student-t interval of the slope."""

    slope: float
    intercept: float
    lo: float  # the slope's interval; nan (with reason) below 3 points or without spread in x
    hi: float
    r2: float
    n: int
    reason: str


def trend(x, y, level: float = 0.95) -> Trend:
    """Ordinary least squares of y on x with the slope's `level` interval: slope +- t_{(1+level)/2, n-2} se,
    se = sqrt(SS_res / (n - 2) / sum (x - mean x)^2) (the textbook interval; `scipy.stats.linregress`'s stderr).

    Non-finite pairs are left out. Below 2 points, or with x constant, everything is nan with a reason; with 2
    points the line is exact and the interval nan.

    Args:
      x, y: [K] numbers (e.g. log10 parameters and a fitted coefficient, one point a proxy).
      level: the interval's coverage.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    nan = math.nan
    if n < 2 or np.ptp(x) == 0:
        return Trend(nan, nan, nan, nan, nan, n, f"{n} point(s) with {np.unique(x).size} distinct x: no line")
    xm, ym = x.mean(), y.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - ym)) / sxx)
    intercept = float(ym - slope * xm)
    res = y - intercept - slope * x
    ss_tot = float(np.sum((y - ym) ** 2))
    r2 = 1.0 - float(np.sum(res ** 2)) / ss_tot if ss_tot > 0 else nan
    if n < 3:
        return Trend(slope, intercept, nan, nan, r2, n, "2 points: the line is exact, no interval")
    se = math.sqrt(float(np.sum(res ** 2)) / (n - 2) / sxx)
    half = t_quantile((1.0 + level) / 2.0, n - 2) * se
    return Trend(slope, intercept, slope - half, slope + half, r2, n, "")


FORM = {"bon": "bon", "exact": "rl", "rl": "rl"}  # Gao's form fitted to each curve: best-of-n's; RL's to the pi*(beta)
# path and to each RL run's path (one fit an RL beta)


def fit_curve(points: list[dict], method: str) -> dict:
    """Gao's form (`FORM[method]`) fitted to one curve's `points`: gold against d = sqrt(KL) (`scaling_laws.fit_gao`, float64
    NumPy in, the lab's float32 fit): {"method", "form", "alpha", "beta", "r2", "points"}; alpha, beta, r2 None
    with a `reason` below MIN_FIT_POINTS distinct d > 0 or where r2 is undefined."""
    pts = [p for p in points if p.get("d") is not None and p.get("gold") is not None]
    out = dict(method=method, form=FORM[method], points=len(pts))
    if method == "rl":  # one RL run: its KL coefficient ("beta" is Gao's coefficient)
        out["rl_beta"] = points[0]["beta"] if points else None
    d = np.asarray([p["d"] for p in pts], float)
    if few := too_few_fit_points(d):
        return dict(out, alpha=None, beta=None, r2=None, reason=few)
    g = jax.device_get(_fit(jnp.asarray(d, jnp.float32), jnp.asarray([p["gold"] for p in pts], jnp.float32),
                            form=FORM[method]))
    out.update(alpha=float(g.alpha), beta=float(g.beta), r2=float(g.r2))
    if not math.isfinite(out["r2"]):
        out.update(r2=None, reason="gold is the same at every point: r2 is undefined")
    return out


_fit = jax.jit(fit_gao, static_argnames=("form", "steps"))


class Evaluated(NamedTuple):
    """One proxy measured: its agreement with gold, its exact curves, Gao's fits and the peaks."""

    proxy: dict  # pair_accuracy_unseen, corr, error_corr, raw_mean, raw_sd (and "reason" where null)
    points: list  # experiment.point rows: "bon" per n, "exact" per beta, "rl" per (RL beta, step)
    fits: list  # fit_curve per method (and per RL beta: "rl_beta")
    peaks: list  # {"method", "gold", "KL", "at"} (and "beta" for RL, "reason")


def evaluate(key: Array, raw: Array, pairs: int, data: rewards.Comparisons, base, error: Array, betas, ns,
             heldout_pairs: int = 10000, val: rewards.Comparisons | None = None, rl_betas=(), rl_steps: int = 250,
             eval_every: int = 50) -> Evaluated:
    """A trained proxy's agreement with gold, its exact best-of-n and pi*(beta) curves on the tree, and (with
    `rl_betas`) RL against it, evaluated exactly along the way (`experiment.rl_points`), as Gao et al. ran RL
    against each of their proxies.

    Args:
      key: PRNG key (held-out pairs).
      raw: [N] the proxy's scores of every terminal.
      pairs: P, the comparisons it was trained on (the first P of `data`).
      data: the shared comparisons.
      base: `experiment.Base` (tree, gold).
      error: [N] the annotator error eps (utility = gold + eps).
      betas, ns: the pi*(beta) grid and best-of-n sizes.
      heldout_pairs: pi0 pairs on sequences in none of its P training comparisons (`rewards.split_pairs`).
      val: None, or the proxy's validation comparisons (early stopping chose on them): their sequences are left
        out of the held-out pairs too, and count in `seen_mass`.
      rl_betas: KL coefficients of RL runs against the standardised proxy (key `fold_in(key, 100 + b)` for the
        b-th); each gets Gao's RL form fitted to its path and a peak.
      rl_steps, eval_every: RL's steps and the steps between its exact evaluations.
    """
    gold, log_p = base.gold.reward, base.tree.log_p
    z = rewards.pi0_standardise(raw, log_p)
    seen = rewards.Comparisons(data.a[:pairs], data.b[:pairs], data.label[:pairs])
    if val is not None:
        seen = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), seen, val)
    split = rewards.split_pairs(key, log_p, seen, heldout_pairs)
    acc = float(rewards.pair_accuracy(z.z, gold, *split.unseen))
    proxy = dict(pair_accuracy_unseen=acc, corr=float(rewards.pi0_corr(z.z, gold, log_p)),
                 error_corr=float(rewards.pi0_corr(z.z - gold, error, log_p)), raw_mean=float(z.mean),
                 raw_sd=float(z.sd), seen_mass=float(split.seen_mass))
    reasons = {f: "not finite (no unseen pair, or a constant reward)" for f, v in proxy.items() if not math.isfinite(v)}
    proxy = {f: (None if f in reasons else v) for f, v in proxy.items()}
    if reasons:
        proxy["reason"] = "; ".join(f"{f}: {why}" for f, why in reasons.items())
    tree = lab_tree.mdp_tree(base.tree, gold, z.z)
    points = experiment.bon_points(tree, ns, z.z) + experiment.exact_points(tree, betas)
    for b, beta in enumerate(rl_betas):
        points += experiment.rl_points(jax.random.fold_in(key, 100 + b), base, tree, beta, rl_steps, eval_every)
    curves = [(m, None, [p for p in points if p["method"] == m]) for m in ("bon", "exact")]
    curves += [("rl", float(beta), [p for p in points if p["method"] == "rl" and p["beta"] == float(beta)])
               for beta in rl_betas]
    fits, peaks = [], []
    for method, beta, curve in curves:
        fits.append(fit_curve(curve, method))
        pk = peak(curve)
        peaks.append(dict(method=method, **({} if beta is None else {"beta": beta}), gold=pk.gold, KL=pk.KL,
                          at=pk.at, **({"reason": pk.reason} if pk.reason else {})))
    return Evaluated(proxy, points, fits, peaks)


QUANTITIES = ("alpha_bon", "beta_bon", "alpha_exact", "beta_exact", "peak_gold_bon", "peak_KL_bon", "peak_gold_exact",
              "peak_KL_exact", "pair_accuracy_unseen", "corr", "error_corr", "stop_step")  # what `summarise` and
# `trends` report (stop_step: the training step whose parameters a proxy kept)


def _curve(method: str, rl_beta=None) -> str:
    """A curve's suffix in quantity names: "bon", "exact", or "rl_b0.3" for one RL run at rl_beta 0.3."""
    return method if method != "rl" else f"rl_b{rl_beta:g}"


def rl_quantities(rl_beta: float) -> tuple[str, ...]:
    """The quantities of the RL runs at KL coefficient `rl_beta`: Gao's RL alpha and beta on its path, its peak
    gold and the KL there ("alpha_rl_b0.3", ...)."""
    return tuple(f"{q}_{_curve('rl', rl_beta)}" for q in ("alpha", "beta", "peak_gold", "peak_KL"))


def _quantities(cell: dict) -> dict:
    """{name: value or None} of one proxy `cell` ({"evaluated": Evaluated, "stop_step" optional}), named as
    QUANTITIES (Gao's alpha and beta, the peak gold and its KL, per method; the agreement fields; the kept step),
    then `rl_quantities` of each RL beta it has."""
    ev = cell["evaluated"]
    out = {f: ev.proxy.get(f) for f in ("pair_accuracy_unseen", "corr", "error_corr")}
    out["stop_step"] = cell.get("stop_step")
    names = QUANTITIES
    for f in ev.fits:
        m = _curve(f["method"], f.get("rl_beta"))
        out[f"alpha_{m}"], out[f"beta_{m}"] = f["alpha"], f["beta"]
        names += rl_quantities(f["rl_beta"]) if f["method"] == "rl" else ()
    for p in ev.peaks:
        m = _curve(p["method"], p.get("beta"))
        out[f"peak_gold_{m}"], out[f"peak_KL_{m}"] = p["gold"], p["KL"]
    return {q: out[q] for q in names}


def summarise(cells: list[dict], level: float = 0.95) -> list[dict]:
    """Mean and Student-t interval over seeds of every quantity, per (size, pairs).

    Args:
      cells: {"seed", "size", "params", "pairs", "evaluated": Evaluated, "stop_step" (optional: null without)} one
        a trained proxy.
      level: the intervals' coverage.
    Returns:
      [{"kind": "summary", "size", "params", "pairs", "quantity", "mean", "lo", "hi", "sd", "seeds", "of"} and
      "reason" where lo/hi (or the mean) are null], in the order of `cells`.
    """
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["size"], c["params"], c["pairs"]), []).append(_quantities(c))
    rows = []
    for (size, params, pairs), qs in groups.items():
        for q in qs[0]:
            iv = interval([x[q] for x in qs], level)
            rows.append(_interval_row(dict(kind="summary", size=size, params=params, pairs=pairs, quantity=q), iv,
                                      len(qs)))
    return rows


def _interval_row(row: dict, iv, of: int) -> dict:
    fin = lambda v: v if math.isfinite(v) else None  # noqa: E731
    row.update(mean=fin(iv.mean), lo=fin(iv.lo), hi=fin(iv.hi), sd=fin(iv.sd), seeds=iv.n, of=of)
    if iv.reason:
        row["reason"] = iv.reason
    return row


def trends(cells: list[dict], level: float = 0.95) -> list[dict]:
    """How each quantity moves with proxy size and with data, as a slope per seed and its interval over seeds.

    Per seed, the slope of the quantity against log10(parameters) across sizes at each data size
    ("against": "params"), and against log10(pairs) across data sizes at each size ("against": "pairs")
    (`trend`: least squares). Proxies of one seed share pi0, gold and data, so the slopes are averaged over
    seeds (independent draws of everything) with a Student-t interval, not pooled.

    Args:
      cells: as `summarise` takes them.
      level: the intervals' coverage.
    Returns:
      [{"kind": "trend", "against", "at" (the pairs or size held fixed), "quantity", "mean", "lo", "hi", "sd",
      "seeds", "of", "per_seed" [slopes]} and "reason" where null].
    """
    rows = []
    seeds = sorted({c["seed"] for c in cells})
    for against, fixed, x_of in (("params", "pairs", lambda c: math.log10(c["params"])),
                                 ("pairs", "size", lambda c: math.log10(c["pairs"]))):
        for at in dict.fromkeys(c[fixed] for c in cells):
            group = [c for c in cells if c[fixed] == at]
            for q in _quantities(group[0]):
                slopes = []
                for s in seeds:
                    mine = [c for c in group if c["seed"] == s]
                    ys = [_quantities(c)[q] for c in mine]
                    t = trend([x_of(c) for c in mine], [math.nan if y is None else y for y in ys], level)
                    slopes.append(None if not math.isfinite(t.slope) else t.slope)
                iv = interval(slopes, level)
                rows.append(_interval_row(dict(kind="trend", against=against, at=at, quantity=q,
                                               per_seed=slopes), iv, len(seeds)))
    return rows
