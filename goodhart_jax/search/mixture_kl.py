"""KL divergence of a base distribution mixed with one point (Kwa et al. 2024, Section 5).

P is Q with probability 1 - a and a fixed sequence x (base probability
q = Q(x)) with probability a. Then

    KL(P || Q) = [(1 - a) q + a] log(((1 - a) q + a) / q) + (1 - a)(1 - q) log(1 - a)

and, for q << a << 1, KL ≈ a log(a / q). The paper's worked number
(log q = -1339.70, a = 0.01) is the approximation, 13.351 nats; the exact
formula gives 13.341 nats (the second term adds (1 - a) log(1 - a) = -0.00995).

Everything is computed from log q, since q of a searched sequence underflows
even float64 (e^-1339.70 ~ 1e-582).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.scipy.special import xlogy
from jax.typing import ArrayLike


def mixture_kl(log_q: ArrayLike, alpha: ArrayLike) -> Array:
    """Exact KL(P || Q) for P = (1 - a) Q + a delta_x, in nats.

    Args:
      log_q: [...] log Q(x) of the mixed-in sequence, <= 0.
      alpha: [...] mixture weight a in [0, 1] (broadcasts against log_q).
    Returns:
      [...] KL in nats.
    """
    log_q = jnp.asarray(log_q)
    alpha = jnp.asarray(alpha, log_q.dtype if jnp.issubdtype(log_q.dtype, jnp.floating)
                        else jnp.float32)
    log_px = jnp.logaddexp(jnp.log(alpha), jnp.log1p(-alpha) + log_q)  # log P(x)
    head = jnp.exp(log_px) * (log_px - log_q)
    # (1-a)(1-q) log(1-a), with log1p: log(1 - a) of a rounded 1 - a loses
    # all accuracy for small a (relative error eps / a); 0 at a = 1.
    one_minus = 1.0 - alpha
    safe = jnp.where(alpha < 1.0, alpha, 0.0)
    tail = jnp.where(alpha < 1.0, one_minus * jnp.log1p(-safe), 0.0) * (-jnp.expm1(log_q))
    return head + tail


def mixture_kl_approx(log_q: ArrayLike, alpha: ArrayLike) -> Array:
    """First-order KL(P || Q) ≈ a log(a / q) = a (log a - log q), in nats.

    Args:
      log_q: [...] log Q(x).
      alpha: [...] mixture weight a.
    Returns:
      [...] approximate KL in nats.
    """
    return xlogy(alpha, alpha) - jnp.asarray(alpha) * jnp.asarray(log_q)
