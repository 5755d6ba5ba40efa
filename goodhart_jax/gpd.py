"""The generalised Pareto distribution (GPD) and peaks-over-threshold fits.

Pickands-Balkema-de Haan: for almost any law, the excesses Y = X - u over a
high threshold u are approximately GPD(sigma, xi),

    P(Y > y) = (1 + xi y / sigma)^(-1/xi)       (exp(-y / sigma) at xi = 0),

with support y >= 0 (and y <= sigma / |xi| when xi < 0). The shape xi is the
tail index: xi > 0 is a power-law (heavy) tail with 1/xi finite moments,
xi = 0 the Gumbel domain (normal, exponential, ... and also lognormal), xi < 0
a bounded tail.

numpyro ships no GPD, so `GeneralizedPareto` is a small numpyro Distribution;
`fit_gpd_mle` maximises the likelihood with optax L-BFGS, `fit_gpd_bayes` runs
NUTS over the shape and scale.

Both fits use the feasible parameterisation

    sigma = exp(s) + max(-xi, 0) * max(y),

so every (xi, s) in R^2 gives a finite likelihood (1 + xi y / sigma > 0 for
every observed y) and the optimiser never meets the support edge.

References: Pickands (1975); Hosking & Wallis (1987) for the moment start;
Smith (1985) for the MLE's regularity (xi > -1/2) and its existence (xi > -1).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as nd
import optax
import optax.tree_utils as otu
from jax import Array, lax
from jax.typing import ArrayLike
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

__all__ = [
    "GeneralizedPareto",
    "gpd_logpdf",
    "gpd_log_sf",
    "PotTail",
    "pot_tail",
    "GPDFit",
    "fit_gpd_mle",
    "GPDPosterior",
    "gpd_model",
    "fit_gpd_bayes",
]

_SERIES_T = 0.05  # below this |t| the power series is used for log1p(t)/t and expm1(u)/u


def _log1p_ratio(t: Array) -> Array:
    """log1p(t) / t, smooth through t = 0 (value 1) with accurate derivatives.

    Writing log(1 + xi z) / xi = z * log1p(t) / t with t = xi z removes the
    division by xi, whose float32 cancellation spoils the Hessian near xi = 0.
    """
    small = jnp.abs(t) < _SERIES_T
    ts = jnp.where(small, 1.0, t)
    # 1 - t/2 + t^2/3 - ... - t^7/8: truncation error < 0.05^8 / 9.
    series = jnp.polyval(jnp.array([-1 / 8, 1 / 7, -1 / 6, 1 / 5, -1 / 4, 1 / 3, -1 / 2, 1.0], t.dtype), t)
    return jnp.where(small, series, jnp.log1p(ts) / ts)


def _expm1_ratio(u: Array) -> Array:
    """expm1(u) / u, smooth through u = 0 (value 1)."""
    small = jnp.abs(u) < _SERIES_T
    us = jnp.where(small, 1.0, u)
    series = jnp.polyval(jnp.array([1 / 40320, 1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0], u.dtype), u)
    return jnp.where(small, series, jnp.expm1(us) / us)


def gpd_logpdf(y: ArrayLike, sigma: ArrayLike, xi: ArrayLike) -> Array:
    """log density of GPD(sigma, xi) at excess y; -inf outside the support.

    log f(y) = -log sigma - (1 + 1/xi) log(1 + xi y / sigma).

    Args:
      y: [...] excesses over the threshold.
      sigma: [...] scale, > 0 (broadcasts with y).
      xi: [...] shape (broadcasts with y).
    Returns:
      [...] log-densities.
    """
    y, sigma, xi = jnp.asarray(y), jnp.asarray(sigma), jnp.asarray(xi)
    z = y / sigma
    t = xi * z
    inside = (y >= 0) & (t > -1.0)
    # Double-where: evaluate at a safe point outside the support so gradients stay finite.
    z_safe = jnp.where(inside, z, 0.0)
    t_safe = jnp.where(inside, t, 0.0)
    logp = -jnp.log(sigma) - jnp.log1p(t_safe) - z_safe * _log1p_ratio(t_safe)
    return jnp.where(inside, logp, -jnp.inf)


def gpd_log_sf(y: ArrayLike, sigma: ArrayLike, xi: ArrayLike) -> Array:
    """log P(Y > y) for Y ~ GPD(sigma, xi): -log(1 + xi y / sigma) / xi.

    Args:
      y: [...] excesses (0 for y < 0; -inf beyond the upper end point when xi < 0).
      sigma: [...] scale, > 0.
      xi: [...] shape.
    Returns:
      [...] log tail probabilities.
    """
    y, sigma, xi = jnp.asarray(y), jnp.asarray(sigma), jnp.asarray(xi)
    yc = jnp.maximum(y, 0.0)
    z = yc / sigma
    t = xi * z
    inside = t > -1.0
    t_safe = jnp.where(inside, t, 0.0)
    z_safe = jnp.where(inside, z, 0.0)
    return jnp.where(inside, -z_safe * _log1p_ratio(t_safe), -jnp.inf)


class PotTail(NamedTuple):
    """A sample's tail beyond a peaks-over-threshold GPD fit, read at values x."""

    log_sf: Array  # [...] log P(X > x); nan at or below the threshold (the fit says nothing there)
    beyond_end: Array  # [...] bool: x lies beyond the fitted upper end point
    end_point: Array  # [] upper end point u + sigma / |xi| when xi < 0, else inf


