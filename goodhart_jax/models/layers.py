"""Pieces shared by the GPT-NeoX and Llama ports: positions, rotary, attention, norms.

Glossary: B batch, T sequence, D model, N query heads, K key/value heads,
H head dim, R rotary dims.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


def gelu_erf(x: Array) -> Array:
    """Exact GeLU as PyTorch writes it: x (1 + erf(x / sqrt 2)) / 2 (transformers' "gelu").

    `jax.nn.gelu(approximate=False)` takes the erfc form x erfc(-x / sqrt 2) / 2,
    about 2.2x slower on a CPU (XLA's erfc is an exp and a rational fit per
    branch; erf is one clamped polynomial): ~8% of a GCG step on the 14M
    model. Float32 error in units of ulp(max(|x|, 1)), measured on 4e4 points
    in [-10, 10] (tests/models/test_parity.py): 2.3 here, 1.9 for
    `torch.nn.functional.gelu` (the same formula), 1.3 for the erfc form.
    """
    return x * (1 + jax.lax.erf(x * np.asarray(np.sqrt(0.5), x.dtype))) * np.asarray(0.5, x.dtype)


ACTIVATIONS = {
    "gelu": gelu_erf,  # HF "gelu" is the erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str):
    """The activation transformers calls `name` (ACT2FN)."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise NotImplementedError(f"hidden_act {name!r} is not ported; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def positions_from_mask(mask: Array) -> Array:
    """Position ids that ignore padding: p_t = (sum_{s<=t} m_s) - 1, clipped at 0.

    With this rule a left- or right-padded sequence sees the same positions as
    the unpadded one (transformers' default `arange(T)` does not, for left
    padding). Masks are assumed contiguous (one run of ones).

    Args:
      mask: [B, T] 1 for real tokens.
    Returns:
      [B, T] int32 positions.
    """
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rotary_cos_sin(positions: Array, rotary_dims: int, theta: float) -> tuple[Array, Array]:
    """cos/sin tables of rotary embeddings, as transformers builds them.

    inv_freq_i = theta^(-2i/R) (computed in float32 like PyTorch), angles
    p * inv_freq, duplicated to R dims (the "rotate_half" convention).

    Args:
      positions: [B, T] int positions.
      rotary_dims: R, even.
      theta: rotary base.
    Returns:
      cos, sin: [B, T, R] float32.
    """
    exponents = np.arange(0, rotary_dims, 2, dtype=np.float32) / np.float32(rotary_dims)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


@functools.lru_cache(maxsize=64)
def rotary_table(length: int, rotary_dims: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """`rotary_cos_sin` of positions 0..length-1, evaluated now (by JAX on its default device), not traced.

    A constant of the program that uses it: XLA reads it instead of evaluating cos and sin in every
    fusion that consumes them (a single jitted GCG step held 30 `cosine` ops, one per rotary
    consumer; a `while` body hoists them). The same values as the traced `rotary_cos_sin` (the same
    XLA elementwise functions; bitwise on XLA CPU, tested).

    Returns:
      cos, sin: [length, R] float32, read-only.
    """
    with jax.ensure_compile_time_eval():
        cos, sin = rotary_cos_sin(jnp.arange(length, dtype=jnp.int32)[None], rotary_dims, theta)
        tables = np.array(cos)[0], np.array(sin)[0]
    for t in tables:
        t.setflags(write=False)
    return tables


def rotary_from_mask(mask: Array | np.ndarray, rotary_dims: int, theta: float) -> tuple[Array, Array]:
    """cos/sin [B, T, R] at the padding-aware positions of `mask`, read from `rotary_table`.

    A mask known while tracing (a NumPy array, or any non-tracer: the search's all-ones mask) gives
    its positions now, so the tables are program constants (broadcast over rows that share
    positions); a traced mask gathers them (`rotary_at`). Either way the same numbers as
    `rotary_cos_sin(positions_from_mask(mask))`.

    Args:
      mask: [B, T] 1 for real tokens.
      rotary_dims: R, even.
      theta: rotary base.
    Returns:
      cos, sin: [B, T, R] float32.
    """
    if isinstance(mask, jax.core.Tracer):
        return rotary_at(positions_from_mask(mask), mask.shape[-1], rotary_dims, theta)
    cos_t, sin_t = rotary_table(mask.shape[-1], rotary_dims, theta)
    with jax.ensure_compile_time_eval():  # the positions now, by the one rule
        pos = np.asarray(positions_from_mask(jnp.asarray(mask)))                                # [B, T]
    if (pos == pos[:1]).all():
        return tuple(jnp.broadcast_to(t[pos[0]], pos.shape + t.shape[1:]) for t in (cos_t, sin_t))
    return jnp.asarray(cos_t[pos]), jnp.asarray(sin_t[pos])


def rotary_at(positions: Array, length: int, rotary_dims: int, theta: float) -> tuple[Array, Array]:
    """cos/sin [..., R] at int positions [...] in 0..length-1, gathered from `rotary_table(length, ...)`.

    Args:
      positions: [...] int positions in 0..length-1.
      length: the table's length.
      rotary_dims: R, even.
      theta: rotary base.
    """
    cos_t, sin_t = rotary_table(length, rotary_dims, theta)
    return tuple(jnp.take(jnp.asarray(t), positions, axis=0, mode="clip") for t in (cos_t, sin_t))


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the first R dims of every head: x_rot cos + rotate_half(x_rot) sin.

    Args:
      x: [B, T, N, H] queries or keys.
      cos, sin: [B, T, R] with R <= H.
    Returns:
      [B, T, N, H], dims R..H passed through.
    """
    r = cos.shape[-1]
    if r == 0:
        return x
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def default_block(t: int) -> int:
    """Query rows per block of `attention` at sequence length t: T / 4 clipped to 64..256."""
    return min(256, max(64, t // 4))


def attention(q: Array, k: Array, v: Array, mask: Array, block: int | None = None) -> Array:
    """Causal softmax attention over non-padding keys, grouped-query aware.

    softmax_s(q_t . k_s / sqrt(H)) over s <= t with mask_s = 1; the softmax
    runs in float32 (as transformers does). Query head n uses key/value head
    n // (N / K). A query with no visible key (a left pad) gets a uniform
    average instead of NaN; its output is never read.

    Queries go in blocks of `block` rows (default T / 4 clipped to 64..256,
    the fastest on a 2-core CPU at T = 256, 1024 and 2048); block i
    only meets keys s < (i + 1) * block, the ones causality lets it see. This
    skips the masked upper triangle (about half the work at T = 1024) and
    keeps each block's scores in cache: on a 2-core CPU it halves the time of
    one dense [B, N, T, T] pass at T = 256, with identical results (each row's
    softmax sees the same keys; the skipped ones have weight exactly 0).

    Args:
      q: [B, T, N, H]; k, v: [B, T, K, H] with N % K == 0.
      mask: [B, T] 1 for real tokens.
      block: query rows per block (static).
    Returns:
      [B, T, N, H].
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    block = block or default_block(t)
    q = q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4) * (1.0 / math.sqrt(h))  # [B, K, G, T, H]
    # k in v's layout [B, K, S, H] (the scores contract the last axis of both): the same numbers as with
    # k as [B, K, H, S], whose transpose moved the minor axis (a strided copy fused with k's rotary):
    # a GCG step on the 14M model 1.03x scanned in the least loaded A/B (1.01-1.23x in three), this
    # function 1.1x at T = 1024 (benchmarks/README.md).
    k = k.transpose(0, 2, 1, 3)                                    # [B, K, S, H]
    v = v.transpose(0, 2, 1, 3)                                    # [B, K, S, H]
    keep = mask > 0
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)                               # this block sees keys s < stop
        scores = jnp.einsum("bkgch,bksh->bkgcs", q[:, :, :, start:stop], k[:, :, :stop])
        causal = np.arange(start, stop)[:, None] >= np.arange(stop)[None, :]
        allowed = jnp.asarray(causal)[None] & keep[:, None, :stop]  # [B, C, S]
        scores = jnp.where(allowed[:, None, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgcs,bksh->bkgch", weights, v[:, :, :stop]))
    out = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]   # [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def attention_at(q: Array, k: Array, v: Array, mask: Array, index: Array, block: int | None = None) -> Array:
    """`attention` for one query per row, the one at position index[b]: the same numbers, 1/T of the work.

    A reward head reads one position, so the last layer needs only that
    query (its keys and values still span the row). The row sees keys
    s <= index[b] with mask_s = 1, as in `attention`; a query with no
    visible key gets the uniform average over the keys of its query block,
    as `attention` gives it.

    Args:
      q: [B, 1, N, H] the queries at `index`; k, v: [B, T, K, H] with N % K == 0.
      mask: [B, T] 1 for real tokens.
      index: [B] int positions of the queries.
      block: the block size `attention` would use (default `default_block(T)`).
    Returns:
      [B, 1, N, H].
    """
    b, _, n, h = q.shape
    t, kh = k.shape[1], k.shape[2]
    block = block or default_block(t)
    q = q.reshape(b, kh, n // kh, h) * (1.0 / math.sqrt(h))                # [B, K, G, H]
    scores = jnp.einsum("bkgh,bskh->bkgs", q, k).astype(jnp.float32)      # [B, K, G, S]
    s, idx = jnp.arange(t)[None, :], index[:, None]
    allowed = (s <= idx) & (mask > 0)                                       # [B, S]
    in_block = s < jnp.minimum((idx // block + 1) * block, t)             # keys `attention`'s block holds
    fill = jnp.where(in_block, jnp.finfo(jnp.float32).min, -jnp.inf)
    scores = jnp.where(allowed[:, None, None], scores, fill[:, None, None])
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgs,bskh->bkgh", weights, v).reshape(b, 1, n, h)


class KVCache(NamedTuple):
    """Keys and values of P cached positions, every layer, for running new tokens after them.

    What `DecoderBackbone` takes as `cache` and `backbone.apply_cached` returns: the new tokens then
    attend to these keys as if the cached tokens preceded them in one causal pass (positions
    continue from the number of real cached tokens).

    Fields:
      kv: L pairs (k, v), each [B, P, K, H] (keys after rotary, as the attention layers sow them).
      mask: [B, P] 1 for real cached tokens (a padded position is never attended to).
    """

    kv: tuple
    mask: Array

    def concat(self, new: "KVCache") -> "KVCache":
        """This cache [B, P] followed by `new` [B, S] (a causal continuation): [B, P + S]."""
        kv = tuple((jnp.concatenate([k, nk.astype(k.dtype)], axis=1), jnp.concatenate([v, nv.astype(v.dtype)], axis=1))
                   for (k, v), (nk, nv) in zip(self.kv, new.kv))
        return KVCache(kv, jnp.concatenate([self.mask, new.mask.astype(self.mask.dtype)], axis=1))

    def siblings(self, new: "KVCache") -> "KVCache":
        """The caches of S siblings: row b's cache [P] followed by sibling s's own position.

        `new` [B, S] holds the siblings' keys and values (a `siblings=True` run: each sibling at
        the same position after row b). Returns [B * S, P + 1], row b * S + s.
        """
        b, p = self.mask.shape
        s = new.mask.shape[1]

        def grow(old, own):                                   # [B, P, ...], [B, S, ...] -> [B S, P + 1, ...]
            old = jnp.broadcast_to(old[:, None], (b, s) + old.shape[1:])
            return jnp.concatenate([old, own[:, :, None].astype(old.dtype)], axis=2).reshape((b * s, p + 1)
                                                                                             + old.shape[3:])

        return KVCache(tuple((grow(k, nk), grow(v, nv)) for (k, v), (nk, nv) in zip(self.kv, new.kv)),
                       grow(self.mask, new.mask))


def cached_attention(q: Array, k: Array, v: Array, cache_k: Array, cache_v: Array, cache_mask: Array,
                     mask: Array | None = None, siblings: bool = False) -> Array:
    """Attention of S new tokens to P cached keys and to the new tokens, grouped-query aware.

    The new token s of row b sees the cached keys p with cache_mask[b, p] = 1 and, among the new
    ones, s' <= s with mask[b, s'] = 1 (a causal continuation), or only itself (`siblings`: S
    alternative next tokens at the same position, e.g. every child of a prefix). softmax in float32
    over the cached keys then the new ones, in that order: the same keys, with the same weights, as
    row [cached tokens, new token(s)] gets from `attention` in one causal pass (float round-off
    apart). A query with no visible key gets a uniform average; its output is never read.

    Args:
      q: [B, S, N, H] rotated queries; k, v: [B, S, K, H] the new tokens' (k rotated), N % K == 0.
      cache_k, cache_v: [B, P, K, H]; cache_mask: [B, P].
      mask: [B, S] 1 for real new tokens (default all; unused with `siblings`).
      siblings: static.
    Returns:
      [B, S, N, H].
    """
    b, s, n, h = q.shape
    kh = k.shape[2]
    q = q.reshape(b, s, kh, n // kh, h) * (1.0 / math.sqrt(h))                           # [B, S, K, G, H]
    low = jnp.finfo(jnp.float32).min
    old = jnp.einsum("bskgh,bpkh->bkgsp", q, cache_k.astype(q.dtype)).astype(jnp.float32)  # [B, K, G, S, P]
    old = jnp.where((cache_mask > 0)[:, None, None, None, :], old, low)
    if siblings:
        own = jnp.einsum("bskgh,bskh->bkgs", q, k)[..., None].astype(jnp.float32)       # [B, K, G, S, 1]
    else:
        own = jnp.einsum("bskgh,btkh->bkgst", q, k).astype(jnp.float32)                 # [B, K, G, S, S]
        allowed = np.tril(np.ones((s, s), bool))[None]
        if mask is not None:
            allowed = allowed & (mask > 0)[:, None, :]
        own = jnp.where(jnp.asarray(allowed)[:, None, None], own, low)
    weights = jax.nn.softmax(jnp.concatenate([old, own], axis=-1), axis=-1).astype(v.dtype)
    p = cache_k.shape[1]
    out = jnp.einsum("bkgsp,bpkh->bskgh", weights[..., :p], cache_v.astype(v.dtype))
    if siblings:
        out = out + weights[..., p].transpose(0, 3, 1, 2)[..., None] * v[:, :, :, None, :]
    else:
        out = out + jnp.einsum("bkgst,btkh->bskgh", weights[..., p:], v)
    return out.reshape(b, s, n, h)


class PackedRows(NamedTuple):
    """C rows that equal one cached row before their first edit; only the tokens from there on are packed.

    Row c holds the cached row's tokens at positions t < first[c] and its
    own from first[c] on; those N_c = T - first[c] tokens are laid end to
    end in N static slots (row by row), so every dense layer runs on [1, N]
    rows instead of [C, T]. Attention puts the keys and values back on a
    [C, T] grid (the cached row's before first[c]) and runs `attention` /
    `attention_at` there: the same numbers as the rows' full pass.

    Fields:
      row: [N] int32, the row of each slot (slots past the last token repeat
        the last row's last token; nothing reads them).
      pos: [N] int32, the position of each slot.
      src: [C, T] int32, where (c, t) is read from in concat(cached [T], packed [N]).
      last: [C] int32, the slot of each row's last position T - 1.
    """

    row: Array
    pos: Array
    src: Array
    last: Array

    def grid(self, packed: Array, cached: Array) -> Array:
        """packed [1, N, ...], cached [1, T, ...] -> [C, T, ...] (each row's values at every position)."""
        return jnp.concatenate([cached[0], packed[0].astype(cached.dtype)], axis=0)[self.src]

    def queries(self, packed: Array) -> Array:
        """packed [1, N, ...] -> [C, T, ...]: the packed values on the grid (positions before first[c]: any slot)."""
        return packed[0][jnp.maximum(self.src - self.src.shape[1], 0)]

    def unpack(self, grid: Array) -> Array:
        """grid [C, T, ...] -> [1, N, ...]: each slot's value."""
        return grid[self.row, self.pos][None]


def pack_rows(first: Array, length: int, slots: int) -> tuple[PackedRows, Array]:
    """The `PackedRows` layout of rows whose first edited positions are `first`.

    Args:
      first: [C] int, first position where each row differs from the cached
        row (T when it does not; clipped to T - 1, as the last position is
        always computed).
      length: T.
      slots: N, the static number of packed slots.
    Returns:
      (PackedRows, [] int32 the slots used, sum_c (T - first[c]); the layout
      holds every token only when it is <= N).
    """
    first = jnp.minimum(first.astype(jnp.int32), length - 1)
    sizes = length - first                                          # [C] >= 1
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    n = jnp.arange(slots, dtype=jnp.int32)
    row = jnp.minimum(jnp.searchsorted(ends, n, side="right"), first.shape[0] - 1).astype(jnp.int32)
    pos = jnp.minimum(first[row] + n - starts[row], length - 1)
    t = jnp.arange(length, dtype=jnp.int32)[None]
    src = jnp.where(t < first[:, None], t, length + starts[:, None] + t - first[:, None])
    return PackedRows(row, pos, src.astype(jnp.int32), (starts + length - 1 - first).astype(jnp.int32)), ends[-1]


def take_positions(x: Array, index: Array) -> Array:
    """x [B, T, ...] at position index[b] of each row -> [B, 1, ...]."""
    return jnp.take_along_axis(x, index.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)


class RMSNorm(nn.Module):
    """LlamaRMSNorm: w * x / sqrt(mean(x^2) + eps), computed in float32."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return w * x32.astype(x.dtype)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm (weight -> scale, bias), statistics in float32."""

    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        w = self.param("scale", nn.initializers.ones, (d,), self.dtype)
        b = self.param("bias", nn.initializers.zeros, (d,), self.dtype)
        x32 = x.astype(jnp.float32)
        mu = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
        y = (x32 - mu) * jax.lax.rsqrt(var + self.eps)
        return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def embed(module: nn.Module, input_ids: Array | None, onehot: Array | None) -> Array:
    """Token embeddings by lookup, or by `onehot @ E` (differentiable in onehot; see `onehot_embed`).

    Args:
      module: the embedding module (`nn.Embed`; its `embedding` is E [V, D]).
      input_ids: [B, T] ids (used when onehot is None).
      onehot: [B, T, V] one-hot (or relaxed) tokens, or None.
    """
    if onehot is None:
        return module(input_ids)
    return onehot_embed(onehot, module.embedding)


def _onehot_ids(x: Array) -> tuple[Array, Array]:
    """(whether every row of x [..., V] holds one 1 and V - 1 zeros [], each row's index of its 1 [...]).

    Two fused passes over x: the index of each row's last non-zero (a max-reduce over a select, cheaper than
    sum(x * iota) with separate 0/1 and row-sum checks, or argmax), then every entry is 1 at that index and 0
    elsewhere (a row of zeros has no index: not one-hot).
    """
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    ids = jnp.max(jnp.where(x != 0, iota, -1), axis=-1)
    ok = jnp.all(ids >= 0) & jnp.all(jnp.where(iota == ids[..., None], x == 1, x == 0))
    return ok, ids


def _onehot_embed_value(onehot: Array, table: Array) -> Array:
    ok, ids = _onehot_ids(onehot)
    return jax.lax.cond(ok, lambda x, t: t[ids], lambda x, t: jnp.einsum("...v,vd->...d", x, t),
                        onehot.astype(table.dtype), table)


@jax.custom_vjp
def onehot_embed(onehot: Array, table: Array) -> Array:
    """onehot @ table, by a row lookup when `onehot` is exactly one-hot (the same numbers: one non-zero term).

    GCG's gradient pass differentiates the score at an exact one-hot input:
    the forward product [T, V] x [V, D] is then a lookup, and only the
    backward product d onehot = g @ table^T (the gradient GCG ranks tokens
    by) is paid; a relaxed (non-one-hot) input takes the product as before.
    Under `vmap` with a batched input the `cond` runs both branches (the
    product's cost, as before).

    Args:
      onehot: [..., V] float.
      table: [V, D] embedding matrix.
    Returns:
      [..., D] in table.dtype.
    """
    return _onehot_embed_value(onehot, table)


def _onehot_embed_fwd(onehot, table):
    return _onehot_embed_value(onehot, table), (onehot, table)


def _onehot_embed_bwd(res, g):
    onehot, table = res
    # d onehot = g @ table^T, taken as (table @ g^T)^T: the same sums with the [V, D] table as the
    # streamed left operand, not the right one a CPU GEMM packs on every call (one jitted GCG step
    # per call repacks the 50304 x 128 table each time; a scanned loop does not).
    rows = g.reshape(-1, g.shape[-1])                                              # [M, D]
    d_onehot = jnp.einsum("vd,md->vm", table, rows).T.reshape(g.shape[:-1] + table.shape[:1]).astype(onehot.dtype)
    d_table = jnp.einsum("...v,...d->vd", onehot.astype(table.dtype), g).astype(table.dtype)
    return d_onehot, d_table


onehot_embed.defvjp(_onehot_embed_fwd, _onehot_embed_bwd)


def rotary_attention(q: Array, k: Array, v: Array, mask: Array, cos: Array, sin: Array, index: Array | None = None,
                     prefix: tuple[Array, Array] | None = None, packed: PackedRows | None = None,
                     cache: tuple[Array, Array, Array] | None = None, siblings: bool = False) -> Array:
    """The attention of a decoder layer after its projections, for every path the models take.

    q [B, T, N, H] (or [B, 1, N, H] already taken at `index` [B]) is rotated here; k, v [B, T, K, H]
    arrive rotated (k) as the layer sows them. With `packed` and `prefix` (the cached row's keys and
    values [1, T, K, H]) the packed tokens attend to their rows' grids (`PackedRows`). With `cache`
    (this layer's (k [B, P, K, H], v [B, P, K, H], mask [B, P]) of a `KVCache`) the T new tokens
    attend to the cached keys and to themselves (`cached_attention`; no `index`). Returns
    [B, T, N, H], or [B', 1, N, H] at `index` (B' = C rows when packed).

    Args:
      cos, sin: the rotary tables at the T tokens' positions (`rotary_at`), [B, T, R].
      siblings: with `cache`: the T new tokens are alternatives, each attending to the cached keys and to
        itself only (`cached_attention`).
    """
    if cache is not None:
        if index is not None or packed is not None:
            raise ValueError("a KV cache takes neither index nor packed rows")
        return cached_attention(apply_rotary(q, cos, sin), k, v, cache[0], cache[1], cache[2], mask, siblings)
    if packed is not None:
        k, v = packed.grid(k, prefix[0]), packed.grid(v, prefix[1])          # [C, T, K, H]
        mask = jnp.ones(k.shape[:2], jnp.int32)
    if index is None:
        q = apply_rotary(q, cos, sin)
        return attention(q, k, v, mask) if packed is None else packed.unpack(attention(packed.queries(q), k, v, mask))
    q = apply_rotary(q, take_positions(cos, index), take_positions(sin, index))
    rows = index if packed is None else jnp.full(index.shape, k.shape[1] - 1)
    return attention_at(q, k, v, mask, rows)

