"""Reward-model scoring throughput: our jitted JAX scorer vs transformers' PyTorch, same process.

Both score the same random Pythia-160M-sized GPT-NeoX reward model
(OpenAssistant layout: backbone + `out_proj`, written by
`make_tiny_checkpoint`) on the same uniform random tokens, float32, B x T.
Prints tokens/s (median of --repeats after a warm-up, compile excluded) and
the ratio JAX / PyTorch.

    python benchmarks/bench_scoring.py [--batch 8] [--length 256] [--repeats 5] [--size 160m|14m|1.4b]
        [--dtype float32|bfloat16] [--torch-device cpu|cuda|none] [--json]
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import jax
import numpy as np

from goodhart_jax import cli, models
from goodhart_jax.models.testing import make_tiny_checkpoint
from timing import machine, median_time  # noqa: E402  (benchmarks/timing.py)

SIZES = {  # Pythia configs (hidden, layers, heads, intermediate), vocab 50304
    "160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
}


def main(batch=8, length=256, repeats=5, size="160m", dtype="float32", torch_device="cpu") -> dict:
    import torch

    with tempfile.TemporaryDirectory() as d:
        ckpt = make_tiny_checkpoint(os.path.join(d, "rm"), "gpt_neox", "oasst", seed=0, dtype=dtype,
                                    vocab_size=50304, max_position_embeddings=2048, **SIZES[size])
        model = models.load_model(ckpt.path)
    ids = np.asarray(jax.random.randint(jax.random.key(0), (batch, length), 0, model.vocab_size))
    mask = np.ones_like(ids, dtype=np.int32)

    reward = jax.jit(models.make_reward_fn(model))
    t0 = time.perf_counter()
    reward(model.params, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - t0
    jax_s = median_time(lambda: reward(model.params, ids, mask).block_until_ready(), repeats)
    ours = np.asarray(reward(model.params, ids, mask))

    tokens = batch * length
    result = {"size": size, "dtype": dtype, "batch": batch, "length": length, "repeats": repeats,
              "jax_tokens_per_s": tokens / jax_s, "jax_compile_s": compile_s, "machine": machine(),
              "devices": [str(d) for d in jax.devices()], "torch_device": torch_device}
    if torch_device == "none":
        return result
    ref = ckpt.torch_model.to(torch_device)
    tids = torch.tensor(np.array(ids), dtype=torch.long, device=torch_device)
    tmask = torch.tensor(mask, device=torch_device)

    def torch_score():  # .cpu() waits for the device
        with torch.inference_mode():
            h = ref.backbone(input_ids=tids, attention_mask=tmask).last_hidden_state
            return ref.head(h[:, -1])[:, 0].float().cpu()

    ref.backbone.config._attn_implementation = "sdpa"  # transformers' default (fastest on CPU)
    torch_s = median_time(torch_score, repeats)
    theirs = torch_score().numpy()
    return result | {"torch_tokens_per_s": tokens / torch_s, "ratio_jax_over_torch": torch_s / jax_s,
                     "max_abs_diff": float(np.abs(ours - theirs).max()),
                     "torch": f"torch {torch.__version__} ({torch.get_num_threads()} threads)"}


@dataclasses.dataclass(frozen=True)
class Config:
    batch: int = cli.arg(8, "sequences per batch", metavar="B")
    length: int = cli.arg(256, "tokens per sequence", metavar="T")
    repeats: int = cli.arg(5, "timed repeats (median)", metavar="R")
    size: str = cli.arg("160m", "model shape", choices=sorted(SIZES))
    dtype: str = cli.arg("float32", "parameter dtype", choices=("float32", "bfloat16"))
    torch_device: str = cli.arg("cpu", "where the PyTorch baseline runs (none: JAX only)",
                                choices=("cpu", "cuda", "none"))
    json: bool = cli.arg(False, "print only one JSON line")


if __name__ == "__main__":
    a = cli.parse_config(Config, description=__doc__)
    r = main(a.batch, a.length, a.repeats, a.size, a.dtype, a.torch_device)
    print(json.dumps(r) if a.json else json.dumps(r, indent=1))
    if not a.json and "torch_tokens_per_s" in r:
        print(f"{r['size']} {r['dtype']} {r['batch']}x{r['length']}: JAX {r['jax_tokens_per_s']:.0f} tokens/s, "
              f"PyTorch {r['torch_tokens_per_s']:.0f} tokens/s, ratio {r['ratio_jax_over_torch']:.2f}x")
