"""GCG/ACG search speed: our jitted JAX search vs a straightforward PyTorch GCG, same process.

Two measurements, one JSON line:

1. Step speed. Both run the same algorithm (gradient w.r.t. one-hot tokens
   through the embedding matrix, top-k tokens per position, C candidates each
   changing n random distinct positions, one batched forward pass over the
   candidates, best-so-far buffer) on the same random GPT-NeoX reward model
   (OpenAssistant layout, Pythia-14M-like by default, written by
   `make_tiny_checkpoint`), float32, one restart. Iterations/s are medians over
   --repeats blocks after a warm-up (compile excluded); the JAX search runs
   --scan steps per jitted call (the loop under lax.scan, as the CLI does); its
   one-step-per-call speed and the throughput of --restarts vmapped restarts
   are reported too, and the scanned step with `share_prefix` (each candidate
   run from its first edit on against the current sequence's cached keys and
   values: the same candidates and steps, checked), and the scanned step without
   `dedup_first_layer` (the first layer on all C T candidate rows; same steps,
   checked). `--size 7b` is Starling-RM-7B's shape (Llama-2-7B: hidden
   4096, 32 layers, 32 heads, intermediate 11008, vocab 32000) with random
   bfloat16 weights drawn in JAX on the device, no PyTorch side; it needs a
   GPU and refuses to run on a CPU.
2. Time to target (--target). A tiny GPT-NeoX reward model (vocab 8, length 5:
   32768 sequences) whose global maximum is found by scoring every sequence;
   then, from the same initial sequences for each of --target-restarts
   restarts, JAX ACG (the paper's schedule, restarts vmapped), JAX GCG and the
   PyTorch GCG (one edit per candidate, restarts one after another) run until
   their best reaches that maximum or --target-iters steps. Reports the
   iterations and seconds each restart took (compile excluded).

    python benchmarks/bench_search.py [--size 14m|70m|160m|7b] [--length 32] [--topk 8]
        [--candidates 64] [--edits 2] [--steps 10] [--repeats 5] [--scan 10] [--restarts 4]
        [--target/--no-target] [--target-restarts 8] [--target-iters 200] [--torch/--no-torch]
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import cli, models
from goodhart_jax.models.heads import HeadSpec
from goodhart_jax.models.llama import LlamaConfig
from goodhart_jax.models.loading import LoadedModel
from goodhart_jax.search import SearchConfig, make_scan, make_search, search_params
from timing import interleaved_medians, machine  # noqa: E402  (benchmarks/timing.py)

SIZES = {  # Pythia configs (hidden, layers, heads, intermediate), vocab 50304
    "14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
    "160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
LLAMA_SIZES = {  # random JAX weights, no checkpoint, no PyTorch side
    "7b": dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=11008, head_dim=128),   # Starling-RM-7B / Llama-2-7B
    "llama-tiny": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, head_dim=8),  # the 7b code path, for tests
}
GPU_ONLY = ("7b",)
TARGET_MODEL = dict(vocab_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
TARGET_LENGTH = 5


def random_llama(size: str, dtype: str = "bfloat16", seed: int = 0) -> LoadedModel:
    """A Starling-layout reward model (Llama backbone + v_head) of `LLAMA_SIZES[size]`, weights N(0, 0.02^2).

    The weights are drawn in one jitted call on the default device: nothing of
    size [params] passes through the host (7B in bfloat16 is 13.5 GB).
    """
    cfg = LlamaConfig(**LLAMA_SIZES[size], max_position_embeddings=4096)
    module = models.LlamaModel(cfg, dtype=jnp.dtype(dtype))
    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = {"model": jax.eval_shape(lambda: module.init(jax.random.key(0), ids, jnp.ones_like(ids)))["params"],
              "v_head": {"kernel": jax.ShapeDtypeStruct((cfg.hidden_size, 1), jnp.dtype(dtype))}}

    @jax.jit
    def draw(key):
        leaves, _ = jax.tree_util.tree_flatten_with_path(shapes)
        keys = jax.random.split(key, len(leaves))
        out = [jnp.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(p) else
               (0.02 * jax.random.normal(k, s.shape, jnp.float32)).astype(s.dtype)
               for k, (p, s) in zip(keys, leaves)]
        return jax.tree.unflatten(jax.tree.structure(shapes), out)

    return LoadedModel("llama", cfg, draw(jax.random.key(seed)), HeadSpec("v_head", False, "last"), False, dtype,
                       "starling")


def torch_gcg(ref, vocab, length, topk, candidates, edits, banned=(), seed=0, init=None):
    """A straightforward PyTorch GCG with the same steps as goodhart_jax.search (n = `edits`).

    Args:
      init: optional [T] initial tokens (default: uniform random from `seed`).
    Returns step() -> best reward so far, and the state dict.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    emb = ref.backbone.get_input_embeddings().weight               # [V, D]
    for p in ref.parameters():
        p.requires_grad_(False)
    tokens = torch.randint(0, vocab, (length,), generator=gen) if init is None else torch.tensor(np.array(init), dtype=torch.long)
    st = {"tokens": tokens, "best": -float("inf"), "best_tokens": None}
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


