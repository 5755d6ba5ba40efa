"""The architecture registry: everything the loader and scorers need to know about one port.

`ARCHITECTURES` maps a name to an `Architecture`; `for_model_type` finds
the entry of a config.json `model_type`. Nothing else in the package
switches on an architecture's name, so porting a decoder means writing its
config class and block (see `backbone.DecoderBackbone`) and adding one
entry here.

Example:
  arch = for_model_type("gpt_neox_reward_model")      # ARCHITECTURES["gpt_neox"]
  config = arch.config.from_hf(json.load(open("config.json")))
  module = arch.module(config, dtype=jnp.float32)
  out = module.apply({"params": params[arch.params_key]}, ids, mask)
"""
from __future__ import annotations

from typing import NamedTuple

from goodhart_jax.models.gpt_neox import GPTNeoXConfig, GPTNeoXModel
from goodhart_jax.models.llama import LlamaConfig, LlamaModel


class Architecture(NamedTuple):
    """One ported decoder.

    Fields:
      name: the registry key, stored as `LoadedModel.arch` ("gpt_neox").
      model_types: config.json `model_type` values read as this architecture.
      config: frozen config class with `from_hf(dict) -> config` (raising
        ValueError on an inconsistent config), `small(vocab_size, width,
        layers, heads) -> config` (a small decoder: the lab's models) and
        `expected_shapes(prefix) -> {PyTorch name: shape}` for the backbone's tensors.
      module: the linen backbone, a `backbone.DecoderBackbone` subclass,
        built as `module(config, dtype=...)`; its `embed_name` is the input
        embedding (the tied LM head).
      params_key: where the backbone lives, both as the PyTorch state-dict
        prefix (`params_key + "."`) and as `params[params_key]`.
      lm_heads: state-dict names of a causal-LM output matrix [V, D], the
        canonical one first (reported when missing).
      reward_layouts: the published reward-model layouts (see `loading`)
        built on this backbone, besides the generic "seq_cls"/"causal_lm".
    """

    name: str
    model_types: tuple[str, ...]
    config: type
    module: type
    params_key: str
    lm_heads: tuple[str, ...]
    reward_layouts: tuple[str, ...]

    @property
    def embed_name(self) -> str:
        return self.module.embed_name


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (
        Architecture("gpt_neox", ("gpt_neox", "gpt_neox_reward_model"), GPTNeoXConfig, GPTNeoXModel,
                     "gpt_neox", ("embed_out.weight", "lm_head.weight"), ("oasst",)),
        Architecture("llama", ("llama",), LlamaConfig, LlamaModel,
                     "model", ("lm_head.weight",), ("starling",)),
    )
}


def for_model_type(model_type: object) -> Architecture | None:
    """The architecture whose `model_types` holds `model_type`, or None."""
    return next((a for a in ARCHITECTURES.values() if model_type in a.model_types), None)


def model_types() -> tuple[str, ...]:
    """Every config.json `model_type` the registry reads, sorted."""
    return tuple(sorted(t for a in ARCHITECTURES.values() for t in a.model_types))
