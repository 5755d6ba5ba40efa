"""The contract between scoring models and the searches that use them.

A `Scorer` is any differentiable function of a token sequence: a reward model
(`goodhart_jax.models`), a base causal LM's log-probability, or a toy function
in a test. The coordinate-gradient search (`goodhart_jax.search`) only sees this
interface, so it works on anything that provides it.

Glossary: B batch, T sequence, V vocabulary.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from jax import Array


class PrefixScoring(NamedTuple):
    """Scoring rows that equal one cached sequence before their first edited position.

    Fields:
      cache: (params, tokens [T] int) -> cache pytree of that sequence.
      score_rows: (params, cache, rows [C, T] int, first [C] int, slots: int)
        -> ([C] scores, [] tokens needed): scores of rows equal to the cached
        sequence before first[c], computing only their sum_c (T - first[c])
        later tokens in `slots` static slots; equal to `score_tokens` on the
        rows (unpadded) up to float rounding when tokens needed <= slots.
    """

    cache: Callable[[Any, Array], Any]
    score_rows: Callable[..., tuple[Array, Array]]


class Scorer(NamedTuple):
    """A differentiable sequence scorer.

    Fields:
      params: pytree of parameters, passed as the first argument of both
        functions (so they can be jitted without baking arrays in).
      score_tokens: (params, input_ids [B, T] int, mask [B, T]) -> [B] scores.
      score_onehot: (params, onehot [B, T, V] float, mask [B, T]) -> [B]
        scores; equal to `score_tokens` on exact one-hot inputs and
        differentiable in `onehot` (the relaxed input of GCG/ACG).
      vocab_size: V, the size of the one-hot axis.
      prefix: optional `PrefixScoring` (None: the scorer has none).
      distinct: whether score_tokens also takes distinct=(ids [U] int, src [B, T] int) with
        input_ids[b, t] = ids[src[b, t]], a speed hint for batches that share most tokens (the search's
        candidates); the scores are those without it, up to float rounding. `prefix.score_rows` then
        takes it too (distinct=(ids, src [C, T]) with rows = ids[src]).
    """

    params: Any
    score_tokens: Callable[[Any, Array, Array], Array]
    score_onehot: Callable[[Any, Array, Array], Array]
    vocab_size: int
    prefix: Optional[PrefixScoring] = None
    distinct: bool = False
