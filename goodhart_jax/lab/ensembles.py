"""Reward-model ensembles (Coste, Anwar, Kirk & Krueger 2024) on the lab's exact tree.

K proxy reward models (default K = 5) are trained on one set of annotator labels: each member has its own
initialisation, its own minibatch order and (by default) its own bootstrap resample of the labels (P drawn with
replacement from the P labels; Coste et al. vary the seed only: `bootstrap=False`). A "single" proxy, trained
on the labels themselves (no resample) from its own initialisation, is the reference an ensemble is compared
with. Labels are Bradley-Terry comparisons (`loss="bt"`, `rewards.comparisons`, `rewards.train_bt`) or scalar
ratings (`loss="mse"`, the regression control `rewards.ratings`, `rewards.train_mse`).

Objectives, from the member tables R_k [K, N]:

    mean:  R(x) = (1/K) sum_k R_k(x)
    wco:   R(x) = min_k R_k(x)                                   (worst-case optimisation)
    uwo:   R(x) = (1/K) sum_k R_k(x) - lambda Var_k R_k(x)       (uncertainty-weighted; Var with 1/K)

Members are standardised under pi0 first (each R_k has mean 0, sd 1 under pi0, exactly: `rewards.pi0_standardise`).
A Bradley-Terry reward is identified only up to a shift (and its scale is whatever training reached), so without
this the min and the variance would be ruled by each member's arbitrary offset and scale rather than by where the
members disagree; the same standardisation makes lambda a number in the members' common units (sd under pi0).
The objective is then standardised under pi0 again (`objective_proxy`), as every lab proxy is: pi*(beta) of
a R + c is pi*(beta / a) of R, so this relabels beta only (the curve of (KL, gold) points is the same set) and
lets one beta grid cover the same KL range for every objective; best-of-n is unchanged (it ranks).

Each objective is a proxy table on the tree (`lab.tree.mdp_tree(tree, gold, table)`), so its exact optimum
pi*(beta) (`mdp.sweep_betas`), exact best-of-n (`lab.best_of_n`) and RL (`lab.rl`) are the lab's own.

Public API:
  OBJECTIVES = ("mean", "wco", "uwo");  LOSSES = ("bt", "mse");  UWO_LAMBDA = 1.0;  MEMBERS = 5
  objective(members [K, N], name, uwo_lambda=UWO_LAMBDA) -> [N]
  objective_name(name, uwo_lambda) -> str               # "mean", "wco", "uwo(lambda=0.5)"
  bootstrap_indices(key, members, num) -> [K, P]        # with replacement
  Ensemble(members [K, N] standardised, raw [K, N], mean [K], sd [K], params (leading K), loss [K, S],
           indices [K, P], single: rewards.Proxy, data, error [N], kind)
  train_ensemble(key, cfg, tree, gold, error, labels, members=MEMBERS, loss="bt", steps=600, bootstrap=True,
                 temperature=1.0, batch=256, lr=3e-3, weight_decay=0.01) -> Ensemble
  ensemble_from_tables(raw [K, N], log_p, error=None) -> Ensemble      # tables given (tests, other sources)
  objective_proxy(ens, name, log_p, uwo_lambda=UWO_LAMBDA) -> rewards.Proxy   # standardised under pi0
  Curve(param [M], KL [M], gold [M], proxy [M])
  Evaluation(name, exact: Curve, bon: Curve, kl_targets [T], gold_at_kl [T], beta_at_kl [T],
             exact_peak: summary.Peak, bon_peak: summary.Peak, at_kl: rows)
  evaluate(tree: LMTree, gold [N], table [N], betas [M], ns [M'], kl_targets=summary.KL_TARGETS, name="")
      -> Evaluation                                     # every number exact (enumeration of the tree)
  evaluation_rows(ev) -> (points, at-KL rows)          # the lab's "lab" / "exact_at_kl" row forms
  Versus(peak_gold, KL_at_peak, gold_at_kl [T]) ;  versus(ev, ref, method="exact") -> Versus   # ev - ref
  paired(headline_rows, reference) -> rows              # per seed: each headline minus the reference's

References: Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", ICLR 2024 (Sections 3-4).

Glossary: K members, N terminals, P labels, S steps, M sweep points, T KL targets.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.lab import experiment, lm, rewards, summary
from goodhart_jax.lab import tree as lab_tree

__all__ = ["OBJECTIVES", "LOSSES", "UWO_LAMBDA", "MEMBERS", "objective", "objective_name", "bootstrap_indices",
           "Ensemble", "train_ensemble", "ensemble_from_tables", "objective_proxy", "Curve", "Evaluation",
           "evaluate", "evaluation_rows", "Versus", "versus", "paired"]

OBJECTIVES = ("mean", "wco", "uwo")
LOSSES = ("bt", "mse")
UWO_LAMBDA = 1.0
MEMBERS = 5


def objective(members: Array, name: str, uwo_lambda: float = UWO_LAMBDA) -> Array:
    """The ensemble objective table from the member tables.

    mean: (1/K) sum_k R_k; wco: min_k R_k; uwo: mean - lambda Var_k R_k (the population variance, 1/K).

    Args:
      members: [K, N] member rewards (standardised under pi0: `Ensemble.members`).
      name: one of OBJECTIVES.
      uwo_lambda: lambda >= 0 of "uwo" (unused otherwise).
    Returns:
      [N] the objective.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"name must be one of {OBJECTIVES}, got {name!r}")
    if not (math.isfinite(uwo_lambda) and uwo_lambda >= 0):
        raise ValueError(f"uwo_lambda must be finite and >= 0, got {uwo_lambda}")
    if members.ndim != 2 or members.shape[0] < 1:
        raise ValueError(f"members must be [K, N] with K >= 1, got shape {members.shape}")
    mean = jnp.mean(members, axis=0)
    if name == "mean":
        return mean
    if name == "wco":
        return jnp.min(members, axis=0)
    return mean - uwo_lambda * jnp.mean(jnp.square(members - mean), axis=0)


