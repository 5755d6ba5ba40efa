"""Searching the lab's sequences for a high proxy: exhaustive argmax, and coordinate-gradient search.

On an enumerable tree the proxy's maximisers are known exactly (`exhaustive`:
the top-k sequences by proxy, with their gold reward and log pi0). The
coordinate-gradient search of `goodhart_jax.search` (GCG / ACG, Section 4-5 of
Kwa et al. 2024) only sees the proxy model through its gradient with respect
to one-hot inputs, as it would on a real vocabulary; `search_proxy` runs it on
the lab's EOS-continued sequences of length L and places what it finds among
all N sequences: its gold reward, its rank by proxy, whether it is the argmax.

A lab sequence is EOS-continued (`lab.lm`): the tokens after the first EOS
are not part of it. `eos_masked` makes any `Scorer` read only the real tokens
(mask = up to and including the first EOS, from the token ids or from the
one-hot's argmax), so the search's free tokens past EOS cannot change the score.

Glossary: N terminal sequences, L depth, A vocabulary, R restarts, K top-k.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax import search as gcg
from goodhart_jax.lab import lm, rewards
from goodhart_jax.lab.tree import terminal_index
from goodhart_jax.scorer import Scorer

__all__ = ["Ranked", "Found", "exhaustive", "eos_masked", "rm_scorer", "lm_scorer", "onehot_with_bos", "search_proxy"]


class Ranked(NamedTuple):
    """Sequences placed among all N by proxy; fields [K] (or [R])."""

    index: Array  # flat terminal index (mdp's level order)
    proxy: Array  # proxy reward (from the enumerated table)
    gold: Array  # gold reward
    log_p0: Array  # log pi0
    rank: Array  # number of sequences with a strictly larger proxy (0: an argmax)


class Found(NamedTuple):
    """What the coordinate-gradient search found, per restart, against enumeration."""

    tokens: np.ndarray  # [R, L] best sequence of each restart (EOS-continued)
    score: np.ndarray  # [R] the proxy model's score of it, as the search saw it
    found: Ranked  # [R] the same sequences placed among all N (table values)
    best: Ranked  # [1] the enumerated proxy argmax (first in flat order among ties)


def _rank(index: Array, proxy: Array, gold: Array, log_p0: Array) -> Ranked:
    r = proxy[index]
    rank = jnp.sum(proxy[None, :] > r[:, None], axis=1)
    return Ranked(index, r, gold[index], log_p0[index], rank)


def exhaustive(proxy: Array, gold: Array, log_p0: Array, k: int = 1) -> Ranked:
    """The top-k sequences by proxy over the enumerated tree (ties: first in flat order).

    Args:
      proxy, gold, log_p0: [N] per terminal sequence.
      k: static, K <= N.
    Returns:
      `Ranked` with [K] fields, best first.
    """
    _, index = jax.lax.top_k(proxy, k)
    return _rank(index, proxy, gold, log_p0)


def eos_masked(scorer: Scorer, eos: int) -> Scorer:
    """A `Scorer` of EOS-continued lab sequences: the given mask is replaced by "up to the first EOS".

    Args:
      scorer: scores (params, ids [B, T], mask [B, T]) and (params, onehot [B, T, V], mask).
      eos: the EOS id.
    """

    def score_tokens(params, ids, mask):
        return scorer.score_tokens(params, ids, lm.token_mask(ids, eos).astype(mask.dtype))

    def score_onehot(params, onehot, mask):
        m = lm.token_mask(jnp.argmax(onehot, axis=-1), eos).astype(mask.dtype)
        return scorer.score_onehot(params, onehot, m)

    return Scorer(scorer.params, score_tokens, score_onehot, scorer.vocab_size)


def rm_scorer(cfg: lm.LMConfig, params: dict) -> Scorer:
    """The lab reward model (`lab.rewards.rm_reward`) as a `Scorer` of EOS-continued lab tokens.

    `score_tokens` is `rm_reward` itself (the given mask is ignored: the model
    masks after the first EOS). `score_onehot` runs the same decoder on
    [BOS, onehot] (onehot [B, L, A] widened with a zero BOS column, embedded
    as onehot @ E), with the mask of the one-hot's argmax, and the same head
    at the last real position: equal to `score_tokens` on exact one-hots
    and differentiable in them, as GCG needs.

    Args:
      cfg: the reward model's sizes (`rewards.proxy_config` ...).
      params: its parameters ({"backbone", "score"}).
    """
    A = cfg.vocab

    def score_tokens(p, ids, mask):
        return rewards.rm_reward(p, ids, cfg)

    def score_onehot(p, onehot, mask):
        B = onehot.shape[0]
        real = lm.token_mask(jnp.argmax(onehot, axis=-1), cfg.eos)
        m = jnp.concatenate([jnp.ones((B, 1), bool), real], axis=1).astype(jnp.int32)
        return rewards.rm_head(p, cfg, None, m, onehot_with_bos(onehot, cfg.bos, p["score"]["kernel"].dtype))

    return Scorer(params, score_tokens, score_onehot, A)


def onehot_with_bos(onehot: Array, bos: int, dtype) -> Array:
    """[BOS, onehot] as inputs embedded by onehot @ E: onehot [B, L, A] widened with a zero BOS column and led
    by BOS's one-hot; returns [B, L + 1, A + 1] in `dtype` (the one-hot form of `lm.with_bos`)."""
    B, L, A = onehot.shape
    x = jnp.concatenate([onehot.astype(dtype), jnp.zeros((B, L, 1), dtype)], axis=-1)
    first = jnp.broadcast_to(jax.nn.one_hot(bos, A + 1, dtype=dtype), (B, 1, A + 1))
    return jnp.concatenate([first, x], axis=1)


