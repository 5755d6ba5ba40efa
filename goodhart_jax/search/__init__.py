"""Coordinate-gradient search (GCG and ACG) for high-scoring token sequences.

    init, step = make_search(SearchConfig(length=32, topk=3, schedule="paper"), reward)
    params = search_params(reward)
    state = init(key, params)
    state, info = step(key2, state, params)

or, for restarts vmapped and the whole loop jitted, `search(key, config, reward,
num_restarts=R)`. Works on any `goodhart_jax.scorer.Scorer`; with
`SearchConfig(share_prefix=True)` and a model reward scorer, candidates run
only from their first edited position on (the same steps, less work). See `gcg.py` for
the algorithm, `schedules.py` for n(i), `mixture_kl.py` for the paper's
Section 5 KL of a base policy mixed with one searched sequence.
"""
from goodhart_jax.search.gcg import (
    ChunkedRun,
    Found,
    SearchConfig,
    SearchInfo,
    SearchParams,
    SearchState,
    cond_all,
    make_scan,
    best_record,
    make_search,
    onehot_gradient,
    prefix_slots,
    rescore,
    retokenize_filter,
    run_chunks,
    search,
    search_chunks,
    search_params,
    top_k_ids,
)
from goodhart_jax.search.mixture_kl import mixture_kl, mixture_kl_approx
from goodhart_jax.search.schedules import make_schedule

__all__ = [
    "ChunkedRun", "Found", "SearchConfig", "SearchInfo", "SearchParams", "SearchState", "best_record", "cond_all",
    "make_scan", "make_search", "onehot_gradient", "prefix_slots", "rescore", "retokenize_filter", "run_chunks",
    "search", "search_chunks", "search_params", "top_k_ids",
    "mixture_kl", "mixture_kl_approx", "make_schedule",
]
