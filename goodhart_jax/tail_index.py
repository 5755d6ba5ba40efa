"""Tail-index estimators and a heavy / light / inconclusive verdict.

The tail index xi of a law with P(X > x) ~ x^(-1/xi) L(x) (xi > 0, heavy)
or, in general, of its extreme-value domain of attraction (xi = 0 for the
normal, exponential and lognormal; xi < 0 for bounded tails) is estimated
from the upper order statistics x_(0) >= x_(1) >= ... of a sample:

* `hill` (xi > 0 only): xi_H(k) = (1/k) sum_{i<k} log x_(i) - log x_(k),
  every k at once from one sort and one cumulative sum; se = xi / sqrt(k).
* `pickands` (any xi, location and scale invariant):
  xi_P(k) = log((x_(k-1) - x_(2k-1)) / (x_(2k-1) - x_(4k-1))) / log 2.
* `moment` (any xi; Dekkers, Einmahl & de Haan 1989):
  xi_M(k) = M1 + 1 - (1/2) / (1 - M1^2 / M2),
  M_r = (1/k) sum_{i<k} (log x_(i) - log x_(k))^r.
* `double_bootstrap_k`: Danielsson, de Haan, Peng & de Vries (2001) choice of
  k for the Hill estimator.
* Peaks over threshold: `goodhart_jax.gpd` (maximum likelihood and NUTS).

`diagnose` runs them all on one sample and `verdict_from` turns the evidence
into a verdict. Data-dependent sizes (which values are positive, the number of
exceedances) are decided on the host; the estimators themselves are jittable.

Precision: the host-side entry points (`curves`, `mle_curve`,
`fit_excesses_mle`, `diagnose`, `place_values`) always compute in float64
(under `jax.enable_x64`, whatever the caller's setting; float32 input is
widened exactly) and return NumPy arrays. All but `fit_excesses_mle` also
first scale the sample by the power of two that brings its largest magnitude
into [0.5, 1): exact, and every estimate of xi is scale invariant (the
threshold and the GPD scale are scaled back). So rewards of any
magnitude float64 holds (1e300, 1e-300, subnormals) are analysed as well as
rewards near 1; float32 would overflow past 3.4e38, flush values below
1.2e-38, and merge values closer than 6e-8 relative to each other; float64
alone would flush subnormals (XLA) and overflow sums near 1.8e308. Values more
than 2^1022 (1e308) times smaller than the largest magnitude still flush to 0.

Order statistics are 0-based and descending throughout: x_desc[0] is the max.
Glossary: N sample size, K number of k values, B bootstrap replicates.

References: Hill (1975); Pickands (1975); Dekkers, Einmahl & de Haan (1989);
Danielsson et al. (2001); Kwa, Thomas & Garriga-Alonso (2024), Section 4 and
Figures 1-2 (the Hill plot with standard errors xi / sqrt(k)).
"""
from __future__ import annotations

import functools
import math
from statistics import NormalDist
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from goodhart_jax import gpd
from goodhart_jax.io import load_array

__all__ = [
    "TailInputError",
    "TailCurve",
    "check_sample",
    "load_sample",
    "mean_sd",
    "preprocess",
    "MIN_EXCEED",
    "check_tail",
    "PAPER_K_EXPONENTS",
    "paper_k_range",
    "hill_k_values",
    "hill",
    "pickands",
    "moment",
    "DoubleBootstrap",
    "double_bootstrap_k",
    "exceedances",
    "gpd_mle_curve",
    "mle_curve",
    "curves",
    "fit_excesses_mle",
    "Evidence",
    "Verdict",
    "vote",
    "verdict_from",
    "Diagnosis",
    "mle_problem",
    "hill_problem",
    "two_sided_z",
    "diagnose",
    "summary",
    "place_values",
]

MIN_SAMPLES = 100  # fewer values say nothing useful about a tail
MIN_EXCEED = 10  # fewest excesses (not all equal) a POT GPD fit is run on


class TailInputError(ValueError):
    """The sample cannot be analysed (too small, non-finite, wrong shape, bad k): bad input (a CLI exits 2)."""


class TailCurve(NamedTuple):
    """An estimator evaluated at every k."""

    k: Array  # [K] number of upper order statistics used
    xi: Array  # [K] estimate (nan where undefined)
    se: Array  # [K] asymptotic standard error


# ----------------------------------------------------------------------------
# Input handling (host side).