def step_speed(model, size, length, topk, candidates, edits, steps, repeats, scan, restarts, ckpt=None) -> dict:
    """Iterations/s of the JAX step (scan, share_prefix scan, one step per call, vmapped restarts) and, given
    `ckpt`, PyTorch's, timed round-robin (`interleaved_medians`)."""
    reward = models.reward_scorer(model)
    cfg = SearchConfig(length=length, topk=topk, num_candidates=candidates, num_iters=10**9, schedule="gcg",
                       edits=edits)
    init, step = make_search(cfg, reward)
    params = search_params(reward)
    start = jax.jit(init)(jax.random.key(0), params)
    blocks = max(1, steps // scan)
    fns, per_call, out = {}, {}, {}

    def scanned(step, state):
        run, holder = jax.jit(make_scan(step, scan)), {"s": state}

        def block():
            for _ in range(blocks):
                holder["s"], _ = run(jax.random.key(1), holder["s"], params)
            jax.block_until_ready(holder["s"])
        return run, block

    run, fns["jax"] = scanned(step, start)
    per_call["jax"] = blocks * scan
    t0 = time.perf_counter()
    fns["jax"]()
    out["jax_compile_s"] = time.perf_counter() - t0
    if reward.prefix is not None and size not in GPU_ONLY:  # share_prefix: same steps, candidates from first edit on
        pcfg = dataclasses.replace(cfg, share_prefix=True)
        prun, fns["jax_prefix"] = scanned(make_search(pcfg, reward)[1], start)
        per_call["jax_prefix"] = blocks * scan
        same = [np.asarray(r(jax.random.key(5), start, params)[0].tokens) for r in (run, prun)]
        out |= {"jax_prefix_slots": pcfg.prefix_slots(), "jax_prefix_plain_slots": length * candidates,
                "jax_prefix_same_steps": bool(np.array_equal(*same))}
    if reward.distinct and size not in GPU_ONLY:  # first layer on all C T rows (dedup_first_layer off): same steps
        ncfg = dataclasses.replace(cfg, dedup_first_layer=False)
        nrun, fns["jax_no_dedup"] = scanned(make_search(ncfg, reward)[1], start)
        per_call["jax_no_dedup"] = blocks * scan
        same = [np.asarray(r(jax.random.key(5), start, params)[0].tokens) for r in (run, nrun)]
        out["jax_no_dedup_same_steps"] = bool(np.array_equal(*same))
    if size not in GPU_ONLY:  # one step per call (dispatch overhead included): a second compile
        one, holder = jax.jit(step), {"s": start}
        # Keys made before timing: a jax.random.key(i) inside the loop is a device computation queued
        # behind the previous step, so each step would wait for the last before it is dispatched.
        keys = list(jax.random.split(jax.random.key(0), steps))

        def jax_one():
            s = holder["s"]
            for key in keys:
                s, _ = one(key, s, params)
            holder["s"] = jax.block_until_ready(s)
        fns["jax_one_step_per_call"], per_call["jax_one_step_per_call"] = jax_one, steps
    if restarts:
        vstate = jax.jit(jax.vmap(init, in_axes=(0, None)))(jax.random.split(jax.random.key(2), restarts), params)
        vrun = jax.jit(jax.vmap(make_scan(step, scan), in_axes=(0, 0, None)))
        vkeys, vholder = jax.random.split(jax.random.key(3), restarts), {"s": vstate}

        def jax_vmapped():
            for _ in range(blocks):
                vholder["s"], _ = vrun(vkeys, vholder["s"], params)
            jax.block_until_ready(vholder["s"])
        # per restart-step: each call runs blocks * scan steps of every restart
        fns["jax_vmapped_restart"], per_call["jax_vmapped_restart"] = jax_vmapped, blocks * scan * restarts
    if ckpt is not None:
        import torch

        ref = ckpt.torch_model
        ref.backbone.config._attn_implementation = "sdpa"  # transformers' default (fastest on CPU)
        tstep, tstate = torch_gcg(ref, model.vocab_size, length, topk, candidates, edits)

        def torch_block():
            for _ in range(steps):
                tstep()
        fns["torch"], per_call["torch"] = torch_block, steps
    secs = {name: t / per_call[name] for name, t in interleaved_medians(fns, repeats).items()}   # per step
    for name, sec in secs.items():
        out[f"{name}_iters_per_s"] = 1 / sec
        if name in ("jax", "jax_prefix", "jax_no_dedup", "torch"):
            out[f"{name}_ms_per_step"] = 1e3 * sec
    if ckpt is not None:
        ids = tstate["best_tokens"][None].numpy().astype(np.int32)  # both score the same sequence alike
        ours = float(jax.jit(reward.score_tokens)(reward.params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32))[0])
        out |= {f"ratio_{name}_over_torch": secs["torch"] / sec for name, sec in secs.items() if name != "torch"}
        out |= {"score_diff_torch_vs_jax": abs(ours - tstate["best"]),
                "torch": f"torch {torch.__version__} ({torch.get_num_threads()} threads)"}
    return out


