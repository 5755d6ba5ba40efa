"""Standard variates by exact transforms of uniforms, fast on CPU, with resolved tails.

Random words come from XLA's native Threefry bit generator
(`lax.rng_bit_generator`, `RNG_THREE_FRY`), seeded by hashing the JAX key with
`jax.random.bits`: on CPU its 32-bit words cost less than `jax.random.bits`'s
(the figures are in `benchmarks/README.md`, `benchmarks/bench_sampling.py`). Same key, same draws on a
given backend; XLA does not promise identical words across backends or
compiler versions.

Uniforms are built so that the transforms resolve the tails that matter:

* `uniform_tail` is (w + 1/2) 2^-32 for a 32-bit word w (two words in
  float64): its smallest values are 2^-33 ~ 1.2e-10 apart, so -log(U)
  (exponential, Pareto, Weibull, the Student-t radius) reaches 22.9 instead of
  the ~16 of a 24-bit uniform, whose tail is cut at probability 6e-8.
* `signed_tail`: a random sign and (0, 1/2) with the same resolution, for
  symmetric two-sided tails (Laplace, logistic).
* The normal is sqrt(2) erfinv(2U - 1) with a 24-bit U, exact and symmetric
  in float32; its tails are cut at |x| = 5.42 (probability 3e-8 per side),
  the limit of erfinv's float32 input (53-bit U and |x| <= 8.3 in float64).

All functions: `(key, shape, dtype) -> [*shape] dtype`; float32 or float64.

Under `vmap` over keys the words for each key are drawn one key after
another (`lax.map`, see `_generator`), so vmap equals a loop exactly. That is
cheap when each key draws many values (trials x 65536 in best-of-n) and slow
for a few values from each of very many keys: there, draw one [K, n] block
from a single key instead.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

_M31 = np.uint32(0x7FFFFFFF)


@functools.lru_cache(maxsize=None)
def _generator(shape: tuple[int, ...]):
    """state [4] uint32 -> words [*shape], with a vmap rule that keeps keys apart.

    JAX's own batching rule for `rng_bit_generator` draws one block from the
    *first* key of the batch, so a vmapped draw would depend on which other
    keys share the batch. Ours maps over the keys: vmap equals a loop.
    """
    @jax.custom_batching.custom_vmap
    def generate(state):
        return lax.rng_bit_generator(state, shape, jnp.uint32,
                                     algorithm=lax.RandomAlgorithm.RNG_THREE_FRY)[1]

    @generate.def_vmap
    def _rule(axis_size, in_batched, state):
        if not in_batched[0]:
            return generate(state), False
        return lax.map(generate, state), True

    return generate


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """uint32 words [*shape] from XLA's Threefry generator seeded by `key`."""
    state = jax.random.bits(key, (4,), jnp.uint32)
    return _generator(tuple(int(d) for d in shape))(state)


def _is64(dtype) -> bool:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"variates are floating point; got dtype {dtype}")
    return dtype.itemsize == 8


def _fine(hi: Array, lo: Array | None, bits_hi: int, dtype) -> Array:
    """(k + 1/2) 2^-(bits) for the integer k spelled by the words, in (0, 1]."""
    if lo is None:  # float32: k = hi, `bits_hi` bits
        return (hi.astype(dtype) + 0.5) * 2.0 ** -bits_hi
    # float64: k = hi 2^32 + lo, bits_hi + 32 bits
    return (hi.astype(dtype) + (lo.astype(dtype) + 0.5) * 2.0 ** -32) * 2.0 ** -bits_hi


def uniform_tail(key: Array, shape, dtype=jnp.float32) -> Array:
    """U(0, 1] with its smallest values resolved to 2^-33 (float32) or 2^-65 (float64).

    Near 1 the spacing is float's own (U = 1 can occur, with probability 2^-25
    in float32), so use it where small U matters: -log(U), U^(-1/alpha).

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    shape = tuple(shape)
    if _is64(dtype):
        w = random_bits(key, (2,) + shape)
        return jnp.minimum(_fine(w[0], w[1], 32, dtype), 1.0)
    return jnp.minimum(_fine(random_bits(key, shape), None, 32, dtype), 1.0)


class SignedTail(NamedTuple):
    """A random sign and a tail-resolved half-uniform; fields [*shape]."""

    sign: Array  # +-1 with probability 1/2 each
    v: Array  # U(0, 1/2], independent of the sign


def signed_tail(key: Array, shape, dtype=jnp.float32) -> SignedTail:
    """(s, V): s = +-1 with probability 1/2 each and V ~ U(0, 1/2], independent.

    V is resolved to 2^-33 (float32) near 0, so a symmetric inverse CDF
    x = s F^{-1}(V) reaches both tails equally far.

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    shape = tuple(shape)
    if _is64(dtype):
        w = random_bits(key, (2,) + shape)
        hi, lo = w[0], w[1]
    else:
        hi, lo = random_bits(key, shape), None
    sign = jnp.where((hi >> 31) == 0, 1.0, -1.0).astype(dtype)
    v = jnp.minimum(_fine(hi & _M31, lo, 32, dtype), 0.5)
    return SignedTail(sign, v)