def check_sample(x: ArrayLike, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Validate a sample: a 1-D array of at least `min_samples` finite numbers.

    Args:
      x: [N] values.
      min_samples: smallest acceptable N.
    Returns:
      [N] the values as a NumPy float array.
    Raises:
      TailInputError: with a one-line reason.
    """
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TailInputError(f"expected a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a) or a.dtype == bool:
        raise TailInputError(f"expected real numbers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise TailInputError(f"expected a 1-D array of rewards, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise TailInputError(
            f"{int(bad.sum())} non-finite value(s) (NaN or inf) in the data, first at index {int(np.argmax(bad))}"
        )
    if a.shape[0] < min_samples:
        raise TailInputError(f"too few samples: {a.shape[0]} < {min_samples}")
    return a.astype(np.float64 if a.dtype == np.float64 else np.float32)


def load_sample(path: str, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """`check_sample` of the array in a .npy or text file (`io.load_array`).

    Args:
      path: a .npy or text file of numbers.
      min_samples: the fewest values accepted.
    Returns:
      [N] the values (float64 if stored so, else float32).
    Raises:
      TailInputError (or io.UsageError for an unreadable file): one line naming the file.
    """
    a = load_array(path)
    try:
        return check_sample(a, min_samples)
    except TailInputError as e:
        raise TailInputError(f"{path}: {e}") from None


def _exponent(a: np.ndarray) -> int:
    """e with max |a| in [2^(e-1), 2^e) (0 for an all-zero sample): np.ldexp(a, -e) is exact and at most 1 in
    magnitude (np.ldexp, not a * 2.0**-e, which overflows for subnormal samples)."""
    top = float(np.max(np.abs(a))) if a.size else 0.0
    return math.frexp(top)[1] if top > 0 else 0


def _unscale(v, e: int):
    """v * 2^e in float64 (inf where the true value lies beyond float64), as NumPy."""
    with np.errstate(over="ignore"):
        return np.ldexp(np.asarray(v, np.float64), e)


def _in_float64(fn):
    """`fn` run under jax.enable_x64, its JAX arrays returned as NumPy (see the module docstring)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            out = fn(*args, **kwargs)
            return jax.tree.map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, out)

    return wrapped


def mean_sd(x: ArrayLike) -> tuple[float, float]:
    """Mean and standard deviation (ddof 0) of a sample, without overflow: x.std() of values past 1e154
    squares them to inf; here they are scaled by a power of two first (exact), then scaled back.

    Args:
      x: [N] finite values.
    Returns:
      (mean, sd) as floats (inf only where the true value lies beyond float64).
    """
    a = np.asarray(x, np.float64)
    e = _exponent(a)
    s = np.ldexp(a, -e)
    return float(_unscale(s.mean(), e)), float(_unscale(s.std(), e))


def preprocess(x: ArrayLike, *, demean: bool = False, positive_only: bool = False) -> np.ndarray:
    """Sort descending, optionally after demeaning and keeping positives (the paper's Hill recipe).

    Args:
      x: [N] finite values.
      demean: subtract the sample mean first (`mean_sd`: no overflow for huge values).
      positive_only: keep only values > 0 (after demeaning).
    Returns:
      [M] NumPy values in descending order, in x's float dtype (M = N unless `positive_only`). Host-side:
      M depends on the data.
    """
    a = np.asarray(x)
    a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
    if demean:
        a = a - a.dtype.type(mean_sd(a)[0])
    a = np.sort(a)[::-1]
    if positive_only:
        a = a[a > 0]
    return a


def check_tail(x: ArrayLike, tail_fraction: float = 0.1, *, max_fraction: float = 0.5,
               what: str = "tail_fraction") -> int:
    """Raise TailInputError unless a POT fit at `tail_fraction` has a tail to fit: the values above the
    threshold (the (m+1)-th largest, m = int(tail_fraction N)) are at least `MIN_EXCEED` and not all equal.

    The message says what the data lack (a constant sample; too few distinct values; too few values for this
    fraction) and, where one exists below `max_fraction`, the smallest fraction that would do.

    Args:
      x: [N] finite sample.
      tail_fraction: share of the sample in the tail.
      max_fraction: the largest fraction a caller accepts (the advice stays below it).
      what: the name of the tail fraction in messages (a CLI passes its flag).
    Returns:
      the number of excesses (values strictly above the threshold).
    """
    a = np.sort(np.asarray(x))[::-1]
    n = a.shape[0]
    if a[0] == a[-1]:
        raise TailInputError(f"all {n} values equal {a[0]:.6g}: a constant sample has no tail to fit")
    m = int(tail_fraction * n)
    above = a[:m][a[:m] > a[m]]
    if above.shape[0] >= MIN_EXCEED and above[0] > above[-1]:
        return int(above.shape[0])
    levels = np.unique(a)[::-1]  # distinct values, descending (at least two)
    # m works when a[m] lies below the MIN_EXCEED-th largest value and below the second distinct value.
    need = max(int(np.sum(a >= a[min(MIN_EXCEED, n) - 1])), int(np.sum(a >= levels[1])))
    if above.shape[0] >= MIN_EXCEED:
        problem = f"the {above.shape[0]} values above the POT threshold {a[m]:.6g} are all equal ({a[0]:.6g})"
    else:
        problem = (f"only {above.shape[0]} of {n} values lie above the POT threshold {a[m]:.6g} ({what} "
                   f"{tail_fraction:g} puts it at rank {m + 1}); a GPD fit needs {MIN_EXCEED}, not all equal")
    f = math.ceil(need / n * 1000) / 1000
    while int(f * n) < need:  # int(f * n) is how the threshold is found; f = need / n may round below need
        f = round(f + 0.001, 3)
    if need < n and f < max_fraction:
        raise TailInputError(f"{problem}: {what} {f:g} or more would give that")
    raise TailInputError(
        f"{problem}, and no {what} below {max_fraction:g} gives that: the sample has only {levels.size} distinct "
        f"values ({int(np.sum(a == a[0]))} tied at the maximum {a[0]:.6g}); a tail fit needs rewards that are "
        "not this discrete")


