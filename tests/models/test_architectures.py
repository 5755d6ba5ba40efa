"""The architecture registry and the shared decoder skeleton."""
import json

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from goodhart_jax import models
from goodhart_jax.models.architectures import ARCHITECTURES, for_model_type, model_types
from goodhart_jax.models.backbone import DecoderBackbone
from goodhart_jax.models.testing import make_tiny_checkpoint


def test_registry_lookup():
    assert for_model_type("gpt_neox") is for_model_type("gpt_neox_reward_model") is ARCHITECTURES["gpt_neox"]
    assert for_model_type("llama") is ARCHITECTURES["llama"]
    assert for_model_type("gpt_neox_japanese") is None  # a different network, not a GPT-NeoX prefix match
    assert for_model_type(["llama"]) is None
    assert model_types() == ("gpt_neox", "gpt_neox_reward_model", "llama")
    for name, arch in ARCHITECTURES.items():
        assert arch.name == name and issubclass(arch.module, DecoderBackbone)


@pytest.mark.parametrize("arch,layout", [("gpt_neox", "causal_lm"), ("llama", "seq_cls")])
def test_backbone_init_tree_is_the_converted_checkpoint_tree(tmp_path, arch, layout):
    """The skeleton's own parameter tree (module.init) has exactly the paths, shapes and dtypes
    the converter writes from a transformers checkpoint: the names are the Hugging Face ones."""
    ckpt = make_tiny_checkpoint(tmp_path / "c", arch, layout, seed=0)
    model = models.load_model(ckpt.path)
    spec = model.architecture
    ids = jnp.zeros((1, 3), jnp.int32)
    init = spec.module(model.config).init(jax.random.key(0), ids, jnp.ones_like(ids))["params"]
    ours, loaded = flatten_dict(init), flatten_dict(model.params[spec.params_key])
    assert set(ours) == set(loaded)
    for path, x in ours.items():
        assert x.shape == loaded[path].shape and x.dtype == loaded[path].dtype, path
    assert (spec.embed_name, "embedding") in ours


def test_unported_model_type_is_named(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c", "gpt_neox", "seq_cls", seed=0)
    cfg = json.loads((ckpt.path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox_japanese"
    (ckpt.path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.CheckpointError, match=r"model_type 'gpt_neox_japanese' is not ported "
                                                     r"\(gpt_neox, gpt_neox_reward_model, llama\)"):
        models.load_model(ckpt.path)
