"""Coordinate-gradient search for high-scoring token sequences: GCG and ACG.

Maximises the objective

    J(x) = r(x) - lambda * (-log pi0(x)) = r(x) + lambda * log pi0(x)

over token sequences x of a fixed length T, where r is any differentiable
`Scorer` (a reward model) and pi0 an optional base causal LM (its `Scorer`
returns log pi0(x)). One step (Zou et al. 2023, GCG; Haize Labs 2024, ACG):

1. g = dJ/d onehot(x), the gradient with respect to the one-hot input [T, V]
   (through the embedding matrix of the model);
2. the top-k tokens per position by g (banned ids excluded; with
   `exclude_current` also the current token, so every edit changes x);
3. C candidates, each changing n distinct positions of x to one of that
   position's top-k tokens, n = schedule(i) (constant for GCG, annealed
   9 -> 2 for the paper's ACG);
4. all C candidates scored in one batched forward pass; x moves to the best
   candidate (even when it is worse than x: GCG's rule; with `from_best`,
   only when it beats the best so far);
5. a best-so-far buffer keeps the best sequence ever scored, so the search
   never loses its best.

API in the style of blackjax/gymnax: `make_search(config, reward, base) ->
(init, step)` with `init(key, params) -> state` and
`step(key, state, params) -> (state, info)`. The scorers' *functions* are
closed over; their *parameters* travel in `SearchParams` as an argument, so a
jitted step never bakes weight arrays in as constants and the penalty
lambda stays traced (sweepable without recompiling). `make_scan` loops `step`
under `lax.scan`; `search` vmaps restarts and jits once.

Glossary: T sequence, V vocabulary, C candidates, E max edits per candidate,
R restarts, I iterations.

References: Kwa, Thomas, Garriga-Alonso 2024, Section 4-5 and Table 2;
Zou et al. 2023 (GCG); Haize Labs 2024 (ACG).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from goodhart_jax.scorer import Scorer
from goodhart_jax.search import schedules
from goodhart_jax.search.mixture_kl import mixture_kl, mixture_kl_approx

TokenFilter = Callable[[np.ndarray], np.ndarray]
"""Host-side filter: int ids [..., T] -> bool [...] (True = keep)."""


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Static settings of the search (all shapes and sizes).

    Fields:
      length: T, tokens per sequence.
      topk: tokens kept per position from the gradient (the paper's k = 3).
      num_candidates: C, candidates scored per step in one batch.
      num_iters: I, steps of a full run (the linear schedule's horizon and
        the step past which `make_scan` freezes the state).
      schedule: "gcg" (= "constant"), "linear" or "paper" (ACG annealing).
      edits: n of the constant schedule (GCG's original is 1).
      edits_start, edits_end: ends of the linear schedule.
      banned_ids: token ids that never appear (special tokens).
      from_best: move only to a candidate that beats the best so far (a
        greedy variant); default False, GCG's move to the best candidate.
      exclude_current: leave each position's current token out of its top-k,
        so no candidate repeats x at an edited position (default False, as
        in GCG, where such no-op edits are possible).
      share_prefix: score each candidate only from its first edited
        position on, against the cached keys and values of the current
        sequence before it (the reward `Scorer`'s `prefix`; no base model):
        the C candidates' later tokens are packed into `prefix_slots()`
        static slots (a 1% quantile of their count: at T = 32, C = 64,
        n = 2 about 0.75 C T); a step whose candidates need more scores them
        the plain way. The candidates, their scores (up to float rounding)
        and so the steps are those of the plain path: an exact speed-up,
        largest for few edits (n = 1-2). Default False. Under `vmap`
        (restarts) a step takes the plain pass for all restarts when one
        of them needs it (`cond_all`).
      dedup_first_layer: the candidates hold at most T + C E distinct
        (token, source) rows: the current sequence's tokens and the edits.
        With a reward `Scorer` that takes `distinct` (a GPT-NeoX model), the
        first layer's per-token work (norms, QKV projection, parallel MLP)
        runs on those T + C E rows and is gathered, instead of on C T: the
        same scores up to float rounding (at T = 32, C = 64, n = 2: 160 of
        2048 rows). Default True; no effect on other scorers, nor when
        T + C E >= C T. Combines with share_prefix (the packed slots' first
        layer on the same distinct rows; the reward scorer's `prefix`
        score_rows then takes distinct=(ids, src [C, T]) too).
    """

    length: int
    topk: int = 8
    num_candidates: int = 64
    num_iters: int = 1000
    schedule: str = "paper"
    edits: int = 1
    edits_start: int = 9
    edits_end: int = 2
    banned_ids: tuple[int, ...] = ()
    from_best: bool = False
    exclude_current: bool = False
    share_prefix: bool = False
    dedup_first_layer: bool = True

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.num_iters < 1:
            raise ValueError(f"num_iters must be >= 1, got {self.num_iters}")
        if self.schedule not in schedules.SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; "
                             f"expected one of {schedules.SCHEDULES}")
        if min(self.edits, self.edits_start, self.edits_end) < 1:
            raise ValueError("edits, edits_start and edits_end must be >= 1")
        object.__setattr__(self, "banned_ids", tuple(sorted({int(b) for b in self.banned_ids})))

    @property
    def max_edits(self) -> int:
        """E, the static number of positions sampled per candidate."""
        return min(self.length, schedules.max_edits(
            self.schedule, edits=self.edits, edits_start=self.edits_start,
            edits_end=self.edits_end, num_iters=self.num_iters))

    def prefix_slots(self) -> int:
        """N, the static slots of `share_prefix` (see `prefix_slots`)."""
        return prefix_slots(self.length, self.num_candidates, self.max_edits)

    def make_schedule(self) -> schedules.Schedule:
        return schedules.make_schedule(
            self.schedule, edits=self.edits, edits_start=self.edits_start,
            edits_end=self.edits_end, num_iters=self.num_iters)


