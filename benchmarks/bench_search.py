"""GCG/ACG search speed: our jitted JAX search vs a straightforward PyTorch GCG, same process.

Both run the same algorithm (gradient w.r.t. one-hot tokens through the
embedding matrix, top-k tokens per position, C candidates each changing n
random distinct positions, one batched forward pass over the candidates,
best-so-far buffer) on the same random GPT-NeoX reward model (OpenAssistant
layout, Pythia-14M-like by default, written by `make_tiny_checkpoint`),
float32, one restart. Reports iterations/s (median over --repeats blocks after
a warm-up; compile excluded) and the ratio JAX / PyTorch. The JAX search runs
`--scan` steps per jitted call (the whole loop under lax.scan, as the CLI
does); its one-step-per-call speed is reported too, and the throughput of R
restarts vmapped.

    python benchmarks/bench_search.py [--size 14m] [--length 32] [--topk 8]
        [--candidates 64] [--edits 2] [--steps 10] [--repeats 5] [--scan 10] [--restarts 4]
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

from goodhart_jax import cli, models
from goodhart_jax.models.testing import make_tiny_checkpoint
from goodhart_jax.search import SearchConfig, make_scan, make_search, search_params
from timing import machine, median_time  # noqa: E402  (benchmarks/timing.py)

SIZES = {  # Pythia configs (hidden, layers, heads, intermediate), vocab 50304
    "14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
    "160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def torch_gcg(ref, vocab, length, topk, candidates, edits, banned=(), seed=0):
    """A straightforward PyTorch GCG with the same steps as goodhart_jax.search (n = `edits`).

    Returns step() -> best reward so far, and the state dict.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    emb = ref.backbone.get_input_embeddings().weight               # [V, D]
    for p in ref.parameters():
        p.requires_grad_(False)
    st = {"tokens": torch.randint(0, vocab, (length,), generator=gen), "best": -float("inf"),
          "best_tokens": None}
    banned = torch.tensor(list(banned), dtype=torch.long)
    mask1 = torch.ones(1, length, dtype=torch.long)
    maskc = torch.ones(candidates, length, dtype=torch.long)

    def reward_of_embeds(x, mask):
        h = ref.backbone(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return ref.head(h[:, -1])[:, 0]

    def step():
        tokens = st["tokens"]
        onehot = torch.nn.functional.one_hot(tokens, vocab).float().requires_grad_(True)
        r = reward_of_embeds((onehot @ emb)[None], mask1)[0]
        (grad,) = torch.autograd.grad(r, onehot)                    # [T, V]
        if len(banned):
            grad[:, banned] = -float("inf")
        top = grad.topk(topk, dim=1).indices                        # [T, K]
        pos = torch.rand(candidates, length, generator=gen).topk(edits, dim=1).indices   # [C, E]
        pick = torch.randint(0, topk, (candidates, edits), generator=gen)
        cand = tokens.repeat(candidates, 1)
        cand.scatter_(1, pos, top[pos, pick])                       # [C, T]
        with torch.inference_mode():
            h = ref.backbone(input_ids=cand, attention_mask=maskc).last_hidden_state
            scores = ref.head(h[:, -1])[:, 0]
        i = int(scores.argmax())
        st["tokens"] = cand[i].clone()
        if float(scores[i]) > st["best"]:
            st["best"], st["best_tokens"] = float(scores[i]), cand[i].clone()
        return st["best"]

    return step, st


def main(size="14m", length=32, topk=8, candidates=64, edits=2, steps=10, repeats=5, scan=10,
         restarts=4) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as d:
        ckpt = make_tiny_checkpoint(os.path.join(d, "rm"), "gpt_neox", "oasst", seed=0,
                                    vocab_size=50304, max_position_embeddings=2048, **SIZES[size])
        model = models.load_model(ckpt.path)
    reward = models.reward_scorer(model)
    cfg = SearchConfig(length=length, topk=topk, num_candidates=candidates, num_iters=10**9,
                       schedule="gcg", edits=edits)
    init, step = make_search(cfg, reward)
    params = search_params(reward)
    state = jax.jit(init)(jax.random.key(0), params)

    # JAX: `scan` steps per jitted call.
    run = jax.jit(make_scan(step, scan))
    holder = {"s": state}

    def jax_block():
        for _ in range(max(1, steps // scan)):
            holder["s"], _ = run(jax.random.key(1), holder["s"], params)
        jax.block_until_ready(holder["s"])
    t0 = time.perf_counter()
    jax_block()
    compile_s = time.perf_counter() - t0
    jax_s = median_time(jax_block, repeats) / (max(1, steps // scan) * scan)

    # JAX: one step per call (dispatch overhead included).
    one = jax.jit(step)

    def jax_one():
        s = holder["s"]
        for i in range(steps):
            s, _ = one(jax.random.key(i), s, params)
        jax.block_until_ready(s)
        holder["s"] = s
    jax_one_s = median_time(jax_one, repeats) / steps

    # JAX: R restarts vmapped, `scan` steps per call.
    vstate = jax.jit(jax.vmap(init, in_axes=(0, None)))(jax.random.split(jax.random.key(2), restarts),
                                                        params)
    vrun = jax.jit(jax.vmap(make_scan(step, scan), in_axes=(0, 0, None)))
    vkeys = jax.random.split(jax.random.key(3), restarts)
    vholder = {"s": vstate}

    def jax_vmapped():
        for _ in range(max(1, steps // scan)):
            vholder["s"], _ = vrun(vkeys, vholder["s"], params)
        jax.block_until_ready(vholder["s"])
    jax_v_s = median_time(jax_vmapped, repeats) / (max(1, steps // scan) * scan)

    # PyTorch.
    ref = ckpt.torch_model
    ref.backbone.config._attn_implementation = "sdpa"  # transformers' default (fastest on CPU)
    tstep, tstate = torch_gcg(ref, model.vocab_size, length, topk, candidates, edits)

    def torch_block():
        for _ in range(steps):
            tstep()
    torch_s = median_time(torch_block, repeats) / steps

    # Sanity: both implementations score the same sequence alike.
    ids = tstate["best_tokens"][None].numpy().astype(np.int32)
    ours = float(jax.jit(reward.score_tokens)(reward.params, jnp.asarray(ids),
                                              jnp.ones(ids.shape, jnp.int32))[0])
    return {
        "size": size, "length": length, "topk": topk, "candidates": candidates, "edits": edits,
        "steps": steps, "repeats": repeats, "scan": scan, "restarts": restarts,
        "jax_iters_per_s": 1 / jax_s, "jax_one_step_per_call_iters_per_s": 1 / jax_one_s,
        "jax_vmapped_restart_iters_per_s": restarts / jax_v_s,
        "torch_iters_per_s": 1 / torch_s, "torch_ms_per_step": 1e3 * torch_s,
        "jax_ms_per_step": 1e3 * jax_s,
        "ratio_jax_over_torch": torch_s / jax_s,
        "ratio_jax_one_step_over_torch": torch_s / jax_one_s,
        "jax_compile_s": compile_s,
        "score_diff_torch_vs_jax": abs(ours - tstate["best"]),
        "machine": f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
    }


@dataclasses.dataclass(frozen=True)
class Config:
    size: str = cli.arg("14m", "model shape", choices=sorted(SIZES))
    length: int = cli.arg(32, "tokens per sequence", metavar="L")
    topk: int = cli.arg(8, "tokens kept per position", metavar="K")
    candidates: int = cli.arg(64, "candidates per step", metavar="C")
    edits: int = cli.arg(2, "edits per candidate", metavar="N")
    steps: int = cli.arg(10, "timed steps", metavar="S")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    scan: int = cli.arg(10, "steps per jitted scan", metavar="S")
    restarts: int = cli.arg(4, "vmapped restarts", metavar="R")


if __name__ == "__main__":
    print(json.dumps(main(**dataclasses.asdict(cli.parse_config(Config, description=__doc__))), indent=1))
