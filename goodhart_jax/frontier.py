"""The KL-utility frontier: a sweep's values read off at equal KL, so that families compare like for like.

A beta sweep gives one (KL, value) point per beta, and different error families
spend very different KL at the same beta. Comparing them at the same beta (or at
the smallest beta, where a finite tree's KL sits at its ceiling) says little;
comparing them at the same KL says what the figure E[V] against KL shows.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["AtKL", "value_at_kl", "table", "FamilySweep", "FamilySummary", "summarize", "sweep_rows"]


class AtKL(NamedTuple):
    """`value_at_kl`'s result: the value read off at each target KL, whether the sweep reached it, its largest KL."""
    value: np.ndarray    # [..., M] value at each target KL (NaN where not reached)
    exists: np.ndarray   # [..., M] bool: the target lies within the swept KL range
    kl_max: np.ndarray   # [...] largest KL the sweep reached


def value_at_kl(kl, value, targets) -> AtKL:
    """Interpolate `value` linearly in log KL at each target KL (host side, float64).

    Args:
      kl: [..., K] KL of each sweep point (> 0; any order).
      value: [..., K] the quantity at each point (e.g. E[V]).
      targets: [M] KL values to read off (> 0).
    Returns:
      AtKL: values [..., M], NaN with exists False where a target lies outside [min KL, max KL] of its row,
      and kl_max [...].
    """
    kl = np.asarray(kl, np.float64)
    value = np.asarray(value, np.float64)
    targets = np.asarray(targets, np.float64)
    if kl.shape != value.shape:
        raise ValueError(f"kl {kl.shape} and value {value.shape} must have the same shape")
    if np.any(~(targets > 0)):
        raise ValueError(f"target KLs must be > 0, got {targets.tolist()}")
    lead = kl.shape[:-1]
    kl2, v2 = kl.reshape(-1, kl.shape[-1]), value.reshape(-1, kl.shape[-1])
    out = np.full((kl2.shape[0], targets.size), np.nan)
    kl_max = np.full(kl2.shape[0], np.nan)
    for i, (k, v) in enumerate(zip(kl2, v2)):
        ok = np.isfinite(k) & np.isfinite(v) & (k > 0)
        if not ok.any():
            continue
        order = np.argsort(k[ok])
        lk, vv = np.log(k[ok][order]), v[ok][order]
        kl_max[i] = np.exp(lk[-1])
        lt = np.log(targets)
        inside = (lt >= lk[0]) & (lt <= lk[-1])
        out[i, inside] = np.interp(lt[inside], lk, vv)
    out = out.reshape(*lead, targets.size)
    return AtKL(out, ~np.isnan(out), kl_max.reshape(lead))


def table(labels: list[str], results: list[AtKL], targets, what: str = "E[V]",
          columns: dict[str, list] | None = None, label: str = "") -> str:
    """A text table: one line per label, `what` at each target KL as mean +- sd over the rows that reach it.

    A cell that only some rows (seeds) reach says how many, "[n/S]"; with one row there is no sd.

    Args:
      labels: one name per result (e.g. the error family).
      results: AtKL of [S, M] per label (S seeds, M targets).
      targets: [M] the target KLs.
      columns: extra columns {header: one value per label}, shown after the label.
      label: the header of the label column.
    """
    columns = columns or {}
    head = f"{label:<22}" + "".join(f"{h:>12}" for h in columns)
    head += "".join(f"{what + ' @KL=' + format(k, 'g'):>21}" for k in targets) + f"{'KL max':>9}"
    lines, partial = [head], False
    for i, (label, at) in enumerate(zip(labels, results)):
        line = f"{label:<22}" + "".join(f"{str(col[i]):>12}" for col in columns.values())
        for j in range(len(targets)):
            v, rows = at.value[..., j][at.exists[..., j]], at.value[..., j].size
            cell = f"{v.mean():.3f}" + (f" +- {v.std():.3f}" if v.size > 1 else "") if v.size else "n/a"
            partial |= 0 < v.size < rows
            line += f"{cell + (f' [{v.size}/{rows}]' if 0 < v.size < rows else ''):>21}"
        kl_max = np.asarray(at.kl_max, float)
        lines.append(line + (f"{np.nanmax(kl_max):>9.2f}" if np.isfinite(kl_max).any() else f"{'n/a':>9}"))
    if partial:
        lines.append("[n/S]: only n of the S seeds' sweeps reach that KL; the mean and sd are over those n")
    return "\n".join(lines)


