"""The published reward-model layouts scored against PyTorch: tiny stand-ins always, the real models when on disk.

Set GOODHART_OASST_RM to a local copy of OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5,
and/or GOODHART_STARLING_RM + GOODHART_STARLING_BASE to berkeley-nest/Starling-RM-7B-alpha
and the Llama-2-7b-chat config directory. Nothing is downloaded. The reference reads the same files itself
(transformers' GPTNeoXModel / LlamaModel built from the config, the state dict read with safetensors or
torch.load, the authors' linear head), not through goodhart_jax's loader; in float32 (Starling: ~28 GB of RAM
besides the port's bfloat16 copy).
"""
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from goodhart_jax import models

torch = pytest.importorskip("torch")


def _state_dict(path: Path) -> dict:
    """Every tensor of a checkpoint directory (one file or the shards an index names), as float32."""
    from safetensors.torch import load_file

    files = sorted(set(json.loads(next(path.glob("*.index.json")).read_text())["weight_map"].values())) \
        if any(path.glob("*.index.json")) else [p.name for p in path.glob("*.safetensors")] or ["pytorch_model.bin"]
    state = {}
    for name in files:
        state.update(load_file(str(path / name)) if name.endswith(".safetensors")
                     else torch.load(path / name, map_location="cpu", weights_only=True))
    return {k: v.float() for k, v in state.items()}


def _torch_reference(layout: str, path: Path, base_model: Path | None = None):
    """(backbone, head): the published model the port follows, built from the files in `path`.

    "oasst": OpenAssistant's GPTNeoXRewardModel, a GPTNeoXModel (`gpt_neox.*`, config with the legacy
    rotary_pct / rotary_emb_base keys) and `out_proj` on the last token. "starling": Starling's GPTRewardModel,
    the Llama backbone (`transformer.*`, or its alias `model.model.*`) and `v_head` (no bias), config from the
    base model.
    """
    import transformers as tf

    state = _state_dict(path)
    if layout == "oasst":
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("model_type", None)
        cfg = tf.GPTNeoXConfig(**cfg)  # transformers maps the legacy rotary keys onto rope_parameters
        backbone, prefix = tf.GPTNeoXModel(cfg), "gpt_neox."
        head = torch.nn.Linear(cfg.hidden_size, 1)
        head.load_state_dict({"weight": state["out_proj.weight"], "bias": state["out_proj.bias"]})
    else:
        cfg = tf.LlamaConfig.from_pretrained(base_model)
        backbone = tf.LlamaModel(cfg)
        prefix = "transformer." if any(k.startswith("transformer.") for k in state) else "model.model."
        head = torch.nn.Linear(cfg.hidden_size, 1, bias=False)
        head.load_state_dict({"weight": state["v_head.weight"]})
    cfg._attn_implementation = "eager"
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return backbone.float().eval(), head.float().eval()


def _reference_scores(reference, seqs) -> np.ndarray:
    """The head on the last token of each sequence, run alone and unpadded (no padding convention involved)."""
    backbone, head = reference
    with torch.no_grad():
        return np.array([head(backbone(input_ids=torch.as_tensor(s, dtype=torch.long)[None]).last_hidden_state[:, -1]
                              )[0, 0].item() for s in seqs])


def _check(model, reference):
    """The port's scores of a right-padded, a left-padded and a reversed row against the reference's."""
    rng = np.random.default_rng(0)
    seq = rng.integers(2, model.vocab_size, 6)  # no pad id inside (0 or 1): every pooling rule reads the last token
    ids = np.zeros((3, 9), dtype=np.int64)
    mask = np.zeros((3, 9), dtype=np.int32)
    ids[0, :6], mask[0, :6] = seq, 1      # right-padded
    ids[1, 3:], mask[1, 3:] = seq, 1      # left-padded
    ids[2, :6], mask[2, :6] = seq[::-1], 1
    with jax.default_matmul_precision("highest"):
        r = np.asarray(jax.jit(models.make_reward_fn(model))(model.params, ids, mask), dtype=np.float64)
    ref = _reference_scores(reference, [seq, seq, seq[::-1].copy()])
    # float32: the port and PyTorch agree to ~1e-6 of the scores' scale (test_parity); bfloat16 weights and
    # activations (8 bits of mantissa, eps 7.8e-3) against the float32 reference: 0.4-3.2% of it measured on
    # the tiny stand-ins (seeds 3, 4), 5% allowed.
    tol = 1e-4 if model.dtype == "float32" else 5e-2
    atol = tol * max(np.abs(ref).max(), 1e-3)
    np.testing.assert_allclose(r, ref, rtol=tol, atol=atol)
    assert abs(ref[0] - ref[2]) > 2 * atol  # the order of the tokens matters beyond the tolerance


@pytest.mark.parametrize("layout,dtype", [("oasst", "float32"), ("starling", "float32"), ("starling", "bfloat16")])
def test_tiny_stand_in(layout, dtype, tmp_path):
    """A tiny random checkpoint written in the published layout (models.testing), read by both sides."""
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / layout, "gpt_neox" if layout == "oasst" else "llama", layout, seed=3,
                                dtype=dtype)
    model = models.load_model(ckpt.path, base_model=ckpt.base_model)
    assert model.layout == layout and model.dtype == dtype
    _check(model, _torch_reference(layout, ckpt.path, ckpt.base_model))


@pytest.mark.skipif(not os.environ.get("GOODHART_OASST_RM"), reason="GOODHART_OASST_RM not set (no local OpenAssistant RM)")
def test_openassistant_pythia_rm():
    path = Path(os.environ["GOODHART_OASST_RM"])
    model = models.load_model(path)
    assert model.layout == "oasst" and model.config.rotary_pct == 0.25
    _check(model, _torch_reference("oasst", path))


@pytest.mark.skipif(not (os.environ.get("GOODHART_STARLING_RM") and os.environ.get("GOODHART_STARLING_BASE")),
                    reason="GOODHART_STARLING_RM / GOODHART_STARLING_BASE not set (no local Starling RM)")
def test_starling_rm():
    path, base = Path(os.environ["GOODHART_STARLING_RM"]), Path(os.environ["GOODHART_STARLING_BASE"])
    model = models.load_model(path, base_model=base, dtype="bfloat16")
    assert model.layout == "starling" and model.has_lm_head
    _check(model, _torch_reference("starling", path, base))
