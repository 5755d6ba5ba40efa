"""The decoder skeleton every ported model shares: embed, rotary tables, L blocks, final norm.

GPT-NeoX and Llama differ only in their block (fused or split projections,
parallel or sequential residual, GeLU MLP or SwiGLU) and their norm
(LayerNorm or RMSNorm); `DecoderBackbone` holds the rest once. A port
subclasses it and names its parts:

    class LlamaModel(DecoderBackbone):
        block = LlamaDecoderLayer          # (config, dtype, name) -> (x, mask, cos, sin) -> x
        norm = layers.RMSNorm              # (eps, dtype, name) -> x -> x
        embed_name, final_norm_name = "embed_tokens", "norm"

The submodule names are the Hugging Face ones (`embed_tokens`, `layers_{i}`,
`norm`), so the parameter tree is the PyTorch state dict after key remapping.

A config used here provides (see `DecoderConfig`): vocab_size, hidden_size,
num_hidden_layers, norm_eps, rotary_dims, rotary_theta.

Glossary: B batch, T sequence, V vocab, D model, R rotary dims.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax.models import layers


class BackboneOutput(NamedTuple):
    """Fields:
      last_hidden_state: [B, T, D] after the final norm.
      hidden_states: tuple of L + 1 arrays [B, T, D]: the embeddings, then the
        output of each layer (before the final norm).
    """

    last_hidden_state: Array
    hidden_states: tuple[Array, ...]


class DecoderConfig(Protocol):
    """What the skeleton reads from an architecture's config."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int

    @property
    def norm_eps(self) -> float: ...

    @property
    def rotary_dims(self) -> int: ...

    @property
    def rotary_theta(self) -> float: ...


class DecoderBackbone(nn.Module):
    """Embeddings, rotary cos/sin tables from padding-aware positions, L blocks, final norm.

    Subclasses set the class variables `block`, `norm`, `embed_name` and
    `final_norm_name`.

    Attributes:
      config: the architecture's config (a `DecoderConfig`).
      dtype: compute and parameter dtype (float32 or bfloat16).
    """

    config: Any
    dtype: Any = jnp.float32

    block: ClassVar[type[nn.Module]]      # block(config, dtype, name=...)(x, mask, cos, sin, index, prefix, packed) -> x
    # (also keyword cache=(k, v, mask) of this layer and siblings=bool: a `layers.KVCache`'s new tokens)
    # Whether `block` takes distinct=(u [1, U, D], src [B, T]) and runs its per-token parts on the U rows.
    per_token_block: ClassVar[bool] = False
    norm: ClassVar[type[nn.Module]]       # norm(eps, dtype, name=...)(x) -> x
    embed_name: ClassVar[str]
    final_norm_name: ClassVar[str]

    @nn.compact
    def __call__(self, input_ids: Array | None, mask: Array | None, onehot: Array | None = None,
                 index: Array | None = None, prefix: tuple[tuple[Array, Array], ...] | None = None,
                 packed: layers.PackedRows | None = None,
                 distinct: tuple[Array, Array] | None = None, cache: layers.KVCache | None = None,
                 siblings: bool = False) -> BackboneOutput:
        """Args:
          input_ids: [B, T] int tokens (ignored when `onehot` is given).
          mask: [B, T] 1 for real tokens (left or right padding; unused with `packed`).
          onehot: optional [B, T, V] relaxed tokens, embedded as onehot @ E.
          index: optional [B] int: the last layer computes only position
            index[b] of each row (a reward head reads one position; the other
            layers need every position for the keys and values), so its
            output and `last_hidden_state` are [B, 1, D].
          prefix, packed: rows that equal a cached row before their first
            edit (`layers.PackedRows`): prefix holds the cached row's keys and
            values, one pair (k, v) [1, T, K, H] per layer (what the attention
            layers sow as "intermediates"/"kv", see `prefix_kv`); input_ids
            [1, N] the packed tokens; index must be packed.last, giving each
            of the C rows' last position. The same numbers as the rows' full
            pass (unpadded), for N / (C T) of the dense work.
          distinct: optional (ids [U] int, src [B, T] int) with input_ids[b, t] = ids[src[b, t]]: a
            speed hint for batches that share most tokens (GCG's candidates: the current sequence's T
            tokens and C x E edits). The first layer's input is a function of the token alone, so a
            block with `per_token_block` runs its norms and projections before attention (and
            GPT-NeoX's parallel MLP) on the U rows and gathers them: the same numbers up to float
            rounding, U / (B T) of that work. With `packed`, src is [1, N] (each slot's row among the
            U). Other blocks, and a first layer that is also the last one read at `index`, take the
            plain pass.
          cache: optional `layers.KVCache` [B, P] of a prefix (no index, prefix or packed): input_ids
            [B, S] are new tokens after it, at positions c_b + (0..S-1) with c_b its number of real
            cached tokens (mask [B, S], default all ones, marks the real new ones: right padding),
            attending to the cached keys and causally to each other (`layers.cached_attention`).
            The same numbers as the whole row in one pass, up to float rounding. The new tokens'
            keys and values are sown as usual (`apply_cached` returns them as a `KVCache`).
          siblings: with `cache` (static): the S new tokens are alternatives, each at position c_b
            after row b and seeing only the cache and itself (every child of a prefix at once).
        Returns:
          BackboneOutput (hidden_states: embeddings then each layer's output).
        """
        c = self.config
        emb = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name=self.embed_name)
        x = layers.embed(emb, input_ids, onehot)
        if cache is not None:
            if index is not None or packed is not None or prefix is not None:
                raise ValueError("a KV cache takes neither index nor prefix / packed rows")
            mask = jnp.ones(x.shape[:2], jnp.int32) if mask is None else mask
            count = jnp.sum(cache.mask > 0, axis=-1, dtype=jnp.int32)[:, None]              # [B, 1]
            pos = jnp.broadcast_to(count if siblings else count + layers.positions_from_mask(mask), x.shape[:2])
            cos, sin = layers.rotary_at(pos, cache.mask.shape[1] + x.shape[1], c.rotary_dims, c.rotary_theta)
        elif packed is None:
            cos, sin = layers.rotary_from_mask(mask, c.rotary_dims, c.rotary_theta)
        else:
            cos, sin = layers.rotary_at(packed.pos[None], packed.src.shape[1], c.rotary_dims, c.rotary_theta)
        hidden = [x]
        for n in range(c.num_hidden_layers):
            last = index is not None and n == c.num_hidden_layers - 1
            args = (x, mask, cos, sin, index if last else None, None if prefix is None else prefix[n], packed)
            extra = {} if cache is None else {"cache": cache.kv[n] + (cache.mask,), "siblings": siblings}
            if n == 0 and distinct is not None and self.per_token_block and not last:
                u = emb(distinct[0].reshape(1, -1))                                  # [1, U, D]
                x = self.block(c, self.dtype, name=f"layers_{n}")(*args, distinct=(u, distinct[1]), **extra)
            else:
                x = self.block(c, self.dtype, name=f"layers_{n}")(*args, **extra)
            hidden.append(x)
        x = self.norm(c.norm_eps, self.dtype, name=self.final_norm_name)(x)
        return BackboneOutput(x, tuple(hidden))