def pot_tail(x: ArrayLike, threshold: ArrayLike, sigma: ArrayLike, xi: ArrayLike, rate: ArrayLike) -> PotTail:
    """Tail probabilities from a POT fit: P(X > x) = rate * P(Y > x - u), Y ~ GPD(sigma, xi), for x > u.

    `rate` is the share of the sample above the threshold u (m / N for m
    exceedances of N values). log P(X > x) is -inf beyond the end point.

    Args:
      x: [...] values to place against the fitted tail.
      threshold: [] the POT threshold u.
      sigma: [] fitted GPD scale, > 0.
      xi: [] fitted GPD shape.
      rate: [] P(X > u), in (0, 1].
    Returns:
      PotTail.
    References: Coles (2001), An Introduction to Statistical Modeling of Extreme
    Values, Chapter 4: P(X > x) = zeta_u [1 + xi (x - u) / sigma]^(-1/xi).
    """
    x, u, sigma, xi = jnp.asarray(x), jnp.asarray(threshold), jnp.asarray(sigma), jnp.asarray(xi)
    above = x > u
    log_sf = jnp.where(above, jnp.log(rate) + gpd_log_sf(jnp.where(above, x - u, 0.0), sigma, xi), jnp.nan)
    end = jnp.where(xi < 0, u + sigma / jnp.where(xi < 0, -xi, 1.0), jnp.inf)
    return PotTail(log_sf=log_sf, beyond_end=x > end, end_point=end)