def std_exponential(key: Array, shape, dtype=jnp.float32) -> Array:
    """Exp(1) = -log U.

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    return -jnp.log(uniform_tail(key, shape, dtype))


def std_laplace(key: Array, shape, dtype=jnp.float32) -> Array:
    """Laplace(0, 1) = s E with a random sign s and E = -log(2V), V ~ U(0, 1/2].

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    sign, v = signed_tail(key, shape, dtype)
    return -sign * jnp.log(2.0 * v)


def std_logistic(key: Array, shape, dtype=jnp.float32) -> Array:
    """Logistic(0, 1) = s log((1 - V) / V), V ~ U(0, 1/2] (the inverse CDF, folded).

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    sign, v = signed_tail(key, shape, dtype)
    return sign * (jnp.log1p(-v) - jnp.log(v))


def std_gumbel(key: Array, shape, dtype=jnp.float32) -> Array:
    """Gumbel(0, 1) = -log(-log(1 - U)): the upper tail comes from small U.

    The upper (heavier) tail reaches 22.9 in float32; the doubly-exponential
    lower tail is cut where -log(1 - U) saturates (G >= -2.8 in float32,
    probability 6e-8).

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    u = jnp.minimum(uniform_tail(key, shape, dtype), 1.0 - jnp.finfo(dtype).epsneg)
    return -jnp.log(-jnp.log1p(-u))


def std_normal(key: Array, shape, dtype=jnp.float32) -> Array:
    """N(0, 1) = sqrt(2) erfinv(2U - 1), U = (k + 1/2) 2^-24 (2^-53 in float64).

    2U - 1 is exact, so the draws are exactly symmetric; |x| <= 5.42 in
    float32 (8.29 in float64).

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    return math.sqrt(2.0) * lax.erf_inv(_symmetric_unit(key, shape, dtype))


def _symmetric_unit(key: Array, shape, dtype) -> Array:
    """2U - 1 = (2k + 1 - 2^b) 2^-b for a b-bit integer k (b = 24 or 53), exactly.

    Computed from integers: (k + 1/2) 2^-b itself would round to 1 at the top
    (float32 has no 1 - 2^-25) and send erfinv to infinity.
    """
    shape = tuple(shape)
    if _is64(dtype):
        w = random_bits(key, (2,) + shape)
        hi = (w[0] >> 11).astype(dtype) - 2.0 ** 20          # 21 bits, centred
        odd = 2.0 * w[1].astype(dtype) + 1.0                  # < 2^33
        return (hi * 2.0 ** 33 + odd) * 2.0 ** -53            # exact: an odd integer < 2^53
    k = (random_bits(key, shape) >> 8).astype(jnp.int32)      # 24 bits
    return (2 * (k - (1 << 23)) + 1).astype(dtype) * 2.0 ** -24


def std_student_t(key: Array, df: Array, shape, dtype=jnp.float32) -> Array:
    """Student-t(df) by Bailey's (1994) polar method without rejection: exact.

    For (u, v) uniform on the unit disc Bailey takes T = u sqrt(df (w^(-2/df) - 1) / w)
    with w = u^2 + v^2; since w ~ U(0, 1) and the angle theta ~ U(0, 2 pi) are
    independent, T = sqrt(df (W^(-2/df) - 1)) cos(theta). Small W gives the
    tails, so W is `uniform_tail`.

    Args:
      key: a `jax.random` key.
      shape: the output's shape.
      dtype: the float dtype (float32 or float64).
    """
    k1, k2 = jax.random.split(key)
    log_w = jnp.log(uniform_tail(k1, shape, dtype))
    theta = (2.0 * jnp.pi) * uniform_tail(k2, shape, dtype)
    return jnp.sqrt(df * jnp.expm1(-2.0 / df * log_w)) * jnp.cos(theta)