# Hill-plot k ranges of the authors' plot scripts (github.com/tkwa/catastrophic-goodhart,
# commit 7069bb8): np.arange(int(n ** lo), int(n ** hi)).
PAPER_K_EXPONENTS = {
    1: (0.1, 0.5),  # Figure 1, random-token rewards: plots_random_starling.py
    2: (0.1, 0.6),  # Figure 2, Llama-2-chat generations: plots_from-llama_starling.py
}


def paper_k_range(n: int, figure: int) -> np.ndarray:
    """The Hill-plot k values of the paper's Figure 1 or 2: int(n^lo) .. int(n^hi) - 1.

    (lo, hi) = (0.1, 0.5) for Figure 1 (k = 2..172 at n = 30000) and
    (0.1, 0.6) for Figure 2 (k = 2..332 at n = 16000), as in the authors'
    scripts (`PAPER_K_EXPONENTS`).

    Args:
      n: sample size before preprocessing.
      figure: 1 or 2.
    Returns:
      [K] integers.
    Raises:
      TailInputError: for any other figure.
    """
    if figure not in PAPER_K_EXPONENTS:
        raise TailInputError(f"the paper has Hill plots in figures 1 and 2 only, got figure {figure!r}")
    lo, hi = PAPER_K_EXPONENTS[figure]
    return np.arange(int(n**lo), int(n**hi))


def hill_k_values(n: int, n_pos: int, ks=(), figure: int = 1) -> np.ndarray:
    """The k of a Hill report: the requested ones, checked, or the paper's range where Hill is defined.

    Hill at k reads the k + 1 largest values of the preprocessed sample, which must all be positive.

    Args:
      n: sample size before preprocessing.
      n_pos: number of positive values of the preprocessed sample.
      ks: requested k values (empty: `paper_k_range(n, figure)`, cut to k < n_pos).
      figure: the paper's figure whose range is the default (1 or 2).
    Returns:
      [K] sorted distinct k (K = 0 possible for the default range).
    Raises:
      TailInputError: a requested k outside [1, n), or one needing a non-positive value.
    """
    if len(ks) == 0:
        r = paper_k_range(n, figure)
        return r[r < n_pos]
    for k in ks:
        if k < 1 or k >= n:
            raise TailInputError(f"k = {k} is out of range: need 1 <= k < n = {n}")
        if k >= n_pos:
            raise TailInputError(f"Hill at k = {k} needs the {k + 1} largest values positive; only {n_pos} are")
    return np.asarray(sorted(set(int(k) for k in ks)))


# ----------------------------------------------------------------------------
# Estimators on descending samples (jittable).


def _log_spacings(x_desc: Array):
    """log x_(i) for the descending sample, nan where x <= 0."""
    return jnp.where(x_desc > 0, jnp.log(jnp.where(x_desc > 0, x_desc, 1.0)), jnp.nan)


def _hill_moments(x_desc: Array):
    """M1(k), M2(k) for k = 1..N-1 from cumulative sums of logs (relative to log max)."""
    n = x_desc.shape[-1]
    logs = _log_spacings(x_desc)
    logs = logs - logs[..., :1]  # centre on the max: smaller cumulative sums, same differences
    k = jnp.arange(1, n, dtype=logs.dtype)
    c1 = jnp.cumsum(logs[..., :-1], axis=-1)
    c2 = jnp.cumsum(logs[..., :-1] ** 2, axis=-1)
    lk = logs[..., 1:]  # log x_(k)
    m1 = c1 / k - lk
    # (1/k) sum (l_i - l_k)^2 = mean(l^2) - 2 l_k mean(l) + l_k^2
    m2 = c2 / k - 2.0 * lk * c1 / k + lk * lk
    return k, m1, jnp.maximum(m2, 0.0)


def hill(x_desc: ArrayLike) -> TailCurve:
    """Hill estimator for every k: xi(k) = (1/k) sum_{i<k} log x_(i) - log x_(k).

    Only meaningful for xi > 0. Needs x_(k) > 0 (nan otherwise). No loop over
    k: one cumulative sum of the logs of the sorted sample.

    Args:
      x_desc: [..., N] sample in descending order.
    Returns:
      TailCurve with k = 1..N-1, xi and se = xi / sqrt(k), each [..., N-1].
    References: Hill (1975); Kwa et al. (2024) Figure 1.
    """
    x_desc = jnp.asarray(x_desc)
    k, m1, _ = _hill_moments(x_desc)
    return TailCurve(k=k.astype(jnp.int32), xi=m1, se=m1 / jnp.sqrt(k))


def pickands(x_desc: ArrayLike) -> TailCurve:
    """Pickands estimator xi(k) = log((x_(k-1) - x_(2k-1)) / (x_(2k-1) - x_(4k-1))) / log 2.

    Location and scale invariant; any sign of xi. Asymptotic variance
    xi^2 (2^(2 xi + 1) + 1) / (2 (2^xi - 1) log 2)^2 / k (limit 3 / (4 log^4 2) / k at xi = 0).

    Args:
      x_desc: [N] sample in descending order.
    Returns:
      TailCurve for k = 1..N // 4, each [N // 4]; nan where spacings tie.
    References: Pickands (1975); Dekkers & de Haan (1989).
    """
    x_desc = jnp.asarray(x_desc)
    n = x_desc.shape[-1]
    kmax = n // 4
    k = jnp.arange(1, kmax + 1)
    a = x_desc[k - 1] - x_desc[2 * k - 1]
    b = x_desc[2 * k - 1] - x_desc[4 * k - 1]
    ok = (a > 0) & (b > 0)
    xi = jnp.where(ok, jnp.log(jnp.where(ok, a / jnp.where(b > 0, b, 1.0), 1.0)) / math.log(2.0), jnp.nan)
    ln2 = math.log(2.0)
    small = jnp.abs(xi) < 1e-4
    xs = jnp.where(small, 1.0, xi)
    var = xs**2 * (2.0 ** (2 * xs + 1) + 1) / (2 * (2.0**xs - 1) * ln2) ** 2
    var = jnp.where(small, 3.0 / (4.0 * ln2**4), var)
    return TailCurve(k=k.astype(jnp.int32), xi=xi, se=jnp.sqrt(var / k))


