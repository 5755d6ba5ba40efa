"""Headline numbers of an overoptimization-lab run, per seed, and their mean and interval over seeds.

One seed of the lab is one draw of everything random: the Markov source, pi0, gold, the annotator error,
the proxies, RL and the search. A number from one seed is not a finding (training is not even bitwise
reproducible across CPU kinds), so `sims/overoptimization.py` runs several seeds and reports, for each
headline quantity, the mean over seeds and a Student-t interval:

    mean +- t_{(1 + level) / 2, n - 1} sd / sqrt(n),    sd the sample standard deviation of the n seeds.

The headline quantities of one seed (`headlines`, `exact_at_kl`), per (noise, proxy, pairs):

- gold at KL = 1, 2, 4 nats (`KL_TARGETS`): the exact optimum's E[gold] at the beta whose trajectory KL is the
  target (beta solved by bisection, `mitigations.kl_target_tree`: exact); best-of-n's and each RL beta's
  interpolated linearly in KL between the two adjacent points of its curve (the row says which), null with a
  reason where the curve does not reach the target;
- peak gold on the method's points and the KL there (`peak`: where the peak is the curve's last point, by KL for
  best-of-n and pi*, by step for an RL run, gold was still rising: peak_gold says so and KL_at_peak is null with
  that reason, the peak's KL lying beyond the curve);
- Gao's coefficients (`fit` rows: alpha, beta, r2; RL's one fit a beta);
- RL's share of the gap J(pi*) - J(pi0) closed at its last step, per beta;
- the proxy's diagnostics (pair accuracy on unseen and seen sequences, corr, corr(X, eps), xi of X and proxy) and pi0's law (entropy, perplexity, top mass, n90),
  where those rows carry them;
- under a token map (`lab.error_maps.hack_set`), the mass on the n-gram's sequences: pi0's (`hack_mass`) and the
  exact optimum's at each KL target (`hack_mass_at_KL`), where the rows carry `hack_mass`.

Public API:
  KL_TARGETS = (1.0, 2.0, 4.0);  LEVEL = 0.95
  Interval(mean, lo, hi, sd, n, reason)
  t_quantile(p, df) -> float                        # Student-t quantile (bisection on its CDF, float64)
  interval(values, level=LEVEL) -> Interval          # over the finite values; reason where lo, hi are null
  exact_at_kl(tree, targets=KL_TARGETS) -> [dict]    # pi*(beta) at trajectory KL = target: beta, KL, gold
  at_kl(points, target) -> (gold, how)               # linear interpolation in KL along a curve
  AT = {"bon": "n", "exact": "beta", "rl": "step"};  Peak(gold, KL, at, reason, points)
  peak(points, order=None) -> Peak                   # the largest gold on a curve; KL None where it is its end
  headlines(rows, seed) -> [dict]                    # "headline" rows of one seed from its lab/fit/proxy/base rows
  summarise(headline_rows, level=LEVEL) -> [dict]    # "summary" rows: mean, lo, hi, sd, seeds over the seeds
  cell(summary_row, fmt) -> "mean [lo, hi]";  tables(summary_rows, proxy_rows, seeds) -> [(rows, columns, title)]

Rows: a headline row is {"kind": "headline", "seed", "noise", "proxy", "pairs", "method", "beta", "quantity",
"at", "value", "how"} (and "reason" where value is null); a summary row has the same keys without seed, value
and how, plus "mean", "lo", "hi", "sd", "seeds" (the number of seeds with a value) and "of" (seeds in all).
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import mdp, mitigations
from goodhart_jax.roots import bisect

__all__ = ["KL_TARGETS", "LEVEL", "Interval", "t_quantile", "interval", "exact_at_kl", "at_kl", "AT", "Peak", "peak",
           "headlines", "summarise", "GROUP", "cell", "tables"]

KL_TARGETS = (1.0, 2.0, 4.0)
LEVEL = 0.95
GROUP = ("noise", "proxy", "pairs", "method", "beta", "quantity", "at")  # what a summary row is over seeds of
PROXY_FIELDS = ("pair_accuracy_unseen", "pair_accuracy_seen", "seen_mass", "corr", "error_corr_unseen",
                "error_corr_seen", "xi", "xi_proxy")
BASE_FIELDS = ("entropy", "perplexity", "top_mass", "n90", "hack_mass")  # hack_mass: token maps only


class Interval(NamedTuple):
    """Mean of n values and its Student-t interval; lo, hi nan (with a reason) below 2 values."""

    mean: float
    lo: float
    hi: float
    sd: float  # sample standard deviation (ddof 1); nan below 2 values
    n: int
    reason: str  # why lo/hi (or the mean) are missing, else ""


def _t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom (t >= 0): 1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2,
    = 1/2 + I_{t^2 / (df + t^2)}(1 / 2, df / 2) / 2 (the form used near t = 0, where the first loses its digits)."""
    inc = jax.scipy.special.betainc
    near = t * t / (df + t * t)
    return jnp.where(near < 0.5, 0.5 + 0.5 * inc(0.5, df / 2.0, near), 1.0 - 0.5 * inc(df / 2.0, 0.5, 1.0 - near))