def objective_name(name: str, uwo_lambda: float = UWO_LAMBDA) -> str:
    """A label of an objective: "mean", "wco", or "uwo(lambda=L)".

    Args:
      name: one of OBJECTIVES.
      uwo_lambda: lambda of "uwo", written into its label (unused otherwise).
    """
    return f"uwo(lambda={uwo_lambda:g})" if name == "uwo" else name


def bootstrap_indices(key: Array, members: int, num: int) -> Array:
    """[K, P] int32: each member's bootstrap resample of the P labels (P draws with replacement, uniform).

    Args:
      key: PRNG key.
      members: K, the number of resamples (rows).
      num: P, the number of labels (each row draws P indices in [0, P - 1]).
    """
    return jax.random.randint(key, (members, num), 0, num, jnp.int32)


class Ensemble(NamedTuple):
    """K proxy reward models of one kind and the single proxy beside them."""

    members: Array  # [K, N] each member standardised under pi0 (mean 0, sd 1)
    raw: Array  # [K, N] the members' own scores
    mean: np.ndarray  # [K] E_pi0[raw_k] (float64)
    sd: np.ndarray  # [K] sd_pi0(raw_k) (float64)
    params: Any  # the members' parameters, leading axis K (None for given tables)
    loss: Any  # [K, S] training losses (None for given tables)
    indices: Any  # [K, P] each member's resample of the labels (identity rows without bootstrap; None: tables)
    single: Any  # rewards.Proxy: one model trained on the labels themselves (None for given tables)
    data: Any  # the labels (rewards.Comparisons or rewards.Ratings; None for given tables)
    error: Any  # [N] the annotator error eps (None where unknown)
    kind: str  # "bt", "mse" or "tables"


def _standardise_rows(raw, log_p):
    rows = [rewards.pi0_standardise(r, log_p) for r in raw]
    return (jnp.stack([s.z for s in rows]), np.asarray([s.mean for s in rows], np.float64),
            np.asarray([s.sd for s in rows], np.float64))


def ensemble_from_tables(raw: Array, log_p: Array, error: Array | None = None) -> Ensemble:
    """An ensemble of given member tables (standardised here under pi0), with no models or labels behind them.

    Args:
      raw: [K, N] the members' scores.
      log_p: [N] log pi0 (normalised).
      error: [N] the annotator error eps the tables came from, kept in `Ensemble.error` (None where unknown).
    """
    raw = jnp.asarray(raw)
    z, mean, sd = _standardise_rows(raw, log_p)
    return Ensemble(z, raw, mean, sd, None, None, None, None, None, error, "tables")


