"""The KL-penalised optimum on a continuous return: P_beta ∝ Q exp(U / beta).

For a base law Q of U = X + V, the maximiser of E_P[U] - beta KL(P || Q) is the
exponential tilt P_beta(du) = Q(du) exp(u / beta) / Z(beta) (Theorem 4 of Kwa et
al. 2024; the Gibbs variational principle). It exists iff
Z(beta) = E_Q[exp(U / beta)] < inf: for every beta when X and V are both
Gaussian, only for beta > scale with Laplace error, and never when either is
heavy-tailed (Corollary 1: E[U] is then unbounded at any KL).

With X and V independent the tilt factorises, P_beta = P_beta^X x P_beta^V, so
E_P[U] = E[X] + E[V] under the tilted factors and KL = KL_X + KL_V. Each factor
is a one-dimensional quadrature done in log space: a coarse sinh-spaced grid
finds where the tilted density lives, a uniform grid tightens the bracket, and
composite Gauss-Legendre panels growing geometrically away from the mode
integrate it.

Glossary: K sweep points (betas).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax.tails import Family, parse

__all__ = ["TiltResult", "tilt", "tilt_component", "sweep_tilt", "why_no_tilt", "log_quadrature"]

_COARSE = 2048  # sinh-spaced points covering |y - centre| up to ~1e6
_FINE = 512  # uniform points inside the coarse bracket
_PANELS = 32  # Gauss-Legendre panels on each side of the kink
_NODES = 16  # nodes per panel
_DROP = 60.0  # the bracket keeps every point within e^-60 of the peak density

_GL_X, _GL_W = np.polynomial.legendre.leggauss(_NODES)


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


def _bracket(y: Array, l: Array) -> tuple[Array, Array]:
    """Smallest [y_i, y_j] of grid neighbours enclosing {l >= max l - _DROP}.

    Exact for unimodal l (every light-tailed family here is log-concave, and so
    is its exponential tilt).
    """
    n = y.shape[0]
    keep = l >= jnp.max(l) - _DROP
    idx = jnp.arange(n)
    i0 = jnp.min(jnp.where(keep, idx, n))
    i1 = jnp.max(jnp.where(keep, idx, -1))
    return y[jnp.maximum(i0 - 1, 0)], y[jnp.minimum(i1 + 1, n - 1)]


def log_quadrature(log_f, centre: Array, lower: Array, kink: Array, dtype=None):
    """Nodes and log-weights integrating exp(log_f) over the real line.

    Locates the mass of a unimodal density known up to a constant, then lays
    composite Gauss-Legendre panels outward from its mode, their widths growing
    geometrically (so a sharp peak and a long tail are both resolved). When
    `kink` lies within two grid steps of the mode, the panels start exactly at
    the kink instead (the density of a Laplace law is not smooth there).

    Args:
      log_f: vectorised y -> log f(y) (may be -inf outside the support).
      centre: [] a point the coarse grid is centred on.
      lower: [] lower end of the support (-inf for the real line).
      kink: [] a point where f may be non-smooth.
    Returns:
      (y, log_w): [2 * _PANELS * _NODES] nodes and log weights; the integral of
      g f is approximately sum exp(log_w + log_f(y)) g(y).
    """
    dtype = dtype or jnp.result_type(float)
    u = jnp.linspace(-14.5, 14.5, _COARSE, dtype=dtype)
    y0 = centre + jnp.sinh(u)
    a, b = _bracket(y0, log_f(y0))
    a = jnp.maximum(a, lower)
    y1 = jnp.linspace(a, b, _FINE, dtype=dtype)
    l1 = log_f(y1)
    a, b = _bracket(y1, l1)
    a = jnp.maximum(a, lower)
    h = (y1[1] - y1[0]) / 4  # the first panel's scale
    mode = jnp.clip(y1[jnp.argmax(l1)], a, b)
    split = jnp.where(jnp.abs(kink - mode) <= 2 * (y1[1] - y1[0]), jnp.clip(kink, a, b), mode)
    gx = jnp.asarray(_GL_X, dtype)
    gw = jnp.asarray(_GL_W, dtype)
    j = jnp.arange(_PANELS + 1, dtype=dtype) / _PANELS

    def panels(length):
        """Panel edges at distances length ((1+c)^j - 1)/c from the split, c = length/h."""
        c = jnp.maximum(length / h, 1e-6)
        d = length * jnp.expm1(j * jnp.log1p(c)) / c  # [P+1], 0 .. length
        half = (d[1:] - d[:-1]) / 2
        mid = (d[1:] + d[:-1]) / 2
        return (mid[:, None] + half[:, None] * gx).reshape(-1), (half[:, None] * gw).reshape(-1)

    d_hi, w_hi = panels(b - split)
    d_lo, w_lo = panels(split - a)
    y = jnp.concatenate([split - d_lo, split + d_hi])
    w = jnp.concatenate([w_lo, w_hi])
    return y, jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)


def tilt_component(fam: Family, beta: Array):
    """Tilt of one variable: P ∝ q(y) exp(y / beta).

    Args:
      fam: the family of the variable.
      beta: [] > 0.
    Returns:
      (exists, mean, kl, log_Z): [] each; +inf where the tilt does not exist.
    """
    beta = jnp.asarray(beta)
    exists = 1.0 / beta < fam.mgf_sup
    log_f = lambda y: fam.log_prob(y) + y / beta  # noqa: E731
    # Centre the coarse grid between the kink and where a Gaussian tilt would move it.
    centre = fam.kink()
    y, log_w = log_quadrature(log_f, centre, fam.support_lower(), fam.kink(), beta.dtype)
    lf = jnp.where(jnp.isfinite(y), log_f(y), -jnp.inf)
    log_Z = logsumexp(lf + log_w)
    p = jnp.exp(lf + log_w - log_Z)
    mean = jnp.sum(p * y)
    kl = jnp.sum(p * (y / beta - log_Z))
    inf = jnp.asarray(jnp.inf, beta.dtype)
    return (
        exists,
        jnp.where(exists, mean, inf),
        jnp.where(exists, kl, inf),
        jnp.where(exists, log_Z, inf),
    )


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
