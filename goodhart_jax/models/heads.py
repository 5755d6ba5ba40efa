"""Reward and log-probability heads on top of a backbone's hidden states.

Pure functions on arrays; the parameter dicts are the linen-style leaves the
converter writes (`{"kernel": [D, 1], "bias": [1]}`).

Glossary: B batch, T sequence, V vocab, D model.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

POOLINGS = ("last", "mean", "before_first_pad")


class HeadSpec(NamedTuple):
    """A scalar reward head.

    Fields:
      name: key of its parameters: "out_proj" (OpenAssistant), "v_head"
        (Starling) or "score" (transformers *ForSequenceClassification).
      bias: whether the linear map has a bias (only "out_proj" does).
      pooling: which hidden state is read: "last" (last non-padding token,
        by the mask), "mean" (mean over non-padding tokens; OpenAssistant's
        `pooling: mean`) or "before_first_pad" (Starling's own rule: the
        position before the first `pad_id` token, wrapping to the last
        position when the first token is a pad, as PyTorch's index -1 does).
      pad_id: the pad token of "before_first_pad".
    """

    name: str
    bias: bool
    pooling: str = "last"
    pad_id: int | None = None


def last_index(mask: Array) -> Array:
    """[B] index of the last 1 in each row of mask [B, T] (left or right padding)."""
    t = mask.shape[-1]
    return t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=-1)


def before_first_pad_index(input_ids: Array, pad_id: int) -> Array:
    """Starling's rule: (first index where input_ids == pad_id, else T) - 1, mod T."""
    t = input_ids.shape[-1]
    is_pad = input_ids == pad_id
    first = jnp.where(jnp.any(is_pad, axis=-1), jnp.argmax(is_pad, axis=-1), t)
    return (first - 1) % t


def pool_index(mask: Array, input_ids: Array | None, spec: HeadSpec) -> Array | None:
    """[B] the position `spec.pooling` reads in each row of mask [B, T]; None for "mean" (every position).

    Args:
      mask: [B, T] 1 on real tokens, 0 on padding.
      input_ids: [B, T] ids (needed by "before_first_pad" only; None otherwise).
      spec: the head (its pooling and pad_id).
    """
    if spec.pooling == "mean":
        return None
    if spec.pooling == "last":
        return last_index(mask)
    if spec.pooling == "before_first_pad":
        if input_ids is None or spec.pad_id is None:
            raise ValueError("pooling 'before_first_pad' needs input_ids and a pad_id")
        return before_first_pad_index(input_ids, spec.pad_id)
    raise ValueError(f"unknown pooling {spec.pooling!r}; expected one of {POOLINGS}")


def pool(hidden: Array, mask: Array, input_ids: Array | None, spec: HeadSpec) -> Array:
    """Read one [B, D] vector per sequence from hidden [B, T, D] by `spec.pooling`.

    Args:
      hidden: [B, T, D] final hidden states.
      mask: [B, T] 1 on real tokens, 0 on padding.
      input_ids: [B, T] ids (needed by "before_first_pad" only; None otherwise).
      spec: the head (its pooling and pad_id).
    """
    idx = pool_index(mask, input_ids, spec)
    if idx is None:
        m = mask.astype(hidden.dtype)[..., None]
        return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def linear_reward(head_params: dict, pooled: Array, dtype=jnp.float32) -> Array:
    """r = pooled @ w (+ b), computed in `dtype` (float32 by default, whatever the model's dtype).

    Args:
      head_params: {"kernel": [D, 1], optional "bias": [1]}.
      pooled: [B, D].
      dtype: of the computation and result (the lab's models pass their parameters' dtype).
    Returns:
      [B] rewards.
    """
    r = pooled.astype(dtype) @ head_params["kernel"].astype(dtype)
    if "bias" in head_params:
        r = r + head_params["bias"].astype(dtype)
    return r[:, 0]


def sequence_logprob(hidden: Array, lm_kernel: Array, targets: Array, mask: Array) -> Array:
    """log p(x) = sum_{t>=1} log softmax(h_{t-1} W)[x_t], over real tokens.

    The first real token has no context and is not scored; a term counts when
    both x_t and x_{t-1} are real tokens, so left and right padding give the
    unpadded sum. Masks must be contiguous.

    Args:
      hidden: [B, T, D] final hidden states.
      lm_kernel: [D, V] output projection.
      targets: [B, T] int tokens, or [B, T, V'] one-hot (relaxed) tokens, in
        which case the term is log_softmax(logits_{t-1}) . onehot_t. V' may
        exceed V for input-only ids the head never emits (a start token such
        as the lab's BOS): their columns are not read, so they may be non-zero
        only where no term is scored (the first real token).
      mask: [B, T] 1 for real tokens.
    Returns:
      [B] float32 log-probabilities.
    """
    logits = jnp.einsum("btd,dv->btv", hidden[:, :-1], lm_kernel).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [B, T-1, V]
    if targets.ndim == 2:
        terms = jnp.take_along_axis(logp, targets[:, 1:, None], axis=-1)[..., 0]
    else:
        terms = jnp.einsum("btv,btv->bt", logp, targets[:, 1:, :logp.shape[-1]].astype(jnp.float32))
    pair = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    return jnp.sum(jnp.where(pair, terms, 0.0), axis=-1)
