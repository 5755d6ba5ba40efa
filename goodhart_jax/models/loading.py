"""Load reward models and causal LMs from PyTorch checkpoints on local disk.

Supported files: `model.safetensors`, `pytorch_model.bin`, and sharded
checkpoints with `model.safetensors.index.json` / `pytorch_model.bin.index.json`.
Supported layouts:
  * OpenAssistant `GPTNeoXRewardModel` (`model_type: gpt_neox_reward_model`,
    tensors `gpt_neox.*`, `out_proj.{weight,bias}`, config `pooling`).
  * Starling `GPTRewardModel`: one `pytorch_model.bin` with the Llama backbone
    under `transformer.*` and/or `model.model.*` (the same tensors twice),
    `model.lm_head.weight` and `v_head.weight`, and no config: the Llama
    config is read from `base_model`.
  * transformers `GPTNeoX/Llama ForSequenceClassification` (`score.weight`,
    one label) and `ForCausalLM` (`embed_out.weight` / `lm_head.weight`,
    tied to the input embedding when `tie_word_embeddings`).
Every tensor is accounted for: missing, unexpected or mis-shaped tensors raise
`CheckpointError` naming them (the original loaders' `strict=False` did not).
Known non-parameter buffers of old checkpoints (`attention.bias`,
`attention.masked_bias`, `rotary_emb.inv_freq`) are skipped.

Glossary: V vocab, D model.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from goodhart_jax.models.gpt_neox import GPTNeoXConfig
from goodhart_jax.models.heads import POOLINGS, HeadSpec
from goodhart_jax.models.llama import LlamaConfig

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
IGNORED = re.compile(r"(\.attention\.bias|\.attention\.masked_bias|rotary_emb\.inv_freq)$")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded faithfully."""


class LoadedModel(NamedTuple):
    """A ported model with its parameters.

    Fields:
      arch: "gpt_neox" or "llama".
      config: GPTNeoXConfig or LlamaConfig.
      params: {backbone: {...}, head name: {...}, optional "lm_head": {"kernel": [D, V]}};
        the backbone key is "gpt_neox" or "model".
      reward_head: HeadSpec of the scalar head, or None (a plain causal LM).
      has_lm_head: whether log-probabilities can be computed (an lm_head
        tensor, or tied input embeddings).
      dtype: "float32" or "bfloat16".
      layout: "oasst", "starling", "seq_cls" or "causal_lm".
    """

    arch: str
    config: Any
    params: dict
    reward_head: HeadSpec | None
    has_lm_head: bool
    dtype: str
    layout: str

    @property
    def backbone_key(self) -> str:
        return "gpt_neox" if self.arch == "gpt_neox" else "model"

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size


# ---------------------------------------------------------------- file reading
def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map a .safetensors file into numpy arrays (bfloat16 via ml_dtypes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buf = raw[8 + n + start: 8 + n + end]
        out[name] = buf.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:  # torch is a test dependency only
        raise CheckpointError(f"{path.name} is a PyTorch pickle; reading it needs `torch` installed") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    out = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path.name}: entry {name} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if t.dtype == torch.bfloat16:
            out[name] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[name] = t.numpy()
    return out