@functools.lru_cache(maxsize=None)
def _trainer(cfg: lm.LMConfig, loss: str, steps: int, batch: int, chunk: int):
    """One jitted program (cached per sizes): the K + 1 models trained and scored, vmapped over models."""
    fn = rewards.make_rm_reward(cfg)
    train = rewards.train_bt if loss == "bt" else rewards.train_mse

    def one(key, params, tokens, data, lr, weight_decay):
        fit = train(key, fn, params, tokens, data, steps, batch, lr, weight_decay)
        return fit.params, fit.loss, rewards.score_terminals(fn, fit.params, tokens, chunk)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0, None, None)))


def train_ensemble(key: Array, cfg: lm.LMConfig, tree: lab_tree.LMTree, gold: Array, error: Array, labels: int,
                   members: int = MEMBERS, loss: str = "bt", steps: int = 600, bootstrap: bool = True,
                   temperature: float = 1.0, batch: int = 256, lr: float = 3e-3, weight_decay: float = 0.01,
                   chunk: int = 8192) -> Ensemble:
    """K members and a single proxy, trained on one set of `labels` annotator labels of u = gold + eps.

    The labels: `rewards.comparisons` (loss "bt": P pairs from pi0, BT labels at `temperature`) or
    `rewards.ratings` (loss "mse": P sequences from pi0 rated u(x)), drawn from fold_in(key, 0). Member k:
    initialisation, minibatches and bootstrap resample from their own keys; the single proxy: its own
    initialisation and minibatches, the labels as drawn. All K + 1 models train in one vmapped program.

    Args:
      key: PRNG key.
      cfg: the proxies' sizes (`rewards.proxy_config`).
      tree: the LM's tree.
      gold: [N] standardised gold.
      error: [N] the annotator error eps (any map: i.i.d. per sequence or a function of it).
      labels: P comparisons or ratings.
      members: K >= 1.
      loss: "bt" or "mse".
      steps, batch, lr, weight_decay: training (`rewards.train_bt` / `rewards.train_mse`).
      bootstrap: resample the labels per member (False: every member sees them all, as in Coste et al.).
      temperature: BT label temperature (loss "bt").
      chunk: rows per chunk when the trained models score every terminal (`rewards.score_terminals`).
    Returns:
      `Ensemble` (members standardised under pi0; `single` a `rewards.Proxy`, standardised).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if members < 1 or labels < 1 or steps < 1:
        raise ValueError(f"members, labels and steps must be >= 1, got {members}, {labels}, {steps}")
    k_data, k_boot, k_init, k_train = (jax.random.fold_in(key, i) for i in range(4))
    utility = gold + error
    if loss == "bt":
        data = rewards.comparisons(k_data, tree.log_p, utility, labels, temperature)
    else:
        data = rewards.ratings(k_data, tree.log_p, utility, labels)
    ident = jnp.arange(labels, dtype=jnp.int32)
    idx = bootstrap_indices(k_boot, members, labels) if bootstrap else jnp.broadcast_to(ident, (members, labels))
    idx = jnp.concatenate([idx, ident[None]])  # row K: the single proxy, the labels as drawn
    batched = jax.tree.map(lambda v: v[idx], data)
    params = jax.vmap(lambda k: rewards.rm_init(k, cfg))(jax.random.split(k_init, members + 1))
    fit_params, fit_loss, raw = _trainer(cfg, loss, steps, batch, chunk)(
        jax.random.split(k_train, members + 1), params, tree.tokens, batched, lr, weight_decay)
    z, mean, sd = _standardise_rows(raw, tree.log_p)
    take = lambda i: jax.tree.map(lambda v: v[i], fit_params)  # noqa: E731
    single = rewards.Proxy(z[members], error, take(members), fit_loss[members], raw[members], mean[members],
                           sd[members], data)
    return Ensemble(z[:members], raw[:members], mean[:members], sd[:members],
                    jax.tree.map(lambda v: v[:members], fit_params), fit_loss[:members], idx[:members], single,
                    data, error, loss)


def objective_proxy(ens: Ensemble, name: str, log_p: Array, uwo_lambda: float = UWO_LAMBDA) -> rewards.Proxy:
    """An objective of the ensemble as a `rewards.Proxy`: raw = the objective of the standardised members,
    reward = raw standardised under pi0 (module docstring), data = the labels, params and loss None.

    Args:
      ens: the ensemble (`train_ensemble` or `ensemble_from_tables`); its `members` [K, N] are combined.
      name: one of OBJECTIVES.
      log_p: [N] log pi0 (normalised), for the standardisation.
      uwo_lambda: lambda >= 0 of "uwo" (unused otherwise).
    """
    raw = objective(ens.members, name, uwo_lambda)
    s = rewards.pi0_standardise(raw, log_p)
    return rewards.Proxy(s.z, ens.error, None, None, raw, s.mean, s.sd, ens.data)


# ---------------------------------------------------------------- exact curves of an objective
class Curve(NamedTuple):
    """One method's exact curve: its points in sweep order (beta descending for pi*, n ascending for best-of-n)."""

    param: np.ndarray  # [M] beta (pi*) or n (best-of-n)
    KL: np.ndarray  # [M] KL to pi0 (trajectory KL; for best-of-n the law's)
    gold: np.ndarray  # [M] E[gold]
    proxy: np.ndarray  # [M] E[the objective]