@jax.jit
def _t_root(p, df, hi):
    return bisect(lambda t: _t_cdf(t, df) - p, jnp.zeros_like(hi), hi, num_steps=200).root


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df >= 1 degrees of freedom, for 1/2 <= p < 1 (float64 bisection on the
    CDF; within 1e-10 relative of SciPy's `stats.t.ppf`)."""
    if not (0.5 <= p < 1.0 and df >= 1):
        raise ValueError(f"need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    with jax.enable_x64(True):
        hi = 16.0
        while float(_t_cdf(jnp.float64(hi), jnp.float64(df))) < p:  # far quantiles at small df: widen the bracket
            hi *= 16.0
        return float(_t_root(jnp.float64(p), jnp.float64(df), jnp.float64(hi)))


def interval(values: Iterable, level: float = LEVEL) -> Interval:
    """Mean and the Student-t `level` interval of the finite values (None and nan are left out).

    Args:
      values: numbers (one a seed).
      level: coverage of the interval (0.95).
    Returns:
      Interval; with one value lo = hi = nan ("one seed: no interval"), with none everything nan.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    n = v.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, "no seed has a value")
    mean = float(np.mean(v))
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, "one seed: no interval")
    sd = float(np.std(v, ddof=1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n, "")


@jax.jit
def _kl_target(tree: mdp.Tree, targets):
    return jax.vmap(lambda t: mitigations.kl_target_tree(tree, t))(targets)


def exact_at_kl(tree: mdp.Tree, targets=KL_TARGETS) -> list[dict]:
    """The exact optimum pi*(beta) whose trajectory KL is each target (beta solved by bisection in log beta).

    Args:
      tree: `mdp.Tree(log pi0, X = proxy - gold, V = gold)` (`lab.tree.mdp_tree`).
      targets: [T] KLs in nats.
    Returns:
      one dict a target: {"at": target, "beta", "KL", "gold", "proxy_reward"}, and "reason" (the numbers None)
      where no beta in the solver's range spends the target within sqrt(eps) (a target above the largest KL the
      tree allows, -log pi0 of the proxy's argmax set).
    """
    t = np.asarray(targets, float)
    r = jax.device_get(_kl_target(tree, jnp.asarray(t, tree.V[-1].dtype)))
    out = []
    for i, target in enumerate(t):
        row = dict(at=float(target), beta=float(r.param[i]), KL=float(r.KL[i]), gold=float(r.E_V[i]),
                   proxy_reward=float(r.E_U[i]))
        if not (bool(r.exists[i]) and all(math.isfinite(row[k]) for k in ("beta", "KL", "gold"))):
            row = dict(at=float(target), beta=None, KL=None, gold=None, proxy_reward=None,
                       reason=f"no beta spends KL {target:g}: pi*(beta) reaches KL {float(r.KL[i]):.4g} at most")
        out.append(row)
    return out


AT = {"bon": "n", "exact": "beta", "rl": "step"}  # the field that places a point on its method's curve


def _place(method: str, at) -> str:
    """How a point is placed on its curve: n for best-of-n, step for RL, beta for the exact optimum."""
    if method == "bon":
        return f"n = {at}"
    if method == "rl":
        return f"step {at}"
    return f"beta = {at:.4g}"


def _name(r: dict) -> str:
    return _place(r["method"], r[AT.get(r["method"], "beta")])


def at_kl(points: list[dict], target: float) -> tuple[float | None, str]:
    """Gold at trajectory KL = target, linear in KL between the first two adjacent points that bracket it.

    Args:
      points: one curve's rows in its own order (n, step or beta), each with "KL" and "gold" (None: left out).
      target: the KL.
    Returns:
      (gold, how): how says between which points; (None, reason) where no two adjacent points bracket target.
    """
    pts = [r for r in points if r["KL"] is not None and r["gold"] is not None]
    for a, b in zip(pts, pts[1:]):
        lo, hi = sorted((a["KL"], b["KL"]))
        if lo <= target <= hi:
            if hi == lo:
                return float(a["gold"]), f"at {_name(a)}"
            w = (target - a["KL"]) / (b["KL"] - a["KL"])
            return float(a["gold"] + w * (b["gold"] - a["gold"])), \
                f"linear in KL between {_name(a)} (KL {a['KL']:.3g}) and {_name(b)} (KL {b['KL']:.3g})"
    if not pts:
        return None, "no point of this curve has a KL and gold"
    top = max(r["KL"] for r in pts)
    return None, f"the curve reaches KL {top:.3g} at most" if top < target else \
        f"no two adjacent points bracket KL {target:g}"


class Peak(NamedTuple):
    """The largest gold on a curve, and where; its KL None where it is the curve's last point (gold still rising)."""

    gold: float | None  # the largest finite gold; None where no point has a finite gold and KL
    KL: float | None  # the KL there; None where that is the curve's last point (the peak lies beyond), or with gold
    at: float | None  # where on the curve (`AT`): n (best-of-n), beta (pi*), step (RL); None with gold
    reason: str  # why KL (or gold) is None, else ""
    points: int  # the points the maximum is over (those with a finite gold and KL)


def peak(points: list[dict], order: str | None = None) -> Peak:
    """The peak of one curve: its point of largest gold (the first of equals along the curve) among the points with
    a finite gold and KL.

    The curve runs along `order`; where its largest gold is its last point, gold was still rising there: the peak
    lies beyond the curve, so `gold` is a lower bound of the peak's and its KL is not known (None, with a reason).
    Best-of-n's and pi*(beta)'s curves run along KL (it rises with n and as beta falls). An RL run's runs along its
    steps: its KL need not rise with the step, and what the run leaves open is what more steps would do, so its
    peak is "still rising" where its last evaluation has the largest gold, and within the run (KL known) where gold
    fell after it, even at the run's largest KL.

    Args:
      points: one curve's `lab.experiment.point` rows ("method", "KL", "gold", and the `AT` field of the method:
        "n", "beta" or "step"), in any order; None or non-finite gold or KL: left out.
      order: the field the curve runs along (points sorted by it, ascending; equal values in the sweep's order:
        n and step ascending, beta descending); None: the method's own, "step" for an RL run ("method" "rl"),
        "KL" otherwise.
    Returns:
      Peak(gold, KL, at, reason, points); gold None ("no point has a finite gold and KL") where no point counts.
    Raises:
      ValueError: points of several methods (not one curve), or a counted point without its `order` field.
    """
    methods = {p.get("method") for p in points}
    if len(methods) > 1:
        raise ValueError(f"points must be one curve, got methods {sorted(map(str, methods))}")
    method = methods.pop() if methods else None
    order = order or ("step" if method == "rl" else "KL")
    pts = [p for p in points if p.get("gold") is not None and p.get("KL") is not None
           and math.isfinite(p["gold"]) and math.isfinite(p["KL"])]
    if not pts:
        return Peak(None, None, None, "no point has a finite gold and KL", 0)
    if any(p.get(order) is None for p in pts):
        raise ValueError(f"order: every point with a gold and KL needs {order!r}")
    along = AT.get(method)  # ties in `order` (a saturated curve) keep the sweep's order: n, step up; beta down
    sign = -1.0 if along == "beta" else 1.0
    pts = sorted(pts, key=lambda p: (p[order],) if along is None or p.get(along) is None else
                 (p[order], sign * p[along]))
    best = max(range(len(pts)), key=lambda i: pts[i]["gold"])
    p = pts[best]
    at = p.get(along) if along else None
    if best == len(pts) - 1:
        return Peak(float(p["gold"]), None, at, f"gold still rising at the curve's last point (KL {p['KL']:.3g}): "
                    "no peak within it", len(pts))
    return Peak(float(p["gold"]), float(p["KL"]), at, "", len(pts))


def _headline(seed, tag: dict, method: str, beta, quantity: str, at, value, how: str) -> dict:
    row = dict(kind="headline", seed=seed, **tag, method=method, beta=beta, quantity=quantity, at=at)
    if value is None or not math.isfinite(value):
        return dict(row, value=None, how=None, reason=how or "not finite")
    return dict(row, value=float(value), how=how)


def _why(row: dict, field: str) -> str:
    """Why `field` of a row is null: its part of the row's reason ("field: why; ..."), or the whole reason; ""
    where the field has a value (another field's reason is not this one's)."""
    if row.get(field) is not None:
        return ""
    reason = row.get("reason") or ""
    for part in reason.split("; "):
        if part.startswith(field + ": "):
            return part
    return reason


def _curves(lab: list[dict]) -> dict:
    """{(method, beta): points in curve order} of one proxy's lab rows: bon by n, rl per beta by step."""
    out: dict = {}
    for r in lab:
        if r["method"] == "bon":
            out.setdefault(("bon", None), []).append(r)
        elif r["method"] == "rl":
            out.setdefault(("rl", r["beta"]), []).append(r)
        elif r["method"] == "exact":
            out.setdefault(("exact", None), []).append(r)
    order = {"bon": "n", "rl": "step"}
    for (m, _), pts in out.items():
        if m in order:
            pts.sort(key=lambda r: r[order[m]])
        else:
            pts.sort(key=lambda r: -r["beta"])  # KL rises as beta falls
    return out


def headlines(rows: list[dict], seed: int) -> list[dict]:
    """The headline rows of one seed, from its "base", "proxy", "lab", "fit" rows and its "exact_at_kl" rows.

    `exact_at_kl` rows are {"kind": "exact_at_kl", noise, proxy, pairs, at, gold, ...} (the driver's, from
    `exact_at_kl`); best-of-n's and RL's gold at a KL are interpolated (`at_kl`). peak_gold and KL_at_peak are
    `peak`'s on each curve: best-of-n's and pi*'s end at their largest KL, an RL run's at its last step.
    """
    out = []
    for r in rows:
        if r["kind"] == "base":
            for f in BASE_FIELDS:
                if f in r:
                    out.append(_headline(seed, dict(noise=None, proxy=None, pairs=None), "pi0", None, f, None,
                                         r[f], _why(r, f)))
    tags = list(dict.fromkeys((r["noise"], r["proxy"], r["pairs"]) for r in rows if r["kind"] in ("proxy", "lab")))
    for noise, proxy, pairs in tags:
        tag = dict(noise=noise, proxy=proxy, pairs=pairs)

        def mine(kind):
            return [r for r in rows if r["kind"] == kind and (r["noise"], r["proxy"], r["pairs"]) == (noise, proxy,
                                                                                                    pairs)]

        for r in mine("proxy"):
            for f in PROXY_FIELDS:
                if f in r:
                    out.append(_headline(seed, tag, "proxy", None, f, None, r[f], _why(r, f)))
        for r in mine("exact_at_kl"):
            how = f"exact: pi*(beta) at beta = {r['beta']:.4g}" if r["gold"] is not None else r.get("reason", "")
            out.append(_headline(seed, tag, "exact", None, "gold_at_KL", r["at"], r["gold"], how))
            if "hack_mass" in r:  # token maps: pi*'s mass on the n-gram's sequences
                out.append(_headline(seed, tag, "exact", None, "hack_mass_at_KL", r["at"], r["hack_mass"], how))
        for (method, beta), pts in _curves(mine("lab")).items():
            if method != "exact":
                for target in KL_TARGETS:
                    gold, how = at_kl(pts, target)
                    out.append(_headline(seed, tag, method, beta, "gold_at_KL", target, gold, how))
            pk = peak(pts)
            if pk.gold is not None:
                how = (f"max over {pk.points} points, at {_place(method, pk.at)}"
                       + (" (the curve's last point: gold still rising)" if pk.KL is None else ""))
                out.append(_headline(seed, tag, method, beta, "peak_gold", None, pk.gold, how))
                # at the curve's last point the peak lies beyond it: its KL is not known, only a lower bound
                out.append(_headline(seed, tag, method, beta, "KL_at_peak", None, pk.KL, pk.reason or how))
            valid = [r for r in pts if r["gold"] is not None and r["KL"] is not None]
            if method == "rl" and valid:
                first, last = valid[0], valid[-1]
                if "share_closed" in last:  # the RL rows' own (null with a reason where the gap at pi0 is ~0)
                    share = last["share_closed"]
                    how = "" if share is not None else last.get("reason") or "share_closed is null"
                elif last.get("gap") is not None and (first.get("gap") or 0.0) > 0.0:
                    share, how = 1.0 - last["gap"] / first["gap"], ""
                else:
                    share, how = None, "no gap at pi0: no share"
                out.append(_headline(seed, tag, method, beta, "share_closed", None, share,
                                     how or f"1 - gap / gap at step {first['step']}, at step {last['step']}"))
        for f in mine("fit"):
            for q in ("alpha", "beta", "r2"):
                out.append(_headline(seed, tag, f["method"], f.get("rl_beta"), f"gao_{q}", None,
                                     f.get(q), f.get("reason", "")))
    return out


def summarise(rows: list[dict], level: float = LEVEL) -> list[dict]:
    """Summary rows over seeds: one per headline quantity (GROUP), mean and Student-t interval of its values.

    Args:
      rows: headline rows of every seed (`headlines`).
      level: the interval's coverage.
    Returns:
      {"kind": "summary", GROUP fields, "mean", "lo", "hi", "sd", "seeds", "of", "level"} (+ "reason" where
      lo/hi or the mean are null: one seed, or seeds without a value).
    """
    seeds = sorted({r["seed"] for r in rows})
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP), []).append(r)
    out = []
    for key, rs in groups.items():
        iv = interval([r["value"] for r in rs], level)
        row = dict(kind="summary", **dict(zip(GROUP, key)), mean=iv.mean, lo=iv.lo, hi=iv.hi, sd=iv.sd, seeds=iv.n,
                   of=len(seeds), level=level)
        missing = [r for r in rs if r["value"] is None]
        reasons = []
        if missing:
            reasons.append(f"{len(missing)} of {len(seeds)} seeds have no value (seed {missing[0]['seed']}: "
                           f"{missing[0].get('reason') or 'null'})")
        if iv.reason:
            reasons.append(iv.reason)
        if reasons:
            row["reason"] = "; ".join(reasons)
        out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return out