def time_to_target(restarts: int, max_iters: int, topk: int = 3, candidates: int = 16, chunk: int = 5,
                   seed: int = 0) -> dict:
    """Iterations and seconds until each restart's best is the enumerated global maximum of a tiny reward model.

    JAX ACG (paper schedule) and JAX GCG (n = 1) vmap the restarts and run `chunk` steps per jitted call
    (a restart's seconds: the wall time at the end of the chunk in which it reached the maximum); the PyTorch
    GCG (n = 1) runs the restarts one after another (a restart's seconds: its own steps). Same initial
    sequences for all three; -1 iterations (null seconds): not reached within `max_iters`.
    """
    with tempfile.TemporaryDirectory() as d:
        ckpt = make_ckpt(os.path.join(d, "rm"), seed, TARGET_MODEL)
        model = models.load_model(ckpt.path)
    reward = models.reward_scorer(model)
    vocab, length = model.vocab_size, TARGET_LENGTH
    grid = np.stack(np.meshgrid(*[np.arange(vocab)] * length, indexing="ij"), -1).reshape(-1, length)
    scores = np.asarray(jax.jit(reward.score_tokens)(reward.params, jnp.asarray(grid, jnp.int32),
                                                     jnp.ones(grid.shape, jnp.int32)))
    best = float(scores.max())
    tol = 1e-5 * max(1.0, abs(best))            # float32 scores of the same tokens in other batch shapes
    init = np.asarray(jax.random.randint(jax.random.key(seed + 1), (restarts, length), 0, vocab), np.int32)
    out = {"target_vocab": vocab, "target_length": length, "target_sequences": int(grid.shape[0]),
           "target_max_reward": best, "target_restarts": restarts, "target_max_iters": max_iters,
           "target_topk": topk, "target_candidates": candidates}

    for name, sched in (("jax_acg", "paper"), ("jax_gcg", "gcg")):
        cfg = SearchConfig(length=length, topk=topk, num_candidates=candidates, num_iters=max_iters,
                           schedule=sched, edits=1)
        init_fn, step = make_search(cfg, reward)
        params = search_params(reward)
        keys = jax.random.split(jax.random.key(seed + 2), restarts)
        vinit = jax.jit(jax.vmap(init_fn, in_axes=(0, None, 0)))
        run = jax.jit(jax.vmap(make_scan(step, chunk, max_iters), in_axes=(0, 0, None)))
        jax.block_until_ready(run(keys, vinit(keys, params, init), params))      # compile
        iters, secs = np.full(restarts, -1), np.full(restarts, np.nan)
        t0 = time.perf_counter()
        state, done = vinit(keys, params, init), 0
        while (iters < 0).any() and done < max_iters:
            state, info = run(keys, state, params)
            hit = np.asarray(info.best_reward) >= best - tol                    # [R, chunk]
            now = time.perf_counter() - t0
            for r in np.flatnonzero((iters < 0) & hit.any(1)):
                iters[r], secs[r] = done + int(np.argmax(hit[r])) + 1, now
            done += chunk
        out |= _summary(name, iters, secs)

    ref = ckpt.torch_model
    ref.backbone.config._attn_implementation = "sdpa"
    iters, secs = np.full(restarts, -1), np.full(restarts, np.nan)
    for r in range(restarts):
        tstep, _ = torch_gcg(ref, vocab, length, topk, candidates, 1, seed=seed + r, init=init[r])
        t0 = time.perf_counter()
        for i in range(max_iters):
            if tstep() >= best - tol:
                iters[r], secs[r] = i + 1, time.perf_counter() - t0
                break
    return out | _summary("torch_gcg", iters, secs)


