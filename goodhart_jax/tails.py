"""Tail families of error X and utility V, on numpyro distributions.

A `Family` is a pytree: its parameters are leaves (so they can be traced and
swept under `jit`/`vmap`), its name is static. Spec strings name a family and
optionally numpyro's own parameter names::

    parse("student_t:df=3")          # numpyro.distributions.StudentT(df=3)
    parse("normal:loc=0,scale=2")
    parse("pareto:alpha=2.5")        # scale defaults to 1

numpyro supplies the densities and means; this module adds what numpyro lacks
for tail work: a log tail function log P(X > x) that stays accurate far into the
tail, whether the family is heavy-tailed, the abscissa of convergence of the
moment-generating function (it decides whether a KL tilt exists), and samplers
built from exact transforms of uniforms (`variates.py`; numpyro's / jax's gamma-based Student-t
sampler is ~30x slower than NumPy on CPU; see `benchmarks/bench_sampling.py`).

A family can be shifted (`centered()` shifts it to mean 0): X = X_base + shift.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax import Array
from jax.scipy.special import betainc, gammaln

from goodhart_jax import variates
from goodhart_jax.specs import parse_spec

__all__ = ["Family", "parse", "FAMILIES"]


# ----------------------------------------------------------------------------
# Exact log tail functions log P(Z > z) of standardised variables.


_NORMAL_FAR = (26.0, 9.0)  # z beyond which `_log_sf_normal` takes the asymptotic series: float64, float32
_NORMAL_TERMS = 9


def _log_sf_normal(z):
    """log P(Z > z) = log(erfc(z / sqrt 2) / 2) (log1p(-erfc(|z| / sqrt 2) / 2) below 0), and far out (erfc nears the float's
    underflow) Laplace's asymptotic series: -z^2/2 - log(z sqrt(2 pi)) + log(sum_k
    (-1)^k (2k-1)!! / z^(2k)), 9 terms (the first omitted is < 1e-17 at z = 26 in
    float64 and < 1e-9 at z = 9 in float32). One erfc a point, where
    `log_ndtr` forms the normal cdf twice and the series besides.
    16-bit floats are evaluated in float32 and rounded back.
    """
    dtype = jnp.result_type(z, float)
    if jnp.dtype(dtype).itemsize < 4:
        return _log_sf_normal(jnp.asarray(z, jnp.float32)).astype(dtype)
    far = _NORMAL_FAR[0] if jnp.dtype(dtype).itemsize >= 8 else _NORMAL_FAR[1]
    near = z < far
    w = jnp.abs(jnp.where(near, z, 0.0)) * (1.0 / math.sqrt(2.0))
    half = 0.5 * jax.lax.erfc(w)  # P(Z > |z|)
    log_near = jnp.where(z >= 0, jnp.log(half), jnp.log1p(-half))
    zf = jnp.where(near, far, z)
    r = 1.0 / (zf * zf)
    series = jnp.ones_like(r)
    for k in range(_NORMAL_TERMS - 1, 0, -1):  # Horner: 1 - r (1 - 3 r (1 - 5 r (...)))
        series = 1.0 - (2 * k - 1) * r * series
    log_far = -0.5 * zf * zf - jnp.log(zf) - 0.5 * math.log(2.0 * math.pi) + jnp.log(series)
    return jnp.where(near, log_near, log_far)


def _log_sf_laplace(z):
    # P(Z > z) = exp(-z)/2 for z >= 0, 1 - exp(z)/2 otherwise.
    return jnp.where(z >= 0, -jnp.log(2.0) - z, jnp.log1p(-0.5 * jnp.exp(jnp.minimum(z, 0.0))))


def _log_sf_gumbel(z):
    # P(Z > z) = 1 - exp(-exp(-z)) = -expm1(-exp(-z)).
    return jnp.log(-jnp.expm1(-jnp.exp(-z)))


def _log_sf_logistic(z):
    return -jax.nn.softplus(z)


_CHUNK = 25  # terms a `lax.cond` of `_hyp_series` keeps or skips at once


def _hyp_series(ratio: Callable, y, terms: int, y_max: float | None = None):
    """sum_{n < terms} prod_{k < n} ratio(k) y^n, any shape; `ratio` of n (and of
    traced parameters, not of y).

    The coefficients c_n = prod_{k < n} ratio(k) are formed once (a cumulative
    product over [terms] and the parameters' shape), then Horner's rule in y
    costs one multiply-add a term per point, unrolled so that XLA fuses each
    stretch into one pass over y, instead of forming each term's ratio (a
    division) at every point. Linear space is safe where the callers use it:
    y <= 1/2 and the sum stays far below the float range (see
    `_log_sf_student_t`).

    With `y_max` (y <= y_max everywhere) and unbatched parameters, the terms go
    in stretches of `_CHUNK`, each behind a `lax.cond`: a stretch from n0 on is
    skipped when the whole remainder, at most c_n0 y_max^n0 / (1 - rho) with rho =
    y_max max(ratio(n0), 1) (ratio(n) is monotone in n), is below eps/16 of the sum
    (which is >= c_0 = 1): the parameters decide how many terms are summed.
    """
    dtype = jnp.result_type(y)
    n = jnp.arange(terms - 1, dtype=dtype)
    r = jax.vmap(ratio)(n)  # [terms - 1, *parameter shape]
    c = jnp.concatenate([jnp.ones_like(r[:1]), jnp.cumprod(r, axis=0)])

    def horner(lo, hi):
        def run(acc):
            for i in range(hi - 1, lo - 1, -1):  # unrolled: XLA fuses the chain
                acc = c[i] + y * acc
            return acc
        return run

    if y_max is None or c.ndim > 1:
        return horner(0, terms)(jnp.zeros(jnp.broadcast_shapes(c.shape[1:], jnp.shape(y)), dtype))
    acc = jnp.zeros(jnp.shape(y), dtype)
    tol = math.log(jnp.finfo(dtype).eps / 16)
    for lo in reversed(range(0, terms, _CHUNK)):
        run = horner(lo, min(lo + _CHUNK, terms))
        if lo == 0:
            acc = run(acc)
        else:
            rho = y_max * jnp.maximum(ratio(jnp.asarray(lo, dtype)), 1.0)
            log_bound = jnp.log(c[lo]) + lo * math.log(y_max) - jnp.log1p(-jnp.minimum(rho, 1.0))
            acc = jax.lax.cond((rho >= 1.0) | (log_bound > tol), run, lambda a: a, acc)
    return acc


_T_SERIES_MAX_DF = 20.0  # see `_log_sf_student_t`
_T_BODY_TERMS = 200


def _log_beta(a, b):
    """log B(a, b) from gammaln (jax's `betaln` is off by ~1e-8 relative at a = 24, b = 1/2)."""
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def _log_sf_student_t(z, df):
    """log P(T > z) for a standard Student-t with `df` degrees of freedom.

    P(|T| > |z|) = I_x(df/2, 1/2) with x = df / (df + z^2). Tail (x <= 1/2):
    I_x(a, b) = x^a (1-x)^b / (a B(a,b)) * sum_n (a+b)_n / (a+1)_n x^n, whose
    term ratio is below x <= 1/2 for b = 1/2 (60 terms reach 2^-60). Body (x > 1/2): I_x(a, 1/2) =
    1 - I_y(1/2, a) with y = z^2 / (df + z^2) <= 1/2, again a series (up to
    200 terms, fewer for small df: see `_hyp_series`'s `y_max`). Both are
    straight-line arithmetic, where `betainc` runs a continued fraction
    (a while loop). The body form subtracts from 1, which
    costs accuracy where P(|T| > sqrt(df)) is small: for df <= 20 it is >= 2e-4
    (rel. error <= ~1e-12); larger df take `betainc` (a `lax.cond` on df).

    Both forms have the prefactor x^a y^b / B(a, b) (over a in the tail, b in
    the body), so each point takes two logarithms (x, y), one of its own series
    (the tail's or the body's, selected first), one exp and one log1p: five
    transcendentals a point (both series are summed everywhere).
    """
    a, b = df / 2.0, 0.5
    finfo = jnp.finfo(jnp.result_type(z))
    az = jnp.abs(z)
    # Far out (df / z^2 < eps / 16) x = df / z^2 to rounding, and z^2 may overflow: log x = log df - 2 log|z|.
    huge = az > 4.0 * jnp.sqrt(df / finfo.eps)
    z2 = jnp.where(huge, 1.0, z * z)
    w = df + z2
    x, y = df / w, z2 / w                               # y = 1 - x without cancellation; y = 0 at z = 0
    log_a = jnp.log(jnp.where(huge, az, x))
    log_x = jnp.where(huge, jnp.log(df) - 2.0 * log_a, log_a)
    log_y = jnp.where(huge, 0.0, jnp.log(y))            # -inf at z = 0: the body's term is 0 there
    in_tail = log_x <= math.log(0.5)
    x_tail = jnp.where(huge, 0.0, jnp.minimum(x, 0.5))
    y_body = jnp.minimum(y, 0.5)
    s_tail = _hyp_series(lambda n: (a + b + n) / (a + 1.0 + n), x_tail, 60)
    prefactor = a * log_x + b * log_y - _log_beta(a, b)

    def series(_):
        # log I_x(a, b) in the tail; log I_y(b, a) = log(1 - I_x(a, b)) in the body.
        s_body = _hyp_series(lambda n: (a + b + n) / (b + 1.0 + n), y_body, _T_BODY_TERMS, y_max=0.5)
        return prefactor + jnp.log(jnp.where(in_tail, s_tail, s_body)) - jnp.where(in_tail, jnp.log(a), jnp.log(b))

    def with_betainc(_):
        # log I_x(a, b) everywhere: the series in the tail, betainc in the body.
        tail = prefactor + jnp.log(s_tail) - jnp.log(a)
        return jnp.where(in_tail, tail, jnp.log(betainc(a, b, jnp.clip(x, 0.5, 1.0))))

    use_series = jnp.asarray(df) <= _T_SERIES_MAX_DF
    if jnp.ndim(df) == 0:
        log_i = jax.lax.cond(use_series, series, with_betainc, None)
    else:
        log_i = jnp.where(use_series, series(None), with_betainc(None))
    # P(T > z) = I/2 for z >= 0 and 1 - I/2 below, I = P(|T| > |z|) = exp(log_i) where `direct`; in the
    # series' body log_i = log(1 - I) instead: P = (1 - e)/2 and (1 + e)/2, e = exp(log_i).
    direct = in_tail | ~use_series
    e = jnp.exp(log_i)
    upper = z >= 0
    l1p = jnp.log1p(jnp.where(direct, -0.5 * e, jnp.where(upper, -e, e)))
    return jnp.where(direct, jnp.where(upper, log_i - math.log(2.0), l1p), l1p - math.log(2.0))


# ----------------------------------------------------------------------------
# The registry.


def _pos(name):
    return (name, lambda v: v > 0, "> 0")


class _Def(NamedTuple):
    cls: Callable  # numpyro distribution class
    defaults: dict  # numpyro parameter name -> default
    checks: tuple  # (param, predicate, description)
    sample: Callable  # (key, p, shape, dtype) -> draws
    log_sf: Callable  # (p, x) -> log P(X > x)
    heavy: Callable  # p -> bool array
    mgf_sup: Callable  # p -> sup{s >= 0: E exp(sX) < inf}
    lower: Callable  # p -> lower end of the support
    kink: Callable  # p -> a point where the density is not smooth (or lower)


def _loc_scale(std_sample, std_log_sf, mgf_sup_std, heavy=False):
    return dict(
        sample=lambda key, p, shape, dtype: p["loc"] + p["scale"] * std_sample(key, shape, dtype),
        log_sf=lambda p, x: std_log_sf((x - p["loc"]) / p["scale"]),
        heavy=lambda p: jnp.asarray(heavy),
        mgf_sup=lambda p: mgf_sup_std / p["scale"],
        lower=lambda p: -jnp.inf,
        kink=lambda p: p["loc"],
    )


FAMILIES: dict[str, _Def] = {
    "normal": _Def(
        nd.Normal, {"loc": 0.0, "scale": 1.0}, (_pos("scale"),),
        **_loc_scale(variates.std_normal, _log_sf_normal, jnp.inf),
    ),
    "laplace": _Def(
        nd.Laplace, {"loc": 0.0, "scale": 1.0}, (_pos("scale"),),
        **_loc_scale(variates.std_laplace, _log_sf_laplace, 1.0),
    ),
    "gumbel": _Def(
        nd.Gumbel, {"loc": 0.0, "scale": 1.0}, (_pos("scale"),),
        **_loc_scale(variates.std_gumbel, _log_sf_gumbel, 1.0),
    ),
    "logistic": _Def(
        nd.Logistic, {"loc": 0.0, "scale": 1.0}, (_pos("scale"),),
        **_loc_scale(variates.std_logistic, _log_sf_logistic, 1.0),
    ),
    "exponential": _Def(
        nd.Exponential, {"rate": 1.0}, (_pos("rate"),),
        sample=lambda key, p, shape, dtype: variates.std_exponential(key, shape, dtype) / p["rate"],
        log_sf=lambda p, x: jnp.where(x > 0, -p["rate"] * x, 0.0),
        heavy=lambda p: jnp.asarray(False),
        mgf_sup=lambda p: p["rate"],
        lower=lambda p: jnp.zeros_like(p["rate"]),
        kink=lambda p: jnp.zeros_like(p["rate"]),
    ),
    "student_t": _Def(
        nd.StudentT, {"df": 3.0, "loc": 0.0, "scale": 1.0}, (_pos("df"), _pos("scale")),
        sample=lambda key, p, shape, dtype: p["loc"] + p["scale"] * variates.std_student_t(key, p["df"], shape, dtype),
        log_sf=lambda p, x: _log_sf_student_t((x - p["loc"]) / p["scale"], p["df"]),
        heavy=lambda p: jnp.asarray(True),
        mgf_sup=lambda p: jnp.zeros_like(p["df"]),
        lower=lambda p: -jnp.inf,
        kink=lambda p: p["loc"],
    ),
    "lognormal": _Def(
        nd.LogNormal, {"loc": 0.0, "scale": 1.0}, (_pos("scale"),),
        sample=lambda key, p, shape, dtype: jnp.exp(p["loc"] + p["scale"] * variates.std_normal(key, shape, dtype)),
        log_sf=lambda p, x: jnp.where(
            x > 0, _log_sf_normal((jnp.log(jnp.where(x > 0, x, 1.0)) - p["loc"]) / p["scale"]), 0.0
        ),
        heavy=lambda p: jnp.asarray(True),
        mgf_sup=lambda p: jnp.zeros_like(p["scale"]),
        lower=lambda p: jnp.zeros_like(p["scale"]),
        kink=lambda p: jnp.zeros_like(p["scale"]),
    ),
    "pareto": _Def(
        nd.Pareto, {"scale": 1.0, "alpha": 2.0}, (_pos("scale"), _pos("alpha")),
        sample=lambda key, p, shape, dtype: p["scale"] * jnp.exp(variates.std_exponential(key, shape, dtype) / p["alpha"]),
        log_sf=lambda p, x: jnp.where(
            x > p["scale"], p["alpha"] * (jnp.log(p["scale"]) - jnp.log(jnp.maximum(x, p["scale"]))), 0.0
        ),
        heavy=lambda p: jnp.asarray(True),
        mgf_sup=lambda p: jnp.zeros_like(p["alpha"]),
        lower=lambda p: p["scale"],
        kink=lambda p: p["scale"],
    ),
    "weibull": _Def(
        nd.Weibull, {"scale": 1.0, "concentration": 1.5}, (_pos("scale"), _pos("concentration")),
        sample=lambda key, p, shape, dtype: p["scale"]
        * variates.std_exponential(key, shape, dtype) ** (1.0 / p["concentration"]),
        log_sf=lambda p, x: jnp.where(x > 0, -(jnp.maximum(x, 0.0) / p["scale"]) ** p["concentration"], 0.0),
        heavy=lambda p: p["concentration"] < 1.0,
        mgf_sup=lambda p: jnp.where(
            p["concentration"] > 1.0, jnp.inf, jnp.where(p["concentration"] == 1.0, 1.0 / p["scale"], 0.0)
        ),
        lower=lambda p: jnp.zeros_like(p["scale"]),
        kink=lambda p: jnp.zeros_like(p["scale"]),
    ),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Family:
    """A named tail family with parameters; a pytree (params and shift traced).

    Attributes:
      name: registry key, e.g. "student_t" (static).
      params: numpyro parameter name -> value (leaves).
      shift: added to every draw (leaf); `centered()` sets it to -mean.

    Only the name is static, so a jitted function of a family retraces when the
    name changes, not when parameter values do.
    """

    name: str = dataclasses.field(metadata=dict(static=True))
    params: dict
    shift: float | Array = 0.0

    @property
    def _def(self) -> _Def:
        return FAMILIES[self.name]

    @property
    def dist(self) -> nd.Distribution:
        """The numpyro distribution of the unshifted family."""
        return self._def.cls(**self.params)

    def log_prob(self, x: Array) -> Array:
        """log density at x (-inf outside the support); any shape."""
        x = jnp.asarray(x) - self.shift
        d = self.dist
        inside = d.support(x)
        safe = jnp.where(inside, x, self._def.kink(self.params) + 1.0)  # a point inside
        return jnp.where(inside, d.log_prob(safe), -jnp.inf)

    def log_sf(self, x: Array) -> Array:
        """log P(X > x), accurate far into the tail; any shape."""
        x = jnp.asarray(x)
        return self._def.log_sf(self.params, x - self.shift)

    def sample(self, key: Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
        """Draws of shape `shape` from exact transforms of uniform variates."""
        return self._def.sample(key, self.params, tuple(shape), dtype) + self.shift

    @property
    def mean(self) -> Array:
        """E[X] (+inf when it does not exist: pareto alpha <= 1; student_t df <= 1 gives nan)."""
        return self.dist.mean + self.shift

    @property
    def heavy(self) -> Array:
        """True when exp(s x) P(X > x) -> inf for every s > 0."""
        return self._def.heavy(self.params)

    @property
    def mgf_sup(self) -> Array:
        """s* = sup{s >= 0 : E[exp(sX)] < inf}; E[exp(sX)] is finite for 0 <= s < s*.

        At s = s* it is infinite for every family here except when s* = 0.
        """
        return self._def.mgf_sup(self.params)

    def support_lower(self) -> Array:
        """Lower end of the support (-inf for the real line)."""
        return self._def.lower(self.params) + self.shift

    @property
    def real_line(self) -> bool:
        """True where the support is the whole line whatever the parameters (normal, Laplace, Gumbel, logistic,
        Student-t: known from the name, a Python bool while tracing). Each of these has a bounded density."""
        with jax.ensure_compile_time_eval():  # a constant -inf stays concrete; a traced lower end raises
            try:
                return bool(jnp.all(jnp.isneginf(self._def.lower(self.params))))
            except jax.errors.ConcretizationTypeError:
                return False

    def kink(self) -> Array:
        """A point where the density is not smooth (mode of laplace, support edge)."""
        return self._def.kink(self.params) + self.shift

    def centered(self) -> "Family":
        """The same family shifted to mean 0. Raises if the mean is not finite."""
        m = float(self.dist.mean)
        if not math.isfinite(m):
            raise ValueError(f"cannot centre {self}: its mean is not finite")
        return dataclasses.replace(self, shift=-m)

    def __str__(self) -> str:
        """The spec string, e.g. 'student_t:df=3' (non-default parameters only)."""
        d = FAMILIES[self.name].defaults
        extra = ",".join(f"{k}={float(v):g}" for k, v in self.params.items() if float(v) != d[k])
        return f"{self.name}:{extra}" if extra else self.name


def _family_param(name: str, key: str, value: str) -> float:
    """One family parameter's value: a finite number."""
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"{name}: parameter {key}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: parameter {key}={value!r} must be finite")
    return v


def parse(spec: str | Family, center: bool = False) -> Family:
    """Parse 'name' or 'name:param=value,...' into a `Family`.

    With `center=True` the family is shifted to mean 0 (`Family.centered`).

    Args:
      spec: 'name' or 'name:param=value,...' (numpyro's parameter names), or a `Family` (returned as is).
    Raises:
      ValueError: naming the family, the parameter and the valid choices (and,
        with `center`, a family whose mean is not finite).
    """
    if center:
        return parse(spec).centered()
    if isinstance(spec, Family):
        return spec
    name, params = parse_spec(spec, {n: f.defaults for n, f in FAMILIES.items()}, "family", "families",
                              _family_param)
    d = FAMILIES[name]
    for key, ok, desc in d.checks:
        if not ok(params[key]):
            raise ValueError(f"{name}: parameter {key}={params[key]:g} is invalid; it must be {desc}")
    return Family(name=name, params=params, shift=0.0)
