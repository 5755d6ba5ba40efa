"""Self-normalised importance sampling, with mixture proposals built from `tails` families.

For draws y_s ~ q and log-weights log w_s = log p~(y_s) - log q(y_s) with p~ an
unnormalised target density, the self-normalised estimate of E_p[f] is

    E = sum_s w_s f(y_s) / sum_s w_s,

its delta-method standard error sqrt(sum_s w_s^2 (f(y_s) - E)^2) / sum_s w_s,
the effective sample size (sum w)^2 / sum w^2, and log mean_s w_s estimates
log ∫ p~ (the normaliser; exact in expectation before the log).

Proposals are `tails.Family` objects (their samplers are `variates`' exact
transforms): `stratified_mixture` draws the same number from each component
of an equal mixture and evaluates the mixture density at every draw (a
deterministic-mixture, or "defensive", proposal: the weights are bounded by C
times the smallest ratio p~/q_c of any one component).

Glossary: S draws, C mixture components, F estimated functions.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from goodhart_jax.tails import Family

__all__ = ["SNIS", "snis", "MixtureDraws", "stratified_mixture"]


class SNIS(NamedTuple):
    """A self-normalised importance-sampling estimate."""

    estimate: Array  # [] or [F] sum w f / sum w
    se: Array  # [] or [F] delta-method standard error of `estimate`
    ess: Array  # [] effective sample size (sum w)^2 / sum w^2
    log_mean_w: Array  # [] log of the mean raw weight: estimates log ∫ p~


def snis(log_w: Array, f: Array) -> SNIS:
    """Self-normalised importance-sampling estimate of E_p[f] from log-weights.

    Args:
      log_w: [S] log p~(y) - log q(y) per draw; -inf or NaN is a zero weight.
      f: [S] or [S, F] the function(s) at each draw.
    Returns:
      `SNIS` (estimate and se [] or [F]).
    """
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    f = jnp.asarray(f)
    log_sum = logsumexp(log_w)
    w = jnp.exp(log_w - log_sum)  # normalised weights
    wf = w.reshape(w.shape + (1,) * (f.ndim - 1))
    E = jnp.sum(jnp.where(wf > 0, wf * f, 0.0), axis=0)
    se = jnp.sqrt(jnp.sum(jnp.where(wf > 0, wf * wf * (f - E) ** 2, 0.0), axis=0))
    return SNIS(E, se, 1.0 / jnp.sum(w * w), log_sum - math.log(log_w.shape[0]))


class MixtureDraws(NamedTuple):
    """Draws from a mixture proposal; fields [C m]."""

    y: Array  # draws, component by component
    log_q: Array  # log of the mixture density (1/C) sum_c q_c(y) at each draw


def stratified_mixture(key: Array, components: Sequence[Family], per_component: int, dtype) -> MixtureDraws:
    """`per_component` draws from each of C families, and the equal mixture's log-density at all of them.

    Stratified (a fixed count from each component) rather than multinomial:
    the estimator is still unbiased for the equal mixture and has no variance
    from the component counts.

    Args:
      key: PRNG key.
      components: C families (traced parameters allowed).
      per_component: m draws from each (static).
      dtype: float dtype of the draws.
    Returns:
      `MixtureDraws` of [C m].
    """
    keys = jax.random.split(key, len(components))
    y = jnp.concatenate([fam.sample(k, (per_component,), dtype) for fam, k in zip(components, keys)])
    log_q = logsumexp(jnp.stack([fam.log_prob(y) for fam in components]), axis=0) - math.log(len(components))
    return MixtureDraws(y, log_q.astype(dtype))
