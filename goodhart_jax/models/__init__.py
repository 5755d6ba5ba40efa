"""Flax ports of the reward models and base LMs of the paper, loaded from PyTorch checkpoints.

GPT-NeoX (OpenAssistant's Pythia reward model) and Llama (Starling-RM-7B-alpha)
backbones in linen on one decoder skeleton (`backbone.DecoderBackbone`), found
by config.json `model_type` in the architecture registry
(`architectures.ARCHITECTURES`), checked against transformers' PyTorch models; reward heads
(OpenAssistant `out_proj`, Starling `v_head`, transformers `score`) and the
causal-LM log-probability log p(x) = sum_t log p(x_t | x_<t).

Public API:
  load_model(path, base_model=None, dtype=None, pooling=None, pad_id=None) -> LoadedModel
  reward_scorer(model) -> goodhart_jax.scorer.Scorer     # reward head (with `prefix` for "last" pooling)
  make_prefix_scoring(model) -> PrefixScoring | None      # rows scored from their first edit on, cached prefix
  logprob_scorer(model) -> Scorer                          # causal-LM log-probability
  lm_kernel(model, params) -> [D, V]                       # the LM head (or the tied embedding, transposed)
  make_reward_fn(model, onehot=False, one_position=True) -> reward_fn(params, input_ids [B,T], mask [B,T]) -> [B]
  make_logprob_fn(model, onehot=False) -> logprob_fn(params, input_ids, mask) -> [B]
  make_hidden_fn(model) -> (params, ids, mask, onehot=None, index=None) -> BackboneOutput
  make_cached_hidden_fn(model) -> (params, ids [B,S], mask=None, cache=None, siblings=False)
      -> (BackboneOutput, KVCache [B,S])                   # new tokens after a cached prefix (KV cache)
  KVCache(kv: L x (k, v) [B,P,K,H], mask [B,P]); .concat(new) -> [B,P+S]; .siblings(new) -> [B*S,P+1]
  apply_cached(module, variables, ids [B,S], mask=None, cache=None, siblings=False) -> (BackboneOutput, KVCache)
  score_array(fn, params, tokens [N,T], mask=None, batch_size=8, ...) -> np [N]
  data_mesh(devices=None), shard_params(params, mesh)      # jax.sharding helpers
  CheckpointError                                          # bad checkpoint directories
  ARCHITECTURES: {name: Architecture(name, model_types, config, module, params_key,
      lm_heads, reward_layouts)}                           # one entry per ported decoder
  goodhart_jax.models.testing.make_tiny_checkpoint(path, arch="gpt_neox"|"llama",
      layout="oasst"|"starling"|"seq_cls"|"causal_lm", seed=0, fmt="safetensors", ...)
      -> TinyCheckpoint(path, base_model, torch_model, arch, layout)   # needs torch

Example:
  model = load_model("oasst-rm-dir")
  scorer = reward_scorer(model)
  r = jax.jit(scorer.score_tokens)(scorer.params, ids, mask)   # [B]
"""
from goodhart_jax.models.architectures import ARCHITECTURES, Architecture
from goodhart_jax.models.backbone import BackboneOutput, DecoderBackbone, apply_cached
from goodhart_jax.models.gpt_neox import GPTNeoXConfig, GPTNeoXModel
from goodhart_jax.models.heads import HeadSpec
from goodhart_jax.models.layers import KVCache
from goodhart_jax.models.llama import LlamaConfig, LlamaModel
from goodhart_jax.models.loading import CheckpointError, LoadedModel, load_model, read_state_dict
from goodhart_jax.models.scoring import (
    data_mesh,
    default_buckets,
    lm_kernel,
    logprob_scorer,
    make_cached_hidden_fn,
    make_hidden_fn,
    make_logprob_fn,
    make_prefix_scoring,
    make_reward_fn,
    reward_scorer,
    score_array,
    shard_params,
)

__all__ = [
    "ARCHITECTURES", "Architecture", "BackboneOutput", "CheckpointError", "DecoderBackbone", "GPTNeoXConfig",
    "GPTNeoXModel", "HeadSpec", "KVCache", "LlamaConfig", "LlamaModel", "LoadedModel", "apply_cached", "data_mesh",
    "default_buckets", "lm_kernel", "load_model", "logprob_scorer", "make_cached_hidden_fn", "make_hidden_fn", "make_logprob_fn",
    "make_prefix_scoring", "make_reward_fn", "read_state_dict", "reward_scorer", "score_array", "shard_params",
]
