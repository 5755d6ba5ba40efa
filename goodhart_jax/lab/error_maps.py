"""Misspecification maps: how the annotator error eps(x) depends on the sequence x.

The lab's annotators rate u(x) = gold(x) + eps(x) on each of the N enumerated
terminal sequences of pi0's tree (`lab.tree.LMTree`: tokens [N, L]
EOS-continued lab tokens, log_p [N] log pi0). A map gives eps [N] from a PRNG
key, the tree, a noise family F (a `goodhart_jax.tails` spec such as
"student_t:df=2") and a scale s:

* `iid` (the default): eps = s Z, Z ~ F i.i.d. per sequence, exactly
  `rewards.annotator_error` (the lab's draw before these maps, bit for bit).
  Off the training pairs it averages out: a learned proxy cannot learn it.
* `feature`: eps is a deterministic function of the tokens: a random reward
  model f (a lab decoder with the proxy's sizes, `rewards.proxy_config`,
  initialised from the key; `feature_scores`) ranks the sequences, and the
  weighted quantile transform below gives them F's pi0-quantiles. A proxy of
  the same architecture can learn it; heavy or light as F is.
* `length`: ranks by the number of real tokens (before the first EOS), ties
  broken by f: eps is non-decreasing in length (max eps of length k <= min eps
  of length k + 1), the best-known bias of real reward models, with the same
  pi0 law.
* `token`: ranks by whether the sequence contains a given token or n-gram
  (contiguous, before the first EOS; spec "token:id=3" or "token:id=3+5"),
  ties broken by f. The sequences that contain it take exactly the top pi0
  mass m = pi0(contains) of F's quantiles: eps > s F^{-1}(1 - m) on them and
  eps < s F^{-1}(1 - m) on every other sequence (a reward hack: a bonus on the
  n-gram, heavy when F is). The law of eps under pi0 is F's, as for the others;
  the hack is the coupling, not the marginal. m can be large for one token
  (token 3 is in 64% of pi0 at A = 8, L = 4): an n-gram makes a rarer hack.
* `length` under a pi0 that rarely stops early (the lab's default source,
  EOS bias -3: 96% of pi0 at full length at A = 8, L = 4) is nearly `feature`
  on the full-length sequences, the short ones at the bottom; a smaller EOS
  bias spreads the lengths.

The weighted quantile transform (`quantile_transform`): sort the sequences by
the map's ranking (ascending, ties by index), let p_(1..N) be their pi0
masses and C_(i) = p_(1) + .. + p_(i); sequence (i) gets

    eps_(i) = s F^{-1}(C_(i-1) + p_(i) / 2)        (the midpoint of its pi0 CDF step)

with the level carried as (lower, upper) = (C_(i-1) + p/2, 1 - C_(i-1) - p/2),
each summed from its own side in float64, so F^{-1} is exact far in either
tail (`quantile`). Under pi0, eps is then F discretised: for every level q in
(C_(i-1), C_(i)] the pi0 q-quantile of eps is s F^{-1}(m) with |m - q| <=
p_(i) / 2, i.e. F(pi0 q-quantile / s) is within max_x pi0(x) / 2 of q (the
tolerance the enumeration allows: a sequence is one atom of the law). A
sequence of pi0 mass 0 (float64 underflow) is given the level of the nearest
positive-mass step, so it adds no value outside theirs. The extremes are
s F^{-1}(p / 2) and s F^{-1}(1 - p / 2) for the end sequences' masses p: a
heavy F on a sequence of small mass gives a large value (Student-t(2) at
p = 1e-12: ~7e5); the lab refuses what float32 cannot carry
(`experiment.check_error`).

Public API:
  ErrorMap(name, params);  ERROR_MAPS = {name: MapDef(defaults, doc)}
  parse(spec: str | ErrorMap) -> ErrorMap   # "iid", "feature:width=64", "token:id=3+5"; ValueError naming it
  is_iid(spec) -> bool;  check(spec, vocab) -> ErrorMap   # parse, and token's ids against the vocabulary
  error(key, spec, tokens [N, L], log_p [N], family, scale, vocab=None) -> eps [N] float32   # any map
  iid(key, tokens, log_p, family, scale) -> [N]
  feature(key, tokens, log_p, family, scale, vocab=None, layers=1, width=32, heads=2) -> [N]
  length(key, tokens, log_p, family, scale, vocab=None, layers=1, width=32, heads=2) -> [N]
  token(key, tokens, log_p, family, scale, vocab=None, id=(0,), layers=1, width=32, heads=2) -> [N]
  feature_scores(key, tokens [N, L], vocab, layers=1, width=32, heads=2) -> [N]   # the random feature f
  lengths(tokens [N, L], vocab) -> [N] int;  contains(tokens [N, L], ngram) -> [N] bool
  hack_set(spec, tokens [N, L]) -> [N] bool | None   # the sequences a map favours by construction (token's n-gram)
  levels(order [N], log_p [N]) -> (lower [N], upper [N])   # float64 midpoint levels, in `order`'s rank order
  quantile_transform(order [N], log_p [N], family, scale) -> [N] float32
  quantile(family, lower [K], upper [K] | None = None) -> [K] float64   # F^{-1}; upper = 1 - lower, exact

Glossary: N terminal sequences, L depth, A vocabulary (EOS = A - 1), K levels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax import tails
from goodhart_jax.lab import lm, rewards
from goodhart_jax.roots import bisect
from goodhart_jax.specs import parse_spec

__all__ = ["ErrorMap", "MapDef", "ERROR_MAPS", "parse", "is_iid", "check", "error", "iid", "feature", "length", "token",
           "feature_scores", "lengths", "contains", "hack_set", "levels", "quantile_transform", "quantile"]


class MapDef(NamedTuple):
    """An error map's parameters with their defaults, and a one-line description (`ERROR_MAPS`' values)."""

    defaults: dict  # parameter -> default (ints; token's "id" a tuple of ints)
    doc: str  # one line


_NET = dict(layers=1, width=32, heads=2)  # the feature network's sizes: the lab proxy's (rewards.proxy_config)
ERROR_MAPS: dict[str, MapDef] = {
    "iid": MapDef({}, "eps = scale Z, Z ~ family i.i.d. per sequence (not learnable off the training pairs)"),
    "feature": MapDef(dict(_NET), "family's pi0-quantiles by the rank of a random reward-model feature"),
    "length": MapDef(dict(_NET), "family's pi0-quantiles by sequence length (ties: the random feature)"),
    "token": MapDef(dict(id=(0,), **_NET), "family's top pi0-quantiles on sequences containing the n-gram `id` "
                    "(ties: the random feature)"),
}


class ErrorMap(NamedTuple):
    """A parsed map spec: the name (a key of ERROR_MAPS) and every parameter (defaults filled in)."""

    name: str
    params: dict

    def __str__(self) -> str:
        """The spec string, non-default parameters only ("token:id=3+5")."""
        d = ERROR_MAPS[self.name].defaults
        extra = ",".join(f"{k}={'+'.join(map(str, v)) if k == 'id' else v}" for k, v in self.params.items()
                         if v != d[k])
        return f"{self.name}:{extra}" if extra else self.name


def _param(name: str, key: str, value: str):
    """One map parameter: an integer, or for `id` a "+"-joined n-gram of them."""
    return tuple(_int(name, key, v) for v in value.split("+")) if key == "id" else _int(name, key, value)


def _int(name: str, key: str, value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"error map {name}: parameter {key}={value!r} is not an integer") from None
    if v < (0 if key == "id" else 1):
        raise ValueError(f"error map {name}: parameter {key}={v} must be >= {0 if key == 'id' else 1}")
    return v


def parse(spec: str | ErrorMap) -> ErrorMap:
    """Parse "name" or "name:param=value,..." into an `ErrorMap` (see ERROR_MAPS for names and parameters).

    Parameters are integers: layers, width, heads (the random feature network; width must split into heads of
    even size) and, for `token`, id: one token or an n-gram joined by "+" ("token:id=3+5"), each >= 0 (checked
    against the vocabulary when the map is applied).

    Raises:
      ValueError: a bad spec (the message names the error map, the parameter and the valid choices).
    """
    if isinstance(spec, ErrorMap):
        return spec
    name, params = parse_spec(spec, {n: m.defaults for n, m in ERROR_MAPS.items()}, "error map", "error maps",
                              _param, prefix="error map ")
    if "width" in params and (params["width"] % params["heads"] or (params["width"] // params["heads"]) % 2):
        raise ValueError(f"error map {name}: parameter width={params['width']} must split into heads="
                         f"{params['heads']} heads of even size")
    return ErrorMap(name, params)


def is_iid(spec: str | ErrorMap) -> bool:
    """Whether the map is `iid` (it needs no tree: its eps depends on the key and N alone).

    Args:
      spec: an error map spec or `ErrorMap` (`parse`; ValueError for a bad one).
    """
    return parse(spec).name == "iid"


def check(spec: str | ErrorMap, vocab: int) -> ErrorMap:
    """`parse`, and token's ids against the vocabulary A (non-EOS: in [0, A - 2]): what can be checked before the
    tree exists.

    Args:
      spec: an error map spec or `ErrorMap`.
      vocab: A, the lab vocabulary (EOS = A - 1).
    Returns:
      the parsed `ErrorMap`.
    Raises:
      ValueError: a bad spec, or a token id outside [0, A - 2] (the message names the parameter).
    """
    m = parse(spec)
    ids = m.params.get("id", ())
    if any(not 0 <= v <= vocab - 2 for v in ids):
        raise ValueError(f"error map token: parameter id={'+'.join(map(str, ids))} must be non-EOS tokens in "
                         f"[0, {vocab - 2}] (vocab {vocab}, EOS = {vocab - 1})")
    return m


# ---------------------------------------------------------------- the family's quantile function
def _log_upper(lower, upper):
    """-log F for a level given both ways: accurate whichever side is small."""
    return np.where(lower < 0.5, -np.log(lower), -np.log1p(-upper))


def _log_lower_tail(lower, upper):
    """-log(1 - F) = -log(upper), accurate whichever side is small."""
    return np.where(lower < 0.5, -np.log1p(-lower), -np.log(upper))


_T_MAX = float(np.arcsinh(1e300))  # the bisection runs on t = asinh(x) in [0, _T_MAX]


@jax.jit
def _t_upper(log_h, df):
    """x >= 0 with log P(T > x) = log_h [K] for standard Student-t(df) (float64 under x64): bisection on
    t = asinh(x) in [0, asinh(1e300)] (200 halvings: 4e-58 in t, i.e. relative 4e-58 far out and absolute near 0,
    below float64's own spacing); +inf where the level lies beyond 1e300."""
    fam = tails.Family("student_t", dict(df=df, loc=jnp.zeros_like(df), scale=jnp.ones_like(df)), 0.0)
    t = bisect(lambda t: log_h - fam.log_sf(jnp.sinh(t)), jnp.zeros_like(log_h), jnp.full_like(log_h, _T_MAX),
               num_steps=200).root
    x = jnp.sinh(t)
    return jnp.where(fam.log_sf(x) > log_h + 1e-9 * jnp.abs(log_h), jnp.inf, x)  # unbracketed: beyond 1e300


def _t_standard(df: float, lower, upper):
    """Standard Student-t(df) quantile at (lower, upper): symmetric, the small side solved in its own tail. The levels
    are padded to a power of two (>= 1024) so that few shapes compile."""
    h = np.minimum(lower, upper)  # the tail mass beyond the quantile, <= 1/2
    k = h.shape[0]
    size = max(1024, 1 << max(k - 1, 0).bit_length())
    with jax.enable_x64(True):
        log_h = np.log(np.concatenate([h, np.full(size - k, 0.25)]))
        x = np.asarray(_t_upper(jnp.asarray(log_h, jnp.float64), jnp.float64(df)))[:k]
    return np.where(lower < 0.5, -x, x)


def _ndtri(lower, upper):
    with jax.enable_x64(True):
        lo = np.asarray(jax.scipy.special.ndtri(jnp.asarray(lower, jnp.float64)))
        up = np.asarray(jax.scipy.special.ndtri(jnp.asarray(upper, jnp.float64)))
    return np.where(lower < 0.5, lo, -up)


def quantile(family: str | tails.Family, lower, upper=None) -> np.ndarray:
    """F^{-1} of a `tails` family at levels given as lower = u and upper = 1 - u (float64 NumPy).

    Both are passed so that a level near 1 keeps its digits (upper = 1e-300 is exact; 1 - 1e-300 is 1): the side
    below 1/2 is used. Closed forms (normal and lognormal through float64 `ndtri`; Laplace, logistic, Gumbel,
    exponential, Pareto, Weibull exactly), Student-t by float64 bisection on the family's own tail function
    `Family.log_sf` (200 halvings; +-inf where no float64 bracket reaches the level). The family's shift is added.

    Args:
      family: a `tails` spec or Family.
      lower: [K] levels u in [0, 1].
      upper: [K] 1 - u (default 1 - lower, which loses digits near 1).
    Returns:
      [K] quantiles (-inf at u = 0, +inf at u = 1 for families unbounded there).
    Raises:
      ValueError: a family this function has no quantile for.
    """
    fam = tails.parse(family)
    lower = np.asarray(lower, np.float64)
    upper = 1.0 - lower if upper is None else np.asarray(upper, np.float64)
    p = {k: float(v) for k, v in fam.params.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        if fam.name == "normal":
            x = p["loc"] + p["scale"] * _ndtri(lower, upper)
        elif fam.name == "lognormal":
            x = np.exp(p["loc"] + p["scale"] * _ndtri(lower, upper))
        elif fam.name == "laplace":
            x = p["loc"] + p["scale"] * np.where(lower < 0.5, np.log(2.0 * lower), -np.log(2.0 * upper))
        elif fam.name == "logistic":
            x = p["loc"] + p["scale"] * (np.log(lower) - np.log(upper))
        elif fam.name == "gumbel":  # F(x) = exp(-exp(-z))
            x = p["loc"] - p["scale"] * np.log(_log_upper(lower, upper))
        elif fam.name == "exponential":
            x = _log_lower_tail(lower, upper) / p["rate"]
        elif fam.name == "pareto":  # 1 - F = (scale / x)^alpha
            x = p["scale"] * np.exp(_log_lower_tail(lower, upper) / p["alpha"])
        elif fam.name == "weibull":  # 1 - F = exp(-(x / scale)^k)
            x = p["scale"] * _log_lower_tail(lower, upper) ** (1.0 / p["concentration"])
        elif fam.name == "student_t":
            x = p["loc"] + p["scale"] * _t_standard(p["df"], lower, upper)
        else:
            raise ValueError(f"family {fam.name!r} has no quantile function here (error_maps.quantile)")
    return x + float(fam.shift)


# ---------------------------------------------------------------- the weighted quantile transform
def levels(order, log_p) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint levels of the pi0 CDF in rank order: (lower, upper) [N] float64 with lower[i] = C_(i-1) + p_(i)/2
    and upper[i] = (p_(i+1) + .. + p_(N)) + p_(i)/2 = 1 - lower[i], each summed from its own side.

    Args:
      order: [N] a permutation: order[i] is the sequence of rank i (ascending).
      log_p: [N] log pi0 (any normalisation; -inf: mass 0).
    Returns:
      (lower, upper), both [N] in rank order; a mass-0 step takes the nearest positive step's level.
    """
    lp = np.asarray(log_p, np.float64)[np.asarray(order)]
    if not np.any(np.isfinite(lp)):
        raise ValueError("log_p has no finite entry: pi0 puts no mass on these sequences")
    p = np.exp(lp - np.max(lp))
    p /= np.sum(p)
    lower = np.cumsum(p) - p / 2.0
    upper = np.cumsum(p[::-1])[::-1] - p / 2.0
    pos = p > 0
    if not np.all(pos):  # mass-0 steps: clip into the positive steps' range (they weigh nothing in the law)
        lower = np.clip(lower, lower[pos].min(), lower[pos].max())
        upper = np.clip(upper, upper[pos].min(), upper[pos].max())
    return lower, upper


def quantile_transform(order, log_p, family, scale: float) -> np.ndarray:
    """eps [N] float32 with eps[order[i]] = scale F^{-1}(midpoint level i) (`levels`, `quantile`): the family's
    pi0-quantiles assigned by rank (order ascending: order[-1] gets the largest value).

    Args:
      order: [N] permutation (ranks ascending).
      log_p: [N] log pi0.
      family: a `tails` spec or Family.
      scale: s > 0.
    """
    lower, upper = levels(order, log_p)
    eps = np.empty(lower.shape, np.float64)
    eps[np.asarray(order)] = scale * quantile(family, lower, upper)
    return eps.astype(np.float32)


# ---------------------------------------------------------------- features of a sequence
def _vocab(tokens, vocab) -> int:
    a = int(np.max(np.asarray(tokens))) + 1 if vocab is None else int(vocab)
    if a < 2 or int(np.max(np.asarray(tokens))) >= a or int(np.min(np.asarray(tokens))) < 0:
        raise ValueError(f"vocab={a}: tokens must lie in [0, vocab - 1] (EOS = vocab - 1) and vocab >= 2")
    return a


def feature_scores(key: Array, tokens, vocab: int, layers: int = 1, width: int = 32, heads: int = 2) -> Array:
    """The random feature f(x) [N]: a lab reward model (`rewards.rm_init` of lm.LMConfig(vocab, L, layers, width,
    heads); the defaults are the lab proxy's sizes) initialised from `key`, scoring each sequence alone.

    Args:
      key: PRNG key.
      tokens: [N, L] EOS-continued lab tokens.
      vocab: A (EOS = A - 1).
      layers, width, heads: the network's sizes.
    """
    cfg = lm.LMConfig(vocab, int(np.shape(tokens)[1]), layers=layers, width=width, heads=heads)
    params = rewards.rm_init_jit(key, cfg)
    return rewards.score_terminals(rewards.make_rm_reward(cfg), params, jnp.asarray(tokens, jnp.int32))


def lengths(tokens, vocab: int) -> np.ndarray:
    """[N] the number of real tokens of each EOS-continued sequence (those before the first EOS).

    Args:
      tokens: [N, L] EOS-continued lab tokens.
      vocab: A (EOS = A - 1).
    """
    t = np.asarray(tokens)
    return np.sum(np.cumsum(t == vocab - 1, axis=1) == 0, axis=1)


def contains(tokens, ngram) -> np.ndarray:
    """[N] bool: the sequence holds the n-gram (contiguous, in order) among its tokens; an n-gram without EOS can
    only match before the first EOS. An n-gram longer than L matches nothing.

    Args:
      tokens: [N, L] EOS-continued lab tokens.
      ngram: a sequence of token ids (ints), matched contiguously.
    """
    t, g = np.asarray(tokens), tuple(int(v) for v in ngram)
    n, depth = t.shape
    hit = np.zeros(n, bool)
    for j in range(depth - len(g) + 1):
        hit |= np.all(t[:, j:j + len(g)] == np.asarray(g), axis=1)
    return hit


def hack_set(spec: str | ErrorMap, tokens) -> np.ndarray | None:
    """The sequences a map puts on top of the error's law by construction: for `token`, those containing its
    n-gram (`contains`); None for the other maps (their ranking has no set apart). An optimiser's mass on this
    set says whether it found the hack.

    Args:
      spec: an error map spec or `ErrorMap` (`parse`).
      tokens: [N, L] EOS-continued lab tokens.
    Returns:
      [N] bool, or None.
    """
    m = parse(spec)
    return contains(tokens, m.params["id"]) if m.name == "token" else None


# ---------------------------------------------------------------- the maps
def iid(key: Array, tokens, log_p, family, scale: float) -> Array:
    """eps = scale Z [N], Z ~ family i.i.d. (`rewards.annotator_error(key, family, N, scale)`, bit for bit).

    Args:
      key: PRNG key of the draws.
      tokens: [N, L] lab tokens (unused: the signature is every map's).
      log_p: [N] log pi0 (only its length N is used).
      family: `tails` spec of the noise.
      scale: s.
    """
    return rewards.annotator_error(key, family, int(np.shape(log_p)[0]), scale)


def _ranked(score, primary=None) -> np.ndarray:
    """Ascending order by (primary, score, index)."""
    s = np.asarray(score, np.float64)
    keys = (np.arange(s.shape[0]), s) + (() if primary is None else (np.asarray(primary),))
    return np.lexsort(keys)


def feature(key: Array, tokens, log_p, family, scale: float, vocab: int | None = None, layers: int = 1,
            width: int = 32, heads: int = 2) -> np.ndarray:
    """eps [N]: the family's pi0-quantiles by the rank of the random feature f (`feature_scores(key, ...)`).

    Args:
      key: PRNG key of the feature network.
      tokens: [N, L] EOS-continued lab tokens; log_p: [N] log pi0.
      family: `tails` spec; scale: s.
      vocab: A (default: max token + 1, a full enumeration's EOS).
      layers, width, heads: the feature network's sizes.
    """
    f = feature_scores(key, tokens, _vocab(tokens, vocab), layers, width, heads)
    return quantile_transform(_ranked(f), log_p, family, scale)


def length(key: Array, tokens, log_p, family, scale: float, vocab: int | None = None, layers: int = 1,
           width: int = 32, heads: int = 2) -> np.ndarray:
    """eps [N]: the family's pi0-quantiles by (length, f): non-decreasing in the number of real tokens.

    Args:
      key: PRNG key of the feature network (the tie-breaking f).
      tokens: [N, L] EOS-continued lab tokens; log_p: [N] log pi0.
      family: `tails` spec; scale: s.
      vocab: A (default: max token + 1, a full enumeration's EOS).
      layers, width, heads: the feature network's sizes.
    """
    a = _vocab(tokens, vocab)
    f = feature_scores(key, tokens, a, layers, width, heads)
    return quantile_transform(_ranked(f, lengths(tokens, a)), log_p, family, scale)


def token(key: Array, tokens, log_p, family, scale: float, vocab: int | None = None, id=(0,), layers: int = 1,
          width: int = 32, heads: int = 2) -> np.ndarray:
    """eps [N]: the family's pi0-quantiles by (contains the n-gram `id`, f): the n-gram's sequences take the top pi0
    mass m = pi0(contains) of the law, every other sequence the rest.

    Args:
      key: PRNG key of the feature network (the tie-breaking f).
      tokens: [N, L] EOS-continued lab tokens; log_p: [N] log pi0.
      family: `tails` spec; scale: s.
      vocab: A (default: max token + 1, a full enumeration's EOS).
      id: a token or n-gram of non-EOS tokens (ints in [0, A - 2]).
      layers, width, heads: the feature network's sizes.
    Raises:
      ValueError: an id outside [0, A - 2].
    """
    a = _vocab(tokens, vocab)
    ids = tuple(int(v) for v in np.atleast_1d(id))
    check(ErrorMap("token", dict(ERROR_MAPS["token"].defaults, id=ids)), a)
    f = feature_scores(key, tokens, a, layers, width, heads)
    return quantile_transform(_ranked(f, contains(tokens, ids)), log_p, family, scale)


_MAPS = {"iid": iid, "feature": feature, "length": length, "token": token}


def error(key: Array, spec: str | ErrorMap, tokens, log_p, family, scale: float, vocab: int | None = None):
    """eps [N] of the map `spec` (`parse`) on a tree: tokens [N, L], log_p [N]; iid's is a JAX float32 array
    (`rewards.annotator_error`), the others NumPy float32.

    Args:
      key: PRNG key (iid: the draws; the others: the feature network).
      spec: an error map spec ("iid", "feature", "length", "token:id=3+5", ...).
      tokens: [N, L] EOS-continued lab tokens (unused by iid).
      log_p: [N] log pi0.
      family: `tails` spec of the noise; scale: s.
      vocab: A (default: max token + 1).
    """
    m = parse(spec)
    tails.parse(family)  # a bad family: ValueError before any work
    if m.name == "iid":
        return iid(key, tokens, log_p, family, scale)
    if np.shape(tokens)[0] != np.shape(log_p)[0]:
        raise ValueError(f"tokens [{np.shape(tokens)[0]}, L] and log_p [{np.shape(log_p)[0]}] disagree on N")
    return _MAPS[m.name](key, tokens, log_p, family, scale, vocab, **m.params)

