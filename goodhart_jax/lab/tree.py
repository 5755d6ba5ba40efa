"""The exact tree of a causal LM: pi0(a | s) on every prefix, every terminal sequence enumerated.

A policy in the lab's convention (`lab.lm`: logits_fn(params, ids [B, T]) ->
[B, T, A], BOS = A first, token A - 1 = EOS) is evaluated on every non-EOS
prefix (`log_pi0_levels`), giving `mdp.Tree.log_pi0` for the tree
`mdp.TreeSpec(A, L, eos=True)`: each prefix once, as one new token after its
parent's keys and values, when the policy has a KV-cache form
(`lm.prefix_policy`: the lab LM, checkpoint policies; `cached_levels`), else in
one causal pass over the longest prefixes (`row_levels`). With n = A - 1, level
k < L holds the n^k prefixes of k non-EOS tokens in row-major order (base-n
digits, first token most significant), exactly `mdp`'s layout.

Terminal sequences are flattened in `mdp`'s level order: first the "prefix k,
then EOS" terminals of k = 0 .. L-1 ([n^k] each), then the n^L full-length
ones; `tokens` holds them as EOS-continued rows [N, L] (the form `lm.sample`
returns and reward models score), `terminal_index` maps such rows back.

Public API:
  MAX_TERMINALS = 2**22
  num_prefixes(vocab, depth) -> int;  num_terminals(vocab, depth) -> int
  check_size(vocab, depth, limit=MAX_TERMINALS)   # UsageError if too big
  prefixes(n, k) -> [n^k, k] int32                # row-major non-EOS prefixes of length k
  terminal_tokens(vocab, depth) -> [N, L] int32   # every terminal, mdp level order, EOS-continued
  terminal_index(tokens [B, L], vocab) -> [B]     # row of `terminal_tokens` (inverse map)
  log_pi0_levels(logits_fn, params, depth, chunk=8192) -> L arrays [n^k, A]   # pure; cached_levels when the
      # policy has a KV-cache form (lm.prefix_policy), else row_levels
  cached_levels(prefix_policy, params, A, depth, chunk=8192) -> L arrays [n^k, A]  # each prefix once, from its
      # parent's KV cache: sum_k n^k token positions (54,241 at A=16, L=5), lax.map over chunks of subtrees
  row_levels(logits_fn, params, depth, chunk=8192) -> L arrays [n^k, A]   # any policy: one causal pass over the
      # n^(L-1) longest prefixes ([n^(L-1), L] token positions: 253,125 at A=16, L=5)
  split_levels(n, depth, chunk) -> (m, r)         # cached_levels' chunking: levels <= m whole, then r subtrees a chunk
  cached_terminal_scores(run, head, params, A, depth, chunk=8192) -> [N]   # a last-position score (reward
      # model) of every terminal, each token position once: every prefix's A children as siblings
  terminal_logprobs(log_pi0) -> [N]               # log pi(x) of every terminal, from per-level log-probs
  levels(flat [N], vocab, depth) -> L + 1 arrays; flatten(levels) -> [N]
  LMTree(log_pi0, tokens [N, L], log_p [N]);  exact_tree(logits_fn, params, depth, chunk=8192) -> LMTree
      # jitted entry point; refuses sizes over MAX_TERMINALS
  mdp_tree(lm_tree, gold [N], proxy [N]) -> mdp.Tree   # V = gold, X = proxy - gold (so U = proxy)
  spec(lm_tree) -> mdp.TreeSpec(A, L, eos=True)
  law_stats(log_p [N]) -> LawStats(entropy, perplexity, top_mass, n90, num)   # NumPy float64; how spread pi0 is

Example:
  t = exact_tree(lm.make_logits(cfg), params, cfg.depth)
  res = mdp.sweep_betas(mdp_tree(t, gold, proxy), betas)        # exact optimum on the proxy, gold as V

Glossary: A vocabulary (EOS last), n = A - 1, L depth, N terminals, B batch.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax import mdp
from goodhart_jax.errors import UsageError
from goodhart_jax.lab import lm
from goodhart_jax.lab.lm import LogitsFn

MAX_TERMINALS = 2**22


def num_prefixes(vocab: int, depth: int) -> int:
    """sum_{k<L} n^k with n = A - 1: the prefixes where a token is chosen (the rows of `Tree.log_pi0`).

    Args:
      vocab: A, the vocabulary (EOS = A - 1).
      depth: L, the sequence length.
    """
    n = vocab - 1
    return sum(n**k for k in range(depth))


def num_terminals(vocab: int, depth: int) -> int:
    """N = sum_{k<L} n^k + n^L with n = A - 1 (exact Python integer): each prefix ended by EOS, and length L.

    Args:
      vocab: A, the vocabulary (EOS = A - 1).
      depth: L, the sequence length.
    """
    return num_prefixes(vocab, depth) + (vocab - 1) ** depth


def check_size(vocab: int, depth: int, limit: int = MAX_TERMINALS) -> int:
    """N, or `errors.UsageError` (a ValueError) when the tree cannot be enumerated.

    Raises:
      UsageError: vocab < 2, depth < 1, or more than `limit` terminal sequences.
    """
    if int(vocab) != vocab or vocab < 2 or int(depth) != depth or depth < 1:
        raise UsageError(f"need vocab A >= 2 and depth L >= 1, got A={vocab}, L={depth}")
    power = f" = 2^{limit.bit_length() - 1}" if limit & (limit - 1) == 0 else ""
    # N > L and N >= n^L: far past the limit is refused without forming n^L (A=3, L=1e9 would hang)
    if depth >= limit or (vocab > 2 and depth * np.log2(vocab - 1) > 1000):
        raise UsageError(f"vocab A={vocab}, depth L={depth} give more than {limit}{power} terminal sequences, "
                            "the most the lab enumerates")
    count = num_terminals(int(vocab), int(depth))
    if count > limit:
        raise UsageError(f"vocab A={vocab}, depth L={depth} give {count} terminal sequences; "
                            f"the lab enumerates at most {limit}{power}")
    return count


def prefixes(n: int, k: int) -> Array:
    """[n^k, k] int32: all length-k sequences over n tokens, row-major (first token most significant)."""
    idx = jnp.arange(n**k, dtype=jnp.int32)[:, None]
    powers = jnp.asarray([n ** (k - 1 - j) for j in range(k)], jnp.int32).reshape(1, k)
    return (idx // powers) % n


def terminal_tokens(vocab: int, depth: int) -> Array:
    """[N, L] int32: every terminal sequence in mdp level order, EOS-continued.

    Args:
      vocab: A, the vocabulary (EOS = A - 1).
      depth: L, the sequence length.
    """
    n, eos = vocab - 1, vocab - 1
    rows = [jnp.concatenate([prefixes(n, k), jnp.full((n**k, depth - k), eos, jnp.int32)], axis=1)
            for k in range(depth)]
    return jnp.concatenate(rows + [prefixes(n, depth)], axis=0)


def terminal_index(tokens: Array, vocab: int) -> Array:
    """Row of each EOS-continued sequence [B, L] in `terminal_tokens(vocab, L)`: [B] int32.

    Level k = position of the first EOS (L if none); index within the level =
    the base-n number of the first k tokens; offset = sum_{j<k} n^j.
    """
    n, eos = vocab - 1, vocab - 1
    depth = tokens.shape[1]
    is_eos = tokens == eos
    k = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), depth)
    powers = jnp.asarray([n ** (depth - 1 - j) for j in range(depth)], jnp.int32)
    # digits beyond k are masked; base-n value of the first k digits = full value / n^(L-k).
    full = jnp.sum(jnp.where(jnp.arange(depth) < k[:, None], tokens, 0) * powers, axis=1)
    within = full // jnp.asarray([n**(depth - j) for j in range(depth + 1)], jnp.int32)[k]
    offsets = jnp.asarray(np.cumsum([0] + [n**j for j in range(depth)]), jnp.int32)
    return (offsets[k] + within).astype(jnp.int32)


def log_pi0_levels(logits_fn: LogitsFn, params: Any, depth: int, chunk: int = 8192) -> tuple:
    """pi0 on every prefix: each prefix evaluated once from its parent's KV cache, or one pass over whole rows.

    A policy with a KV-cache form (`lm.prefix_policy`: the lab LM, checkpoint policies) takes
    `cached_levels`: each of the sum_{k<L} n^k prefixes is one new token after its parent's cached
    keys and values. Any other logits_fn takes `row_levels`, one causal pass over the n^(L-1)
    longest prefixes ([n^(L-1), L] token positions). Both give the same numbers up to float rounding.

    Args:
      logits_fn, params: a policy in the lab convention (A = its output width).
      depth: L (static).
      chunk: prefixes per evaluation (static; bounds the memory).
    Returns:
      L arrays [n^k, A] of log-probabilities, mdp's `Tree.log_pi0`.
    """
    cached = lm.prefix_policy(logits_fn)
    if cached is None:
        return row_levels(logits_fn, params, depth, chunk)
    return cached_levels(cached, params, _vocab_of(logits_fn, params), depth, chunk)


def _vocab_of(logits_fn: LogitsFn, params: Any) -> int:
    return jax.eval_shape(logits_fn, params, jnp.zeros((1, 1), jnp.int32)).shape[-1]


def row_levels(logits_fn: LogitsFn, params: Any, depth: int, chunk: int = 8192) -> tuple:
    """pi0 on every prefix, from one causal forward pass over the n^(L-1) longest prefixes (any policy).

    Row r of the pass is [BOS, x_1..x_{L-1}] with x the base-n digits of r
    (first most significant); causality makes its logits at position k those
    after [BOS, x_1..x_k], so level k is position k of the rows r = p n^(L-1-k)
    (prefix p followed by zeros). One pass of n^(L-1) rows of length L costs
    about what the level-by-level evaluation spent on its last level alone,
    and compiles one program instead of L (`lax.map` over chunks of `chunk`
    rows keeps memory bounded).

    Args:
      logits_fn, params: a policy in the lab convention (A = its output width).
      depth: L (static).
      chunk: rows per evaluation (static).
    Returns:
      L arrays [n^k, A] of log-probabilities, mdp's `Tree.log_pi0`.
    """
    a = _vocab_of(logits_fn, params)
    n = a - 1
    rows = n ** (depth - 1)
    ids = jnp.concatenate([jnp.full((rows, 1), a, jnp.int32), prefixes(n, depth - 1)], axis=1)  # [n^(L-1), L]
    size = min(chunk, rows)
    pad = -rows % size
    ids = jnp.concatenate([ids, jnp.broadcast_to(ids[:1], (pad, depth))]).reshape(-1, size, depth)
    lp = jax.lax.map(lambda batch: jax.nn.log_softmax(logits_fn(params, batch), axis=-1), ids)
    lp = lp.reshape(-1, depth, a)[:rows]  # [n^(L-1), L, A]
    return tuple(lp[:: n ** (depth - 1 - k), k] for k in range(depth))


def split_levels(n: int, depth: int, chunk: int) -> tuple[int, int]:
    """(m, r): `cached_levels` evaluates levels 1..m whole, then levels m+1..L-1 in chunks of r subtrees.

    m is the first level whose subtrees hold at most `chunk` prefixes on their deepest level
    (n^(L-1-m) <= chunk); r is the largest divisor of the n^m subtrees with r n^(L-1-m) <= chunk
    (at least 1), so every chunk has the same shape and none is padding.

    Args:
      n: real tokens per prefix (A - 1).
      depth: L, the sequence length.
      chunk: the most prefixes one evaluation may hold.
    """
    deep = depth - 1
    m = 0
    while n ** (deep - m) > chunk:
        m += 1
    r = max(1, min(n**m, chunk // n ** (deep - m)))
    while n**m % r:
        r -= 1
    return m, r


def cached_levels(policy: lm.PrefixPolicy, params: Any, vocab: int, depth: int, chunk: int = 8192) -> tuple:
    """pi0 on every prefix, each prefix evaluated once: one new token after its parent's KV cache.

    Level 0 is [BOS] alone; level k + 1's n^(k+1) prefixes are the n children of each level-k prefix,
    run in one `siblings` call per level (each child attends to its parent's cached keys and to
    itself; `models.DecoderBackbone`), and each child's cache is its parent's plus its own position
    (`models.KVCache.siblings`). Token positions evaluated: sum_{k<L} n^k (54,241 at A = 16, L = 5,
    against 253,125 for `row_levels`). Levels 1..m are evaluated whole and the deeper ones by
    `lax.map` over chunks of r level-m subtrees (`split_levels`): at most `chunk` prefixes and
    `chunk` / n caches of length <= L per evaluation, so the memory is bounded.

    Args:
      policy: the policy's `lm.PrefixPolicy`; params: its parameters.
      vocab: A (the policy's output width); depth: L; chunk: static.
    Returns:
      L arrays [n^k, A] of log-probabilities, mdp's `Tree.log_pi0` (row-major, as `prefixes`).
    """
    n = vocab - 1
    kids = jnp.arange(n, dtype=jnp.int32)

    def expand(cache, keep):
        rows = cache.mask.shape[0]
        ids = jnp.broadcast_to(kids, (rows, n))
        lg, new = policy.run(params, ids, cache, True)                                    # [P, n, A]
        lp = jax.nn.log_softmax(lg, axis=-1).reshape(rows * n, vocab)
        return lp, (cache.siblings(new) if keep else None)

    lg, cache = policy.run(params, jnp.full((1, 1), vocab, jnp.int32))
    out = [jax.nn.log_softmax(lg[:, 0], axis=-1)]                                         # [1, A]
    m, r = split_levels(n, depth, chunk)
    for _ in range(m):
        lp, cache = expand(cache, True)
        out.append(lp)
    if m == depth - 1:
        return tuple(out)

    def subtrees(c):
        lps = []
        for k in range(m + 1, depth):
            lp, c = expand(c, k < depth - 1)
            lps.append(lp)
        return lps

    groups = jax.tree.map(lambda x: x.reshape((-1, r) + x.shape[1:]), cache)             # [n^m / r, r, ...]
    deeper = jax.lax.map(subtrees, groups)                                                 # [n^m / r, r n^j, A]
    return tuple(out) + tuple(lp.reshape(-1, vocab) for lp in deeper)


def cached_terminal_scores(run: Callable, head: Callable, params: Any, vocab: int, depth: int,
                           chunk: int = 8192) -> Array:
    """A score read off the last position of every terminal sequence, each token position run once (KV cache).

    For sequence models that score [BOS, x_1..x_k] by their state at the last real token (a reward
    model with "last" pooling): the tree is walked as in `cached_levels`, but every prefix's A
    children (n tokens and EOS) are run as siblings after its cache, so the EOS child is the terminal
    "prefix, then EOS" and the n children of a level-(L-1) prefix are the full-length terminals. Token
    positions run: sum_{k<L} A n^k (~N + the prefixes: 868,096 at A = 16, L = 5) instead of N (L + 1)
    for every terminal alone (4,881,696). Levels are chunked like `cached_levels` (`split_levels` with
    chunk / A prefixes, so at most `chunk` sibling rows a call).

    Args:
      run: (params, ids [B, S], cache: models.KVCache | None, siblings: bool) -> (states [B, S, D], KVCache
        [B, S]); ids are lab tokens with BOS = A (e.g. a backbone's `models.apply_cached` with the
        ids mapped to the model's, and its last_hidden_state).
      head: (params, states [..., D]) -> [...] scores.
      params: passed to both; vocab: A; depth: L (static); chunk: static.
    Returns:
      [N] scores in mdp level order (`terminal_tokens`' rows).
    """
    n = vocab - 1
    kids = jnp.arange(vocab, dtype=jnp.int32)                                             # n tokens, then EOS

    def expand(cache, keep):
        rows = cache.mask.shape[0]
        h, new = run(params, jnp.broadcast_to(kids, (rows, vocab)), cache, True)          # [P, A, D]
        s = head(params, h)                                                                # [P, A]
        grown = cache.siblings(jax.tree.map(lambda x: x[:, :n], new)) if keep else None
        return s[:, n], s[:, :n].reshape(-1), grown

    _, cache = run(params, jnp.full((1, 1), vocab, jnp.int32), None, False)
    m, r = split_levels(n, depth, max(1, chunk // vocab))
    out = []
    for _ in range(m):
        eos, _, cache = expand(cache, True)
        out.append(eos)

    def subtrees(c):
        ends = []
        for k in range(m, depth):
            eos, full, c = expand(c, k < depth - 1)
            ends.append(eos)
        return ends + [full]

    groups = jax.tree.map(lambda x: x.reshape((-1, r) + x.shape[1:]), cache)
    return jnp.concatenate(out + [x.reshape(-1) for x in jax.lax.map(subtrees, groups)])


def terminal_logprobs(log_pi0: tuple) -> Array:
    """[N] log pi(x) of every terminal (mdp level order) from per-level log-probabilities L x [n^k, A]
    (`mdp.terminal_logprobs` on the EOS tree, flattened).

    Args:
      log_pi0: L arrays [n^k, A]: log pi(a | prefix) on each level (`LMTree.log_pi0`).
    """
    spec = mdp.TreeSpec(log_pi0[0].shape[-1], len(log_pi0), eos=True)
    return flatten(mdp.terminal_logprobs(spec, log_pi0))


def levels(flat: Array, vocab: int, depth: int) -> tuple:
    """Split a per-terminal array [N, ...] into mdp's L + 1 levels ([n^k] for k < L, then [n^L]).

    Args:
      flat: [N, ...] per-terminal values in mdp level order.
      vocab: A, the vocabulary (n = A - 1 real tokens).
      depth: L, the sequence length.
    """
    n = vocab - 1
    splits = np.cumsum([n**k for k in range(depth)])
    return tuple(jnp.split(flat, splits))


def flatten(levels_: tuple) -> Array:
    """Inverse of `levels`: [N].

    Args:
      levels_: mdp's L + 1 levels ([n^k] for k < L, then [n^L]), concatenated in order.
    """
    return jnp.concatenate(levels_)


class LMTree(NamedTuple):
    """The enumerated tree of a policy."""

    log_pi0: tuple  # L arrays [n^k, A]: log pi0(a | prefix)
    tokens: Array  # [N, L] int32 terminal sequences, mdp level order, EOS-continued
    log_p: Array  # [N] log pi0(x) of each terminal


def spec(tree: LMTree) -> mdp.TreeSpec:
    """mdp.TreeSpec(A, L, eos=True) of the tree."""
    return mdp.TreeSpec(tree.log_pi0[0].shape[-1], len(tree.log_pi0), eos=True)


def exact_tree(logits_fn: LogitsFn, params: Any, depth: int, chunk: int = 8192) -> LMTree:
    """Enumerate a policy's tree (jitted entry point).

    Compiled once per (logits_fn, depth, chunk) and parameter shapes: new
    parameters of the same policy (an RL run's checkpoints) reuse it when
    `logits_fn` is the same object (`lm.make_logits` is cached).

    Args:
      logits_fn, params: a policy in the lab convention (`lab.lm`).
      depth: L.
      chunk: rows per LM evaluation.
    Returns:
      LMTree(log_pi0, tokens, log_p).
    Raises:
      UsageError (a ValueError): more than MAX_TERMINALS terminal sequences.
    """
    a = jax.eval_shape(logits_fn, params, jnp.zeros((1, 1), jnp.int32)).shape[-1]
    check_size(a, depth)
    return _exact_tree(logits_fn, params, depth, chunk)


@functools.partial(jax.jit, static_argnames=("logits_fn", "depth", "chunk"))
def _exact_tree(logits_fn: LogitsFn, params: Any, depth: int, chunk: int) -> LMTree:
    lp = log_pi0_levels(logits_fn, params, depth, chunk)
    return LMTree(lp, terminal_tokens(lp[0].shape[-1], depth), terminal_logprobs(lp))


def mdp_tree(tree: LMTree, gold: Array, proxy: Array) -> mdp.Tree:
    """mdp.Tree on the LM's tree with V = gold and X = proxy - gold per terminal (so U = proxy).

    Args:
      tree: the LM's tree.
      gold, proxy: [N] rewards of every terminal (mdp level order).
    """
    a, depth = tree.log_pi0[0].shape[-1], len(tree.log_pi0)
    gold = jnp.asarray(gold, tree.log_pi0[0].dtype)
    proxy = jnp.asarray(proxy, tree.log_pi0[0].dtype)
    return mdp.Tree(tree.log_pi0, levels(proxy - gold, a, depth), levels(gold, a, depth))


# ---------------------------------------------------------------- pi0's law, summarised
class LawStats(NamedTuple):
    """How spread a law over the N terminal sequences is (`law_stats`)."""

    entropy: float  # H = -sum_x p(x) log p(x), nats
    perplexity: float  # exp(H): the number of equally likely sequences with the same entropy (1 .. N)
    top_mass: float  # max_x p(x): the most likely sequence's probability
    n90: int  # the fewest sequences that hold >= 90% of the mass (the most likely ones)
    num: int  # N, the sequences the law is over (those of probability 0 included)


def law_stats(log_p) -> LawStats:
    """Entropy, perplexity, top-sequence mass and 90%-mass count of a law given by its log-probabilities.

    Computed in NumPy float64 on the host (a report, not a jitted step). The law is p = softmax(log_p): the
    tree's log pi0(x) sum to 1 only up to float32 rounding, and renormalising keeps H <= log N and the
    masses summing to 1; -inf entries are sequences of probability 0 (they count in `num` only). n90 is the
    smallest k whose k most likely sequences hold >= 0.9 of the mass (sorted descending, cumulative sum; a sum
    within its float64 rounding, N eps relative, of 0.9 counts: 9 of 10 equally likely sequences hold 90%).

    Args:
      log_p: [N] log-probabilities of the terminal sequences (`LMTree.log_p`), N >= 1.
    Returns:
      LawStats(entropy, perplexity, top_mass, n90, num) as Python floats and ints.
    Raises:
      ValueError: log_p is not 1-D and non-empty, holds nan or +inf, or is -inf everywhere (no law).
    """
    lp = np.asarray(log_p, np.float64)
    if lp.ndim != 1 or lp.size == 0 or np.isnan(lp).any() or np.isposinf(lp).any() or np.isneginf(lp).all():
        raise ValueError(f"law_stats needs [N] log-probabilities, finite or -inf, not all -inf; got shape "
                         f"{lp.shape} with {int(np.isnan(lp).sum())} nan, {int(np.isposinf(lp).sum())} +inf")
    w = np.exp(lp - lp.max())  # the largest term is exactly 1: sum >= 1, no underflow of the total
    p = w / w.sum()
    lp = lp - lp.max() - np.log(w.sum())
    entropy = float(-np.sum(p * np.where(p > 0, lp, 0.0)))  # 0 log 0 = 0
    mass = np.cumsum(np.sort(p)[::-1])
    reach = 0.9 * mass[-1] * (1 - lp.size * np.finfo(np.float64).eps)  # within the cumsum's rounding of 90%
    n90 = min(int(np.searchsorted(mass, reach)) + 1, lp.size)  # the first k with mass[k - 1] >= 90%
    return LawStats(entropy, float(np.exp(entropy)), float(p.max()), n90, int(lp.size))
