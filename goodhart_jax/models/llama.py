"""Flax (linen) port of transformers' Llama backbone (Llama-2, Starling RM).

linen for the same reason as `gpt_neox.py`: parameters are a plain dict that
the converter fills by key remapping plus transposes. Submodules carry the
Hugging Face names (`embed_tokens`, `layers_{i}.self_attn.q_proj`, `mlp.
gate_proj`, `norm`, ...).

Glossary: B batch, T sequence, V vocab, D model, N query heads, K key/value
heads, H head dim, I intermediate size.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from goodhart_jax.models import layers
from goodhart_jax.models.backbone import DecoderBackbone, config_float, config_int, required


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The fields of a transformers LlamaConfig that the forward pass uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    max_position_embeddings: int | None = None  # longest sequence it was trained for

    # The names `DecoderBackbone` reads.
    @property
    def rotary_dims(self) -> int:
        return self.head_dim

    @property
    def rotary_theta(self) -> float:
        return self.rope_theta

    @property
    def norm_eps(self) -> float:
        return self.rms_norm_eps

    @classmethod
    def small(cls, vocab_size: int, width: int, layers: int, heads: int) -> "LlamaConfig":
        """A small decoder of these sizes (the lab's models): MLP width 4 D, one KV head per head."""
        return cls(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=heads, intermediate_size=4 * width, head_dim=width // heads)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "LlamaConfig":
        """Read a config.json dict, old (`rope_theta`) or new (`rope_parameters`) style.

        Raises:
          ValueError: a missing, non-integer or non-positive size, key/value
            heads that do not divide the query heads, no explicit head_dim and
            heads that do not divide hidden_size, an odd head_dim, an
            out-of-range float.
          NotImplementedError: rope scaling or an activation that is not ported.
        """
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"config: rope_parameters={rope!r} is not a mapping")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise NotImplementedError(f"Llama rope_type {rope_type!r} is not ported (only 'default')")
        hidden = config_int("hidden_size", required(d, "hidden_size"))
        n = config_int("num_attention_heads", required(d, "num_attention_heads"))
        if d.get("head_dim") is not None:
            head_dim = config_int("head_dim", d["head_dim"])
        elif hidden % n:
            raise ValueError(f"config: hidden_size={hidden} is not divisible by num_attention_heads={n} "
                             "(and no head_dim is given)")
        else:
            head_dim = hidden // n
        pad = d.get("pad_token_id")
        cfg = cls(
            vocab_size=config_int("vocab_size", required(d, "vocab_size")),
            hidden_size=hidden,
            num_hidden_layers=config_int("num_hidden_layers", required(d, "num_hidden_layers")),
            num_attention_heads=n,
            num_key_value_heads=n if d.get("num_key_value_heads") is None else
            config_int("num_key_value_heads", d["num_key_value_heads"]),
            intermediate_size=config_int("intermediate_size", required(d, "intermediate_size")),
            head_dim=head_dim,
            hidden_act=d.get("hidden_act", "silu"),
            rope_theta=config_float("rope_theta", rope.get("rope_theta", d.get("rope_theta", 10000.0)),
                                    0.0, low_open=True),
            rms_norm_eps=config_float("rms_norm_eps", d.get("rms_norm_eps", 1e-6), 0.0),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            pad_token_id=None if pad is None else config_int("pad_token_id", pad, minimum=-2**31),
            max_position_embeddings=None if d.get("max_position_embeddings") is None else
            config_int("max_position_embeddings", d["max_position_embeddings"]),
        )
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError(f"config: num_attention_heads={cfg.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={cfg.num_key_value_heads}")
        if cfg.head_dim % 2:
            raise ValueError(f"config: head_dim={cfg.head_dim} is odd; rotary needs it even")
        layers.activation(cfg.hidden_act)
        return cfg

    def expected_shapes(self, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
        """PyTorch state-dict names and shapes of the backbone under `prefix`."""
        d, i, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        nq, nk = self.num_attention_heads * h, self.num_key_value_heads * h
        out = {f"{prefix}embed_tokens.weight": (v, d), f"{prefix}norm.weight": (d,)}
        for n in range(self.num_hidden_layers):
            p = f"{prefix}layers.{n}."
            out[f"{p}input_layernorm.weight"] = (d,)
            out[f"{p}post_attention_layernorm.weight"] = (d,)
            for name, shape in (("q_proj", (nq, d)), ("k_proj", (nk, d)), ("v_proj", (nk, d)), ("o_proj", (d, nq))):
                out[f"{p}self_attn.{name}.weight"] = shape
                if self.attention_bias:
                    out[f"{p}self_attn.{name}.bias"] = shape[:1]
            for name, shape in (("gate_proj", (i, d)), ("up_proj", (i, d)), ("down_proj", (d, i))):
                out[f"{p}mlp.{name}.weight"] = shape
                if self.mlp_bias:
                    out[f"{p}mlp.{name}.bias"] = shape[:1]
        return out


class LlamaAttention(nn.Module):
    """Llama self-attention: q, k, v and o projections (bias per `attention_bias`), rotary positions, grouped-query
    heads (`num_key_value_heads`)."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, index: Array | None = None,
                 prefix: tuple[Array, Array] | None = None, packed: layers.PackedRows | None = None,
                 cache: tuple[Array, Array, Array] | None = None, siblings: bool = False) -> Array:
        """x [B, T, D] -> [B, T, D]; with index [B], only the query at index[b]: [B, 1, D].

        Sows its rotated keys and values [B, T, K, H] as "intermediates"/"kv".
        With `packed` (C rows, see `layers.PackedRows`) and `prefix` (this
        layer's keys and values [1, T, K, H] of the cached row), x [1, N, D]
        holds the packed tokens: [1, N, D] out, or [C, 1, D] at index = packed.last.
        With `cache` (this layer's (k, v [B, P, K, H], mask [B, P]) of a `layers.KVCache`) the T new
        tokens attend to the cached keys and to themselves (`layers.cached_attention`, `siblings`).
        """
        c = self.config
        b, t, _ = x.shape
        dense = lambda f, name: nn.Dense(f, use_bias=c.attention_bias, dtype=self.dtype,
                                         param_dtype=self.dtype, name=name)
        xq = x if index is None else layers.take_positions(x, index)
        q = dense(c.num_attention_heads * c.head_dim, "q_proj")(xq).reshape(xq.shape[0], -1, c.num_attention_heads,
                                                                           c.head_dim)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        k = layers.apply_rotary(k, cos, sin)
        self.sow("intermediates", "kv", (k, v))
        out = layers.rotary_attention(q, k, v, mask, cos, sin, index, prefix, packed, cache, siblings)
        return dense(c.hidden_size, "o_proj")(out.reshape(out.shape[0], -1, c.num_attention_heads * c.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dense = lambda f, name: nn.Dense(f, use_bias=c.mlp_bias, dtype=self.dtype, param_dtype=self.dtype, name=name)
        gate = layers.activation(c.hidden_act)(dense(c.intermediate_size, "gate_proj")(x))
        return dense(c.hidden_size, "down_proj")(gate * dense(c.intermediate_size, "up_proj")(x))


class LlamaDecoderLayer(nn.Module):
    """One Llama block: x + attention(RMSNorm(x)), then x + MLP(RMSNorm(x)) (`LlamaAttention`, `LlamaMLP`)."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array, index: Array | None = None,
                 prefix: tuple[Array, Array] | None = None, packed: layers.PackedRows | None = None,
                 cache: tuple[Array, Array, Array] | None = None, siblings: bool = False) -> Array:
        """x [B, T, D] -> [B, T, D]; with index [B], only the output at index[b]: [B, 1, D]; `prefix`,
        `packed`, `cache`, `siblings`: see `LlamaAttention`."""
        c = self.config
        h = layers.RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x)
        attn = LlamaAttention(c, self.dtype, name="self_attn")(h, mask, cos, sin, index, prefix, packed,
                                                                cache, siblings)
        x = (x if index is None else layers.take_positions(x, index)) + attn
        h = layers.RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x)
        return x + LlamaMLP(c, self.dtype, name="mlp")(h)


class LlamaModel(DecoderBackbone):
    """Llama backbone: `embed_tokens`, L `LlamaDecoderLayer`s, `norm` (RMSNorm).

    Attributes:
      config: LlamaConfig.
      dtype: compute and parameter dtype (float32 or bfloat16).
    """

    block = LlamaDecoderLayer
    norm = layers.RMSNorm
    embed_name = "embed_tokens"
    final_norm_name = "norm"