class Evaluation(NamedTuple):
    """An objective (a proxy table) optimised exactly, scored by gold."""

    name: str
    exact: Curve  # pi*(beta) over the betas, largest first (KL rising)
    bon: Curve  # best-of-n over the ns
    kl_targets: np.ndarray  # [T]
    gold_at_kl: np.ndarray  # [T] E_pi*[gold] at trajectory KL = target (nan where no beta reaches it)
    beta_at_kl: np.ndarray  # [T] the beta solved for it (nan likewise)
    exact_peak: summary.Peak  # `lab.summary.peak` of the pi* points: at = beta; KL None where gold still rises
    bon_peak: summary.Peak  # of the best-of-n points: at = n
    at_kl: list  # `lab.summary.exact_at_kl`'s rows (a "reason" where no beta reaches the target)


def _curve(rows: list[dict], param: str) -> Curve:
    f = lambda k: np.asarray([np.nan if r[k] is None else r[k] for r in rows], np.float64)  # noqa: E731
    return Curve(f(param), f("KL"), f("gold"), f("proxy_reward"))


def _points(exact: Curve, bon: Curve) -> list[dict]:
    """The curves as `lab.experiment.point` rows (`evaluation_rows`' points; non-finite numbers None)."""
    fin = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    pts = [experiment.point("exact", beta=float(b), KL=fin(k), gold=fin(g), proxy_reward=fin(u),
                            objective=fin(u - b * k))
           for b, k, g, u in zip(exact.param, exact.KL, exact.gold, exact.proxy)]
    return pts + [experiment.point("bon", n=int(n), KL=fin(k), gold=fin(g), proxy_reward=fin(u),
                                   KL_bound=float(np.log(n) - (n - 1) / n))
                  for n, k, g, u in zip(bon.param, bon.KL, bon.gold, bon.proxy)]


def evaluate(tree: lab_tree.LMTree, gold: Array, table: Array, betas, ns, kl_targets=summary.KL_TARGETS,
             name: str = "") -> Evaluation:
    """Exact pi*(beta), exact best-of-n and pi* at fixed KLs of the proxy `table`, scored by `gold`.

    pi*(beta)(x) is proportional to pi0(x) exp(table(x) / beta) (`mdp.sweep_betas` on `lab.tree.mdp_tree`);
    best-of-n ranks by the table itself (`lab.experiment.bon_points` given the table: an objective such as wco
    can tie, and float32 rounding of the tree's (table - gold) + gold would split ties); gold at a KL target solves for beta (`lab.summary.exact_at_kl`).

    Args:
      tree: the LM's tree.
      gold: [N] standardised gold.
      table: [N] the objective (e.g. `objective_proxy(...).reward`).
      betas: [M] KL coefficients > 0 (sorted here, largest first).
      ns: [M'] best-of-n sizes >= 1 (sorted here).
      kl_targets: [T] KLs (nats) at which gold is read.
      name: a label carried along.
    """
    t = lab_tree.mdp_tree(tree, gold, table)
    betas = sorted((float(b) for b in betas), reverse=True)
    ns = sorted(int(n) for n in ns)
    exact = _curve(experiment.exact_points(t, betas), "beta") if betas else Curve(*[np.zeros(0)] * 4)
    bon = _curve(experiment.bon_points(t, ns, table), "n") if ns else Curve(*[np.zeros(0)] * 4)
    at = summary.exact_at_kl(t, kl_targets) if len(kl_targets) else []
    g = np.asarray([np.nan if r["gold"] is None else r["gold"] for r in at], np.float64)
    b = np.asarray([np.nan if r["beta"] is None else r["beta"] for r in at], np.float64)
    pts = _points(exact, bon)  # the peaks: `lab.summary.peak` on the rows `evaluation_rows` gives
    return Evaluation(name, exact, bon, np.asarray(kl_targets, np.float64), g, b,
                      summary.peak([p for p in pts if p["method"] == "exact"]),
                      summary.peak([p for p in pts if p["method"] == "bon"]), at)