def prefix_slots(length: int, num_candidates: int, edits: int, miss: float = 0.01) -> int:
    """Static slots for the tokens candidates need from their first edit on (`SearchConfig.share_prefix`).

    A candidate edits n distinct uniform positions of T, so its first edit f
    has P(f >= s) = binom(T - s, n) / binom(T, n) and it needs T - f tokens
    (its last position at least). The C candidates need the sum, whose law is
    the C-fold convolution of that of T - f (exact, float64); the slots are
    its (1 - miss)-quantile, so a step falls back to the plain pass with
    probability <= miss (fewer edits, or edits that keep a token, need fewer).

    Args:
      length: T; num_candidates: C; edits: n (the largest of the schedule).
    Returns:
      N in [C, C T].
    """
    n, t = min(edits, length), length
    tail = np.array([math.comb(t - s, n) for s in range(t + 1)], np.float64) / math.comb(t, n)   # P(f >= s)
    pmf_f = tail[:-1] - tail[1:]                                                  # P(f = s), s < T
    pmf = np.zeros(t + 1)
    pmf[t - np.arange(t)] = pmf_f                                                 # law of max(T - f, 1)
    total = np.ones(1)
    for _ in range(num_candidates):
        total = np.convolve(total, pmf)
    return int(min(num_candidates * t, np.searchsorted(np.cumsum(total), 1.0 - miss)))


class SearchParams(NamedTuple):
    """Traced inputs of the search.

    Fields:
      reward: pytree, params of the reward `Scorer`.
      base: pytree, params of the base-LM `Scorer` (None without a base model).
      penalty: [] lambda, weight of the base log-probability in the objective.
    """

    reward: Any
    base: Any
    penalty: Array


class SearchState(NamedTuple):
    """The search's carry between steps (`make_search`'s `init` makes it, `step` advances it); one restart's,
    a leading [R] on every field when restarts are vmapped."""
    tokens: Array          # [T] int32, current sequence
    objective: Array       # [] objective J of `tokens`
    best_tokens: Array     # [T] int32, best sequence scored so far
    best_objective: Array  # [] its objective J = reward + lambda * logprob
    best_reward: Array     # [] its reward r
    best_logprob: Array    # [] its log pi0 (0 when the search has no base model)
    iteration: Array       # [] int32, steps taken


class SearchInfo(NamedTuple):
    """What one step did (`step`'s second output); stacked over steps, [num_iters] per field, by `search`."""
    objective: Array       # [] objective of the candidate moved to
    reward: Array          # [] its reward
    best_objective: Array  # [] best-so-far objective after the step
    best_reward: Array     # [] best-so-far reward after the step
    best_logprob: Array    # [] best-so-far base log-probability (0 without a base model)
    num_edits: Array       # [] int32, n used at this step
    improved: Array        # [] bool, whether the best was replaced
    active: Array          # [] bool, False for padding steps past num_iters