def moment(x_desc: ArrayLike) -> TailCurve:
    """Moment (DEdH) estimator xi(k) = M1 + 1 - 1 / (2 (1 - M1^2 / M2)).

    Any sign of xi; needs x_(k) > 0. Asymptotic variance 1 + xi^2 for
    xi >= 0 and (1 - xi)^2 (1 - 2 xi) (1 - xi + 6 xi^2) / ((1 - 3 xi)(1 - 4 xi))
    for xi < 0, over k.

    Args:
      x_desc: [..., N] sample in descending order.
    Returns:
      TailCurve for k = 1..N-1, each [..., N-1]; xi is nan where M2 = M1^2
      (always at k = 1).
    References: Dekkers, Einmahl & de Haan (1989), Ann. Statist. 17, 1833-1855.
    """
    x_desc = jnp.asarray(x_desc)
    k, m1, m2 = _hill_moments(x_desc)
    ratio = m1 * m1 / jnp.where(m2 > 0, m2, jnp.nan)
    # M2 = M1^2 (k = 1, or tied logs) leaves 1 / (1 - M1^2 / M2) undefined: nan, not -inf.
    xi = jnp.where(ratio < 1.0, m1 + 1.0 - 0.5 / jnp.where(ratio < 1.0, 1.0 - ratio, 1.0), jnp.nan)
    xn = jnp.minimum(xi, 0.0)
    var_neg = (1 - xn) ** 2 * (1 - 2 * xn) * (1 - xn + 6 * xn**2) / ((1 - 3 * xn) * (1 - 4 * xn))
    var = jnp.where(xi >= 0, 1.0 + xi**2, var_neg)
    return TailCurve(k=k.astype(jnp.int32), xi=xi, se=jnp.sqrt(var / k))


class DoubleBootstrap(NamedTuple):
    """Danielsson et al. (2001) choice of k for the Hill estimator."""

    k: Array  # [] chosen number of upper order statistics
    k1: Array  # [] minimiser on bootstrap samples of size n1
    k2: Array  # [] minimiser on bootstrap samples of size n2
    n1: int  # first resample size, int(N^epsilon)
    n2: int  # second resample size, int(n1^2 / N)


def _mean_sq_aux(key, x_desc, size, num_boot):
    """Bootstrap mean over B of (M2(k) - 2 M1(k)^2)^2 for k = 1..size-1: [size-1]."""
    n = x_desc.shape[0]
    idx = jax.random.randint(key, (num_boot, size), 0, n)
    samples = -jnp.sort(-x_desc[idx], axis=-1)  # [B, size] descending
    _, m1, m2 = _hill_moments(samples)
    return jnp.mean((m2 - 2.0 * m1 * m1) ** 2, axis=0)


def double_bootstrap_k(
    key: Array, x_desc: ArrayLike, num_boot: int = 200, epsilon: float = 0.9
) -> DoubleBootstrap:
    """Double-bootstrap choice of k for the Hill estimator.

    The auxiliary statistic M2(k) - 2 M1(k)^2 has the Hill estimator's
    asymptotic bias structure and mean zero; its bootstrap mean square is
    minimised at k1 (resamples of size n1 = N^epsilon) and k2 (n2 = n1^2 / N);
    then k* = k1^2 / k2 * ((log k1)^2 / (2 log n1 - log k1)^2)^((log n1 - log k1) / log n1).

    Args:
      key: PRNG key.
      x_desc: [N] positive sample in descending order.
      num_boot: bootstrap replicates B for each resample size.
      epsilon: n1 = int(N^epsilon), in (1/2, 1).
    Returns:
      DoubleBootstrap with k* clipped to [2, N - 2].
    References: Danielsson, de Haan, Peng & de Vries (2001), J. Multivar. Anal. 76, 226-248.
    """
    x_desc = jnp.asarray(x_desc)
    n = x_desc.shape[0]
    n1 = int(n**epsilon)
    n2 = max(int(n1 * n1 / n), 3)
    k1_key, k2_key = jax.random.split(key)
    q1 = _mean_sq_aux(k1_key, x_desc, n1, num_boot)
    q2 = _mean_sq_aux(k2_key, x_desc, n2, num_boot)
    # k = 1 is excluded: M2 - 2 M1^2 is 0 identically there.
    k1 = jnp.argmin(jnp.where(jnp.isfinite(q1[1:]), q1[1:], jnp.inf)) + 2
    k2 = jnp.argmin(jnp.where(jnp.isfinite(q2[1:]), q2[1:], jnp.inf)) + 2
    lk1, ln1 = jnp.log(k1.astype(jnp.float32)), math.log(n1)
    factor = (lk1**2 / (2 * ln1 - lk1) ** 2) ** ((ln1 - lk1) / ln1)
    k_star = k1.astype(jnp.float32) ** 2 / k2 * factor
    k_star = jnp.clip(jnp.floor(k_star), 2, n - 2).astype(jnp.int32)
    return DoubleBootstrap(k=k_star, k1=k1, k2=k2, n1=n1, n2=n2)


