"""The KL-penalised optimum on a continuous return: P_beta ∝ Q exp(U / beta).

For a base law Q of U = X + V, the maximiser of E_P[U] - beta KL(P || Q) is the
exponential tilt P_beta(du) = Q(du) exp(u / beta) / Z(beta) (Theorem 4 of Kwa et
al. 2024; the Gibbs variational principle). It exists iff
Z(beta) = E_Q[exp(U / beta)] < inf: for every beta when X and V are both
Gaussian, only for beta > scale with Laplace error, and never when either is
heavy-tailed (Corollary 1: E[U] is then unbounded at any KL).

With X and V independent the tilt factorises, P_beta = P_beta^X x P_beta^V, so
E_P[U] = E[X] + E[V] under the tilted factors and KL = KL_X + KL_V. Each factor
is a one-dimensional integral done in log space by `goodhart_jax.quadrature`:
the bump locator finds where the tilted density q(y) e^{y/beta} lives (its
peak and where it has dropped by e^-3, e^-12, e^-40), and a double-exponential
rule split there and at the family's kink integrates it.

Glossary: K sweep points (betas).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.floats import as_float
from goodhart_jax.quadrature import de_moments, locate_bump
from goodhart_jax.tails import Family, parse

__all__ = ["TiltResult", "TiltComponent", "tilt", "tilt_component", "sweep_tilt", "why_no_tilt", "check_betas"]


class TiltResult(NamedTuple):
    """Moments of the tilted optimum P_beta ∝ Q exp(U/beta); fields [K] or [].

    Where `exists` is False, E_U, E_V, E_X, KL and log_Z hold +inf: the
    normaliser diverges and no maximiser exists (see `why_no_tilt`).
    """

    exists: Array  # bool: E_Q[exp(U/beta)] < inf
    E_U: Array  # E_P[U]
    E_V: Array  # E_P[V]
    E_X: Array  # E_P[X]
    KL: Array  # KL(P_beta || Q)
    log_Z: Array  # log E_Q[exp(U/beta)]


class TiltComponent(NamedTuple):
    """The tilt of one variable, P ∝ q(y) e^{y/beta}; fields [] (+inf where it does not exist)."""

    exists: Array  # bool: E_q[e^{Y/beta}] < inf
    mean: Array  # E_P[Y]
    KL: Array  # KL(P || q)
    log_Z: Array  # log E_q[e^{Y/beta}]


def tilt_component(fam: Family, beta: Array) -> TiltComponent:
    """Tilt of one variable: P ∝ q(y) exp(y / beta).

    KL(P || q) = E_P[Y]/beta - log Z. The tilted density is log-concave for
    every light-tailed family here, so one bump, located from the kink, holds
    its mass.

    Args:
      fam: the family of the variable.
      beta: [] > 0.
    Returns:
      `TiltComponent` with [] fields (unpacks as exists, mean, KL, log_Z).
    """
    beta = as_float(beta)
    dtype = beta.dtype
    exists = 1.0 / beta < fam.mgf_sup
    log_f = lambda y: fam.log_prob(y) + y / beta  # noqa: E731
    kink = jnp.asarray(fam.kink(), dtype)
    bump = locate_bump(log_f, jnp.stack([kink, kink]), dtype)
    m = de_moments(log_f, jnp.concatenate([kink[None], bump.points()]), fam.support_lower(), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    mask = lambda a: jnp.where(exists, a, inf)  # noqa: E731
    return TiltComponent(exists, mask(m.mean), mask(m.mean / beta - m.log_Z), mask(m.log_Z))


def tilt(error: Family, utility: Family, beta: Array) -> TiltResult:
    """The KL-penalised optimum for U = X + V with X ~ error, V ~ utility independent.

    P_beta ∝ Q exp(U / beta) maximises E_P[U] - beta KL(P || Q) (Theorem 4).

    Args:
      error: family of X.
      utility: family of V.
      beta: [] KL coefficient, > 0.
    Returns:
      `TiltResult` with [] fields.
    """
    ex, mx, kx, zx = tilt_component(error, beta)
    ev, mv, kv, zv = tilt_component(utility, beta)
    exists = ex & ev
    inf = jnp.asarray(jnp.inf, mx.dtype)
    mask = lambda a: jnp.where(exists, a, inf)  # noqa: E731
    return TiltResult(exists, mask(mx + mv), mask(mv), mask(mx), mask(kx + kv), mask(zx + zv))


sweep_tilt = jax.jit(jax.vmap(tilt, in_axes=(None, None, 0)))
"""Jitted entry point: `sweep_tilt(error, utility, betas [K]) -> TiltResult` of [K].

Families are pytrees, so changing the betas or the family parameters does not
retrace; changing a family's name does.
"""


def check_betas(betas) -> np.ndarray:
    """Validate a sweep of KL coefficients; returns them as a 1-D float array."""
    b = np.atleast_1d(np.asarray(betas, dtype=float))
    if b.ndim != 1 or b.size == 0:
        raise ValueError("betas must be a non-empty 1-D array")
    bad = b[~(np.isfinite(b) & (b > 0))]
    if bad.size:
        raise ValueError(f"beta must be finite and > 0, got {bad[0]:g}")
    return b


def why_no_tilt(error: Family | str, utility: Family | str, beta: float) -> str | None:
    """Why P_beta ∝ Q exp(U/beta) does not exist, or None when it does."""
    beta = float(check_betas(beta)[0])
    for spec in (error, utility):
        fam = parse(spec)
        s = float(fam.mgf_sup)
        if 1.0 / beta < s:
            continue
        if bool(fam.heavy):
            return f"E[exp(U/beta)] diverges: {spec} is heavy-tailed"
        return (f"E[exp(U/beta)] diverges at beta={beta:g}: {spec} has E[exp(sX)] < inf only for "
                f"s < {s:g}, so only beta > {1.0 / s:g} works")
    return None
