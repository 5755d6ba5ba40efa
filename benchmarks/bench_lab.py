"""Overoptimization lab speed: the exact tree of pi0, the exact best-of-n law, and one RL update against PyTorch.

The policy is the lab's default LM shape (GPT-NeoX, 2 layers, width 64, 4 heads, rotary 50%) over A lab tokens
(default 16, the last EOS) and length L (default 5): 813,616 terminal sequences. Its weights are a random
transformers `GPTNeoXForCausalLM` (vocabulary A + 1, the last id the BOS), written by `make_tiny_checkpoint` and
read by `lab.lm.load_policy(tokens=0..A-1, start=A)`, so JAX and PyTorch run the very same LM.

Timed, median of --repeats after a warm-up (compile excluded and reported):
  - tree: `lab.tree.exact_tree` (every prefix once, one token after its parent's KV cache: `tree.cached_levels`)
    against, in the same run, taken in turn (median and range over --repeats, `tree_times`):
      jax_rows    the previous JAX evaluation, one causal pass over the n^(L-1) longest prefixes (`tree.row_levels`);
      torch_rows  that pass in PyTorch (inference mode, the same 8192-row chunks);
      torch_kv    the KV-cached tree in PyTorch: level by level, each parent's transformers DynamicCache
                  repeated for its n children (8192 children a call), one token each;
      floor       one forward per prefix: the same LM on sum_k n^k rows of one token ([BOS] alone, no cached
                  keys) in the batches the tree runs, with the log-softmax: the tree's dense work without its
                  cache (attention to the parent's keys, copying the caches);
    and the matmul floor: the dense layers' FLOPs of one token per prefix over the float32 GEMM rate measured
    at the MLP's shape ([rows, D] x [D, 4D]) in the same run;
  - bon: `lab.best_of_n.bon_tree`, the exact law of the best of n for n = 4^0 .. 4^8 (sort, tie groups, KL);
  - rl: one KL-penalised RLOO update (`lab.rl.make_rl`'s step: sample B sequences token by token, proxy and
    log pi0 looked up on the tree, R = r - beta log(pi/pi0), leave-one-out advantages, gradient of
    -mean(A log pi), global-norm clip, Adam), jitted, one step per call and `--scan` steps per call under
    `lax.scan`; against `torch_rl_step`, the same update written plainly in PyTorch (autograd, clip_grad_norm_,
    torch.optim.Adam). Ratio = PyTorch time / JAX time (> 1: JAX faster).
Sanity: the two frameworks' log pi(x) of the same sequences agree (max abs difference printed).

    python benchmarks/bench_lab.py [--vocab 16] [--depth 5] [--batch 64] [--repeats 5] [--scan 10]
        [--torch-threads T] [--tree-only]
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import cli
from goodhart_jax.lab import best_of_n as lab_bon
from goodhart_jax.lab import lm, rl
from goodhart_jax.lab import tree as lab_tree
from goodhart_jax.models.testing import make_tiny_checkpoint
from timing import interleaved_times, machine, median_time  # noqa: E402  (benchmarks/timing.py)

LAB_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, rotary_pct=0.5,
              max_position_embeddings=64)


def torch_terminal_index(tokens, vocab: int):
    """`lab.tree.terminal_index` in PyTorch: row of each EOS-continued sequence [B, L] in mdp level order."""
    import torch

    n, eos = vocab - 1, vocab - 1
    depth = tokens.shape[1]
    is_eos = tokens == eos
    k = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(tokens[:, 0], depth))
    powers = torch.tensor([n ** (depth - 1 - j) for j in range(depth)])
    full = (torch.where(torch.arange(depth)[None] < k[:, None], tokens, 0) * powers).sum(1)
    within = full // torch.tensor([n ** (depth - j) for j in range(depth + 1)])[k]
    offsets = torch.tensor(np.cumsum([0] + [n**j for j in range(depth)]))
    return offsets[k] + within


def torch_policy(ref, vocab: int):
    """logits(ids [B, T]) -> [B, T, A]: the transformers LM's first A logits (the lab's sub-vocabulary)."""

    def logits(ids):
        return ref.lm_head(ref.backbone(input_ids=ids).last_hidden_state)[..., :vocab]

    return logits


def torch_sequence_logprob(logits, tokens, vocab: int):
    """[B] log pi(x) over the real tokens (up to and including the first EOS), as `lab.lm.sequence_logprob`."""
    import torch

    ids = torch.cat([torch.full_like(tokens[:, :1], vocab), tokens], 1)
    logp = torch.log_softmax(logits(ids[:, :-1]), -1)
    terms = logp.gather(-1, tokens[..., None])[..., 0]
    eos = (tokens == vocab - 1).int()
    real = (torch.cumsum(eos, 1) - eos) == 0
    return torch.where(real, terms, 0.0).sum(1)


def torch_rl_step(ref, vocab: int, depth: int, batch: int, proxy, log_p0, beta: float, lr: float = 1e-2,
                  max_grad_norm: float = 1.0, seed: int = 0):
    """One KL-penalised RLOO update of the transformers LM, the algorithm of `lab.rl.make_rl`, in PyTorch.

    Returns step() -> the surrogate loss (a float).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    logits = torch_policy(ref, vocab)
    opt = torch.optim.Adam(ref.parameters(), lr=lr)

    def step():
        with torch.no_grad():  # ancestral sampling on the growing prefix
            ids = torch.full((batch, 1), vocab, dtype=torch.long)
            for t in range(depth):
                probs = torch.softmax(logits(ids)[:, -1], -1)
                tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
                if t > 0:
                    tok = torch.where(ids[:, -1] == vocab - 1, vocab - 1, tok)
                ids = torch.cat([ids, tok[:, None]], 1)
        tokens = ids[:, 1:]
        idx = torch_terminal_index(tokens, vocab)
        r, lp0 = proxy[idx], log_p0[idx]
        lp = torch_sequence_logprob(logits, tokens, vocab)
        R = (r - beta * (lp - lp0)).detach()
        adv = R - (R.sum() - R) / (batch - 1)
        loss = -(adv * lp).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), max_grad_norm)
        opt.step()
        return float(loss.detach())

    return step


