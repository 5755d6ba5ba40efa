"""Flax (linen) port of transformers' GPT-NeoX backbone (Pythia, OpenAssistant RM).

Why linen and not NNX: a linen module's parameters are a plain nested dict,
which is exactly what the converter produces from a PyTorch state dict (key
remapping plus transposes) and what the pure `reward_fn(params, ids, mask)`
takes as its first argument for `jit`, `grad` and sharding; NNX would add a
split/merge step around every such call for no gain here.

Submodules carry the Hugging Face names (`embed_in`, `layers_{i}.attention.
query_key_value`, `final_layer_norm`, ...), so `gpt_neox.layers.3.mlp.
dense_h_to_4h.weight` lives at `params["layers_3"]["mlp"]["dense_h_to_4h"]
["kernel"]` (transposed).

Glossary: B batch, T sequence, V vocab, D model, N heads, H head dim.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from goodhart_jax.models import layers
from goodhart_jax.models.backbone import (BackboneOutput, DecoderBackbone, config_float, config_int,
                                          required)

__all__ = ["BackboneOutput", "GPTNeoXConfig", "GPTNeoXModel"]  # BackboneOutput re-exported (old home)


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    """The fields of a transformers GPTNeoXConfig that the forward pass uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    max_position_embeddings: int | None = None  # longest sequence it was trained for

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        return int(self.head_size * self.rotary_pct)

    # The names `DecoderBackbone` reads.
    rotary_dims = rotary_ndims

    @property
    def rotary_theta(self) -> float:
        return self.rotary_emb_base

    @property
    def norm_eps(self) -> float:
        return self.layer_norm_eps

    @classmethod
    def small(cls, vocab_size: int, width: int, layers: int, heads: int) -> "GPTNeoXConfig":
        """A small decoder of these sizes (the lab's models): MLP width 4 D, rotary on half of each head."""
        return cls(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                   intermediate_size=4 * width, rotary_pct=0.5)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "GPTNeoXConfig":
        """Read a config.json dict, old (`rotary_pct`) or new (`rope_parameters`) style.

        Raises:
          ValueError: a missing, non-integer or non-positive size, heads that do
            not divide hidden_size, an odd rotary width, an out-of-range float.
          NotImplementedError: rope scaling or an activation that is not ported.
        """
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"config: rope_parameters={rope!r} is not a mapping")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise NotImplementedError(f"GPT-NeoX rope_type {rope_type!r} is not ported (only 'default')")
        pad = d.get("pad_token_id")
        cfg = cls(
            vocab_size=config_int("vocab_size", required(d, "vocab_size")),
            hidden_size=config_int("hidden_size", required(d, "hidden_size")),
            num_hidden_layers=config_int("num_hidden_layers", required(d, "num_hidden_layers")),
            num_attention_heads=config_int("num_attention_heads", required(d, "num_attention_heads")),
            intermediate_size=config_int("intermediate_size", required(d, "intermediate_size")),
            hidden_act=d.get("hidden_act", "gelu"),
            rotary_pct=config_float("rotary_pct", rope.get("partial_rotary_factor", d.get("rotary_pct", 0.25)),
                                    0.0, 1.0),
            rotary_emb_base=config_float("rotary_emb_base", rope.get("rope_theta", d.get("rotary_emb_base", 10000.0)),
                                         0.0, low_open=True),
            layer_norm_eps=config_float("layer_norm_eps", d.get("layer_norm_eps", 1e-5), 0.0),
            use_parallel_residual=bool(d.get("use_parallel_residual", True)),
            attention_bias=bool(d.get("attention_bias", True)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            pad_token_id=None if pad is None else config_int("pad_token_id", pad, minimum=-2**31),
            max_position_embeddings=None if d.get("max_position_embeddings") is None else
            config_int("max_position_embeddings", d["max_position_embeddings"]),
        )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"config: hidden_size={cfg.hidden_size} is not divisible by "
                             f"num_attention_heads={cfg.num_attention_heads}")
        if cfg.rotary_ndims % 2:
            raise ValueError(f"config: rotary dims int(head_size * rotary_pct) = {cfg.rotary_ndims} is odd")
        layers.activation(cfg.hidden_act)
        return cfg

    def expected_shapes(self, prefix: str = "gpt_neox.") -> dict[str, tuple[int, ...]]:
        """PyTorch state-dict names and shapes of the backbone under `prefix`."""
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        out = {f"{prefix}embed_in.weight": (v, d),
               f"{prefix}final_layer_norm.weight": (d,), f"{prefix}final_layer_norm.bias": (d,)}
        for n in range(self.num_hidden_layers):
            p = f"{prefix}layers.{n}."
            for ln in ("input_layernorm", "post_attention_layernorm"):
                out[f"{p}{ln}.weight"] = (d,)
                out[f"{p}{ln}.bias"] = (d,)
            out[f"{p}attention.query_key_value.weight"] = (3 * d, d)
            out[f"{p}attention.dense.weight"] = (d, d)
            if self.attention_bias:
                out[f"{p}attention.query_key_value.bias"] = (3 * d,)
                out[f"{p}attention.dense.bias"] = (d,)
            out[f"{p}mlp.dense_h_to_4h.weight"] = (i, d)
            out[f"{p}mlp.dense_h_to_4h.bias"] = (i,)
            out[f"{p}mlp.dense_4h_to_h.weight"] = (d, i)
            out[f"{p}mlp.dense_4h_to_h.bias"] = (d,)
        return out