class FamilySweep(NamedTuple):
    """One error family's beta sweep (host arrays): the continuous tilt, the tree optimum and Theorem 2 per seed."""

    label: str  # the family, as given
    heavy: bool  # whether the family is heavy-tailed
    betas: np.ndarray  # [K] the KL coefficients
    tilt: NamedTuple  # `tilting.TiltResult` of [K] (E_U, E_V, KL, exists)
    tree: NamedTuple  # `mdp.TreeResult` of [S, K] (S seeds)
    ts: np.ndarray  # [M] the Theorem 2 thresholds
    thm2: NamedTuple  # `mdp.TreeResult` of [S, M]
    thm2_exists: np.ndarray  # [S, M] bool: whether the construction is defined


class FamilySummary(NamedTuple):
    """One family's line of a sweep's summary."""

    label: str  # the family, as given
    tail: str  # "heavy" or "light"
    tilt_betas: int  # betas at which the continuous tilt exists
    at: AtKL  # E[V] of each seed's sweep read off at the target KLs ([S, M])


def summarize(families: list[FamilySummary], targets, vocab: int | None = None, depth: int | None = None,
              betas_name: str = "the betas") -> tuple[list[dict], str]:
    """JSON rows and the text table of a sweep's summary: E[V] at equal KL, one line per family.

    Args:
      families: one `FamilySummary` per error family.
      targets: [M] the KLs read off.
      vocab, depth: the tree's shape, for the note under the table (its KL ceiling under a uniform pi0).
      betas_name: what a null's reason calls the sweep's betas (a driver passes its flag).
    Returns:
      (rows for summary.json, the table and note as text).
    """
    note = "" if vocab is None else (
        f"(E[V] of the tree optimum read off each seed's sweep at equal KL, mean +- sd over seeds; 'KL max' is "
        f"the KL at the smallest beta, where the tree saturates: a uniform pi0's ceiling is log({vocab}^"
        f"{depth}) = {depth * math.log(vocab):.1f} nats, and E[V] there is the V of a few top-U leaves)")
    rows = [dict(error=f.label, tail=f.tail, tilt_betas=f.tilt_betas, KL=tuple(targets), E_V_at_KL=f.at.value,
                 KL_max=f.at.kl_max) for f in families]
    for row, f in zip(rows, families):
        if not np.all(np.isfinite(np.asarray(f.at.value, np.float64))):
            row["reason"] = ("E[V] is null at a KL that a seed's sweep over beta does not reach: every beta's KL is "
                             "above it (a heavy tail can saturate the tree even at the largest beta) or below it; "
                             f"'KL_max' is the KL at the smallest beta. Widen {betas_name} to read it off")
    text = table([f.label for f in families], [f.at for f in families], targets, label="error",
                 columns={"tail": [f.tail for f in families], "tilt exists": [f.tilt_betas for f in families]})
    return rows, text + ("\n" + note if note else "")


def sweep_rows(kind: str, common: dict, at: dict, values, fields: tuple[str, ...], exists=None,
               reason=None) -> list[dict]:
    """Result rows of one sweep, one per point: `common`, the point's coordinates, its numbers (host side).

    Args:
      kind: the row kind ("tilt", "tree", "thm2").
      common: fields every row shares (e.g. error, utility, seed).
      at: {name: [K] values}: the coordinates of the points (e.g. beta, or t).
      values: a NamedTuple of [K] arrays holding `fields`.
      exists: [K] bool or None; where False the numbers are None and the row says why.
      reason: point index -> why it does not exist, or why its numbers cannot be computed (a string or None).
    Returns:
      K dicts; a non-finite number becomes None with a reason: `reason(i)` where it names one, else
      `io.null_nonfinite`'s float32 overflow.
    """
    from goodhart_jax import io

    rows = []
    for i in range(len(next(iter(at.values())))):
        row = dict(kind=kind, **common, **{k: v[i] for k, v in at.items()})
        if exists is not None:
            row["exists"] = bool(exists[i])
        if exists is None or exists[i]:
            row = io.null_nonfinite(dict(row, **{f: getattr(values, f)[i] for f in fields}), fields)
            why = "reason" in row and reason is not None and reason(i)
            rows.append(dict(row, reason=why) if why else row)
        else:
            rows.append(dict(row, **{f: None for f in fields}, reason=reason(i)))
    return rows