def exceedances(x: ArrayLike, tail_fraction: float = 0.1):
    """Excesses over the (1 - tail_fraction) sample quantile, for a POT fit.

    The threshold is the (m+1)-th largest value with m = floor(tail_fraction N),
    so exactly the m largest values exceed it (ties aside; `check_tail` says
    whether they are enough to fit).

    Args:
      x: [N] sample.
      tail_fraction: share of the sample in the tail.
    Returns:
      (excesses [m], threshold []) as NumPy values.
    """
    a = np.sort(np.asarray(x))[::-1]
    m = int(tail_fraction * a.shape[0])
    u = a[m]
    y = a[:m] - u
    return y[y > 0], float(u)


def gpd_mle_curve(x_desc: ArrayLike, ks: ArrayLike, kmax: Optional[int] = None) -> TailCurve:
    """POT GPD maximum-likelihood shape over thresholds x_(k), for each k in `ks`.

    For each k the excesses x_(i) - x_(k), i < k, are fitted; all fits share
    one padded [K, max(ks)] array with masks and run under `vmap`.

    Args:
      x_desc: [N] sample in descending order (any sign: POT is location invariant).
      ks: [K] numbers of exceedances, each in [10, N - 1].
      kmax: static width of the padded array, >= max(ks) (default max(ks), host side).
    Returns:
      TailCurve with xi and the MLE standard errors, each [K].
    """
    x_desc = jnp.asarray(x_desc)
    if kmax is None:
        kmax = int(np.max(np.asarray(ks)))
    ks = jnp.asarray(ks)
    top = x_desc[:kmax]
    i = jnp.arange(kmax)
    mask = i[None, :] < ks[:, None]  # [K, kmax]
    excess = jnp.where(mask, top[None, :] - x_desc[ks][:, None], 0.0)
    fits = jax.vmap(gpd.fit_gpd_mle)(excess, mask)
    return TailCurve(k=ks, xi=fits.xi, se=fits.xi_se)


def _bucket(m: int) -> int:
    """Next power of two >= m: padded sizes so that jit compiles once per bucket."""
    return 1 << max(int(m) - 1, 1).bit_length()


def _pad(a: np.ndarray, size: int):
    out = np.zeros(size, dtype=np.asarray(a).dtype)
    out[: a.shape[0]] = a
    return out


@jax.jit
def _curves(x_padded):
    return hill(x_padded), moment(x_padded), pickands(x_padded)


_fit_mle = jax.jit(gpd.fit_gpd_mle)
_double_bootstrap = jax.jit(double_bootstrap_k, static_argnames=("num_boot", "epsilon"))
_gpd_mle_curve = jax.jit(gpd_mle_curve, static_argnames="kmax")


@_in_float64
def mle_curve(x_desc: ArrayLike, ks: ArrayLike) -> TailCurve:
    """`gpd_mle_curve` jitted, with the padded width max(ks) decided on the host; float64, on the sample scaled
    by a power of two (the shape and its standard error are scale invariant).

    Args:
      x_desc: [N] sample in descending order.
      ks: [K] numbers of exceedances, each in [10, N - 1].
    Returns:
      TailCurve with the GPD shape and its MLE standard error at each k, each [K] (NumPy).
    """
    ks, a = np.asarray(ks), np.asarray(x_desc, np.float64)
    return _gpd_mle_curve(jnp.asarray(np.ldexp(a, -_exponent(a))), jnp.asarray(ks), kmax=int(ks.max()))


