"""Tiny random reward-model checkpoints on disk, in each published layout.

Used by the parity tests here, by the search tests and by anyone who wants a
checkpoint to point `sims/score_rewards.py` at without a network. The weights
come from transformers' PyTorch classes (so this module needs `torch`, a test
dependency), re-drawn with a seeded generator at a scale where every
parameter matters (norm weights near 1, biases non-zero).

Layouts (`layout=`):
  gpt_neox:
    "oasst"     OpenAssistant `GPTNeoXRewardModel`: config `model_type:
                gpt_neox_reward_model` with legacy `rotary_pct`/`rotary_emb_base`
                keys, tensors `gpt_neox.*` and `out_proj.{weight,bias}`.
    "seq_cls"   transformers `GPTNeoXForSequenceClassification` (`score.weight`).
    "causal_lm" transformers `GPTNeoXForCausalLM` (`embed_out.weight`).
  llama:
    "starling"  Starling's `GPTRewardModel`: one `pytorch_model.bin` with
                `transformer.*` and/or `model.model.*`, `model.lm_head.weight`,
                `v_head.weight`; no config (the Llama config is written to a
                separate base-model directory, `TinyCheckpoint.base_model`).
    "seq_cls"   transformers `LlamaForSequenceClassification`.
    "causal_lm" transformers `LlamaForCausalLM`.

Formats (`fmt=`): "safetensors", "bin", "sharded_safetensors", "sharded_bin"
(two shards plus an index file). Starling is always a single `.bin`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

GPT_NEOX_TINY = dict(
    vocab_size=103, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
    intermediate_size=56, rotary_pct=0.25, rotary_emb_base=10000.0,
    use_parallel_residual=True, max_position_embeddings=128, hidden_act="gelu",
    layer_norm_eps=1e-5,
)
LLAMA_TINY = dict(
    vocab_size=103, hidden_size=36, num_hidden_layers=2, num_attention_heads=6,
    num_key_value_heads=2, intermediate_size=50, rope_theta=10000.0,
    max_position_embeddings=128, rms_norm_eps=1e-6,
)
LAYOUTS = {"gpt_neox": ("oasst", "seq_cls", "causal_lm"),
           "llama": ("starling", "seq_cls", "causal_lm")}
FORMATS = ("safetensors", "bin", "sharded_safetensors", "sharded_bin")


class TinyCheckpoint(NamedTuple):
    """What `make_tiny_checkpoint` wrote.

    Fields:
      path: the checkpoint directory (pass it as `--model`).
      base_model: directory holding the Llama config for the Starling layout
        (pass it as `--base-model`), else None.
      torch_model: the PyTorch module whose weights were written, in eval mode
        (`.backbone`, `.head` and `.lm_head` attributes, see `_Reference`).
      arch: "gpt_neox" or "llama".
      layout: the layout written.
    """

    path: Path
    base_model: Path | None
    torch_model: Any
    arch: str
    layout: str


def _reference_cls():
    import torch
    from torch import nn

    class _Reference(nn.Module):
        """PyTorch reference: backbone + optional head / lm_head."""

        def __init__(self, backbone, head=None, lm_head=None):
            super().__init__()
            self.backbone = backbone
            self.head = head
            self.lm_head = lm_head

    return torch, nn, _Reference


def _redraw(module, seed: int) -> None:
    """Re-draw every parameter so none is at a trivial value (0 or 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "embed" in name and p.ndim == 2 and "out" not in name:
                p.copy_(noise)
            else:
                fan_in = p.shape[-1] if p.ndim > 1 else 1
                p.copy_(noise / fan_in**0.5)


def _write_state(state: dict, path: Path, fmt: str) -> None:
    """Write a name -> tensor dict as one file or two shards plus an index."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if fmt == "safetensors":
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    elif fmt in ("sharded_safetensors", "sharded_bin"):
        names = sorted(state)
        half = len(names) // 2
        parts = [names[:half], names[half:]]
        ext, index = ("safetensors", "model.safetensors.index.json") if fmt == "sharded_safetensors" \
            else ("bin", "pytorch_model.bin.index.json")
        stem = "model" if ext == "safetensors" else "pytorch_model"
        weight_map = {}
        for i, part in enumerate(parts):
            fname = f"{stem}-{i + 1:05d}-of-{len(parts):05d}.{ext}"
            shard = {k: state[k] for k in part}
            if ext == "safetensors":
                save_file(shard, str(path / fname), metadata={"format": "pt"})
            else:
                torch.save(shard, path / fname)
            weight_map.update({k: fname for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (path / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def make_tiny_checkpoint(
    path: str | os.PathLike,
    arch: str = "gpt_neox",
    layout: str | None = None,
    seed: int = 0,
    fmt: str = "safetensors",
    dtype: str = "float32",
    starling_prefixes: tuple[str, ...] = ("transformer", "model.model"),
    **config_overrides: Any,
) -> TinyCheckpoint:
    """Write a tiny random checkpoint directory in a published layout.

    Args:
      path: directory to create (its parent must exist).
      arch: "gpt_neox" or "llama".
      layout: see the module docstring; default "oasst" / "starling".
      seed: seeds the weights.
      fmt: file format, one of FORMATS (ignored for "starling": a single .bin).
      dtype: "float32" or "bfloat16" for the stored tensors.
      starling_prefixes: which backbone key prefixes a Starling .bin holds.
      **config_overrides: fields of the transformers config to change
        (e.g. `use_parallel_residual=False`, `num_key_value_heads=3`).
    Returns:
      TinyCheckpoint with the directory and the PyTorch reference module.
    """
    import transformers as tf

    torch, nn, _Reference = _reference_cls()
    if arch not in LAYOUTS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(LAYOUTS)}")
    layout = layout or LAYOUTS[arch][0]
    if layout not in LAYOUTS[arch]:
        raise ValueError(f"unknown layout {layout!r} for {arch}; expected one of {LAYOUTS[arch]}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(seed)
    base_model = None

    if arch == "gpt_neox":
        kw = dict(GPT_NEOX_TINY, **config_overrides)
        kw.setdefault("pad_token_id", 1)
        cfg = tf.GPTNeoXConfig(**kw)
        cfg._attn_implementation = "eager"
        if layout == "causal_lm":
            full = tf.GPTNeoXForCausalLM(cfg)
            _redraw(full, seed)
            ref = _Reference(full.gpt_neox, None, full.embed_out if hasattr(full, "embed_out") else full.lm_head)
            state = {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in full.state_dict().items()}
        elif layout == "seq_cls":
            cfg.num_labels = 1
            full = tf.GPTNeoXForSequenceClassification(cfg)
            _redraw(full, seed)
            ref = _Reference(full.gpt_neox, full.score)
            state = full.state_dict()
        else:  # oasst
            backbone = tf.GPTNeoXModel(cfg)
            out_proj = nn.Linear(cfg.hidden_size, 1)
            ref = _Reference(backbone, out_proj)
            _redraw(ref, seed)
            state = {f"gpt_neox.{k}": v for k, v in backbone.state_dict().items()}
            state.update({f"out_proj.{k}": v for k, v in out_proj.state_dict().items()})
        config = cfg.to_dict()
        if layout == "oasst":
            # The published config predates `rope_parameters`.
            rope = config.pop("rope_parameters")
            config["rotary_pct"] = rope["partial_rotary_factor"]
            config["rotary_emb_base"] = rope["rope_theta"]
            config["model_type"] = "gpt_neox_reward_model"
            config["architectures"] = ["GPTNeoXRewardModel"]
            config["pooling"] = "last"
    else:
        kw = dict(LLAMA_TINY, **config_overrides)
        kw.setdefault("pad_token_id", 0)
        cfg = tf.LlamaConfig(**kw)
        cfg._attn_implementation = "eager"
        if layout == "seq_cls":
            cfg.num_labels = 1
            full = tf.LlamaForSequenceClassification(cfg)
            _redraw(full, seed)
            ref = _Reference(full.model, full.score)
            state = full.state_dict()
        else:
            full = tf.LlamaForCausalLM(cfg)
            if layout == "causal_lm":
                _redraw(full, seed)
                ref = _Reference(full.model, None, full.lm_head)
                state = full.state_dict()
            else:  # starling
                v_head = nn.Linear(cfg.hidden_size, 1, bias=False)
                ref = _Reference(full.model, v_head, full.lm_head)
                _redraw(ref, seed)
                state = {}
                for prefix in starling_prefixes:
                    state.update({f"{prefix}.{k}": v for k, v in full.model.state_dict().items()})
                state["model.lm_head.weight"] = full.lm_head.weight
                state["v_head.weight"] = v_head.weight
        config = cfg.to_dict()
    ref = ref.to(torch_dtype).eval()
    state = {k: v.to(torch_dtype) for k, v in state.items()}
    config["dtype"] = dtype

    if layout == "starling":
        _write_state(state, path, "bin")
        base_model = Path(str(path) + "-base")
        base_model.mkdir(parents=True, exist_ok=True)
        config["architectures"] = ["LlamaForCausalLM"]
        (base_model / "config.json").write_text(json.dumps(config, indent=1, default=str))
    else:
        _write_state(state, path, fmt)
        (path / "config.json").write_text(json.dumps(config, indent=1, default=str))
    return TinyCheckpoint(path, base_model, ref, arch, layout)