def _read_file(path: Path) -> dict[str, np.ndarray]:
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (or a single file), by PyTorch name.

    Prefers safetensors over .bin; follows an index file for sharded checkpoints.

    Raises:
      CheckpointError: no weights file, or an index naming a missing shard.
    """
    path = Path(path)
    if path.is_file():
        return _read_file(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / single).is_file():
            return _read_file(path / single)
        if (path / index).is_file():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            out: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).is_file():
                    raise CheckpointError(f"{path}: index {index} names missing shard {shard}")
                tensors = _read_file(path / shard)
                out.update(tensors)
            absent = sorted(set(weight_map) - set(out))
            if absent:
                raise CheckpointError(f"{path}: tensors in {index} but not in their shard: {_names(absent)}")
            return out
    raise CheckpointError(f"{path} is not a checkpoint: no model.safetensors, pytorch_model.bin or index file")


# ---------------------------------------------------------------- checking
def _names(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: str,
           hint: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors."""
    present = {k for k in state if not IGNORED.search(k)}
    missing = set(expected) - present
    unexpected = present - set(expected)
    bad = [f"{k} has shape {tuple(state[k].shape)}, config implies {expected[k]}"
           for k in sorted(set(expected) & present) if tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    if bad:
        problems.append("wrong shapes: " + "; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    if problems:
        raise CheckpointError(f"{where}: " + " | ".join(problems) + f" [{hint}]")


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from e


# ---------------------------------------------------------------- conversion
def _to_params(state: dict[str, np.ndarray], prefix: str, dtype) -> dict:
    """Backbone tensors under `prefix` -> nested linen params (key remap + transposes)."""
    params: dict = {}
    for name, w in state.items():
        if not name.startswith(prefix) or IGNORED.search(name):
            continue
        parts = name[len(prefix):].split(".")
        if parts[0] == "layers":
            parts = [f"layers_{parts[1]}"] + parts[2:]
        *mods, leaf = parts
        if leaf == "weight":
            if mods[-1] in ("embed_in", "embed_tokens"):
                leaf, w = "embedding", w
            elif w.ndim == 2:
                leaf, w = "kernel", w.T
            else:
                leaf = "scale"  # a norm
        node = params
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = jnp.asarray(np.ascontiguousarray(w).astype(dtype))
    return params


def _head_params(w: np.ndarray, b: np.ndarray | None, dtype) -> dict:
    out = {"kernel": jnp.asarray(np.ascontiguousarray(w.T).astype(dtype))}
    if b is not None:
        out["bias"] = jnp.asarray(b.astype(dtype))
    return out


def load_model(
    path: str | Path,
    base_model: str | Path | None = None,
    dtype: str | None = None,
    pooling: str | None = None,
    pad_id: int | None = None,
) -> LoadedModel:
    """Load a reward model or causal LM directory into JAX parameters.

    Args:
      path: checkpoint directory (see the module docstring for layouts).
      base_model: directory with the Llama config.json for checkpoints that
        ship none (Starling); also overrides a config in `path`.
      dtype: "float32" or "bfloat16"; None keeps the stored dtype (float16 and
        float64 become float32).
      pooling: override the reward head's pooling (see `HeadSpec`).
      pad_id: pad token for pooling "before_first_pad" (default: the config's
        `pad_token_id`, else 0, Llama's `<unk>`).
    Returns:
      LoadedModel.
    Raises:
      CheckpointError: not a checkpoint, or tensors missing / unexpected /
        mis-shaped for the config.
      NotImplementedError: a config feature that is not ported (e.g. rope scaling).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    if base_model is not None:
        base_model = Path(base_model)
        if not (base_model / "config.json").is_file():
            raise CheckpointError(f"base model {base_model} has no config.json")
        cfg_dict = _read_config(base_model)
    elif (path / "config.json").is_file():
        cfg_dict = _read_config(path)
    else:
        cfg_dict = None
    state = read_state_dict(path)
    if cfg_dict is None:
        raise CheckpointError(f"{path} has no config.json; a Starling-style checkpoint needs base_model "
                              "(--base-model DIR) holding the Llama config")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if dtype is None:
        stored = {str(w.dtype) for w in state.values()}
        dtype = "bfloat16" if stored == {"bfloat16"} else "float32"
    np_dtype = DTYPES[dtype]

    model_type = cfg_dict.get("model_type", "")
    archs = " ".join(cfg_dict.get("architectures") or [])
    if model_type.startswith("gpt_neox"):
        arch, config = "gpt_neox", GPTNeoXConfig.from_hf(cfg_dict)
    elif model_type == "llama":
        arch, config = "llama", LlamaConfig.from_hf(cfg_dict)
    else:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not ported (gpt_neox, "
                              "gpt_neox_reward_model, llama)")
    d, v = config.hidden_size, config.vocab_size
    hint = f"{arch} config: vocab_size={v}, hidden_size={d}, layers={config.num_hidden_layers}"

    # Which layout: decided by the config first, then by the tensors present.
    if model_type == "gpt_neox_reward_model" or "out_proj.weight" in state:
        layout = "oasst"
    elif "v_head.weight" in state:
        layout = "starling"
    elif "ForSequenceClassification" in archs or "score.weight" in state:
        layout = "seq_cls"
    else:
        layout = "causal_lm"

    expected: dict[str, tuple[int, ...]] = {}
    if arch == "gpt_neox":
        if layout == "starling":
            raise CheckpointError(f"{path}: a v_head (Starling layout) on a GPT-NeoX config")
        expected.update(config.expected_shapes("gpt_neox."))
        prefix = "gpt_neox."
    else:
        if layout == "oasst":
            raise CheckpointError(f"{path}: an out_proj (OpenAssistant layout) on a Llama config")
        if layout == "starling":
            prefixes = [p for p in ("transformer.", "model.model.") if any(k.startswith(p) for k in state)]
            if not prefixes:
                prefixes = ["transformer."]  # reported as missing below
            for p in prefixes:
                expected.update(config.expected_shapes(p))
            prefix = prefixes[0]
            if len(prefixes) == 2:  # the same tensors saved twice: they must agree
                for k in config.expected_shapes(""):
                    a, b = state.get("transformer." + k), state.get("model.model." + k)
                    if a is not None and b is not None and a.shape == b.shape and not np.array_equal(a, b):
                        raise CheckpointError(f"{path}: transformer.{k} and model.model.{k} differ "
                                              "(they should be the same tensor)")
        else:
            expected.update(config.expected_shapes("model."))
            prefix = "model."

    head = None
    head_keys: dict[str, str] = {}
    if layout == "oasst":
        expected["out_proj.weight"], expected["out_proj.bias"] = (1, d), (1,)
        rule = pooling or cfg_dict.get("pooling") or "last"
        head = HeadSpec("out_proj", True, rule, pad_id)
        head_keys = {"w": "out_proj.weight", "b": "out_proj.bias"}
    elif layout == "starling":
        expected["v_head.weight"] = (1, d)
        head = HeadSpec("v_head", False, pooling or "last", pad_id)
        head_keys = {"w": "v_head.weight"}
    elif layout == "seq_cls":
        expected["score.weight"] = (1, d)
        head = HeadSpec("score", False, pooling or "last", pad_id)
        head_keys = {"w": "score.weight"}
    if head is not None and head.pooling not in POOLINGS:
        raise ValueError(f"pooling {head.pooling!r}; expected one of {POOLINGS}")
    if head is not None and head.pooling == "before_first_pad" and head.pad_id is None:
        head = head._replace(pad_id=config.pad_token_id if config.pad_token_id is not None else 0)

    lm_names = {"gpt_neox": ("embed_out.weight", "lm_head.weight"),
                "llama": ("model.lm_head.weight",) if layout == "starling" else ("lm_head.weight",)}[arch]
    lm_key = next((k for k in lm_names if k in state), None)
    if lm_key is None and layout == "causal_lm" and not config.tie_word_embeddings:
        lm_key = lm_names[0]  # required: reported as missing
    if lm_key is not None:
        expected[lm_key] = (v, d)
    _check(state, expected, str(path), hint)

    params = {("gpt_neox" if arch == "gpt_neox" else "model"): _to_params(state, prefix, np_dtype)}
    if head is not None:
        params[head.name] = _head_params(state[head_keys["w"]], state.get(head_keys.get("b", "")), np_dtype)
    if lm_key is not None:
        params["lm_head"] = {"kernel": jnp.asarray(np.ascontiguousarray(state[lm_key].T).astype(np_dtype))}
    has_lm = lm_key is not None or config.tie_word_embeddings
    return LoadedModel(arch, config, params, head, has_lm, dtype, layout)