def _summary(name: str, iters: np.ndarray, secs: np.ndarray) -> dict:
    found = iters > 0
    return {f"{name}_iters": iters.tolist(), f"{name}_seconds": [None if np.isnan(s) else round(float(s), 4)
                                                                   for s in secs],
            f"{name}_found": int(found.sum()),
            f"{name}_median_iters": float(np.median(iters[found])) if found.any() else None,
            f"{name}_seconds_all_found": float(np.max(secs) if name.startswith("jax") else np.sum(secs))
            if found.all() else None}


def make_ckpt(path, seed, config):
    from goodhart_jax.models.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(path, "gpt_neox", "oasst", seed=seed, **config)


def main(size="14m", length=32, topk=8, candidates=64, edits=2, steps=10, repeats=5, scan=10, restarts=4,
         target=True, target_restarts=8, target_iters=200, torch=True) -> dict:
    if size in GPU_ONLY and jax.default_backend() == "cpu":
        raise cli.InputError(f"--size {size} needs a GPU (jax's default backend here is cpu): "
                             "run it through benchmarks/gpu.sh on a GPU machine")
    result = {"size": size, "length": length, "topk": topk, "candidates": candidates, "edits": edits,
              "steps": steps, "repeats": repeats, "scan": scan, "restarts": restarts}
    if size in LLAMA_SIZES:
        model, ckpt = random_llama(size, "bfloat16" if size in GPU_ONLY else "float32"), None
        result["dtype"] = model.dtype
    else:
        with tempfile.TemporaryDirectory() as d:
            ckpt = make_ckpt(os.path.join(d, "rm"), 0, dict(vocab_size=50304, max_position_embeddings=2048,
                                                            **SIZES[size]))
            model = models.load_model(ckpt.path)
        result["dtype"] = "float32"
    result |= step_speed(model, size, length, topk, candidates, edits, steps, repeats, scan, restarts,
                         ckpt if torch else None)
    if size in GPU_ONLY:  # the paper's 40 runs x 1000 iterations (Section 5), at this step speed
        result["projected_hours_40_runs_x_1000_iters"] = 40 * 1000 * result["jax_ms_per_step"] / 3.6e6
    if target:
        result |= time_to_target(target_restarts, target_iters)
    return result | {"machine": machine(), "devices": [str(d) for d in jax.devices()]}


@dataclasses.dataclass(frozen=True)
class Config:
    size: str = cli.arg("14m", "model shape (7b: Starling-RM-7B's, random bfloat16 weights, GPU only)",
                        choices=sorted(SIZES) + sorted(LLAMA_SIZES))
    length: int = cli.arg(32, "tokens per sequence", metavar="L")
    topk: int = cli.arg(8, "tokens kept per position", metavar="K")
    candidates: int = cli.arg(64, "candidates per step", metavar="C")
    edits: int = cli.arg(2, "edits per candidate", metavar="N")
    steps: int = cli.arg(10, "timed steps", metavar="S")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    scan: int = cli.arg(10, "steps per jitted scan", metavar="S")
    restarts: int = cli.arg(4, "vmapped restarts (0: skip that measurement)", metavar="R")
    target: bool = cli.arg(True, "also time to target on the enumerable tiny model")
    target_restarts: int = cli.arg(8, "restarts of the time-to-target runs", metavar="R")
    target_iters: int = cli.arg(200, "step limit of the time-to-target runs", metavar="I")
    torch: bool = cli.arg(True, "time the PyTorch GCG baseline too (never for 7b)")


if __name__ == "__main__":
    try:
        print(json.dumps(main(**dataclasses.asdict(cli.parse_config(Config, description=__doc__)))))
    except cli.InputError as e:  # one line, exit 2, as the studies' runner answers bad input
        print(f"bench_search.py: error: {e}", file=sys.stderr)
        sys.exit(2)