def torch_cached_tree(ref, vocab: int, depth: int, chunk: int = 8192) -> list:
    """Every prefix once in PyTorch: L levels of log pi0 [n^k, A], each child one token after its parent's cache.

    Level k + 1's rows are the n children of each level-k prefix: the parents' keys and values (a transformers
    `DynamicCache`, filled per layer) repeated n times, then one forward of the children's tokens at position
    k + 1 (at most `chunk` children a call).
    """
    import torch
    from transformers import DynamicCache

    n = vocab - 1

    def head(h):
        return torch.log_softmax(ref.lm_head(h[:, -1])[..., :vocab], -1)

    with torch.inference_mode():
        out = ref.backbone(input_ids=torch.full((1, 1), vocab, dtype=torch.long), use_cache=True)
        kv = [(lay.keys, lay.values) for lay in out.past_key_values.layers]
        levels = [head(out.last_hidden_state)]
        per = max(1, chunk // n)
        for k in range(1, depth):
            parents, keep = kv[0][0].shape[0], k < depth - 1
            lps, grown = [], [([], []) for _ in kv]
            for s in range(0, parents, per):
                cache = DynamicCache()
                for i, (key, value) in enumerate(kv):
                    cache.update(key[s:s + per].repeat_interleave(n, 0), value[s:s + per].repeat_interleave(n, 0), i)
                rows = min(per, parents - s) * n
                ids = torch.arange(n).repeat(rows // n)[:, None]
                o = ref.backbone(input_ids=ids, past_key_values=cache, position_ids=torch.full((rows, 1), k),
                                 use_cache=keep)
                lps.append(head(o.last_hidden_state))
                for i, lay in enumerate(o.past_key_values.layers if keep else ()):
                    grown[i][0].append(lay.keys)
                    grown[i][1].append(lay.values)
            levels.append(torch.cat(lps))
            kv = [(torch.cat(a), torch.cat(b)) for a, b in grown] if keep else kv
    return levels


def tree_benchmark(pol, ref, vocab: int, depth: int, repeats: int, chunk: int = 8192) -> tuple[dict, object]:
    """The tree pass against the previous JAX pass, PyTorch (row pass and KV-cached) and the floors.

    Returns:
      (fields, the LMTree).
    """
    import torch

    n = vocab - 1
    prefixes = sum(n**k for k in range(depth))
    t0 = time.perf_counter()
    tree = jax.block_until_ready(lab_tree.exact_tree(pol.logits_fn, pol.params, depth))
    compile_s = time.perf_counter() - t0
    rows_fn = jax.jit(lab_tree.row_levels, static_argnums=(0, 2, 3))
    t0 = time.perf_counter()
    old = jax.block_until_ready(rows_fn(pol.logits_fn, pol.params, depth, chunk))
    rows_compile_s = time.perf_counter() - t0
    # floor: one forward per prefix, a row of one token each ([BOS], no cached keys), in the batches the tree
    # runs (levels <= m whole, deeper ones as lax.map over r subtrees a call: `split_levels`)
    m, r = lab_tree.split_levels(n, depth, chunk)
    shapes = [(1, n**k) for k in range(m + 1)] + [(n**m // r, r * n ** (k - m)) for k in range(m + 1, depth)]

    # (the rows are arguments, not constants: XLA would compute identical constant rows once)
    floor_ids = [jnp.full(shape + (1,), vocab, jnp.int32) for shape in shapes]

    def floor(p, ids):
        one = lambda b: jax.nn.log_softmax(pol.logits_fn(p, b), -1)  # noqa: E731
        return [jax.lax.map(one, x) for x in ids]
    floor_fn = jax.jit(floor)
    jax.block_until_ready(floor_fn(pol.params, floor_ids))
    size = max(shape[1] for shape in shapes)
    # matmul floor: FLOPs of the dense layers (QKV, output, MLP, head) of one token per prefix / GEMM rate
    c = pol.model.config
    d, inner = c.hidden_size, c.intermediate_size
    flops = prefixes * 2 * (c.num_hidden_layers * (4 * d * d + 2 * d * inner) + d * vocab)
    x, w = jnp.ones((size, d), jnp.float32), jnp.ones((d, inner), jnp.float32)
    mm = jax.jit(lambda x, w: x @ w)
    jax.block_until_ready(mm(x, w))

    rows = torch.tensor(np.array(lab_tree.prefixes(n, depth - 1)), dtype=torch.long)
    rows = torch.cat([torch.full((rows.shape[0], 1), vocab, dtype=torch.long), rows], 1)
    logits = torch_policy(ref, vocab)

    def torch_rows():
        with torch.inference_mode():
            return torch.cat([torch.log_softmax(logits(c), -1) for c in rows.split(chunk)])

    fns = {"jax_kv": lambda: jax.block_until_ready(lab_tree.exact_tree(pol.logits_fn, pol.params, depth)),
           "jax_rows": lambda: jax.block_until_ready(rows_fn(pol.logits_fn, pol.params, depth, chunk)),
           "torch_rows": torch_rows, "torch_kv": lambda: torch_cached_tree(ref, vocab, depth, chunk),
           "floor": lambda: jax.block_until_ready(floor_fn(pol.params, floor_ids))}
    load = [os.getloadavg()[0]]
    times = interleaved_times(fns, repeats)
    mm_times = []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        for _ in range(10):
            jax.block_until_ready(mm(x, w))
        mm_times.append((time.perf_counter() - t0) / 10)
    load.append(os.getloadavg()[0])
    rate = 2 * size * d * inner / min(mm_times)                       # FLOP/s, the best of the repeats
    lp_rows = torch_rows()
    lp_kv = torch_cached_tree(ref, vocab, depth, chunk)
    diff = {
        "tree_diff_jax_kv_vs_jax_rows": max(float(jnp.abs(a - b).max()) for a, b in zip(tree.log_pi0, old)),
        "tree_diff_jax_kv_vs_torch_rows": max(
            float(np.abs(np.asarray(tree.log_pi0[k]) - lp_rows[:: n ** (depth - 1 - k), k].numpy()).max())
            for k in range(depth)),
        "tree_diff_jax_kv_vs_torch_kv": max(float(np.abs(np.asarray(a) - b.numpy()).max())
                                            for a, b in zip(tree.log_pi0, lp_kv)),
    }
    ms = {name: [round(1e3 * t, 1) for t in ts] for name, ts in times.items()}
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "prefixes": prefixes, "row_pass_positions": n ** (depth - 1) * depth,
        "tree_ms": 1e3 * med["jax_kv"], "tree_compile_s": compile_s, "tree_rows_compile_s": rows_compile_s,
        "tree_times_ms": ms, "tree_median_ms": {k: round(1e3 * v, 1) for k, v in med.items()},
        "tree_range_ms": {k: [min(v), max(v)] for k, v in ms.items()},
        "torch_tree_ms": 1e3 * med["torch_rows"], "torch_kv_tree_ms": 1e3 * med["torch_kv"],
        "ratio_tree_jax_over_torch": med["torch_rows"] / med["jax_kv"],
        "ratio_tree_jax_over_torch_kv": med["torch_kv"] / med["jax_kv"],
        "ratio_tree_kv_over_rows": med["jax_rows"] / med["jax_kv"],
        "tree_over_floor": med["jax_kv"] / med["floor"],
        "matmul_floor_ms": 1e3 * flops / rate, "tree_over_matmul_floor": med["jax_kv"] * rate / flops,
        "dense_gflop": flops / 1e9, "gemm_gflops": rate / 1e9, "load_before_after": load, **diff,
    }, tree


def main(vocab=16, depth=5, batch=64, repeats=5, scan=10, seed=0, torch_threads=0, tree_only=False) -> dict:
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)

    with tempfile.TemporaryDirectory() as d:
        ckpt = make_tiny_checkpoint(os.path.join(d, "lm"), "gpt_neox", "causal_lm", seed=seed,
                                    vocab_size=vocab + 1, **LAB_LM)
        pol = lm.load_policy(ckpt.path, tuple(range(vocab)), start=vocab)
    ref = ckpt.torch_model
    ref.backbone.config._attn_implementation = "sdpa"  # transformers' default (fastest on CPU)
    n_term = lab_tree.check_size(vocab, depth)

    # The exact tree: JAX (KV cache), the previous JAX pass, PyTorch's two, the floors.
    tree_fields, tree = tree_benchmark(pol, ref, vocab, depth, repeats)
    machine_line = f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    head = {"vocab": vocab, "depth": depth, "terminals": n_term, "repeats": repeats}
    if tree_only:
        return {**head, **tree_fields, "machine": machine_line}
    logits = torch_policy(ref, vocab)

    # Rewards on every terminal (random: the timings do not depend on them), the mdp tree, best-of-n.
    kg, kx = jax.random.split(jax.random.key(seed))
    gold = jax.random.normal(kg, (n_term,))
    proxy = gold + jax.random.t(kx, 2.0, (n_term,))
    mtree = lab_tree.mdp_tree(tree, gold, proxy)
    ns = jnp.asarray([4.0**k for k in range(9)])
    bon = jax.jit(lab_bon.bon_tree)
    t0 = time.perf_counter()
    jax.block_until_ready(bon(mtree, ns))
    bon_compile_s = time.perf_counter() - t0
    bon_s = median_time(lambda: jax.block_until_ready(bon(mtree, ns)), repeats)

    # One RL update.
    beta = 0.5
    config = rl.RLConfig(vocab, depth, batch=batch)
    init, step = rl.make_rl(config, pol.logits_fn)
    task = rl.RLTask(mtree, jnp.float32(beta))
    holder = {"s": jax.jit(init)(pol.params)}
    one = jax.jit(step)

    def jax_one():
        s = holder["s"]
        for i in range(scan):
            s, _ = one(jax.random.key(i), s, task)
        holder["s"] = jax.block_until_ready(s)
    t0 = time.perf_counter()
    holder["s"] = jax.block_until_ready(one(jax.random.key(0), holder["s"], task)[0])
    rl_compile_s = time.perf_counter() - t0
    jax_one_s = median_time(jax_one, repeats) / scan
    many = jax.jit(lambda k, s, t: jax.lax.scan(lambda s, i: step(jax.random.fold_in(k, i), s, t), s,
                                                jnp.arange(scan)))

    def jax_scan():
        holder["s"] = jax.block_until_ready(many(jax.random.key(1), holder["s"], task)[0])
    jax_scan_s = median_time(jax_scan, repeats) / scan

    # Sanity before PyTorch trains its copy: log pi(x) of the same sequences in both frameworks.
    x = lm.sample(jax.random.key(5), pol.logits_fn, pol.params, batch, depth)
    ours = np.asarray(jax.jit(lm.sequence_logprob, static_argnums=0)(pol.logits_fn, pol.params, x))
    with torch.no_grad():
        theirs = torch_sequence_logprob(logits, torch.tensor(np.array(x), dtype=torch.long), vocab).numpy()
    logprob_diff = float(np.abs(ours - theirs).max())
    tstep = torch_rl_step(ref, vocab, depth, batch, torch.tensor(np.array(proxy)),
                          torch.tensor(np.array(tree.log_p)), beta, seed=seed)

    def torch_block():
        for _ in range(scan):
            tstep()
    torch_s = median_time(torch_block, repeats) / scan
    return {
        **head, "batch": batch, "scan": scan, **tree_fields,
        "bon_ms": 1e3 * bon_s, "bon_ns": 9, "bon_compile_s": bon_compile_s,
        "rl_jax_ms_per_update": 1e3 * jax_one_s, "rl_jax_scan_ms_per_update": 1e3 * jax_scan_s,
        "rl_torch_ms_per_update": 1e3 * torch_s, "rl_compile_s": rl_compile_s,
        "ratio_rl_jax_over_torch": torch_s / jax_one_s, "ratio_rl_jax_scan_over_torch": torch_s / jax_scan_s,
        "sequence_logprob_diff_torch_vs_jax": logprob_diff, "machine": machine_line,
    }


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = cli.arg(16, "lab tokens A, the last EOS", metavar="A")
    depth: int = cli.arg(5, "maximum length L", metavar="L")
    batch: int = cli.arg(64, "sequences per RL update", metavar="B")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    scan: int = cli.arg(10, "RL updates per timed block (and per jitted scan)", metavar="S")
    seed: int = cli.arg(0, "seed of the weights and rewards", metavar="S")
    torch_threads: int = cli.arg(0, "PyTorch intra-op threads (0: its default, one per core; on a loaded machine "
                                    "1 avoids its spin-waiting)", metavar="T")
    tree_only: bool = cli.arg(False, "time the tree pass only (no best-of-n, no RL)")


if __name__ == "__main__":
    print(json.dumps(main(**dataclasses.asdict(cli.parse_config(Config, description=__doc__))), indent=1))