@_in_float64
def curves(x_desc: ArrayLike):
    """Hill, moment and Pickands curves of a descending sample in float64, jitted once per padded size; on the
    sample scaled by a power of two (every curve is scale invariant).

    Args:
      x_desc: [M] descending sample.
    Returns:
      (hill [M-1], moment [M-1], pickands [M // 4]) TailCurves (NumPy).
    """
    a = np.asarray(x_desc, np.float64)
    a = np.ldexp(a, -_exponent(a))
    m = a.shape[0]
    # Zero padding sits below every value used for k <= M - 1 (Hill, moment
    # read x_(k) with k <= M - 1; Pickands reads x_(4k-1) with k <= M // 4).
    h, mo, p = _curves(jnp.asarray(_pad(a, _bucket(m + 1))))
    cut = lambda c, n: TailCurve(c.k[:n], c.xi[:n], c.se[:n])
    return cut(h, m - 1), cut(mo, m - 1), cut(p, m // 4)


@_in_float64
def fit_excesses_mle(y: ArrayLike) -> gpd.GPDFit:
    """`gpd.fit_gpd_mle` on excesses padded to a power of two (one compile per bucket), in float64.

    Args:
      y: [m] excesses.
    Returns:
      GPDFit (NumPy).
    """
    y = np.asarray(y, np.float64)
    size = _bucket(y.shape[0])
    return _fit_mle(jnp.asarray(_pad(y, size)), jnp.asarray(_pad(np.ones_like(y), size)))


# ----------------------------------------------------------------------------
# Verdict.


class Evidence(NamedTuple):
    """One estimator's reading of xi with an interval."""

    name: str
    xi: float
    lo: float
    hi: float
    k: int  # upper order statistics (or excesses) used
    vote: str  # "heavy" | "light" | "inconclusive" | "n/a"
    reason: str = ""  # why xi or its interval is missing (NaN), else ""


class Verdict(NamedTuple):
    """The call and what it rests on."""

    verdict: str  # "heavy" | "light" | "inconclusive"
    reason: str
    evidence: tuple  # of Evidence

    def text(self) -> str:
        """The call, its reason, and one line per piece of evidence (xi [lo, hi], k, vote)."""
        return "\n".join([f"verdict: {self.verdict} - {self.reason}"] + [
            f"  {e.name:>12}: xi = {e.xi:.3f} [{e.lo:.3f}, {e.hi:.3f}] (k = {e.k}, vote {e.vote})"
            for e in self.evidence])


def vote(lo: float, hi: float) -> str:
    """Sign of xi from an interval: 'heavy' if lo > 0, 'light' if hi < 0, else 'inconclusive'."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if lo > 0:
        return "heavy"
    if hi < 0:
        return "light"
    return "inconclusive"


def verdict_from(primary: Evidence, others: tuple = ()) -> Verdict:
    """Combine evidence: a definite call needs every voting estimator to agree with the primary one.

    xi > 0 (interval above 0) means a power-law tail: heavy. xi < 0 (interval
    below 0) means a tail lighter than exponential: light. An interval that
    covers 0 is the Gumbel domain, which holds light (normal, exponential) and
    heavy (lognormal) laws alike: inconclusive. Estimators whose vote is "n/a"
    (Hill, which assumes xi > 0) are reported but do not vote.

    Args:
      primary: the POT GPD shape evidence.
      others: further Evidence (the MLE beside NUTS, the moment estimator).
    Returns:
      Verdict.
    """
    evidence = (primary,) + tuple(others)
    call = primary.vote
    if call == "n/a":
        why = f" ({primary.reason})" if primary.reason else ""
        return Verdict("inconclusive", f"{primary.name}: no estimate{why}", evidence)
    describe = lambda e: f"{e.name} xi = {e.xi:.3f} [{e.lo:.3f}, {e.hi:.3f}]"
    dissent = [e for e in others if e.vote not in ("n/a", call)]
    if call != "inconclusive" and dissent:
        names = "; ".join(f"{describe(e)} says {e.vote}" for e in dissent)
        return Verdict("inconclusive", f"{describe(primary)} says {call} but {names}", evidence)
    if call == "heavy":
        reason = f"{describe(primary)} lies above 0: a power-law tail"
    elif call == "light":
        reason = f"{describe(primary)} lies below 0: a tail bounded or lighter than exponential"
    else:
        reason = f"{describe(primary)} covers 0: Gumbel domain, light (normal, exponential) and heavy (lognormal) laws both fit"
    return Verdict(call, reason, evidence)


class Diagnosis(NamedTuple):
    """Everything `diagnose` computed on one sample."""

    n: int  # sample size
    x_desc: Array  # [M] preprocessed sample, descending
    hill: TailCurve  # [M-1]
    moment: TailCurve  # [M-1]
    pickands: TailCurve  # [M // 4]
    k_star: Optional[DoubleBootstrap]  # None when too few positive values
    threshold: float  # POT threshold on the raw sample
    gpd_mle: gpd.GPDFit
    gpd_bayes: Optional[gpd.GPDPosterior]
    verdict: Verdict


def mle_problem(xi: float, se: float) -> tuple[str, str]:
    """Why a GPD MLE's shape xi, or its standard error se, cannot be reported: (xi's reason, se's reason),
    "" where it can.

    The MLE exists only for xi > -1 (Smith 1985): below, the likelihood grows without bound as the end point
    nears the largest excess, and the optimiser runs into that region on tied or piled-up excesses.
    """
    xi, se = float(xi), float(se)
    if not math.isfinite(xi):
        return ("the likelihood fit gave no finite shape",) * 2
    if xi <= -1.0:
        why = (f"the fit ran to xi = {xi:.3g} <= -1, where the GPD likelihood has no maximum (tied or "
               "piled-up excesses, e.g. discrete rewards)")
        return why, why
    if not math.isfinite(se):
        return "", "no standard error: the observed information at the optimum is not positive definite"
    return "", ""


def hill_problem(diag: "Diagnosis", k: int) -> str:
    """Why the Hill estimate at k is NaN ("" when it is not): with k below the number of positive values only
    float64's range can cause it (the scaled x_(k) flushed to 0).

    Args:
      diag: a `diagnose` result.
    """
    if np.isfinite(diag.hill.xi[k - 1]):
        return ""
    return (f"x_(k) = {diag.x_desc[k]:.3g} at k = {k} lies more than 2^1022 below the largest value "
            f"{diag.x_desc[0]:.3g}: beyond float64's range once scaled, its log is lost")


def _wald(name: str, xi: float, se: float, z: float, k: int, *, votes: bool = True, reason: str = "") -> Evidence:
    """`Evidence` of an estimate with its Wald interval xi +- z se; its vote on the interval, or "n/a"."""
    lo, hi = xi - z * se, xi + z * se
    return Evidence(name, xi, lo, hi, k, vote(lo, hi) if votes else "n/a", reason)


def two_sided_z(level: float) -> float:
    """z with P(|Z| <= z) = level for a standard normal Z (1.96 at 0.95): xi +- z se is a `level` interval."""
    return NormalDist().inv_cdf(0.5 + level / 2.0)  # float64 on the host (float32 ndtri loses 4e-6 at 0.999)


@_in_float64
def diagnose(
    key: Array,
    x: ArrayLike,
    *,
    demean: bool = False,
    positive_only: bool = False,
    tail_fraction: float = 0.1,
    level: float = 0.95,
    bayes: bool = True,
    num_warmup: int = 400,
    num_samples: int = 800,
    num_boot: int = 200,
) -> Diagnosis:
    """All estimators on one sample and the verdict.

    The POT GPD fit (on the raw sample: it is location invariant) over the top
    `tail_fraction` is the primary evidence, with the Bayesian credible interval
    when `bayes` else the Wald interval of the MLE. The moment estimator at the
    same k (on the preprocessed sample) can veto it. Hill and the double
    bootstrap k* are reported but do not vote: Hill assumes xi > 0.

    Runs in float64 on the sample scaled by a power of two (module docstring);
    the threshold, the GPD scales and `x_desc` come back in the sample's units.

    Args:
      key: PRNG key (double bootstrap and NUTS).
      x: [N] finite sample.
      demean, positive_only: preprocessing of the log-based estimators (Hill, moment).
      tail_fraction: share of the sample above the POT threshold.
      level: interval level.
      bayes: run NUTS for the GPD shape.
      num_warmup, num_samples: NUTS settings.
      num_boot: double-bootstrap replicates.
    Returns:
      Diagnosis (NumPy arrays).
    Raises:
      TailInputError: `check_sample` or `check_tail` refuses the sample.
    """
    xs = check_sample(x).astype(np.float64)
    check_tail(xs, tail_fraction)
    e = _exponent(xs)
    xs = np.ldexp(xs, -e)  # exact; every xi below is scale invariant
    n = xs.shape[0]
    boot_key, bayes_key = jax.random.split(key)
    x_desc = preprocess(xs, demean=demean, positive_only=positive_only)
    hill_curve, mom, pick = curves(x_desc)
    positives = x_desc[x_desc > 0]
    k_star = None
    if positives.shape[0] >= MIN_SAMPLES:
        k_star = _double_bootstrap(boot_key, jnp.asarray(positives), num_boot=num_boot)

    y, u = exceedances(xs, tail_fraction)
    fit = fit_excesses_mle(y)
    z = two_sided_z(level)
    xi_why, se_why = mle_problem(fit.xi, fit.xi_se)
    xi_m = math.nan if xi_why else float(fit.xi)
    se_m = math.nan if se_why else float(fit.xi_se)
    mle = _wald("GPD (MLE)", xi_m, se_m, z, int(y.shape[0]), reason=xi_why or se_why)
    post = None
    if bayes:
        post = gpd.fit_gpd_bayes(bayes_key, y, num_warmup=num_warmup, num_samples=num_samples, level=level)
        lo, hi, xi_hat = float(post.xi_lo), float(post.xi_hi), float(post.xi_mean)
        primary, others = Evidence("GPD (NUTS)", xi_hat, lo, hi, int(y.shape[0]), vote(lo, hi)), [mle]
    else:
        primary, others = mle, []
    km = int(y.shape[0])
    if km - 1 < mom.xi.shape[0] and np.isfinite(float(mom.xi[km - 1])):
        others.append(_wald("moment", float(mom.xi[km - 1]), float(mom.se[km - 1]), z, km))
    diag = Diagnosis(
        n=n,
        x_desc=_unscale(x_desc, e),
        hill=hill_curve,
        moment=mom,
        pickands=pick,
        k_star=k_star,
        threshold=float(_unscale(u, e)),
        gpd_mle=fit._replace(sigma=_unscale(fit.sigma, e), sigma_se=_unscale(fit.sigma_se, e),
                             nll=fit.nll + e * fit.n * math.log(2.0)),
        gpd_bayes=None if post is None else post._replace(sigma=_unscale(post.sigma, e)),
        verdict=None,
    )
    if k_star is not None:
        ks = int(k_star.k)
        # Hill cannot see xi <= 0, so it never votes.
        others.append(_wald("Hill at k*", float(hill_curve.xi[ks - 1]), float(hill_curve.se[ks - 1]), z, ks,
                            votes=False, reason=hill_problem(diag, ks)))
    return diag._replace(verdict=verdict_from(primary, tuple(others)))


def summary(diag: Diagnosis, level: float, paper_ks: Optional[ArrayLike] = None) -> dict:
    """The verdict and its evidence as one JSON-ready dict (non-finite numbers stay NaN; `io.json_safe` nulls them).

    Every dict holding a NaN number says why in its "reason".

    Args:
      diag: a `diagnose` result.
      level: the interval level it was run with (the MLE's Wald interval is xi +- z se at this level).
      paper_ks: [K] the paper's Hill k range (`hill_k_values`), or None when the k were chosen by hand.
    Returns:
      {"verdict", "reason", "threshold", "n_exceed", "gpd_mle": {xi, se, lo, hi, sigma, converged[, reason]},
       "gpd_bayes": {xi_mean, lo, hi, p_heavy, sigma_mean, num_divergent, r_hat[, reason]} or None,
       "hill_k_star": {k, k1, k2, xi, se[, reason]} or None,
       "hill_paper_range": {k_min, k_max, xi_at_k_max, se_at_k_max} or None (no paper_ks, or K = 0),
       "evidence": [Evidence as dicts]}.
    """
    fit, post, kstar, z = diag.gpd_mle, diag.gpd_bayes, diag.k_star, two_sided_z(level)
    xi_why, se_why = mle_problem(fit.xi, fit.xi_se)
    xi = math.nan if xi_why else float(fit.xi)
    se = math.nan if se_why else float(fit.xi_se)
    gpd_mle = dict(xi=xi, se=se, lo=xi - z * se, hi=xi + z * se,
                   sigma=math.nan if xi_why else float(fit.sigma), converged=bool(fit.converged))
    if xi_why or se_why:
        gpd_mle["reason"] = xi_why or se_why
    gpd_bayes = None
    if post is not None:
        gpd_bayes = dict(xi_mean=float(post.xi_mean), lo=float(post.xi_lo), hi=float(post.xi_hi),
                         p_heavy=float(post.p_heavy), sigma_mean=float(np.mean(post.sigma)),
                         num_divergent=int(post.num_divergent), r_hat=float(post.r_hat))
        if not math.isfinite(gpd_bayes["r_hat"]):
            gpd_bayes["reason"] = f"split R-hat needs at least 4 draws a chain, got {np.size(post.xi)}"
    ks = np.asarray([] if paper_ks is None else paper_ks, int)
    return dict(
        verdict=diag.verdict.verdict, reason=diag.verdict.reason, threshold=float(diag.threshold),
        n_exceed=int(fit.n),
        gpd_mle=gpd_mle,
        gpd_bayes=gpd_bayes,
        hill_k_star=None if kstar is None else dict(
            k=int(kstar.k), k1=int(kstar.k1), k2=int(kstar.k2), xi=float(diag.hill.xi[int(kstar.k) - 1]),
            se=float(diag.hill.se[int(kstar.k) - 1]))
        | ({"reason": why} if (why := hill_problem(diag, int(kstar.k))) else {}),
        hill_paper_range=None if ks.size == 0 else dict(
            k_min=int(ks[0]), k_max=int(ks[-1]), xi_at_k_max=float(diag.hill.xi[ks[-1] - 1]),
            se_at_k_max=float(diag.hill.se[ks[-1] - 1])),
        evidence=[e._asdict() for e in diag.verdict.evidence])


@_in_float64
def place_values(values: ArrayLike, x: ArrayLike, diag: Diagnosis) -> list[dict]:
    """Where extra values (e.g. searched rewards) fall against a sample and the POT tail fitted to it.

    In float64, in units of the sample scaled by a power of two (no overflow for huge rewards).

    Args:
      values: [V] values to place.
      x: [N] the raw sample `diag` was computed on.
      diag: its `diagnose` result.
    Returns:
      one dict per value: {"index", "value", "z" (standard scores against x), "frac_sample_above" (share of x
      at or above it), "gpd_log10_tail_prob" (log10 P(X > value) under the fitted tail; null below the
      threshold or beyond the end point, with a "reason"), "beyond_gpd_end_point", "gpd_end_point" (inf for
      xi >= 0)}; with no usable MLE shape (`mle_problem`) the GPD fields are null with a "reason".
    """
    v, x = np.asarray(values, np.float64), np.asarray(x, np.float64)
    e = _exponent(x)
    vs, xs = np.ldexp(v, -e), np.ldexp(x, -e)
    mean, sd = xs.mean(), xs.std()
    fit = diag.gpd_mle
    xi_why, _ = mle_problem(fit.xi, fit.xi_se)
    u, sigma = np.ldexp(diag.threshold, -e), np.ldexp(np.float64(fit.sigma), -e)
    tail = gpd.pot_tail(vs, u, sigma, fit.xi, int(fit.n) / x.shape[0])
    end = float(_unscale(tail.end_point, e))
    rows = []
    for i, a in enumerate(v):
        row = dict(index=i, value=float(a), z=float((vs[i] - mean) / sd), frac_sample_above=float((x >= a).mean()))
        if xi_why:
            row.update(gpd_log10_tail_prob=math.nan, beyond_gpd_end_point=None, gpd_end_point=math.nan,
                       reason=f"no GPD tail: {xi_why}")
        else:
            row.update(gpd_log10_tail_prob=float(tail.log_sf[i]) / math.log(10.0),
                       beyond_gpd_end_point=bool(tail.beyond_end[i]), gpd_end_point=end)
            why = []
            if not math.isfinite(row["gpd_log10_tail_prob"]):
                why.append("beyond the fitted end point: probability 0" if row["beyond_gpd_end_point"] else
                           f"at or below the POT threshold {diag.threshold:.6g}, where the GPD fit says nothing")
            if not math.isfinite(end):
                why.append("gpd_end_point: none, the fitted tail (xi >= 0) is unbounded")
            if why:
                row["reason"] = "; ".join(why)
        rows.append(row)
    return rows