class GeneralizedPareto(nd.Distribution):
    """GPD(loc, scale, concentration) as a numpyro distribution.

    Y = loc + E with P(E > e) = (1 + xi e / scale)^(-1/xi); xi = concentration.
    `support` is declared as [loc, inf); when xi < 0 the true support ends at
    loc + scale / |xi| and `log_prob` returns -inf beyond it.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "concentration": constraints.real,
    }
    reparametrized_params = ["loc", "scale", "concentration"]

    def __init__(self, scale, concentration, loc=0.0, *, validate_args=None):
        self.loc, self.scale, self.concentration = promote_shapes(loc, scale, concentration)
        batch_shape = lax.broadcast_shapes(
            jnp.shape(loc), jnp.shape(scale), jnp.shape(concentration)
        )
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.greater_than_eq(self.loc)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        u = jax.random.uniform(key, shape, minval=jnp.finfo(jnp.result_type(float)).tiny)
        return self.loc + self._excess_quantile_of_sf(u)

    def _excess_quantile_of_sf(self, s):
        """e with P(E > e) = s: scale * expm1(-xi log s) / xi."""
        minus_log_s = -jnp.log(s)
        return self.scale * minus_log_s * _expm1_ratio(self.concentration * minus_log_s)

    def log_prob(self, value):
        return gpd_logpdf(value - self.loc, self.scale, self.concentration)

    def cdf(self, value):
        return -jnp.expm1(gpd_log_sf(value - self.loc, self.scale, self.concentration))

    def icdf(self, q):
        return self.loc + self._excess_quantile_of_sf(1.0 - q)

    @property
    def mean(self):
        xi = self.concentration
        return jnp.where(xi < 1.0, self.loc + self.scale / (1.0 - xi), jnp.inf)

    @property
    def variance(self):
        xi = self.concentration
        v = self.scale**2 / ((1.0 - xi) ** 2 * (1.0 - 2.0 * xi))
        return jnp.where(xi < 0.5, v, jnp.inf)


# ----------------------------------------------------------------------------
# Maximum likelihood with optax.


class GPDFit(NamedTuple):
    """A maximum-likelihood GPD fit (fields [] or [K] under vmap)."""

    xi: Array  # shape estimate
    sigma: Array  # scale estimate
    xi_se: Array  # standard error of xi from the observed information
    sigma_se: Array  # standard error of sigma
    nll: Array  # negative log-likelihood (sum over excesses) at the optimum
    n: Array  # number of excesses used
    converged: Array  # bool: gradient norm below tol within max_steps


def _sigma_from(xi, s, ymax):
    return jnp.exp(s) + jax.nn.relu(-xi) * ymax


def _moment_start(y, w):
    """Method-of-moments start (Hosking & Wallis 1987), clipped to a safe range."""
    n = jnp.sum(w)
    m = jnp.sum(w * y) / n
    v = jnp.sum(w * (y - m) ** 2) / n
    ratio = m * m / jnp.maximum(v, 1e-12)
    xi0 = jnp.clip(0.5 * (1.0 - ratio), -0.45, 0.9)
    sigma0 = 0.5 * m * (ratio + 1.0)
    return xi0, sigma0


@functools.partial(jax.jit, static_argnames=("max_steps",))
def fit_gpd_mle(
    excesses: ArrayLike,
    mask: Optional[ArrayLike] = None,
    *,
    max_steps: int = 500,
    tol: float = 1e-5,
) -> GPDFit:
    """Maximum-likelihood GPD fit to excesses over a threshold, by optax L-BFGS.

    Minimises -(1/n) sum_i w_i log f(y_i; sigma, xi) over (xi, s) with
    sigma = exp(s) + max(-xi, 0) max(y), on excesses divided by their mean (the
    fit is scale-equivariant). Standard errors invert the observed information
    (the Hessian of the summed NLL in (xi, sigma)); they are asymptotically
    valid for xi > -1/2, where var(xi) ~ (1 + xi)^2 / n.

    Args:
      excesses: [M] excesses y_i >= 0 over the threshold.
      mask: [M] optional 0/1 weights (so fits over several thresholds can be
        vmapped on one padded array); default all ones.
      max_steps: most L-BFGS iterations.
      tol: stop when the gradient norm of the mean NLL falls below this.
    Returns:
      GPDFit of scalars.
    """
    y = jnp.asarray(excesses)
    y = y.astype(jnp.result_type(y.dtype, float))
    w = jnp.ones_like(y) if mask is None else jnp.asarray(mask, y.dtype)
    n = jnp.sum(w)
    scale = jnp.sum(w * y) / n
    ys = jnp.where(w > 0, y / scale, 0.0)
    ymax = jnp.max(jnp.where(w > 0, ys, 0.0))

    def nll(params):
        xi, s = params
        sigma = _sigma_from(xi, s, ymax)
        return -jnp.sum(w * gpd_logpdf(ys, sigma, xi)) / n

    xi0, sigma0 = _moment_start(ys, w)
    slack0 = jnp.maximum(sigma0 - jax.nn.relu(-xi0) * ymax, 1e-3)
    params0 = (xi0, jnp.log(slack0))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(nll)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=nll)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_steps) & (err >= tol))

    params, state = lax.while_loop(keep_going, step, (params0, opt.init(params0)))
    xi, s = params
    sigma_std = _sigma_from(xi, s, ymax)
    grad_norm = otu.tree_norm(jax.grad(nll)(params))

    def total_nll(theta):
        return -jnp.sum(w * gpd_logpdf(ys, theta[1], theta[0]))

    theta = jnp.stack([xi, sigma_std])
    hess = jax.hessian(total_nll)(theta)
    cov = jnp.linalg.inv(hess)
    var = jnp.diagonal(cov)
    se = jnp.where(var > 0, jnp.sqrt(jnp.abs(var)), jnp.nan)
    return GPDFit(
        xi=xi,
        sigma=sigma_std * scale,
        xi_se=se[0],
        sigma_se=se[1] * scale,
        nll=total_nll(theta) + n * jnp.log(scale),
        n=n,
        converged=grad_norm < 10 * tol,
    )


# ----------------------------------------------------------------------------
# Bayesian fit with numpyro.


class GPDPosterior(NamedTuple):
    """Posterior of the GPD shape and scale from NUTS."""

    xi: Array  # [S] posterior draws of the shape
    sigma: Array  # [S] posterior draws of the scale
    xi_mean: Array  # [] posterior mean of xi
    xi_lo: Array  # [] lower end of the equal-tailed credible interval
    xi_hi: Array  # [] upper end
    p_heavy: Array  # [] posterior probability that xi > 0
    num_divergent: Array  # [] NUTS divergences after warm-up
    r_hat: Array  # [] split R-hat of xi (nan with one chain and few draws)


def gpd_model(excesses: Array, xi_prior_scale: float = 1.0):
    """numpyro model: xi ~ N(0, s^2) truncated to xi > -1, log slack ~ N(0, 2^2).

    Excesses are divided by their mean first; sigma = exp(slack) + max(-xi, 0) max(y)
    keeps every draw inside the support. xi > -1 is where the likelihood is bounded.

    Args:
      excesses: [M] excesses, already divided by their mean.
      xi_prior_scale: prior standard deviation of xi.
    """
    ymax = jnp.max(excesses)
    xi = numpyro.sample("xi", nd.TruncatedNormal(0.0, xi_prior_scale, low=-1.0))
    log_slack = numpyro.sample("log_slack", nd.Normal(0.0, 2.0))
    sigma = numpyro.deterministic("sigma", _sigma_from(xi, log_slack, ymax))
    with numpyro.plate("excesses", excesses.shape[0]):
        numpyro.sample("y", GeneralizedPareto(sigma, xi), obs=excesses)


def fit_gpd_bayes(
    key: Array,
    excesses: ArrayLike,
    *,
    num_warmup: int = 400,
    num_samples: int = 800,
    num_chains: int = 1,
    level: float = 0.95,
    xi_prior_scale: float = 1.0,
) -> GPDPosterior:
    """Bayesian GPD fit with NUTS: the posterior of xi with a credible interval.

    Args:
      key: PRNG key.
      excesses: [M] excesses over the threshold, >= 0.
      num_warmup, num_samples, num_chains: NUTS settings (chains run sequentially).
      level: credible level of the equal-tailed interval.
      xi_prior_scale: prior standard deviation of xi (truncated normal at -1).
    Returns:
      GPDPosterior (sigma in the units of `excesses`).
    """
    from numpyro.diagnostics import split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    y = jnp.asarray(excesses, jnp.result_type(float))
    scale = jnp.mean(y)
    mcmc = MCMC(
        NUTS(gpd_model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(key, y / scale, xi_prior_scale=xi_prior_scale, extra_fields=("diverging",))
    draws = mcmc.get_samples(group_by_chain=True)
    xi_c = np.asarray(draws["xi"])  # [chains, S]
    r_hat = float(split_gelman_rubin(xi_c)) if xi_c.shape[1] >= 4 else float("nan")
    xi = jnp.asarray(xi_c.reshape(-1))
    sigma = jnp.asarray(np.asarray(draws["sigma"]).reshape(-1)) * scale
    alpha = (1.0 - level) / 2.0
    lo, hi = jnp.quantile(xi, jnp.array([alpha, 1.0 - alpha]))
    diverging = mcmc.get_extra_fields()["diverging"]
    return GPDPosterior(
        xi=xi,
        sigma=sigma,
        xi_mean=jnp.mean(xi),
        xi_lo=lo,
        xi_hi=hi,
        p_heavy=jnp.mean(xi > 0),
        num_divergent=jnp.sum(diverging),
        r_hat=jnp.asarray(r_hat),
    )
