"""Inconsistent configs and corrupt weight files are CheckpointErrors, and one line + exit 2 in the CLIs.

Before these checks, such a checkpoint ended sims/score_rewards.py and
sims/acg_search.py in a traceback: a ValueError or ZeroDivisionError from the
config, a reshape ValueError, MemoryError or OverflowError from trusting a
safetensors header.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from goodhart_jax import models
from goodhart_jax.models import CheckpointError
from goodhart_jax.models.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    return {"gpt_neox": make_tiny_checkpoint(d / "neox", "gpt_neox", "oasst", seed=1),
            "llama": make_tiny_checkpoint(d / "llama", "llama", "seq_cls", seed=2)}


def _with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint `src` whose config.json has `changes` (None deletes a field)."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


# (arch, config changes, what the error names). The tiny GPT-NeoX has hidden 40 and 5
# heads; the tiny Llama hidden 36, 6 heads, 2 key/value heads.
BAD_CONFIGS = [
    ("gpt_neox", dict(num_attention_heads=7), r"hidden_size=40 is not divisible by num_attention_heads=7"),
    ("gpt_neox", dict(num_attention_heads=0), r"num_attention_heads=0 must be >= 1"),
    ("gpt_neox", dict(num_attention_heads=-5), r"num_attention_heads=-5 must be >= 1"),
    ("gpt_neox", dict(hidden_size=0), r"hidden_size=0 must be >= 1"),
    ("gpt_neox", dict(vocab_size=-103), r"vocab_size=-103 must be >= 1"),
    ("gpt_neox", dict(intermediate_size=0), r"intermediate_size=0 must be >= 1"),
    ("gpt_neox", dict(num_hidden_layers=0), r"num_hidden_layers=0 must be >= 1"),
    ("gpt_neox", dict(hidden_size=40.5), r"hidden_size=40.5 is not an integer"),
    ("gpt_neox", dict(hidden_size="40"), r"hidden_size='40' is not an integer"),
    ("gpt_neox", dict(hidden_size=None), r"config has no hidden_size"),
    ("gpt_neox", dict(rotary_pct=-0.5), r"rotary_pct=-0.5 is outside \[0.0, 1.0\]"),
    ("gpt_neox", dict(rotary_emb_base=0), r"rotary_emb_base=0 is outside \(0.0, inf\]"),
    ("gpt_neox", dict(layer_norm_eps=float("nan")), r"layer_norm_eps=nan is not a finite number"),
    ("llama", dict(num_attention_heads=0), r"num_attention_heads=0 must be >= 1"),
    ("llama", dict(num_attention_heads=5, head_dim=None),
     r"hidden_size=36 is not divisible by num_attention_heads=5 \(and no head_dim is given\)"),
    ("llama", dict(num_key_value_heads=0), r"num_key_value_heads=0 must be >= 1"),
    ("llama", dict(num_key_value_heads=4), r"num_attention_heads=6 is not a multiple of num_key_value_heads=4"),
    ("llama", dict(head_dim=0), r"head_dim=0 must be >= 1"),
    ("llama", dict(num_hidden_layers=-1), r"num_hidden_layers=-1 must be >= 1"),
]


@pytest.mark.parametrize("arch,changes,match", BAD_CONFIGS, ids=[f"{a}-{c}" for a, c, _ in BAD_CONFIGS])
def test_inconsistent_config_is_a_checkpoint_error(tiny, tmp_path, arch, changes, match):
    bad = _with_config(tiny[arch].path, tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError, match=match) as e:
        models.load_model(bad)
    assert str(bad / "config.json") in str(e.value)


def test_config_that_is_not_an_object_or_not_json(tiny, tmp_path):
    bad = _with_config(tiny["gpt_neox"].path, tmp_path / "bad")
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a JSON object"):
        models.load_model(bad)
    (bad / "config.json").write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        models.load_model(bad)


def test_bad_pooling_in_config(tiny, tmp_path):
    bad = _with_config(tiny["gpt_neox"].path, tmp_path / "bad", pooling="median")
    with pytest.raises(CheckpointError, match=r"pooling 'median'"):
        models.load_model(bad)
    assert models.load_model(bad, pooling="mean").reward_head.pooling == "mean"  # the caller's choice wins


# ---------------------------------------------------------------- corrupt safetensors
def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _corrupt(src: Path, dst: Path, kind: str) -> Path:
    """A copy of `src` whose model.safetensors is corrupted as `kind`."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    good = (src / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    if kind == "truncated_in_data":       # header intact, the last tensors cut short
        blob = good[: 8 + n + (len(good) - 8 - n) // 2]
    elif kind == "truncated_in_header":
        blob = good[: 8 + n // 2]
    elif kind == "four_bytes":
        blob = good[:4]
    elif kind == "empty":
        blob = b""
    elif kind == "random_bytes":          # header length ~ 2^63: MemoryError / OverflowError if trusted
        blob = np.random.default_rng(0).bytes(4096)
    elif kind == "huge_header_length":
        blob = struct.pack("<Q", 2**64 - 1) + good[8:]
    elif kind == "shape_disagrees_with_bytes":   # offsets inside the file, shape wants more bytes
        blob = _safetensors({"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, bytes(16))
    elif kind == "header_not_object":
        blob = _safetensors([1, 2], b"")  # type: ignore[arg-type]
    elif kind == "entry_without_offsets":
        blob = _safetensors({"w": {"dtype": "F32", "shape": [2]}}, bytes(8))
    else:
        raise ValueError(kind)
    (dst / "model.safetensors").write_bytes(blob)
    return dst


CORRUPT = [("truncated_in_data", r"spans bytes .* but the file holds"),
           ("truncated_in_header", r"header length \d+ does not fit"),
           ("four_bytes", r"too short for a safetensors file"),
           ("empty", r"too short for a safetensors file"),
           ("random_bytes", r"header length \d+ does not fit"),
           ("huge_header_length", r"header length 18446744073709551615 does not fit"),
           ("shape_disagrees_with_bytes", r"tensor w has 16 bytes for shape \(3, 3\) of float32"),
           ("header_not_object", r"not a JSON object"),
           ("entry_without_offsets", r"tensor w: header entry is not")]


@pytest.mark.parametrize("kind,match", CORRUPT, ids=[k for k, _ in CORRUPT])
def test_corrupt_safetensors_is_a_checkpoint_error(tiny, tmp_path, kind, match):
    bad = _corrupt(tiny["gpt_neox"].path, tmp_path / "bad", kind)
    with pytest.raises(CheckpointError, match=match):
        models.load_model(bad)
    with pytest.raises(CheckpointError, match=match):
        models.read_state_dict(bad / "model.safetensors")


def test_intact_safetensors_reads_as_the_library_does(tiny):
    """The checked reader returns exactly what the safetensors library reads."""
    from safetensors.numpy import load_file
    ours = models.read_state_dict(tiny["gpt_neox"].path / "model.safetensors")
    ref = load_file(str(tiny["gpt_neox"].path / "model.safetensors"))
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(ours[k], ref[k])


def test_safetensors_read_on_access(tiny):
    """A .safetensors state dict reads a tensor only when asked (the loader then holds one at a time): its shapes
    come from the header, and each tensor read equals the library's whole-file read."""
    from safetensors.numpy import load_file
    from goodhart_jax.models.loading import SafetensorsFile
    path = tiny["gpt_neox"].path / "model.safetensors"
    ours, ref = models.read_state_dict(path), load_file(str(path))
    assert isinstance(ours, SafetensorsFile) and len(ours) == len(ref)
    for k in ref:
        assert ours.shape(k) == ref[k].shape
    with pytest.raises(KeyError):
        ours["no.such.tensor"]


def test_corrupt_shard_index(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c", "gpt_neox", "seq_cls", fmt="sharded_safetensors")
    index = ckpt.path / "model.safetensors.index.json"
    index.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        models.load_model(ckpt.path)
    index.write_text(json.dumps({"weight_map": ["a", "b"]}))
    with pytest.raises(CheckpointError, match="no weight_map"):
        models.load_model(ckpt.path)


def test_random_bytes_torch_bin(tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tiny["gpt_neox"].path / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        models.load_model(bad)


# ---------------------------------------------------------------- the CLIs
def _run(script: str, *argv: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # this tree's package
    return subprocess.run([sys.executable, str(ROOT / "sims" / script), *argv], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=300)


@pytest.mark.parametrize("script", ["score_rewards.py", "acg_search.py"])
def test_cli_bad_checkpoint_one_line_exit_2(tiny, tmp_path, script):
    """An inconsistent config and a truncated weights file: one line `script: error: ...`, exit 2."""
    cases = [(_with_config(tiny["gpt_neox"].path, tmp_path / "cfg", num_attention_heads=7),
              "is not divisible by num_attention_heads=7"),
             (_with_config(tiny["llama"].path, tmp_path / "zero", num_attention_heads=0),
              "num_attention_heads=0 must be >= 1"),
             (_corrupt(tiny["gpt_neox"].path, tmp_path / "trunc", "truncated_in_data"), "spans bytes")]
    for bad, needle in cases:
        if script == "score_rewards.py":
            argv = ["--model", str(bad), "--random-tokens", "2", "--length", "4"]
        else:
            argv = ["--model", str(bad), "--length", "4", "--iters", "1", "--out", str(tmp_path / "run")]
        res = _run(script, *argv, tmp=tmp_path)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2, res.stderr
        assert len(err) == 1 and err[0].startswith(f"{script}: error:") and needle in err[0], res.stderr
        assert res.stdout == ""