def search_params(reward: Scorer, base: Optional[Scorer] = None,
                  penalty: float = 0.0) -> SearchParams:
    """Bundles the scorers' parameters and lambda into `SearchParams`.

    Args:
      reward: the reward `Scorer`.
      base: optional base LM `Scorer`.
      penalty: lambda.
    """
    return SearchParams(reward=reward.params,
                        base=None if base is None else base.params,
                        penalty=jnp.asarray(penalty, jnp.float32))


def _upcast(x: Array) -> Array:
    """At least float32 (bfloat16 scores are upcast; float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _scores(reward: Scorer, base: Optional[Scorer]):
    """Token and one-hot scoring of the objective and its parts."""

    def on_tokens(params: SearchParams, tokens: Array, distinct: Optional[tuple[Array, Array]] = None):
        """tokens [C, T] -> (objective [C], reward [C], logprob [C]); `distinct` (ids [U], src [C, T]):
        the reward scorer's speed hint, used when it takes one."""
        mask = np.ones(tokens.shape, np.int32)   # known while tracing: rotary tables are constants
        if distinct is not None and reward.distinct:
            r = _upcast(reward.score_tokens(params.reward, tokens, mask, distinct=distinct))
        else:
            r = _upcast(reward.score_tokens(params.reward, tokens, mask))
        if base is None:
            return r, r, jnp.zeros_like(r)
        lp = _upcast(base.score_tokens(params.base, tokens, mask))
        return r + params.penalty * lp, r, lp

    def on_onehot(params: SearchParams, onehot: Array) -> Array:
        """onehot [T, V] -> [] objective (differentiable in onehot)."""
        mask = np.ones((1, onehot.shape[0]), np.int32)
        r = reward.score_onehot(params.reward, onehot[None], mask)[0]
        if base is None:
            return _upcast(r)
        lp = base.score_onehot(params.base, onehot[None], mask)[0]
        return _upcast(r) + params.penalty * _upcast(lp)

    return on_tokens, on_onehot


def onehot_gradient(reward: Scorer, base: Optional[Scorer] = None):
    """dJ/d onehot(x): the gradient GCG ranks tokens by.

    Args:
      reward: the reward `Scorer`.
      base: optional base LM `Scorer` (its log pi0 enters J).
    Returns:
      fn(params: SearchParams, tokens [T] int) -> (J [], grad [T, V]).
    """
    vocab = reward.vocab_size
    _, on_onehot = _scores(reward, base)

    def fn(params, tokens):
        floats = [x.dtype for x in jax.tree.leaves(params.reward)
                  if jnp.issubdtype(x.dtype, jnp.floating)]
        dtype = jnp.result_type(jnp.float32, *floats)   # float64 params: float64 gradient
        onehot = jax.nn.one_hot(tokens, vocab, dtype=dtype)
        return jax.value_and_grad(on_onehot, argnums=1)(params, onehot)
    return fn


