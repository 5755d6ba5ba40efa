"""Scoring functions and `Scorer`s from loaded models; bucketed, sharded batch scoring.

The functions returned here are pure and un-jitted: `fn(params, input_ids,
mask) -> [B]`. Jit them at the boundary (`score_array` does, once per length
bucket).

Glossary: B batch, T sequence, V vocab, D model.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from goodhart_jax.models import heads, layers
from goodhart_jax.models.backbone import BackboneOutput, apply_cached, prefix_kv
from goodhart_jax.models.loading import LoadedModel
from goodhart_jax.scorer import PrefixScoring, Scorer

ScoreFn = Callable[[dict, Array, Array], Array]


def backbone(model: LoadedModel):
    """The linen backbone module of a loaded model (apply with params[model.backbone_key])."""
    return model.architecture.module(model.config, dtype=jnp.dtype(model.dtype))


def make_hidden_fn(model: LoadedModel) -> Callable[..., BackboneOutput]:
    """(params, input_ids [B, T], mask [B, T], onehot=None, index=None) -> BackboneOutput.

    With index [B], the last layer computes only position index[b] (see `DecoderBackbone`).

    Args:
      model: a loaded model.
    """
    module, key = backbone(model), model.backbone_key

    def hidden_fn(params, input_ids, mask, onehot=None, index=None, distinct=None):
        return module.apply({"params": params[key]}, input_ids, mask, onehot, index, distinct=distinct)

    return hidden_fn


def make_cached_hidden_fn(model: LoadedModel) -> Callable[..., tuple[BackboneOutput, layers.KVCache]]:
    """(params, input_ids [B, S], mask=None, cache=None, siblings=False, distinct=None) -> (BackboneOutput, KVCache).

    `backbone.apply_cached` on the model: the plain pass (cache None) or S new tokens after a cached
    prefix `layers.KVCache` [B, P], returning the new tokens' keys and values [B, S] for the next call.
    """
    module, key = backbone(model), model.backbone_key

    def cached_hidden_fn(params, input_ids, mask=None, cache=None, siblings=False, distinct=None):
        return apply_cached(module, {"params": params[key]}, input_ids, mask, cache, siblings, distinct=distinct)

    return cached_hidden_fn


def lm_kernel(model: LoadedModel, params: dict) -> Array:
    """[D, V] output matrix of a causal LM: its lm_head, or the transposed input embedding when tied.

    Args:
      model: the loaded causal LM.
      params: its parameters.
    """
    if "lm_head" in params:
        return params["lm_head"]["kernel"]
    emb = params[model.backbone_key][model.architecture.embed_name]["embedding"]
    return emb.T  # tied embeddings


def make_reward_fn(model: LoadedModel, onehot: bool = False, one_position: bool = True) -> ScoreFn:
    """Pure reward_fn(params, input_ids [B, T] | onehot [B, T, V], mask [B, T]) -> [B] float32.

    The token form also takes distinct=(ids [U], src [B, T]) with input_ids[b, t] = ids[src[b, t]]
    (`DecoderBackbone`'s speed hint: the first layer's per-token work on U rows).

    The reward head reads the final-normed hidden state at the position its
    `HeadSpec.pooling` picks (by default the last non-padding token). With
    `one_position` (default) the last layer computes only that position
    (`DecoderBackbone`'s index; the same numbers, ~1/L less work); False
    computes every position, as the PyTorch model does ("mean" pooling
    always does).
    """
    if model.reward_head is None:
        raise ValueError(f"this {model.layout} checkpoint has no reward head; use make_logprob_fn")
    hidden_fn, spec = make_hidden_fn(model), model.reward_head

    def reward_fn(params, inputs, mask, distinct=None):
        ids = (jnp.argmax(inputs, axis=-1) if spec.pooling == "before_first_pad" else None) if onehot else inputs
        idx = heads.pool_index(mask, ids, spec) if one_position else None
        h = hidden_fn(params, None, mask, inputs, idx) if onehot else \
            hidden_fn(params, inputs, mask, None, idx, distinct)
        if idx is not None:
            return heads.linear_reward(params[spec.name], h.last_hidden_state[:, 0])
        return heads.linear_reward(params[spec.name], heads.pool(h.last_hidden_state, mask, ids, spec))

    return reward_fn


def make_logprob_fn(model: LoadedModel, onehot: bool = False) -> ScoreFn:
    """Pure logprob_fn(params, input_ids [B, T] | onehot [B, T, V], mask [B, T]) -> [B].

    log p(x) = sum_t log p(x_t | x_<t) under the causal-LM head, the first real
    token unscored (see `heads.sequence_logprob`).

    Args:
      model: a loaded causal LM.
      onehot: take one-hot tokens [B, T, V] instead of ids.
    """
    if not model.has_lm_head:
        raise ValueError(f"this {model.layout} checkpoint has no language-model head (lm_head / embed_out)")
    hidden_fn = make_hidden_fn(model)

    def logprob_fn(params, inputs, mask):
        h = hidden_fn(params, None, mask, inputs) if onehot else hidden_fn(params, inputs, mask)
        return heads.sequence_logprob(h.last_hidden_state, lm_kernel(model, params), inputs, mask)

    return logprob_fn


def make_prefix_scoring(model: LoadedModel) -> PrefixScoring | None:
    """Reward of rows that equal a cached row before their first edit (`Scorer.prefix`).

    cache(params, tokens [T]) runs the row once and keeps every layer's keys
    and values; score_rows(params, cache, tokens, rows [C, T], first [C],
    slots) packs the C rows' tokens from first[c] on into `slots` static
    slots (`layers.PackedRows`) and runs only those, attending to the cached
    keys and values before first[c], the last layer only at the last
    position: the same numbers as `make_reward_fn` on the rows, up to float
    rounding, for slots / (C T) of the dense work. Rows are unpadded; the
    result is valid when sum_c (T - first[c]) <= slots (also returned). None
    for a head that does not read the last position ("mean" pooling reads
    every position; "before_first_pad" depends on the tokens). score_rows
    also takes distinct=(ids [U], src [C, T]) with rows = ids[src], the
    first layer's speed hint of `make_reward_fn` (the slots' per-token
    work on the U rows).

    Args:
      model: a loaded reward model.
    """
    if model.reward_head is None or model.reward_head.pooling != "last":
        return None
    module, key, spec = backbone(model), model.backbone_key, model.reward_head
    num_layers = model.config.num_hidden_layers

    def cache(params, tokens):
        ids = jnp.asarray(tokens)[None]
        mask = np.ones(ids.shape, np.int32)
        _, state = module.apply({"params": params[key]}, ids, mask, None, heads.last_index(mask),
                                mutable=["intermediates"])
        return prefix_kv(state["intermediates"], num_layers)

    def score_rows(params, kv, rows, first, slots, distinct=None):
        packed, used = layers.pack_rows(first, rows.shape[1], slots)
        ids = rows[packed.row, packed.pos][None]                               # [1, N]
        if distinct is not None:                                               # the slots' sources among ids [U]
            distinct = (distinct[0], distinct[1][packed.row, packed.pos][None])
        h = module.apply({"params": params[key]}, ids, None, None, packed.last, kv, packed, distinct)
        return heads.linear_reward(params[spec.name], h.last_hidden_state[:, 0]), used

    return PrefixScoring(cache, score_rows)


def reward_scorer(model: LoadedModel) -> Scorer:
    """A `Scorer` (goodhart_jax.scorer) giving the reward head's score (with `prefix` for "last" pooling).

    Args:
      model: a loaded reward model.
    """
    return Scorer(model.params, make_reward_fn(model), make_reward_fn(model, onehot=True), model.vocab_size,
                  make_prefix_scoring(model), distinct=True)


def logprob_scorer(model: LoadedModel) -> Scorer:
    """A `Scorer` giving the causal-LM log-probability of the sequence.

    Args:
      model: a loaded causal LM.
    """
    return Scorer(model.params, make_logprob_fn(model), make_logprob_fn(model, onehot=True), model.vocab_size)


def max_length(model: LoadedModel) -> int | None:
    """The longest sequence the checkpoint was trained for (config.json's max_position_embeddings), or None.

    Args:
      model: a loaded model.
    """
    return getattr(model.config, "max_position_embeddings", None)


def check_batch(mask: np.ndarray, max_len: int | None = None) -> None:
    """Refuse a mask the models cannot score as meant.

    Each row's real tokens (mask 1) must be one run (left or right padding only: a hole would shift the
    positions and the pooled token), at least one, and at most `max_len` of them (past the trained positions
    the rotary model extrapolates: a number, but not the model's).

    Args:
      mask: [N, T], 0 or 1.
      max_len: the model's `max_length`, or None (no limit).
    Raises:
      ValueError naming the first bad row.
    """
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("the mask must hold only 0 and 1")
    mask = np.asarray(mask) > 0
    n_real = mask.sum(axis=1)
    if (empty := np.flatnonzero(n_real == 0)).size:
        raise ValueError(f"mask row {empty[0]} has no real tokens")
    first, last = np.argmax(mask, axis=1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    if (holes := np.flatnonzero(last - first + 1 != n_real)).size:
        i = holes[0]
        gap = first[i] + np.argmin(mask[i, first[i]:])
        raise ValueError(f"mask row {i} has a hole at position {gap} between real tokens (only left or right "
                         f"padding is scored; {holes.size} such row{'s' * (holes.size > 1)})")
    if max_len is not None and (long := np.flatnonzero(n_real > max_len)).size:
        raise ValueError(f"row {long[0]} has {n_real[long[0]]} tokens; the model takes at most "
                         f"{max_len} (max_position_embeddings)")


# ---------------------------------------------------------------- sharding
def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all)."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


def shard_params(params, mesh: Mesh, axis: str = "data", min_size: int = 2**16):
    """Place parameters on `mesh`: large matrices split over `axis`, the rest replicated.

    A matrix of at least `min_size` elements is split along its first
    dimension divisible by the mesh size (FSDP-like: XLA gathers it where it
    is used), so a model that does not fit on one device can still be scored.
    With `min_size=inf` every parameter is replicated (plain data parallel).

    Args:
      params: the parameters (any pytree of arrays).
      mesh: the device mesh.
      axis: the mesh axis large matrices are split over.
      min_size: a matrix of at least this many elements is split.
    """
    n = mesh.shape[axis]

    def place(x):
        spec = [None] * x.ndim
        if n > 1 and x.ndim >= 2 and x.size >= min_size:
            for i, s in enumerate(x.shape):
                if s % n == 0:
                    spec[i] = axis
                    break
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    return jax.tree.map(place, params)


def default_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths: powers of two from `smallest` up to (and including) max_len."""
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    out.append(max_len)
    return tuple(sorted(set(out)))


def score_array(
    fn: ScoreFn,
    params,
    tokens: np.ndarray,
    mask: np.ndarray | None = None,
    batch_size: int = 8,
    buckets: Iterable[int] | None = None,
    mesh: Mesh | None = None,
    pad_id: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Score every row of tokens [N, T] in fixed-shape batches; returns [N] float32.

    Each batch is right-padded to the smallest bucket length holding its
    longest row and to `batch_size` rows (a multiple of the mesh size), so
    the jitted function is traced once per bucket and never per batch. The
    batch axis is sharded over the mesh's "data" axis; params should already
    be placed (`shard_params`).

    Args:
      fn: pure (params, input_ids [B, T], mask [B, T]) -> [B].
      params: its parameters.
      tokens: [N, T] int token ids.
      mask: [N, T] 1 for real tokens (default all ones).
      batch_size: rows per call (rounded up to a multiple of the mesh size).
      buckets: allowed padded lengths (default `default_buckets(T)`).
      mesh: a mesh with a "data" axis (default: all devices).
      pad_id: token written into padding (masked out, so any valid id).
      progress: called with the number of rows done after each batch.
    """
    tokens = np.asarray(tokens)
    n, t = tokens.shape
    mask = np.ones_like(tokens, dtype=np.int32) if mask is None else np.asarray(mask).astype(np.int32)
    mesh = mesh or data_mesh()
    ndev = mesh.shape["data"]
    batch_size = int(math.ceil(batch_size / ndev) * ndev)
    buckets = sorted(buckets or default_buckets(t))
    if buckets[-1] < t:
        buckets.append(t)
    sharding = NamedSharding(mesh, P("data", None))
    jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, P("data")))
    lengths = mask.sum(axis=1)
    # Rows holding tokens beyond the last real one (left padding) need their full width.
    last = np.where(lengths > 0, t - np.argmax(mask[:, ::-1] > 0, axis=1), 0)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        need = int(last[start:stop].max()) if stop > start else 1
        width = next(b for b in buckets if b >= max(need, 1))
        ids = np.full((batch_size, width), pad_id, dtype=np.int32)
        m = np.zeros((batch_size, width), dtype=np.int32)
        w = min(width, t)
        ids[: stop - start, :w] = tokens[start:stop, :w]
        m[: stop - start, :w] = mask[start:stop, :w]
        m[stop - start:, 0] = 1  # filler rows score one token (ignored)
        ids_d, m_d = jax.device_put(ids, sharding), jax.device_put(m, sharding)
        out[start:stop] = np.asarray(jitted(params, ids_d, m_d))[: stop - start]
        if progress is not None:
            progress(stop - start)
    return out
