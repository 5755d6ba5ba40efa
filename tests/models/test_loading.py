"""Bad checkpoints fail loudly, naming the problem; every layout and format loads."""
import json

import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict
from safetensors.torch import load_file, save_file

from goodhart_jax import models
from goodhart_jax.models import CheckpointError
from goodhart_jax.models.heads import before_first_pad_index, last_index, sequence_logprob
from goodhart_jax.models.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def oasst(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("c") / "oasst", "gpt_neox", "oasst", seed=1)


def _edit_safetensors(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_is_named(oasst, tmp_path):
    bad = _edit_safetensors(oasst.path, tmp_path / "bad", lambda s: s.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: gpt_neox\.layers\.1\.mlp\.dense_4h_to_h\.bias"):
        models.load_model(bad)


def test_missing_head_is_named(oasst, tmp_path):
    bad = _edit_safetensors(oasst.path, tmp_path / "bad", lambda s: s.pop("out_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: out_proj\.bias"):
        models.load_model(bad)


def test_unexpected_tensor_is_named(oasst, tmp_path):
    def edit(s):
        s["gpt_neox.layers.0.attention.extra_proj.weight"] = torch.zeros(3, 3)
    bad = _edit_safetensors(oasst.path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: gpt_neox\.layers\.0\.attention\.extra_proj"):
        models.load_model(bad)


def test_old_buffers_are_ignored(oasst, tmp_path):
    def edit(s):
        s["gpt_neox.layers.0.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool).float()
        s["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(4)
    ok = _edit_safetensors(oasst.path, tmp_path / "ok", edit)
    assert models.load_model(ok).reward_head.name == "out_proj"


def test_wrong_shape_is_named(oasst, tmp_path):
    def edit(s):
        s["gpt_neox.layers.0.attention.dense.weight"] = torch.zeros(40, 39)
    bad = _edit_safetensors(oasst.path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=r"gpt_neox\.layers\.0\.attention\.dense\.weight has shape \(40, 39\), "
                                              r"config implies \(40, 40\)"):
        models.load_model(bad)


@pytest.mark.parametrize("field,value,match", [
    ("vocab_size", 107, r"gpt_neox\.embed_in\.weight has shape \(103, 40\), config implies \(107, 40\)"),
    ("num_hidden_layers", 3, r"missing tensors: gpt_neox\.layers\.2\."),
    ("num_hidden_layers", 1, r"unexpected tensors: gpt_neox\.layers\.1\."),
    ("intermediate_size", 57, r"dense_h_to_4h\.weight has shape \(56, 40\), config implies \(57, 40\)"),
])
def test_config_disagreeing_with_weights(oasst, tmp_path, field, value, match):
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((oasst.path / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").symlink_to(oasst.path / "model.safetensors")
    with pytest.raises(CheckpointError, match=match):
        models.load_model(bad)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        models.load_model(tmp_path)
    with pytest.raises(CheckpointError, match="is not a directory"):
        models.load_model(tmp_path / "nope")


def test_starling_needs_base_model_and_consistent_copies(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "s", "llama", "starling", seed=2)
    with pytest.raises(CheckpointError, match="base_model"):
        models.load_model(ckpt.path)
    model = models.load_model(ckpt.path, base_model=ckpt.base_model)
    assert model.layout == "starling" and model.reward_head.name == "v_head" and model.has_lm_head
    state = torch.load(ckpt.path / "pytorch_model.bin")
    state = {k: v.clone() for k, v in state.items()}
    state["transformer.norm.weight"] += 1.0
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"transformer\.norm\.weight and model\.model\.norm\.weight differ"):
        models.load_model(bad, base_model=ckpt.base_model)
    state.pop("v_head.weight")
    state["transformer.norm.weight"] -= 1.0
    torch.save(state, bad / "pytorch_model.bin")
    # Without v_head the file reads as a causal LM with the wrong prefixes: every key is named.
    with pytest.raises(CheckpointError, match=r"missing tensors: .*model\.embed_tokens\.weight"):
        models.load_model(bad, base_model=ckpt.base_model)


def test_sharded_index_with_missing_shard(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c", "gpt_neox", "seq_cls", fmt="sharded_safetensors")
    next(ckpt.path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"missing shard model-00002-of-00002\.safetensors"):
        models.load_model(ckpt.path)


# Each layout in a non-default format, every format used at least once (Starling is always one .bin).
LAYOUT_FORMATS = [("gpt_neox", "oasst", "bin"), ("gpt_neox", "seq_cls", "sharded_safetensors"),
                  ("gpt_neox", "causal_lm", "sharded_bin"), ("llama", "starling", "bin"),
                  ("llama", "seq_cls", "sharded_bin"), ("llama", "causal_lm", "bin"),
                  ("llama", "causal_lm", "sharded_safetensors")]


def _torch_params(ckpt, model) -> dict[tuple[str, ...], np.ndarray]:
    """The parameters of the PyTorch module that was written, keyed by the linen path each must
    load to: an independent statement of the converter's mapping (it goes by module type,
    where the converter goes by name): `layers.N` -> `layers_N`; an nn.Embedding's weight ->
    `embedding`; another 2-D weight -> `kernel`, transposed; a 1-D weight (a norm) -> `scale`."""
    ref = ckpt.torch_model
    parts = [(model.backbone_key, ref.backbone)]
    if model.reward_head is not None:
        parts.append((model.reward_head.name, ref.head))
    if ref.lm_head is not None:
        parts.append(("lm_head", ref.lm_head))
    out = {}
    for key, module in parts:
        for name, p in module.named_parameters():
            *mods, leaf = name.split(".")
            owner = module.get_submodule(".".join(mods))
            w = p.detach().float().numpy()
            if mods[:1] == ["layers"]:
                mods = [f"layers_{mods[1]}"] + mods[2:]
            if leaf == "weight":
                if isinstance(owner, torch.nn.Embedding):
                    leaf = "embedding"
                elif w.ndim == 2:
                    leaf, w = "kernel", w.T
                else:
                    leaf = "scale"
            out[(key, *mods, leaf)] = w
    return out


@pytest.mark.parametrize("arch,layout,fmt", LAYOUT_FORMATS)
def test_every_layout_and_format_loads_identically(tmp_path, arch, layout, fmt):
    """Every format loads the same tree as single-file safetensors, and that tree is the PyTorch
    module's parameters: the same set of paths (no leaf missing or extra), every leaf equal."""
    ref = make_tiny_checkpoint(tmp_path / "ref", arch, layout, seed=3)
    other = make_tiny_checkpoint(tmp_path / "other", arch, layout, seed=3, fmt=fmt)
    a = models.load_model(ref.path, base_model=ref.base_model)
    b = models.load_model(other.path, base_model=other.base_model)
    assert a.layout == b.layout == layout
    flat_a, flat_b = flatten_dict(a.params), flatten_dict(b.params)
    assert set(flat_a) == set(flat_b)
    for path, x in flat_a.items():
        assert x.dtype == flat_b[path].dtype, path
        np.testing.assert_array_equal(x, flat_b[path], err_msg=str(path))
    want = _torch_params(other, b)
    assert set(flat_b) == set(want), (sorted(set(flat_b) ^ set(want)))
    for path, w in want.items():
        np.testing.assert_array_equal(np.asarray(flat_b[path]), w, err_msg=str(path))
    assert (a.reward_head is None) == (layout == "causal_lm")


@pytest.mark.parametrize("jit", [False, True])
def test_pooling_indices(jit):
    import jax
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = np.array([[4, 4, 0, 0, 0], [0, 4, 4, 4, 4], [4, 4, 4, 4, 4]])
    li = jax.jit(last_index) if jit else last_index
    bf = jax.jit(before_first_pad_index, static_argnums=1) if jit else before_first_pad_index
    np.testing.assert_array_equal(li(mask), [2, 4, 4])
    np.testing.assert_array_equal(bf(ids, 0), [1, 4, 4])  # first-token pad wraps to -1 == T-1


@pytest.mark.parametrize("jit", [False, True])
def test_sequence_logprob_on_a_bigram_table(jit):
    """A 'model' whose hidden state is the one-hot token: logits = table[x_{t-1}]."""
    import jax
    rng = np.random.default_rng(0)
    v, t = 7, 5
    table = rng.normal(size=(v, v)).astype(np.float32)
    ids = rng.integers(0, v, (3, t))
    mask = np.array([[1] * 5, [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    fn = jax.jit(sequence_logprob) if jit else sequence_logprob
    got = fn(np.eye(v, dtype=np.float32)[ids], table, ids, mask)
    t64 = table.astype(np.float64)  # the reference in float64: ours, not NumPy's float32 exp, is under test
    logp = t64 - np.log(np.exp(t64).sum(-1, keepdims=True))
    want = [sum(logp[ids[b, i - 1], ids[b, i]] for i in range(1, t) if mask[b, i] and mask[b, i - 1])
            for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