def evaluation_rows(ev: Evaluation) -> tuple[list[dict], list[dict]]:
    """An evaluation as the lab's rows: (points, at-KL rows).

    points: `lab.experiment.point` rows, "exact" per beta (objective = E[proxy] - beta KL) and "bon" per n
    (KL_bound = log n - (n - 1)/n), the form `lab.summary.headlines` reads as "lab" rows; at-KL rows:
    `lab.summary.exact_at_kl`'s, read as "exact_at_kl" rows. Non-finite numbers are None.

    Args:
      ev: an `Evaluation` (`evaluate`).
    """
    return _points(ev.exact, ev.bon), [dict(r) for r in ev.at_kl]


class Versus(NamedTuple):
    """An objective against a reference proxy (differences: objective - reference; nan where either is unknown)."""

    peak_gold: float  # nan where either curve has no finite point
    KL_at_peak: float  # nan where either peak's KL is unknown (gold still rising at its curve's last point)
    gold_at_kl: np.ndarray  # [T] (pi*: exact at each KL target; nan where either does not reach it)


def versus(ev: Evaluation, ref: Evaluation, method: str = "exact") -> Versus:
    """Peak gold, the KL at the peak, and (pi*) gold at each KL target of `ev` minus those of `ref`.

    A peak at its curve's last point (gold still rising: `lab.summary.peak` gives it no KL) has its KL beyond
    the curve, unknown, so the difference of the KLs is too: nan, as gold_at_kl is nan where a target is not
    reached. Its gold is a lower bound of the true peak's, and the difference of the peak golds is given
    (`Evaluation.exact_peak.KL is None` says which side is so bounded).

    Args:
      ev: the objective's evaluation (`evaluate`).
      ref: the reference's (e.g. the single proxy's), on the same betas and ns.
      method: "exact" (pi*(beta)) or "bon" (best-of-n: gold_at_kl is nan, best-of-n's KL grid is its own).
    Returns:
      Versus(peak_gold, KL_at_peak, gold_at_kl [T]).
    """
    if method not in ("exact", "bon"):
        raise ValueError(f"method must be 'exact' or 'bon', got {method!r}")
    a, b = (ev.exact_peak, ref.exact_peak) if method == "exact" else (ev.bon_peak, ref.bon_peak)
    at = ev.gold_at_kl - ref.gold_at_kl if method == "exact" else np.full(ev.kl_targets.shape, np.nan)
    diff = lambda x, y: math.nan if x is None or y is None else x - y  # noqa: E731
    return Versus(diff(a.gold, b.gold), diff(a.KL, b.KL), at)


def paired(rows: list[dict], reference: str) -> list[dict]:
    """Per seed, each headline row (`lab.summary.headlines`) of a proxy minus the same headline of `reference`
    (same seed, noise, pairs, method, beta, quantity, at): paired differences, whose interval over seeds
    (`lab.summary.summarise`) is the comparison with the single proxy.

    Args:
      rows: result rows; those of kind "headline" with method "exact", "bon" or "rl" are paired.
      reference: the proxy label subtracted (e.g. the single proxy's).
    Returns:
      headline rows with quantity `<quantity>_minus` and "minus": reference, for every proxy but the reference
      (value None with a reason where either side is None).
    """
    key = lambda r: (r["seed"], r["noise"], r["pairs"], r["method"], r["beta"], r["quantity"], r["at"])  # noqa: E731
    ref = {key(r): r for r in rows if r["kind"] == "headline" and r["proxy"] == reference}
    out = []
    for r in rows:
        if r["kind"] != "headline" or r["proxy"] in (reference, None) or r["method"] not in ("exact", "bon", "rl"):
            continue
        o = ref.get(key(r))
        if o is None:
            continue
        row = dict(r, quantity=r["quantity"] + "_minus", minus=reference)
        if r["value"] is None or o["value"] is None:
            row.update(value=None, how=None, reason=r.get("reason") or f"{reference}: {o.get('reason') or 'null'}")
        else:
            row.update(value=float(r["value"] - o["value"]), how=f"{r['how']}; minus {reference}'s ({o['how']})")
        out.append(row)
    return out