class GPTNeoXAttention(nn.Module):
    config: GPTNeoXConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, index: Array | None = None,
                 prefix: tuple[Array, Array] | None = None, packed: layers.PackedRows | None = None,
                 src: Array | None = None, cache: tuple[Array, Array, Array] | None = None,
                 siblings: bool = False) -> Array:
        """x [B, T, D] -> [B, T, D]; with index [B], only the query at index[b]: [B, 1, D].

        Sows its rotated keys and values [B, T, N, H] as "intermediates"/"kv".
        With `packed` (C rows, see `layers.PackedRows`) and `prefix` (this
        layer's keys and values [1, T, N, H] of the cached row), x [1, N, D]
        holds the packed tokens: [1, N, D] out, or [C, 1, D] at index = packed.last.
        With `src` [B, T], x [1, U, D] holds U distinct rows and row (b, t) is x[0, src[b, t]]: the
        projection runs on the U rows, then is gathered.
        With `cache` (this layer's (k, v [B, P, N, H], mask [B, P]) of a `layers.KVCache`) the T new
        tokens attend to the cached keys and to themselves (`layers.cached_attention`, `siblings`).
        """
        c = self.config
        qkv = nn.Dense(3 * c.hidden_size, use_bias=c.attention_bias, dtype=self.dtype,
                       param_dtype=self.dtype, name="query_key_value")(x)
        if src is not None:
            qkv = qkv[0][src]                                                   # [B, T, 3D]
        b, t, _ = qkv.shape
        # transformers views the fused projection as [B, T, N, 3H] then chunks.
        qkv = qkv.reshape(b, t, c.num_attention_heads, 3 * c.head_size)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        k = layers.apply_rotary(k, cos, sin)
        self.sow("intermediates", "kv", (k, v))
        q = q if index is None else layers.take_positions(q, index)
        out = layers.rotary_attention(q, k, v, mask, cos, sin, index, prefix, packed, cache, siblings)
        out = out.reshape(out.shape[0], -1, c.hidden_size)
        return nn.Dense(c.hidden_size, use_bias=c.attention_bias, dtype=self.dtype,
                        param_dtype=self.dtype, name="dense")(out)


class GPTNeoXMLP(nn.Module):
    config: GPTNeoXConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        h = nn.Dense(c.intermediate_size, dtype=self.dtype, param_dtype=self.dtype, name="dense_h_to_4h")(x)
        h = layers.activation(c.hidden_act)(h)
        return nn.Dense(c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="dense_4h_to_h")(h)


class GPTNeoXLayer(nn.Module):
    config: GPTNeoXConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, index: Array | None = None,
                 prefix: tuple[Array, Array] | None = None, packed: layers.PackedRows | None = None,
                 distinct: tuple[Array, Array] | None = None, cache: tuple[Array, Array, Array] | None = None,
                 siblings: bool = False) -> Array:
        """x [B, T, D] -> [B, T, D]; with index [B], only the output at index[b]: [B, 1, D]; `prefix`,
        `packed`, `cache`, `siblings`: see `GPTNeoXAttention`. With distinct = (u [1, U, D], src [B, T]) where
        x[b, t] = u[0, src[b, t]] (no index, prefix or packed), the norms, the QKV projection and the
        parallel MLP run on the U rows (`DecoderBackbone`'s `distinct`)."""
        c = self.config
        ln1 = layers.LayerNorm(c.layer_norm_eps, self.dtype, name="input_layernorm")
        ln2 = layers.LayerNorm(c.layer_norm_eps, self.dtype, name="post_attention_layernorm")
        u, src = (x, None) if distinct is None else distinct
        attn = GPTNeoXAttention(c, self.dtype, name="attention")(ln1(u), mask, cos, sin, index, prefix, packed,
                                                                  src, cache, siblings)
        mlp = GPTNeoXMLP(c, self.dtype, name="mlp")
        if index is not None:
            x = layers.take_positions(x, index)
        if c.use_parallel_residual:
            return x + attn + (mlp(ln2(x)) if src is None else mlp(ln2(u))[0][src])
        h = x + attn
        return h + mlp(ln2(h))


class GPTNeoXModel(DecoderBackbone):
    """GPT-NeoX backbone: `embed_in`, L `GPTNeoXLayer`s, `final_layer_norm` (LayerNorm).

    Attributes:
      config: GPTNeoXConfig.
      dtype: compute and parameter dtype (float32 or bfloat16).
    """

    block = GPTNeoXLayer
    per_token_block = True
    norm = layers.LayerNorm
    embed_name = "embed_in"
    final_norm_name = "final_layer_norm"
