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
from goodhart_jax.models.gpt_neox import BackboneOutput


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

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "LlamaConfig":
        """Read a config.json dict, old (`rope_theta`) or new (`rope_parameters`) style."""
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise NotImplementedError(f"Llama rope_type {rope_type!r} is not ported (only 'default')")
        n = int(d["num_attention_heads"])
        cfg = cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=n,
            num_key_value_heads=int(d.get("num_key_value_heads") or n),
            intermediate_size=int(d["intermediate_size"]),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // n),
            hidden_act=d.get("hidden_act", "silu"),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            pad_token_id=d.get("pad_token_id"),
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
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array) -> Array:
        c = self.config
        b, t, _ = x.shape
        dense = lambda f, name: nn.Dense(f, use_bias=c.attention_bias, dtype=self.dtype,
                                         param_dtype=self.dtype, name=name)
        q = dense(c.num_attention_heads * c.head_dim, "q_proj")(x).reshape(b, t, c.num_attention_heads, c.head_dim)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        q, k = layers.apply_rotary(q, cos, sin), layers.apply_rotary(k, cos, sin)
        out = layers.attention(q, k, v, mask).reshape(b, t, c.num_attention_heads * c.head_dim)
        return dense(c.hidden_size, "o_proj")(out)


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
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, cos: Array, sin: Array) -> Array:
        c = self.config
        h = layers.RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x)
        x = x + LlamaAttention(c, self.dtype, name="self_attn")(h, mask, cos, sin)
        h = layers.RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x)
        return x + LlamaMLP(c, self.dtype, name="mlp")(h)


class LlamaModel(nn.Module):
    """Llama backbone: embeddings, L decoder layers, final RMSNorm.

    Attributes:
      config: LlamaConfig.
      dtype: compute and parameter dtype (float32 or bfloat16).
    """

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array | None, mask: Array, onehot: Array | None = None) -> BackboneOutput:
        """Args:
          input_ids: [B, T] int tokens (ignored when `onehot` is given).
          mask: [B, T] 1 for real tokens (left or right padding).
          onehot: optional [B, T, V] relaxed tokens, embedded as onehot @ E.
        Returns:
          BackboneOutput (hidden_states: embeddings then each layer's output).
        """
        c = self.config
        emb = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="embed_tokens")
        x = layers.embed(emb, input_ids, onehot)
        cos, sin = layers.rotary_cos_sin(layers.positions_from_mask(mask), c.head_dim, c.rope_theta)
        hidden = [x]
        for n in range(c.num_hidden_layers):
            x = LlamaDecoderLayer(c, self.dtype, name=f"layers_{n}")(x, mask, cos, sin)
            hidden.append(x)
        x = layers.RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(x)
        return BackboneOutput(x, tuple(hidden))