def lm_scorer(cfg: lm.LMConfig, params: dict) -> Scorer:
    """The lab LM's log pi0(x) as a `Scorer` of EOS-continued lab tokens: GCG's base model for a KL penalty.

    With it as `base` and `penalty` = beta, GCG maximises proxy(x) + beta log pi0(x) = proxy(x) - beta KL(delta_x
    || pi0): the KL-penalised objective restricted to point masses. `score_tokens` is
    `lm.sequence_logprob`; `score_onehot` runs the same decoder on [BOS, onehot[:, :-1]] (a zero BOS
    column, embedded as onehot @ E) and sums onehot . log_softmax(logits) over the real positions (those of
    the one-hot's argmax): equal on exact one-hots, differentiable in them.

    Args:
      cfg: the LM's sizes.
      params: its parameters ({"backbone", "lm_head"}).
    """
    A = cfg.vocab
    logits_fn = lm.make_logits(cfg)

    def score_tokens(p, ids, mask):
        return lm.sequence_logprob(logits_fn, p, ids)

    def score_onehot(p, onehot, mask):
        kernel = p["lm_head"]["kernel"]
        module = lm.module(cfg, kernel.dtype)
        B, L = onehot.shape[:2]
        oh = onehot.astype(kernel.dtype)
        inputs = onehot_with_bos(onehot, cfg.bos, kernel.dtype)[:, :-1]  # [B, L, A + 1]: BOS, then all but the last
        h = module.apply({"params": p["backbone"]}, None, jnp.ones((B, L), jnp.int32), inputs).last_hidden_state
        logp = jax.nn.log_softmax(jnp.einsum("btd,da->bta", h, kernel), axis=-1)
        real = lm.token_mask(jnp.argmax(onehot, axis=-1), cfg.eos)
        return jnp.sum(jnp.where(real, jnp.sum(oh * logp, axis=-1), 0.0), axis=1)

    return Scorer(params, score_tokens, score_onehot, A)


def search_proxy(key: Array, config: gcg.SearchConfig, proxy_scorer: Scorer, proxy: Array, gold: Array,
                 log_p0: Array, *, vocab: int, base: Optional[Scorer] = None, penalty: float = 0.0,
                 num_restarts: int = 4) -> Found:
    """GCG/ACG on the proxy model over the lab's sequences, placed against enumeration.

    Runs `goodhart_jax.search.search` (R restarts, one jit) with the scorer
    masked after EOS (`eos_masked`), then looks each restart's best sequence
    up in the enumerated tables.

    Args:
      key: PRNG key.
      config: `search.SearchConfig` with length = L; ban ids outside the lab
        vocabulary (e.g. BOS) through `banned_ids`.
      proxy_scorer: the proxy reward model as a `Scorer` of lab sequences
        (`rm_scorer` for a lab reward model).
      proxy, gold, log_p0: [N] enumerated tables in mdp's flat level order
        (proxy = the same model's scores of every sequence).
      vocab: A, the lab vocabulary (EOS = A - 1).
      base, penalty: optional base-LM `Scorer` and lambda (objective r + lambda log pi0).
      num_restarts: R.
    Returns:
      `Found`.
    """
    eos = vocab - 1
    masked = eos_masked(proxy_scorer, eos)
    base = None if base is None else eos_masked(base, eos)
    state, _ = gcg.search(key, config, masked, base, penalty=penalty, num_restarts=num_restarts)
    tokens = jnp.asarray(state.best_tokens)
    if int(jnp.max(tokens)) >= vocab:
        raise ValueError(f"the search produced ids >= vocab {vocab}; ban them with SearchConfig(banned_ids=...)")
    tokens = jnp.where(lm.token_mask(tokens, eos), tokens, eos)  # EOS-continued: what follows EOS is not read
    idx = terminal_index(tokens, vocab)
    return Found(np.asarray(tokens), np.asarray(state.best_reward), _rank(idx, proxy, gold, log_p0),
                 exhaustive(proxy, gold, log_p0, 1))