def top_k_ids(x: Array, k: int, chunk: int = 128, axis: int = -1) -> Array:
    """The indices of `lax.top_k` along `axis` (ties: the lower index first), in two small top-k's instead of one wide.

    Split the axis into chunks of `chunk`; the k largest entries lie in
    the k chunks with the largest maxima (ties: the lower chunk), since each
    of those chunks holds an entry that precedes any entry of an unchosen
    chunk in (value descending, index ascending) order. Those k chunks, in
    index order, are searched for the k largest. XLA's CPU TopK is one thread
    per call; at V = 50304 this cuts it from ~4% of a GCG step to a row max
    and two top-k's over [V / chunk] and [k chunk]. Equal to
    `lax.top_k(jnp.moveaxis(x, axis, -1), k)[1]` for any x without NaN
    (padding is -inf, after every real index). With axis 0 the scores can
    stay [V, T], the layout in which XLA CPU takes GCG's gradient product
    g E^T fastest (E the streamed left operand).

    Args:
      x: [..., V, ...] float scores (no NaN), V at `axis`.
      k: how many, <= V.
      chunk: entries per chunk (static).
      axis: the axis to rank along (static).
    Returns:
      [..., ..., k] int32 indices (x's other axes in order, then k), largest first.
    """
    axis = axis % x.ndim
    v = x.shape[axis]
    if k * chunk * 2 > v:                                     # too narrow to gain: one top-k
        return lax.top_k(jnp.moveaxis(x, axis, -1), k)[1]
    pad = -v % chunk
    if pad:
        fill = jnp.full(x.shape[:axis] + (pad,) + x.shape[axis + 1:], -jnp.inf, x.dtype)
        x = jnp.concatenate([x, fill], axis=axis)
    blocks = x.reshape(x.shape[:axis] + (-1, chunk) + x.shape[axis + 1:])   # [..., V / chunk, chunk, ...]
    maxima = jnp.moveaxis(jnp.max(blocks, axis=axis + 1), axis, -1)         # [..., ..., V / chunk]
    chosen = jnp.sort(lax.top_k(maxima, k)[1], axis=-1)                     # [..., ..., k] chunk ids, ascending
    other = maxima.shape[:-1]
    iotas = tuple(lax.broadcasted_iota(jnp.int32, other + (k,), d) for d in range(len(other)))
    cand = blocks[iotas[:axis] + (chosen, slice(None)) + iotas[axis:]]      # [..., ..., k, chunk]
    j = lax.top_k(cand.reshape(other + (k * chunk,)), k)[1]                 # [..., ..., k]
    return (jnp.take_along_axis(chosen, j // chunk, axis=-1) * chunk + j % chunk).astype(jnp.int32)


def cond_all(pred: Array, true_fn: Callable, false_fn: Callable, *operands):
    """`lax.cond(pred, true_fn, false_fn, *operands)` that stays one branch under `vmap`.

    `vmap` turns a `cond` on a batched predicate into a select that runs both
    branches; here the batch takes true_fn (vmapped) when pred holds for
    every row, else false_fn. Right when both branches compute the same
    function (as the search's plain and prefix-sharing scorers do, up to
    float rounding), so only speed depends on the choice. The branches must
    not close over batched values: pass them as operands.
    """
    @jax.custom_batching.custom_vmap
    def run(pred, *operands):
        return lax.cond(pred, true_fn, false_fn, *operands)

    @run.def_vmap
    def rule(axis_size, in_batched, pred, *operands):
        pred = jnp.all(pred) if in_batched[0] else pred
        axes = jax.tree.map(lambda b: 0 if b else None, tuple(in_batched[1:]))
        out = lax.cond(pred, jax.vmap(true_fn, axes, axis_size=axis_size),
                       jax.vmap(false_fn, axes, axis_size=axis_size), *operands)
        return out, jax.tree.map(lambda _: True, out)

    return run(pred, *operands)


def _apply_filter(token_filter: Optional[TokenFilter], tokens: Array) -> Array:
    """tokens [..., T] -> bool [...] via a host callback (all True without a filter)."""
    if token_filter is None:
        return jnp.ones(tokens.shape[:-1], bool)

    def host(ids):
        ids = np.asarray(ids)
        flat = ids.reshape(-1, ids.shape[-1])
        keep = np.asarray([bool(token_filter(row)) for row in flat], bool)
        return keep.reshape(ids.shape[:-1])

    return jax.pure_callback(host, jax.ShapeDtypeStruct(tokens.shape[:-1], jnp.bool_),
                             tokens, vmap_method="expand_dims")


def make_search(config: SearchConfig, reward: Scorer, base: Optional[Scorer] = None,
                token_filter: Optional[TokenFilter] = None):
    """GCG/ACG as a pure `(init, step)` pair for one restart.

    Args:
      config: static `SearchConfig`.
      reward: the `Scorer` to maximise (only its functions are used here;
        pass its params through `SearchParams`).
      base: optional base-LM `Scorer` returning log pi0(x); with it the
        objective is r(x) + lambda * log pi0(x), lambda = params.penalty.
      token_filter: optional host-side predicate on one sequence (np.ndarray
        [T] -> bool), e.g. `retokenize_filter(tokenizer)`. Candidates it
        rejects are never moved to nor kept as best. It runs through
        `jax.pure_callback` once per step on all C candidates, so it costs a
        device-to-host round trip per step.

    Returns:
      init(key, params, tokens=None) -> SearchState: random allowed tokens
        (or the given [T] tokens), scored. If the filter rejects them the
        best-so-far objective starts at -inf.
      step(key, state, params) -> (SearchState, SearchInfo).
    """
    vocab = int(reward.vocab_size)
    if base is not None and int(base.vocab_size) != vocab:
        raise ValueError(f"reward vocab {vocab} != base vocab {base.vocab_size}")
    banned = np.asarray(config.banned_ids, np.int64)
    if bad := [b for b in config.banned_ids if not 0 <= b < vocab]:
        raise ValueError(f"banned id {bad[0]} is outside the vocabulary [0, {vocab})")
    allowed = np.setdiff1d(np.arange(vocab), banned).astype(np.int32)
    choosable = allowed.size - int(config.exclude_current)
    if config.topk > choosable:
        raise ValueError(f"topk {config.topk} exceeds the {choosable} tokens a position can take")

    T, C, K, E = config.length, config.num_candidates, config.topk, config.max_edits
    schedule = config.make_schedule()
    on_tokens, on_onehot = _scores(reward, base)
    slots = config.prefix_slots() if config.share_prefix else 0
    if slots and (reward.prefix is None or base is not None):
        raise ValueError("share_prefix needs a reward Scorer with `prefix` (a model reward head pooling the "
                         "last position) and no base model")

    def score_candidates(params: SearchParams, tokens: Array, cand: Array, distinct):
        """cand [C, T] -> (objective, reward, logprob) [C] each; with share_prefix, from each one's first edit;
        distinct: None or (ids [U], src [C, T]) with cand = ids[src]."""
        if not slots:
            return on_tokens(params, cand, distinct)
        differ = cand != tokens
        first = jnp.where(differ.any(1), jnp.argmax(differ, axis=1), T)          # [C] first edited position
        fits = jnp.sum(T - jnp.minimum(first, T - 1)) <= slots

        hint = distinct if reward.distinct else None

        def shared(p, tokens, cand, first, hint):
            kv = reward.prefix.cache(p, tokens)
            if hint is None:
                return reward.prefix.score_rows(p, kv, cand, first, slots)[0]
            return reward.prefix.score_rows(p, kv, cand, first, slots, distinct=hint)[0]

        def plain(p, tokens, cand, first, hint):
            mask = np.ones(cand.shape, np.int32)
            if hint is None:
                return reward.score_tokens(p, cand, mask)
            return reward.score_tokens(p, cand, mask, distinct=hint)

        r = _upcast(cond_all(fits, shared, plain, params.reward, tokens, cand, first, hint))
        return r, r, jnp.zeros_like(r)

    grad_fn = jax.grad(on_onehot, argnums=1)
    banned_mask = np.zeros((vocab,), bool)
    banned_mask[banned] = True

    def init(key: Array, params: SearchParams, tokens: Optional[Array] = None) -> SearchState:
        if tokens is None:
            tokens = jnp.asarray(allowed)[jax.random.randint(key, (T,), 0, allowed.size)]
        tokens = jnp.asarray(tokens, jnp.int32).reshape(T)
        obj, r, lp = on_tokens(params, tokens[None])
        valid = _apply_filter(token_filter, tokens[None])[0]
        best_obj = jnp.where(valid, obj[0], -jnp.inf)
        return SearchState(tokens=tokens, objective=obj[0], best_tokens=tokens,
                           best_objective=best_obj, best_reward=r[0], best_logprob=lp[0],
                           iteration=jnp.zeros((), jnp.int32))

    def step(key: Array, state: SearchState, params: SearchParams):
        k_pos, k_tok = jax.random.split(key)
        onehot = jax.nn.one_hot(state.tokens, vocab, dtype=jnp.float32)       # [T, V]
        grad = grad_fn(params, onehot)                                        # [T, V]
        # Banned ids never enter; nor does the current token (an edit to it
        # would be a wasted no-op candidate).
        excl = banned_mask | (onehot > 0) if config.exclude_current else banned_mask
        # Ranked as [V, T]: XLA then takes the gradient product g E^T as E g^T, the [V, D] table
        # streamed as the left operand (bitwise the same entries; the [T, V] form is slower on a CPU).
        grad = jnp.where(jnp.broadcast_to(excl, grad.shape).T, -jnp.inf, grad.T)   # [V, T]
        top_ids = top_k_ids(grad, K, axis=0)                                  # [T, K], as lax.top_k

        n = jnp.clip(schedule(state.iteration), 1, E)
        pos = lax.top_k(jax.random.uniform(k_pos, (C, T)), E)[1]              # [C, E] distinct
        pick = jax.random.randint(k_tok, (C, E), 0, K)                        # [C, E]
        new = top_ids[pos, pick]                                              # [C, E]
        active = jnp.arange(E) < n                                            # [E]
        new = jnp.where(active, new, state.tokens[pos])
        # The candidates as ids[src]: the current tokens and the edits [T + C E], and where each of the
        # C T entries comes from (the same tokens as x with new[c, e] set at pos[c, e]; one scatter of
        # the [C, T] sources serves the candidates and the first-layer hint).
        ids = jnp.concatenate([state.tokens, new.reshape(-1)])                # [T + C E]
        src = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (C, T))
        src = src.at[jnp.arange(C)[:, None], pos].set(T + jnp.arange(C * E, dtype=jnp.int32).reshape(C, E))
        cand = ids[src]                                                       # [C, T]
        distinct = (ids, src) if config.dedup_first_layer and T + C * E < C * T else None

        obj, r, lp = score_candidates(params, state.tokens, cand, distinct)   # [C] each
        obj = jnp.where(_apply_filter(token_filter, cand), obj, -jnp.inf)
        i = jnp.argmax(obj)
        move = jnp.isfinite(obj[i])
        improved = obj[i] > state.best_objective
        if config.from_best:
            move = improved
        new_state = SearchState(
            tokens=jnp.where(move, cand[i], state.tokens),
            objective=jnp.where(move, obj[i], state.objective),
            best_tokens=jnp.where(improved, cand[i], state.best_tokens),
            best_objective=jnp.where(improved, obj[i], state.best_objective),
            best_reward=jnp.where(improved, r[i], state.best_reward),
            best_logprob=jnp.where(improved, lp[i], state.best_logprob),
            iteration=state.iteration + 1)
        info = SearchInfo(objective=obj[i], reward=r[i],
                          best_objective=new_state.best_objective,
                          best_reward=new_state.best_reward,
                          best_logprob=new_state.best_logprob, num_edits=n,
                          improved=improved, active=jnp.asarray(True))
        return new_state, info

    return init, step


def make_scan(step, num_steps: int, num_iters: Optional[int] = None):
    """Loops `step` `num_steps` times under `lax.scan`.

    The step key is `fold_in(key, state.iteration)`, so a run cut into chunks
    (as the CLI does for its progress bar) gives the same result as one scan.
    Steps at or past `num_iters` leave the state unchanged (`info.active` is
    False), so the last chunk can be padded to a fixed length without a
    recompile.

    Returns:
      run(key, state, params) -> (state, infos with a leading [num_steps] axis).
    """
    def run(key, state, params):
        def body(state, _):
            new_state, info = step(jax.random.fold_in(key, state.iteration), state, params)
            if num_iters is not None:
                live = state.iteration < num_iters
                new_state = jax.tree.map(lambda a, b: jnp.where(live, a, b), new_state, state)
                info = info._replace(active=live)
            return new_state, info
        return lax.scan(body, state, None, length=num_steps)
    return run


def search(key: Array, config: SearchConfig, reward: Scorer, base: Optional[Scorer] = None,
           *, penalty: float = 0.0, num_restarts: int = 1,
           token_filter: Optional[TokenFilter] = None):
    """Runs `num_restarts` independent searches of `config.num_iters` steps.

    The entry point: one `jax.jit(jax.vmap(...))` over restarts of the whole
    scanned loop. Restart r uses key `split(key, R)[r]` (split again into an
    init key and a run key), the same keys as the chunked CLI.

    Args:
      reward: the reward `Scorer` r.
      base: optional base causal LM `Scorer`: J = r + penalty log pi0.
      penalty: lambda, the weight of log pi0 in J.
      token_filter: optional host-side filter of candidates (`retokenize_filter`).
    Returns:
      (SearchState with a leading [R] axis, SearchInfo with leading [R, I] axes).
    """
    init, step = make_search(config, reward, base, token_filter)
    run = make_scan(step, config.num_iters, config.num_iters)

    def one(key, params):
        k_init, k_run = jax.random.split(key)
        return run(k_run, init(k_init, params), params)

    params = search_params(reward, base, penalty)
    keys = jax.random.split(key, num_restarts)
    return jax.jit(jax.vmap(one, in_axes=(0, None)))(keys, params)


def search_chunks(key: Array, config: SearchConfig, reward: Scorer, base: Optional[Scorer] = None,
                  *, penalty: float = 0.0, num_restarts: int = 1,
                  token_filter: Optional[TokenFilter] = None, chunk: int = 0):
    """`search` cut into chunks of steps, for progress bars and files written between chunks.

    Restart r uses the keys of `search` and `make_scan` folds the iteration
    into the step key, so the chunks together take exactly the steps of
    `search` (same final state, same infos). Two jitted calls: the vmapped
    init, and one chunk of `chunk` steps (the last chunk padded with
    inactive steps, so nothing recompiles). The inputs are checked here,
    before the first chunk runs.

    Args:
      key, config, reward, base, penalty, num_restarts, token_filter: as in `search`.
      chunk: steps per jitted call; 0: about I/50. At most I.
    Returns:
      an iterator of (SearchState with a leading [R] axis, SearchInfo of NumPy
      arrays [R, S]: every live step so far, S = state.iteration), one per chunk.
    Raises:
      ValueError: inputs `make_search` rejects (banned ids outside the
        vocabulary, top-k larger than the allowed vocabulary, ...).
    """
    num_iters = config.num_iters
    chunk = min(chunk or max(1, -(-num_iters // 50)), num_iters)
    init, step = make_search(config, reward, base, token_filter)
    params = search_params(reward, base, penalty)
    keys = jax.random.split(key, num_restarts)
    k_init, k_run = jax.vmap(jax.random.split, out_axes=1)(keys)   # as in `search`
    run = jax.jit(jax.vmap(make_scan(step, chunk, num_iters), in_axes=(0, 0, None)))

    def chunks():
        state, pieces = jax.jit(jax.vmap(init, in_axes=(0, None)))(k_init, params), []
        for _ in range(-(-num_iters // chunk)):
            state, info = run(k_run, state, params)
            live = np.asarray(info.active[0])
            pieces.append([np.asarray(a)[:, live] for a in info])
            yield state, SearchInfo(*(np.concatenate(a, axis=1) for a in zip(*pieces)))
    return chunks()


class ChunkedRun(NamedTuple):
    """What `run_chunks` finished.

    Fields:
      state: SearchState with a leading [R] axis, after the last finished chunk.
      info: SearchInfo of NumPy arrays [R, S], every live step so far (S = state.iteration).
      interrupted: whether Ctrl-C stopped the run early.
      seconds: wall time of the chunks (compile included).
    """

    state: SearchState
    info: SearchInfo
    interrupted: bool
    seconds: float

    @property
    def steps(self) -> int:
        return int(self.state.iteration[0])

    @property
    def iters_per_s(self) -> Optional[float]:
        return self.steps / self.seconds if self.seconds > 0 else None

    def traces(self) -> dict:
        """{name: [R, S] NumPy} of each traced quantity (the info fields without improved/active)."""
        return {k: v for k, v in self.info._asdict().items() if k not in ("improved", "active")}


def run_chunks(chunks, on_chunk: Optional[Callable[[SearchState, SearchInfo], None]] = None) -> ChunkedRun:
    """Consume `search_chunks`' iterator, calling `on_chunk(state, info)` after each chunk (files, progress).

    A Ctrl-C (KeyboardInterrupt) after the first chunk came back, also one
    raised inside `on_chunk`, stops the run: the result holds the last
    finished chunk and `interrupted=True`. One before any chunk finished is
    raised again (there is nothing to keep).

    Args:
      chunks: the iterator of `search_chunks` (pairs state, info).
      on_chunk: optional callback.
    Returns:
      ChunkedRun.
    """
    state = info = None
    interrupted, start = False, time.perf_counter()
    try:
        for state, info in chunks:
            if on_chunk is not None:
                on_chunk(state, info)
    except KeyboardInterrupt:
        if state is None:
            raise
        interrupted = True
    return ChunkedRun(state, info, interrupted, time.perf_counter() - start)


def best_record(tokens: ArrayLike, reward: ArrayLike, objective: ArrayLike, iteration: int,
                interrupted: bool = False) -> dict:
    """The best sequence of each restart as a JSON-ready dict (acg_search's best.json).

    Args:
      tokens: [R, T] int; reward, objective: [R].
    Returns:
      {"iteration", "interrupted", "restarts": [{"restart", "reward", "objective", "tokens"}]}.
    """
    tokens, reward, objective = np.asarray(tokens), np.asarray(reward), np.asarray(objective)
    return {"iteration": int(iteration), "interrupted": bool(interrupted), "restarts": [
        {"restart": r, "reward": float(reward[r]), "objective": float(objective[r]), "tokens": tokens[r].tolist()}
        for r in range(len(tokens))]}


class Found(NamedTuple):
    """Each restart's best sequence, scored again by the models themselves (not the search's running values).

    Fields:
      tokens: [R, T] int, the best sequence of each restart.
      reward: [R] float64, its reward.
      logprob: [R] float64 log pi0 under the base LM (None without one).
      mixture_kl: [R, A] exact Section 5 KL of pi0 mixed with the sequence at each alpha (None without a base LM).
      mixture_kl_approx: [R, A] its first-order form alpha log(alpha / pi0(x)) (None without a base LM).
      alphas: the A mixture weights.
    """

    tokens: np.ndarray
    reward: np.ndarray
    logprob: Optional[np.ndarray]
    mixture_kl: Optional[np.ndarray]
    mixture_kl_approx: Optional[np.ndarray]
    alphas: tuple = ()

    def rows(self) -> list[dict]:
        """One JSON row per restart: {"kind": "acg", "restart", "reward", "tokens"[, "logprob"]}."""
        return [dict(kind="acg", restart=r, reward=float(self.reward[r]), tokens=self.tokens[r].tolist())
                | ({} if self.logprob is None else {"logprob": float(self.logprob[r])})
                for r in range(len(self.tokens))]

    def text(self) -> str:
        """One line per restart: "restart r: reward=...[ logprob=...]"."""
        return "".join(f"restart {r['restart']}: reward={r['reward']:.6g}"
                       + (f" logprob={r['logprob']:.6g}" if "logprob" in r else "") + "\n" for r in self.rows())

    def kl_rows(self) -> list[dict]:
        """Per (restart, alpha): {"restart", "alpha", "logprob", "kl_exact", "kl_approx"}; [] without a base LM."""
        if self.logprob is None:
            return []
        return [dict(restart=r, alpha=float(a), logprob=float(self.logprob[r]), kl_exact=float(self.mixture_kl[r, j]),
                     kl_approx=float(self.mixture_kl_approx[r, j]))
                for r in range(len(self.tokens)) for j, a in enumerate(self.alphas)]


def rescore(tokens: ArrayLike, reward: Scorer, base: Optional[Scorer] = None,
            alphas: Sequence[float] = ()) -> Found:
    """Score found sequences with the reward model (and base LM), in one batch each, and their mixture KL.

    Args:
      tokens: [R, T] int sequences (e.g. `state.best_tokens`).
      reward: the reward `Scorer`.
      base: optional base-LM `Scorer` (log pi0).
      alphas: [A] mixture weights for `mixture_kl` (float32, as the paper's log q fits).
    Returns:
      Found.
    """
    ids = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(ids.shape, jnp.int32)
    r = np.asarray(jax.jit(reward.score_tokens)(reward.params, ids, mask), np.float64)
    alphas = tuple(float(a) for a in alphas)
    if base is None:
        return Found(np.asarray(tokens), r, None, None, None, alphas)
    lp = np.asarray(jax.jit(base.score_tokens)(base.params, ids, mask), np.float64)
    lq, a = jnp.asarray(lp, jnp.float32)[:, None], jnp.asarray(alphas, jnp.float32)[None, :]
    return Found(np.asarray(tokens), r, lp, np.asarray(mixture_kl(lq, a)), np.asarray(mixture_kl_approx(lq, a)),
                 alphas)


def retokenize_filter(tokenizer, banned_ids: Sequence[int] = ()) -> TokenFilter:
    """Host-side filter: keep x iff encode(decode(x)) == x (a Hugging Face tokenizer).

    A searched sequence is only meaningful as text if the tokenizer would
    produce the same ids from its own decoding (GCG's usual check). Runs in
    Python on the host, one decode + encode per candidate per step.

    Args:
      tokenizer: has `decode(ids) -> str` and `encode(str, add_special_tokens=False)`.
      banned_ids: also rejected (normally already excluded by the search).
    Returns:
      filter(ids [T] np.ndarray) -> bool.
    """
    banned = set(int(b) for b in banned_ids)

    def keep(ids: np.ndarray) -> bool:
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        if banned.intersection(ids):
            return False
        text = tokenizer.decode(ids)
        return list(tokenizer.encode(text, add_special_tokens=False)) == ids
    return keep
