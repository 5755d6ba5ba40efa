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
import math
from collections import ChainMap
from collections.abc import Mapping
import re
import struct
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from goodhart_jax.errors import UsageError
from goodhart_jax.models.architectures import ARCHITECTURES, Architecture, for_model_type, model_types
from goodhart_jax.models.heads import POOLINGS, HeadSpec

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
IGNORED = re.compile(r"(\.attention\.bias|\.attention\.masked_bias|rotary_emb\.inv_freq)$")
SAFETENSORS_MAX_HEADER = 100_000_000   # bytes; the safetensors library refuses larger headers too
LAYOUT_HEADS = {"oasst": "an out_proj (OpenAssistant layout)", "starling": "a v_head (Starling layout)"}
STARLING_PREFIXES = ("transformer.", "model.model.")   # Starling's backbone, saved under one or both
STARLING_LM_HEAD = "model.lm_head.weight"
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,  # for messages
                       "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointError(UsageError):
    """A checkpoint directory that cannot be loaded faithfully (bad input: one line, exit 2 in a CLI)."""


class NotPortedError(CheckpointError, NotImplementedError):
    """A checkpoint using a feature that is not ported (rope scaling, an activation): still bad input to a CLI."""


class LoadedModel(NamedTuple):
    """A ported model with its parameters.

    Fields:
      arch: the `architectures.ARCHITECTURES` key ("gpt_neox" or "llama").
      config: that architecture's config (GPTNeoXConfig or LlamaConfig).
      params: {backbone: {...}, head name: {...}, optional "lm_head": {"kernel": [D, V]}};
        the backbone key is the architecture's `params_key` ("gpt_neox" or "model").
      reward_head: HeadSpec of the scalar head, or None (a plain causal LM).
      has_lm_head: whether log-probabilities can be computed (an lm_head
        tensor, or tied input embeddings).
      dtype: "float32" or "bfloat16".
      layout: "oasst", "starling", "seq_cls" or "causal_lm" (a checkpoint's), or "lab" (a lab model built in
        memory, `lab.lm.as_model`).
    """

    arch: str
    config: Any
    params: dict
    reward_head: HeadSpec | None
    has_lm_head: bool
    dtype: str
    layout: str

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def backbone_key(self) -> str:
        return self.architecture.params_key

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size


# ---------------------------------------------------------------- file reading
class SafetensorsFile(Mapping):
    """The tensors of one .safetensors file by name, each read when asked for (the safetensors library).

    Opening checks the file (its header's length, JSON, every tensor's dtype and byte range); a tensor is
    read from the file (memory-mapped by the library) only on access, so converting a checkpoint holds one
    tensor at a time besides the converted parameters, as the former memory-mapped reader did. `shape(name)`
    reads no data. bfloat16 arrives as ml_dtypes'.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = safetensors.safe_open(str(path), framework="numpy")
            self._names = tuple(self._file.keys())
        except safetensors.SafetensorError as e:
            raise CheckpointError(f"{path}: {_header_problem(path) or e}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        try:
            return self._file.get_tensor(name)
        except safetensors.SafetensorError as e:
            raise CheckpointError(f"{self.path}: {_header_problem(self.path) or e}") from None

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(name).get_shape())


def _read_safetensors(path: Path) -> Mapping[str, np.ndarray]:
    """The tensors of a .safetensors file, read by the safetensors library, each on access (`SafetensorsFile`).

    The library checks the file but says only what kind of fault it met; a refused file is explained with the
    header's numbers (`_header_problem`).
    """
    return SafetensorsFile(path)


def _header_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's framing, with its numbers (None: nothing found here).

    The header length fits in the file, the header is a JSON object, and every
    tensor entry has a dtype, a shape and offsets that lie inside the data and
    hold exactly prod(shape) * itemsize bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, too short for a safetensors file (truncated?)"
        (n,) = struct.unpack("<Q", prefix)
        if n > min(size - 8, SAFETENSORS_MAX_HEADER):
            return f"header length {n} does not fit a {size}-byte file (truncated, or not a safetensors file)"
        raw_header = f.read(n)
    try:
        header = json.loads(raw_header)
    except ValueError:  # not JSON (or not UTF-8): the library's message says so
        return None
    if not isinstance(header, dict):
        return "the safetensors header is not a JSON object (corrupt file?)"
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
            return f"tensor {name}: header entry is not {{dtype, shape, data_offsets}} (corrupt file?)"
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name} has data_offsets {offsets!r} (corrupt file?)"
        start, end = offsets
        if not 0 <= start <= end <= data_len:
            return f"tensor {name} spans bytes [{start}, {end}) but the file holds {data_len} bytes of data (truncated?)"
        known = isinstance(shape, list) and all(isinstance(d, int) for d in shape) and dtype in _SAFETENSORS_DTYPES
        if known and end - start != math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize:
            return (f"tensor {name} has {end - start} bytes for shape {tuple(shape)} of "
                    f"{np.dtype(_SAFETENSORS_DTYPES[dtype]).name} (corrupt header)")
    return None


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


def _read_file(path: Path) -> Mapping[str, np.ndarray]:
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_bin(path)


def read_state_dict(path: str | Path) -> Mapping[str, np.ndarray]:
    """All tensors of a checkpoint directory (or a single file), by PyTorch name (a safetensors file's are read
    on access: `SafetensorsFile`).

    Prefers safetensors over .bin; follows an index file for sharded checkpoints.

    Args:
      path: a checkpoint directory or a single weights file.
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
            weight_map = _read_json(path / index).get("weight_map")
            if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
                raise CheckpointError(f"{path / index}: no weight_map of tensor name -> shard file")
            shards = []
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).is_file():
                    raise CheckpointError(f"{path}: index {index} names missing shard {shard}")
                shards.append(_read_file(path / shard))
            out = ChainMap(*reversed(shards))  # the later shard wins, as dict.update did; read on access
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