def cell(s: dict | None, fmt: str = ".2f") -> str:
    """A summary row as 'mean [lo, hi]' ('mean' with one seed; 'n/a' without a value), with '(k/n seeds)' where
    only k of the n seeds have a value.

    Args:
      s: a summary row (`summarise`: mean, lo, hi, seeds, of) or None.
      fmt: the numbers' format spec.
    """
    if s is None or s["mean"] is None:
        return "n/a"
    some = f" ({s['seeds']}/{s['of']} seeds)" if s["seeds"] < s["of"] else ""
    if s["lo"] is None:
        return format(s["mean"], fmt) + some
    return f"{s['mean']:{fmt}} [{s['lo']:{fmt}}, {s['hi']:{fmt}}]" + some


def tables(summ: list[dict], proxies: list[dict], seeds: int) -> list[tuple]:
    """The end-of-run tables of a run: pi0's law, the proxies (with the tally of their tail verdicts), and gold at
    KL = 1, 2, 4 nats, peak gold and RL's share closed per method, each cell `cell`: mean [95% interval].

    Args:
      summ: the run's summary rows (`summarise`).
      proxies: its "proxy" rows (every seed's; their verdicts are tallied).
      seeds: the number of seeds.
    Returns:
      [(rows, columns, title)] for `cli.Run.table` (columns: (header, key, format) triples).
    """
    out = []
    by = {tuple(r[k] for k in GROUP): r for r in summ}
    over = f" (mean [95% interval] over {seeds} seeds)" if seeds > 1 else " (one seed: no interval)"
    base = [r for r in summ if r["method"] == "pi0"]
    if base:
        out.append(([{r["quantity"]: cell(r, ".4g") for r in base}],
                    [(q, q, "") for q in BASE_FIELDS if any(r["quantity"] == q for r in base)],
                    "pi0's law (entropy in nats; top_mass: the most likely sequence's; n90: sequences holding "
                        "90% of the mass)" + over + ":"))
    tags = list(dict.fromkeys((r["noise"], r["proxy"], r["pairs"]) for r in summ if r["method"] != "pi0"))
    verdicts = {}
    for r in proxies:
        verdicts.setdefault((r["noise"], r["proxy"], r["pairs"]), []).append(r["verdict"])
    for fields, title in ((("pair_accuracy_unseen", "pair_accuracy_seen", "seen_mass", "corr"),
                           "proxies against gold: pair accuracy on sequences outside / inside the training pairs, "
                           "pi0's mass of the seen ones, corr under pi0"),
                          (("error_corr_unseen", "error_corr_seen", "xi", "xi_proxy"),
                           "proxies' error X = proxy - gold: corr(X, eps) on unseen / seen sequences, xi of X and of "
                           "the proxy (i.i.d. pi0 draws)")):
        prow = []
        for t in tags:
            cells = {q: cell(by.get(t + ("proxy", None, q, None)), ".3f") for q in fields}
            tally = verdicts.get(t, [])
            prow.append(dict(noise=t[0], proxy=t[1], pairs=t[2], **cells,
                             verdict=", ".join(f"{v} {tally.count(v)}/{len(tally)}" for v in dict.fromkeys(tally))))
        cols = [(q.replace("_", " "), q, "") for q in fields if any(r["quantity"] == q for r in summ)]
        out.append((prow, [("noise", "noise", ""), ("proxy", "proxy", ""), ("pairs", "pairs", "")] + cols
                    + ([("verdict of X", "verdict", "")] if "xi" in fields else []), title + over + ":"))
    mrow = []
    for t in tags:
        for m, b in dict.fromkeys((r["method"], r["beta"]) for r in summ if (r["noise"], r["proxy"], r["pairs"]) == t
                                  and r["method"] in ("bon", "exact", "rl") and r["quantity"] == "gold_at_KL"):
            g = {q: by.get(t + (m, b, q, None)) for q in ("peak_gold", "KL_at_peak", "share_closed")}
            mrow.append(dict(noise=t[0], proxy=t[1] + ("" if t[2] is None else f" ({t[2]})"),
                             method=m + ("" if b is None else f" beta {b:g}"),
                             **{f"KL{a:g}": cell(by.get(t + (m, b, "gold_at_KL", a))) for a in KL_TARGETS},
                             peak=cell(g["peak_gold"]), at=cell(g["KL_at_peak"], ".2g"),
                             share=cell(g["share_closed"]) if m == "rl" else ""))
    out.append((mrow, [("noise", "noise", ""), ("proxy", "proxy", ""), ("method", "method", "")]
                + [(f"gold at KL {a:g}", f"KL{a:g}", "") for a in KL_TARGETS]
                + [("peak gold", "peak", ""), ("its KL", "at", ""), ("RL share closed", "share", "")],
                "gold (sd units under pi0) by method" + over + "; exact: beta solved for the KL, best-of-n and "
                "RL: interpolated in KL; n/a: not reached:"))
    hack = list(dict.fromkeys((r["noise"], r["proxy"], r["pairs"]) for r in summ if r["quantity"] == "hack_mass_at_KL"))
    if hack:  # token maps: pi*'s mass on the n-gram's sequences
        out.append(([dict(noise=n, proxy=p + ("" if q is None else f" ({q})"),
                          **{f"KL{a:g}": cell(by.get((n, p, q, "exact", None, "hack_mass_at_KL", a)), ".3f")
                             for a in KL_TARGETS}) for n, p, q in hack],
                    [("noise", "noise", ""), ("proxy", "proxy", "")] + [(f"KL {a:g}", f"KL{a:g}", "")
                                                                        for a in KL_TARGETS],
                    "pi*'s mass on the sequences of the token map's n-gram" + over + " (pi0's: hack_mass above):"))
    return out
