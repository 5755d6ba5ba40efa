"""Overoptimization lab speed: the exact tree of pi0, the exact best-of-n law, and one RL update against PyTorch.

The policy is the lab's default LM shape (GPT-NeoX, 2 layers, width 64, 4 heads, rotary 50%) over A lab tokens
(default 16, the last EOS) and length L (default 5): 813,616 terminal sequences. Its weights are a random
transformers `GPTNeoXForCausalLM` (vocabulary A + 1, the last id the BOS), written by `make_tiny_checkpoint` and
read by `lab.lm.load_policy(tokens=0..A-1, start=A)`, so JAX and PyTorch run the very same LM.

Timed, median of --repeats after a warm-up (compile excluded and reported):
  - tree: `lab.tree.exact_tree` (one causal pass over the n^(L-1) longest prefixes) and the same pass in
    PyTorch (inference mode, the same chunks), for scale;
  - bon: `lab.best_of_n.bon_tree`, the exact law of the best of n for n = 4^0 .. 4^8 (sort, tie groups, KL);
  - rl: one KL-penalised RLOO update (`lab.rl.make_rl`'s step: sample B sequences token by token, proxy and
    log pi0 looked up on the tree, R = r - beta log(pi/pi0), leave-one-out advantages, gradient of
    -mean(A log pi), global-norm clip, Adam), jitted, one step per call and `--scan` steps per call under
    `lax.scan`; against `torch_rl_step`, the same update written plainly in PyTorch (autograd, clip_grad_norm_,
    torch.optim.Adam). Ratio = PyTorch time / JAX time (> 1: JAX faster).
Sanity: the two frameworks' log pi(x) of the same sequences agree (max abs difference printed).

    python benchmarks/bench_lab.py [--vocab 16] [--depth 5] [--batch 64] [--repeats 5] [--scan 10]
        [--torch-threads T]
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
from timing import machine, median_time  # noqa: E402  (benchmarks/timing.py)

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


def main(vocab=16, depth=5, batch=64, repeats=5, scan=10, seed=0, torch_threads=0) -> dict:
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

    # The exact tree: JAX, then the same single pass in PyTorch.
    t0 = time.perf_counter()
    tree = jax.block_until_ready(lab_tree.exact_tree(pol.logits_fn, pol.params, depth))
    tree_compile_s = time.perf_counter() - t0
    tree_s = median_time(lambda: jax.block_until_ready(lab_tree.exact_tree(pol.logits_fn, pol.params, depth)),
                         repeats)
    n = vocab - 1
    rows = torch.tensor(np.array(lab_tree.prefixes(n, depth - 1)), dtype=torch.long)
    rows = torch.cat([torch.full((rows.shape[0], 1), vocab, dtype=torch.long), rows], 1)
    logits = torch_policy(ref, vocab)

    def torch_tree():
        with torch.inference_mode():
            return torch.cat([torch.log_softmax(logits(c), -1) for c in rows.split(8192)])
    torch_tree_s = median_time(torch_tree, repeats)
    lp_torch = torch_tree()
    tree_diff = max(float(np.abs(np.asarray(tree.log_pi0[k]) - lp_torch[:: n ** (depth - 1 - k), k].numpy()).max())
                    for k in range(depth))

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
        "vocab": vocab, "depth": depth, "terminals": n_term, "batch": batch, "repeats": repeats, "scan": scan,
        "tree_ms": 1e3 * tree_s, "tree_compile_s": tree_compile_s, "torch_tree_ms": 1e3 * torch_tree_s,
        "ratio_tree_jax_over_torch": torch_tree_s / tree_s,
        "bon_ms": 1e3 * bon_s, "bon_ns": 9, "bon_compile_s": bon_compile_s,
        "rl_jax_ms_per_update": 1e3 * jax_one_s, "rl_jax_scan_ms_per_update": 1e3 * jax_scan_s,
        "rl_torch_ms_per_update": 1e3 * torch_s, "rl_compile_s": rl_compile_s,
        "ratio_rl_jax_over_torch": torch_s / jax_one_s, "ratio_rl_jax_scan_over_torch": torch_s / jax_scan_s,
        "tree_logprob_diff_torch_vs_jax": tree_diff, "sequence_logprob_diff_torch_vs_jax": logprob_diff,
        "machine": f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
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


if __name__ == "__main__":
    print(json.dumps(main(**dataclasses.asdict(cli.parse_config(Config, description=__doc__))), indent=1))