def _shape(state: Mapping, name: str) -> tuple[int, ...]:
    """A tensor's shape, without reading it where the state can say (`SafetensorsFile.shape`)."""
    if isinstance(state, ChainMap):
        state = next(m for m in state.maps if name in m)
    return state.shape(name) if isinstance(state, SafetensorsFile) else tuple(state[name].shape)


def _check(state: Mapping, expected: dict[str, tuple[int, ...]], where: str,
           hint: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors."""
    present = {k for k in state if not IGNORED.search(k)}
    missing = set(expected) - present
    unexpected = present - set(expected)
    shapes = {k: _shape(state, k) for k in sorted(set(expected) & present)}
    bad = [f"{k} has shape {shape}, config implies {expected[k]}" for k, shape in shapes.items()
           if shape != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    if bad:
        problems.append("wrong shapes: " + "; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    if problems:
        raise CheckpointError(f"{where}: " + " | ".join(problems) + f" [{hint}]")


def _read_json(file: Path) -> dict:
    """A JSON object from `file`, or CheckpointError."""
    try:
        d = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return d


def _read_config(path: Path) -> dict:
    return _read_json(path / "config.json")


def parse_config(cfg_dict: dict, where: str) -> tuple[Architecture, Any]:
    """The architecture and its validated config, from a config.json dict.

    Every size must be a positive integer and the sizes must agree (heads
    divide hidden_size, ...); a config that does not is a bad checkpoint, not
    a crash later in the forward pass.

    Args:
      cfg_dict: the parsed config.json.
      where: what the config belongs to (a path), named in the messages.
    Raises:
      CheckpointError: a model_type that is not ported, or an inconsistent config.
      NotPortedError (a CheckpointError and a NotImplementedError): a config feature that is not
        ported (e.g. rope scaling, an activation).
    """
    model_type = cfg_dict.get("model_type", "")
    arch = for_model_type(model_type)
    if arch is None:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not ported ({', '.join(model_types())})")
    # from_hf raises ValueError on every inconsistency it checks; the others are
    # caught too so that no config, however malformed, escapes as a traceback.
    try:
        config = arch.config.from_hf(cfg_dict)
    except NotImplementedError as e:
        raise NotPortedError(f"{where}: {e}") from e
    except (ValueError, TypeError, KeyError, ZeroDivisionError, OverflowError) as e:
        raise CheckpointError(f"{where}: inconsistent {arch.name} config.json: {e}") from e
    return arch, config


# ---------------------------------------------------------------- conversion
def _to_params(state: dict[str, np.ndarray], prefix: str, dtype, embed_name: str) -> dict:
    """Backbone tensors under `prefix` -> nested linen params (key remap + transposes)."""
    params: dict = {}
    for name in state:
        if not name.startswith(prefix) or IGNORED.search(name):
            continue
        w = state[name]  # read here, not for the tensors skipped (a safetensors file reads on access)
        parts = name[len(prefix):].split(".")
        if parts[0] == "layers":
            parts = [f"layers_{parts[1]}"] + parts[2:]
        *mods, leaf = parts
        if leaf == "weight":
            if mods[-1] == embed_name:
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
      CheckpointError: not a checkpoint, a corrupt or truncated weights file,
        an inconsistent config, or tensors missing / unexpected / mis-shaped
        for the config; NotPortedError (also a NotImplementedError) for a config
        feature that is not ported (e.g. rope scaling).
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
        raise CheckpointError(f"{path} has no config.json; a Starling-style checkpoint needs base_model, a "
                              "directory holding the Llama config")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if dtype is None:
        stored = {str(w.dtype) for w in state.values()}
        dtype = "bfloat16" if stored == {"bfloat16"} else "float32"
    np_dtype = DTYPES[dtype]

    model_type = cfg_dict.get("model_type", "")
    arch, config = parse_config(cfg_dict, str((base_model or path) / "config.json"))
    names = cfg_dict.get("architectures")
    archs = " ".join(a for a in names if isinstance(a, str)) if isinstance(names, list) else ""
    d, v = config.hidden_size, config.vocab_size
    hint = f"{arch.name} config: vocab_size={v}, hidden_size={d}, layers={config.num_hidden_layers}"

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
    if layout in LAYOUT_HEADS and layout not in arch.reward_layouts:
        raise CheckpointError(f"{path}: {LAYOUT_HEADS[layout]} on a {arch.name} config")
    if layout == "starling":
        prefixes = [p for p in STARLING_PREFIXES if any(k.startswith(p) for k in state)]
        if not prefixes:
            prefixes = [STARLING_PREFIXES[0]]  # reported as missing below
        for p in prefixes:
            expected.update(config.expected_shapes(p))
        prefix = prefixes[0]
        if len(prefixes) == 2:  # the same tensors saved twice: they must agree
            for k in config.expected_shapes(""):
                a, b = state.get(prefixes[0] + k), state.get(prefixes[1] + k)
                if a is not None and b is not None and a.shape == b.shape and not np.array_equal(a, b):
                    raise CheckpointError(f"{path}: {prefixes[0]}{k} and {prefixes[1]}{k} differ "
                                          "(they should be the same tensor)")
    else:
        prefix = arch.params_key + "."
        expected.update(config.expected_shapes(prefix))

    head = None
    head_keys: dict[str, str] = {}
    if layout == "oasst":
        expected["out_proj.weight"], expected["out_proj.bias"] = (1, d), (1,)
        rule = pooling or cfg_dict.get("pooling") or "last"
        if pooling is None and rule not in POOLINGS:
            raise CheckpointError(f"{path / 'config.json'}: pooling {rule!r}; expected one of {POOLINGS}")
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

    lm_names = (STARLING_LM_HEAD,) if layout == "starling" else arch.lm_heads
    lm_key = next((k for k in lm_names if k in state), None)
    if lm_key is None and layout == "causal_lm" and not config.tie_word_embeddings:
        lm_key = lm_names[0]  # required: reported as missing
    if lm_key is not None:
        expected[lm_key] = (v, d)
    _check(state, expected, str(path), hint)

    params = {arch.params_key: _to_params(state, prefix, np_dtype, arch.embed_name)}
    if head is not None:
        params[head.name] = _head_params(state[head_keys["w"]], state.get(head_keys.get("b", "")), np_dtype)
    if lm_key is not None:
        params["lm_head"] = {"kernel": jnp.asarray(np.ascontiguousarray(state[lm_key].T).astype(np_dtype))}
    has_lm = lm_key is not None or config.tie_word_embeddings
    return LoadedModel(arch.name, config, params, head, has_lm, dtype, layout)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def load_reward_and_base(
    path: str | Path, base_model: str | Path | None = None, dtype: str | None = None,
) -> tuple[LoadedModel, LoadedModel | None]:
    """A reward model and, from `base_model`, its base causal LM (as the searches use them).

    `base_model` is a causal LM with the reward model's vocabulary, or, for a
    reward model that ships no config.json (Starling), the directory of its
    Llama config: then it configures `path`, and where it holds no weights
    there is no base LM.

    Args:
      path: the reward checkpoint.
      base_model: the base causal LM's directory (or the Llama config's), or None.
      dtype: "float32" or "bfloat16" for both; None keeps the stored dtype (`load_model`).
    Returns:
      (reward model, base LM or None).
    Raises:
      CheckpointError: a bad checkpoint (see `load_model`); `path` with no
        reward head; `base_model` weights with no LM head or another vocabulary.
    """
    path = Path(path)
    needs_config = not (path / "config.json").is_file()
    rm = load_model(path, base_model=base_model if needs_config else None, dtype=dtype)
    if rm.reward_head is None:
        raise CheckpointError(f"{path} is a causal LM with no reward head; a reward model is needed")
    if base_model is None or (needs_config and not any((Path(base_model) / f).is_file() for f in WEIGHT_FILES)):
        return rm, None
    lm = load_model(base_model, dtype=dtype)
    if not lm.has_lm_head:
        raise CheckpointError(f"base model {base_model} has no language-model head")
    if lm.vocab_size != rm.vocab_size:
        raise CheckpointError(f"base model vocab {lm.vocab_size} != reward model vocab {rm.vocab_size}")
    return rm, lm


def special_token_ids(dirs, vocab: int) -> tuple[int, ...]:
    """The bos/eos/pad token ids in [0, vocab) that the config.json of any of `dirs` names, sorted.

    Args:
      dirs: checkpoint directories (None, or one without a config.json, is skipped).
      vocab: V; ids outside [0, V) are dropped.
    Raises:
      CheckpointError: a config.json that is not a JSON object.
    """
    ids = set()
    for d in dirs:
        if d is None or not (Path(d) / "config.json").is_file():
            continue
        cfg = _read_config(Path(d))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = cfg.get(name)
            ids.update(i for i in (v if isinstance(v, list) else [v])
                       if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab)
    return tuple(sorted(ids))


def load_tokenizer(path: str | Path):
    """The Hugging Face tokenizer saved in a checkpoint directory (local files only; needs transformers).

    Raises:
      CheckpointError: no tokenizer can be loaded from `path` (one line saying why).
    """
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a directory without a tokenizer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"no tokenizer could be loaded from {path} ({first})") from None
