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

The lab's models are `models.LoadedModel`s (`lm.as_model`, `rewards.rm_model`): `rm_scorer` and `lm_scorer` are
the `models.reward_scorer` / `logprob_scorer` that serve checkpoints in GCG, seen through `lab_view` ([BOS, x]
inputs, the mask up to the first EOS, lab parameter keys).

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
from goodhart_jax.models import ARCHITECTURES, logprob_scorer, reward_scorer
from goodhart_jax.scorer import Scorer

__all__ = ["Ranked", "Found", "exhaustive", "eos_masked", "lab_view", "rm_scorer", "lm_scorer", "search_proxy"]


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


def lab_view(scorer: Scorer, cfg: lm.LMConfig) -> Scorer:
    """A `models` Scorer of a lab decoder (`reward_scorer` / `logprob_scorer` of `lm.as_model`) as a Scorer of
    EOS-continued lab tokens with lab parameters.

    Tokens [B, L] become [BOS, x] with the mask "up to the first EOS" (`lm.lab_inputs`; the given mask is
    ignored); one-hots [B, L, A] become [B, L + 1, A + 1] with a zero BOS column and the mask of their argmax
    (`lm.lab_onehot_inputs`); the parameters are renamed to the model's keys (`lm.model_params`). Equal on
    exact one-hots and differentiable in them, as GCG needs. No prefix scoring: the mask depends on the tokens.

    Args:
      scorer: the model's Scorer (its functions take model-keyed parameters).
      cfg: the lab model's sizes.
    Returns:
      Scorer over vocabulary A whose `params` are `scorer.params` keyed back as the lab's ({"backbone", ...}).
    """
    key = ARCHITECTURES[cfg.arch].params_key

    def score_tokens(p, ids, mask):
        x, m = lm.lab_inputs(ids, cfg.vocab)
        return scorer.score_tokens(lm.model_params(p, cfg), x, m)

    def score_onehot(p, onehot, mask):
        x, m = lm.lab_onehot_inputs(onehot)
        return scorer.score_onehot(lm.model_params(p, cfg), x, m)

    params = {("backbone" if k == key else k): v for k, v in scorer.params.items()}
    return Scorer(params, score_tokens, score_onehot, cfg.vocab)


def rm_scorer(cfg: lm.LMConfig, params: dict) -> Scorer:
    """A lab reward model as a `Scorer` of EOS-continued lab tokens: `models.reward_scorer` of
    `rewards.rm_model` seen through `lab_view` (its token path equals `rewards.rm_reward` up to float rounding:
    the last layer computes only the pooled position).

    Args:
      cfg: the reward model's sizes (`rewards.proxy_config` ...).
      params: its parameters ({"backbone", "score"}).
    """
    return lab_view(reward_scorer(rewards.rm_model(cfg, params)), cfg)


def lm_scorer(cfg: lm.LMConfig, params: dict) -> Scorer:
    """The lab LM's log pi0(x) as a `Scorer` of EOS-continued lab tokens: GCG's base model for a KL penalty.

    With it as `base` and `penalty` = beta, GCG maximises proxy(x) + beta log pi0(x) = proxy(x) - beta KL(delta_x
    || pi0): the KL-penalised objective restricted to point masses. `models.logprob_scorer` of `lm.as_model`
    seen through `lab_view`: sum_t log pi0(x_t | BOS, x_<t) over the real tokens, as `lm.sequence_logprob`.

    Args:
      cfg: the LM's sizes.
      params: its parameters ({"backbone", "lm_head"}).
    """
    return lab_view(logprob_scorer(lm.as_model(cfg, params)), cfg)


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