def prefix_kv(intermediates: dict, num_layers: int) -> tuple[tuple[Array, Array], ...]:
    """The per-layer (k, v) a backbone applied with `mutable=["intermediates"]` sowed, layer by layer.

    Args:
      intermediates: the "intermediates" collection of that call.
      num_layers: L.
    Returns:
      L pairs (k, v), each [B, T, K, H] (post-rotary keys), for `DecoderBackbone`'s `prefix`.
    """
    def find(tree):
        if "kv" in tree:
            return tree["kv"][0]
        for sub in tree.values():
            if isinstance(sub, Mapping) and (found := find(sub)) is not None:
                return found
        return None

    return tuple(find(intermediates[f"layers_{n}"]) for n in range(num_layers))


def apply_cached(module: nn.Module, variables: dict, input_ids: Array | None, mask: Array | None = None,
                 cache: layers.KVCache | None = None, siblings: bool = False, onehot: Array | None = None,
                 distinct: tuple[Array, Array] | None = None) -> tuple[BackboneOutput, layers.KVCache]:
    """Run a backbone after an optional prefix cache; also return the new tokens' keys and values.

    Without `cache`: the plain pass over input_ids [B, S] (mask default all ones). With it: the new
    tokens after the cached prefix (`DecoderBackbone`'s `cache` and `siblings`). Either way the
    returned `KVCache` [B, S] holds the keys and values of input_ids, to feed the next call
    (`KVCache.concat` for a causal continuation, `KVCache.siblings` for the children of each row).

    Args:
      module: a `DecoderBackbone`; variables: {"params": its parameters}.
      input_ids: [B, S] int (or onehot [B, S, V]).
      mask: [B, S] 1 for real tokens (default all ones).
      cache: `layers.KVCache` [B, P] or None; siblings: static, see `DecoderBackbone`.
      distinct: `DecoderBackbone`'s first-layer speed hint.
    Returns:
      (BackboneOutput with [B, S, D] states, KVCache [B, S] of the new tokens).
    """
    shape = (onehot if input_ids is None else input_ids).shape[:2]
    if mask is None:
        mask = np.ones(shape, np.int32) if cache is None else jnp.ones(shape, jnp.int32)
    out, state = module.apply(variables, input_ids, mask, onehot, None, None, None, distinct, cache, siblings,
                              mutable=["intermediates"])
    kv = prefix_kv(state["intermediates"], module.config.num_hidden_layers)
    return out, layers.KVCache(kv, jnp.asarray(mask, jnp.int32))


# ---------------------------------------------------------------- config fields
def required(d: dict, key: str) -> Any:
    """d[key], or ValueError naming the absent config.json field."""
    if key not in d:
        raise ValueError(f"config has no {key}")
    return d[key]


def config_int(key: str, value: Any, minimum: int = 1) -> int:
    """A config.json integer field, at least `minimum` (sizes: >= 1).

    Args:
      key: the field's name (for the message).
      value: its value as read from config.json.
    Raises:
      ValueError: not an integer (a bool, 40.5, "40", null) or below `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"config: {key}={value!r} is not an integer")
    if value < minimum:
        raise ValueError(f"config: {key}={int(value)} must be >= {minimum}")
    return int(value)


def config_float(key: str, value: Any, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False) -> float:
    """A config.json float field, finite and in [low, high] ((low, high] when `low_open`).

    Args:
      key: the field's name (for the message).
      value: its value as read from config.json.
    Raises:
      ValueError: not a finite number, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"config: {key}={value!r} is not a finite number")
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"config: {key}={value} is outside {'(' if low_open else '['}{low}, {high}]")
    return float(value)
