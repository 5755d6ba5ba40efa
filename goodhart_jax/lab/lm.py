"""The lab's base policy pi0: a tiny causal LM trained on a random Markov source.

A GPT-NeoX (or Llama) decoder from `goodhart_jax.models` with a vocabulary of
A lab tokens, the last (A - 1) being EOS, and an extra start token BOS = A in
the embedding that is never generated (the LM head has A outputs). Sequences
are at most L = `depth` tokens; a sequence ends at EOS or at length L.

The policy convention, shared by every policy of the lab (this LM, a
checkpoint restricted to a sub-vocabulary in `lab.tree`, the RL-trained LM):

    logits_fn(params, ids [B, T]) -> [B, T, A]

ids are lab tokens in [0, A] with ids[:, 0] = BOS = A and no BOS elsewhere;
logits[:, t] are the next-token logits after ids[:, :t + 1]. So the
distribution of token k + 1 of a sequence x_1..x_L (k = 0..L-1) is
softmax(logits_fn(params, [BOS, x_1..x_k])[:, k]). No padding: a sequence that
has ended at EOS is continued with EOS tokens, and those positions are
ignored (`token_mask`).

Public API:
  LMConfig(vocab=16, depth=5, layers=2, width=64, heads=4, arch="gpt_neox")  # frozen; .bos .eos .n
  init(key, cfg) -> params        # {"backbone": {...}, "lm_head": {"kernel": [D, A]}}
  module(cfg, dtype=float32) -> linen decoder   # the registry's small config (backbone_config); also the RMs' body
  adamw_scan(loss_fn(params, key) -> [], params, keys [S], lr, weight_decay, val_loss=None, every=10)
      -> Fit(params, loss [S], stop [] int32, val_loss [C])
      # the lab's one training loop (train_lm, rewards.fit_minibatched): AdamW, cosine to lr / 10, lax.scan;
      # with val_loss(params) -> []: early stopping, the checkpoint (every `every` steps and the last) of least
      # validation loss is kept (stop = its step; without: the last, stop = S, val_loss [0])
  logits(params, ids [B, T], cfg) -> [B, T, A]      # pure; make_logits(cfg) -> logits_fn(params, ids)
  model_logits(model, params, ids [B, T], cols=None) -> [B, T, A]   # any models.LoadedModel LM (lab or checkpoint)
  model_prefix_logits(model, params, ids [B, S], cache=None, siblings=False, cols=None) -> (logits, KVCache)
  with_bos(tokens [B, T], bos) -> [B, T + 1]
  as_model(cfg, params, reward_head=None) -> models.LoadedModel   # layout "lab": the models/ scorers serve it
  model_params(params, cfg) -> dict   # lab params keyed as the LoadedModel's
  lab_inputs(tokens [B, L], vocab) -> (ids [B, L + 1], mask [B, L + 1])   # [BOS, x], real up to the first EOS
  lab_onehot_inputs(onehot [B, L, A]) -> (onehot [B, L + 1, A + 1], mask [B, L + 1])
  token_mask(tokens [B, L], eos) -> [B, L] bool     # the real tokens: up to and including the first EOS
  prefix_policy(logits_fn) -> PrefixPolicy(run) | None   # a policy's KV-cache form (the lab LM's, a checkpoint's,
      # or a logits_fn's attribute `prefix_policy`); run(params, ids [B,S], cache=None, siblings=False)
      # -> (logits [B,S,A], models.KVCache [B,S]); lm_prefix_policy(cfg), checkpoint_prefix_policy(model, tokens, start)
  sequence_logprob(logits_fn, params, tokens [B, L]) -> [B]   # log pi(x) = sum_t log pi(x_t | x_<t)
  sample(key, logits_fn, params, num, depth) -> [num, L] int32 tokens (EOS-continued)
  MarkovSource(log_p_first [A], log_p_next [A, A])  # rows = previous token; the EOS row is unused
  markov_source(key, vocab, sharpness=SHARPNESS, eos_bias=EOS_BIAS) -> MarkovSource   # defaults: a spread law
  check_source(sharpness, eos_bias)   # ValueError outside [0, SOURCE_MAX] / [-SOURCE_MAX, SOURCE_MAX]
  SHARPNESS = 0.8, EOS_BIAS = -3.0, SOURCE_MAX = 100.0
  sample_source(key, source, num, depth) -> [num, L] int32 tokens (EOS-continued)
  source_logprob(source, tokens [B, L]) -> [B]
  lm_loss(params, tokens [B, L], cfg) -> []         # mean next-token cross-entropy over real tokens
  train_lm(key, cfg, source, steps, batch=256, lr=3e-3, weight_decay=0.01) -> Trained(params, loss [steps])
      # jitted; AdamW, lax.scan over steps, a fresh batch of `batch` source sequences each step
  load_policy(path, tokens, start=None) -> CheckpointPolicy(logits_fn, params, tokens, start, model)
  sub_vocabulary(tokens, V) -> tuple; start_token(path, V, start=None) -> int   # checked, UsageError
      # any causal-LM checkpoint, next-token distribution renormalised over the model ids `tokens`
      # (the last acts as EOS); lab BOS is fed as the model id `start` (default: its bos_token_id)

Example:
  cfg = LMConfig()
  source = markov_source(jax.random.key(0), cfg.vocab)
  params, loss = train_lm(jax.random.key(1), cfg, source, steps=1000)
  logits_fn = make_logits(cfg)
  x = sample(jax.random.key(2), logits_fn, params, 8, cfg.depth)      # [8, 5]

Glossary: B batch, T sequence (with BOS), L depth, A lab vocabulary, D model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from goodhart_jax.errors import UsageError
from goodhart_jax.models import ARCHITECTURES, CheckpointError, LoadedModel, load_model
from goodhart_jax.models import KVCache, lm_kernel, make_cached_hidden_fn, make_hidden_fn


LogitsFn = Callable[[Any, Array], Array]  # (params, ids [B, T] in [0, A], ids[:, 0] = BOS) -> [B, T, A]


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Sizes of the lab LM (static).

    Attributes:
      vocab: A >= 2 lab tokens; token A - 1 is EOS. The embedding has A + 1
        rows (BOS = A), the LM head A outputs.
      depth: L >= 1, the maximum sequence length (EOS counted).
      layers: decoder blocks.
      width: hidden size D.
      heads: attention heads (divides D; D / heads even for rotary).
      arch: a key of `models.ARCHITECTURES` ("gpt_neox", "llama").
    """

    vocab: int = 16
    depth: int = 5
    layers: int = 2
    width: int = 64
    heads: int = 4
    arch: str = "gpt_neox"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if self.vocab < 2 or self.depth < 1 or self.layers < 1 or self.width < 1 or self.heads < 1:
            raise ValueError(f"need vocab >= 2 and depth, layers, width, heads >= 1: {self}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size")

    @property
    def bos(self) -> int:
        return self.vocab

    @property
    def eos(self) -> int:
        return self.vocab - 1

    @property
    def n(self) -> int:
        """Non-EOS tokens."""
        return self.vocab - 1


def backbone_config(cfg: LMConfig):
    """The `models` config of the decoder: the registry's small config (`config.small`), vocab A + 1 (BOS).

    Args:
      cfg: the lab model's sizes (`LMConfig`).
    """
    return ARCHITECTURES[cfg.arch].config.small(cfg.vocab + 1, cfg.width, cfg.layers, cfg.heads)


def module(cfg: LMConfig, dtype=jnp.float32):
    """The linen decoder of `cfg` (`models.ARCHITECTURES[cfg.arch].module`): the lab LM's and reward models' body.

    Args:
      cfg: the lab model's sizes (`LMConfig`).
      dtype: the computation's dtype.
    """
    return ARCHITECTURES[cfg.arch].module(backbone_config(cfg), dtype=dtype)


class Fit(NamedTuple):
    """Result of `adamw_scan`."""

    params: Any  # the kept parameters: the last step's, or (val_loss) the checkpoint's of least validation loss
    loss: Array  # [S] training loss of each step's batch
    stop: Array  # [] int32: the step whose parameters are kept (S without val_loss; 0: no finite validation loss)
    val_loss: Array  # [C] float32 validation loss at each checkpoint; [0] without val_loss


def adamw_scan(loss_fn: Callable[[Any, Array], Array], params: Any, keys: Array, lr: float, weight_decay: float,
               val_loss: Callable[[Any], Array] | None = None, every: int = 10) -> Fit:
    """Fit params by AdamW (cosine decay from lr to lr / 10 over the steps) in one `lax.scan`, optionally
    early-stopped on a validation loss.

    The lab's one training loop (the LM on its source, reward models on comparisons or ratings:
    `rewards.fit_minibatched`). Without `val_loss`: one scan over the S steps, the last step's parameters.
    With it, the same steps as scans of `every` steps, each followed by a checkpoint: after steps every,
    2 every, .., and after the last (`rewards.checkpoints(S, every)`, C of them) val_loss(params) is measured
    and the parameters of the least one so far are kept (the first on a tie; a nan never counts), selected by
    `jnp.where` inside the scan, so the fit stays one program that `jax.vmap` can batch.

    Args:
      loss_fn: (params, key) -> [] loss of the step's batch (the key draws it).
      params: initial parameters.
      keys: [S] one key a step (S = the number of steps).
      lr: the peak learning rate.
      weight_decay: AdamW's decoupled weight decay.
      val_loss: None, or params -> [] validation loss (early stopping).
      every: steps between checkpoints (static, >= 1; used with val_loss).
    Returns:
      Fit(params, loss [S], stop [] int32, val_loss [C]).
    Raises:
      ValueError: val_loss given and every < 1.
    """
    steps = keys.shape[0]
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, alpha=0.1), weight_decay=weight_decay)

    def step(carry, k):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, k)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    if val_loss is None:
        (params, _), loss = jax.lax.scan(step, (params, opt.init(params)), keys)
        return Fit(params, loss, jnp.asarray(steps, jnp.int32), jnp.zeros((0,), jnp.float32))
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")

    def chunk(carry, ks):
        p, state, best, best_v, best_t, t = carry
        (p, state), values = jax.lax.scan(step, (p, state), ks)
        t = t + ks.shape[0]
        v = val_loss(p)
        better = v < best_v  # False for nan: a nan checkpoint is never kept
        best = jax.tree.map(lambda b, x: jnp.where(better, x, b), best, p)
        return (p, state, best, jnp.where(better, v, best_v), jnp.where(better, t, best_t), t), (values, v)

    full = steps // every
    carry = (params, opt.init(params), params, jnp.asarray(jnp.inf, jnp.float32), jnp.int32(0), jnp.int32(0))
    carry, (loss, vs) = jax.lax.scan(chunk, carry, keys[:full * every].reshape((full, every) + keys.shape[1:]))
    loss, vs = loss.reshape(-1), vs.astype(jnp.float32)
    if steps % every:  # the last, shorter chunk: the last step is always a checkpoint
        carry, (tail, v) = chunk(carry, keys[full * every:])
        loss, vs = jnp.concatenate([loss, tail]), jnp.concatenate([vs, v.astype(jnp.float32)[None]])
    _, _, best, _, best_t, _ = carry
    return Fit(best, loss, best_t, vs)


def init(key: Array, cfg: LMConfig, dtype=jnp.float32) -> dict:
    """Random parameters: {"backbone": linen params of the decoder, "lm_head": {"kernel": [D, A]}}.

    `dtype` is that of the parameters and of the computation (`logits` follows
    the parameters; cast them to float64 under `jax.enable_x64` for exact
    checks; the shared attention softmax and norm statistics stay float32).

    Args:
      key: PRNG key (decoder and head).
      cfg: the model's sizes (`LMConfig`).
      dtype: the parameters' dtype.
    """
    k_body, k_head = jax.random.split(key)
    ids = jnp.full((1, cfg.depth), cfg.bos, jnp.int32)
    body = module(cfg, dtype).init(k_body, ids, jnp.ones_like(ids))["params"]
    head = jax.random.normal(k_head, (cfg.width, cfg.vocab), dtype) / jnp.sqrt(cfg.width).astype(dtype)
    return {"backbone": body, "lm_head": {"kernel": head}}


def logits(params: dict, ids: Array, cfg: LMConfig) -> Array:
    """Next-token logits of the lab LM.

    Args:
      params: from `init` / `train_lm`.
      ids: [B, T] int tokens in [0, A], ids[:, 0] = BOS = A.
      cfg: the LM's config (static).
    Returns:
      [B, T, A] in the parameters' dtype: logits[:, t] is the distribution of the token after ids[:, :t + 1].
    """
    model = as_model(cfg, params)
    return model_logits(model, model.params, ids)


def model_logits(model: LoadedModel, params: dict, ids: Array, cols: Array | None = None) -> Array:
    """A causal LM's next-token logits at every position of unpadded ids [B, T] (model ids): the `models`
    backbone (`make_hidden_fn`) and output matrix (`models.scoring.lm_kernel`), restricted to the columns
    `cols` [A] (None: all). Returns [B, T, A] in the parameters' dtype.

    Args:
      model: the loaded causal LM.
      params: its parameters.
      ids: [B, T] model ids, unpadded.
      cols: [A] the output columns kept (None: all).
    """
    h = make_hidden_fn(model)(params, ids, jnp.ones(ids.shape, jnp.int32)).last_hidden_state
    kernel = lm_kernel(model, params)
    return jnp.einsum("btd,da->bta", h, kernel if cols is None else kernel[:, cols])


@functools.lru_cache(maxsize=None)
def make_logits(cfg: LMConfig) -> LogitsFn:
    """logits_fn(params, ids [B, T]) -> [B, T, A] for `cfg` (the policy convention).

    Cached: the same config gives the same function object, so jitted entry
    points that take it as a static argument (`tree.exact_tree`) compile once.
    """
    return functools.partial(logits, cfg=cfg)


def with_bos(tokens: Array, bos: int) -> Array:
    """[B, T] tokens -> [B, T + 1] with BOS prepended.

    Args:
      tokens: [B, T] ids.
      bos: the BOS id.
    """
    return jnp.concatenate([jnp.full(tokens.shape[:1] + (1,), bos, tokens.dtype), tokens], axis=1)


def model_params(params: dict, cfg: LMConfig) -> dict:
    """Lab parameters {"backbone", head...} keyed as a `models.LoadedModel`'s: the backbone under the
    architecture's `params_key` ("gpt_neox" or "model"); the same arrays, renamed (free under jit).

    Args:
      params: the lab model's parameters (`init`, `rewards.rm_init`).
      cfg: its sizes (`LMConfig`; its arch names the key).
    """
    key = ARCHITECTURES[cfg.arch].params_key
    return {(key if k == "backbone" else k): v for k, v in params.items()}


def as_model(cfg: LMConfig, params: dict, reward_head=None) -> LoadedModel:
    """A lab decoder (the LM, or a reward model with its `models.heads.HeadSpec`) as a `models.LoadedModel`.

    The model reads [BOS, x] in model ids 0..A (`lab_inputs`), so `models.make_reward_fn`,
    `make_logprob_fn`, `reward_scorer` and `logprob_scorer` serve the lab's models as they serve a checkpoint.

    Args:
      cfg: the model's sizes.
      params: lab parameters ({"backbone", "lm_head"} or {"backbone", head name}); arrays or tracers.
      reward_head: the scalar head's spec (`rewards.RM_HEAD`), or None for the LM.
    Returns:
      LoadedModel with layout "lab", dtype that of the parameters, `has_lm_head` when "lm_head" is present.
    """
    dtype = jax.tree.leaves(params["backbone"])[0].dtype
    return LoadedModel(cfg.arch, backbone_config(cfg), model_params(params, cfg), reward_head,
                       "lm_head" in params, jnp.dtype(dtype).name, "lab")


def lab_inputs(tokens: Array, vocab: int) -> tuple[Array, Array]:
    """A lab model's inputs for EOS-continued tokens [B, L] in [0, A), A = `vocab`: ([BOS, x] [B, L + 1] ids,
    BOS = A, and mask [B, L + 1] int32, 1 on BOS and the real tokens: right padding after the first EOS)."""
    mask = jnp.concatenate([jnp.ones(tokens.shape[:1] + (1,), bool), token_mask(tokens, vocab - 1)], axis=1)
    return with_bos(tokens, vocab), mask.astype(jnp.int32)


def lab_onehot_inputs(onehot: Array) -> tuple[Array, Array]:
    """`lab_inputs` of relaxed tokens onehot [B, L, A]: ([B, L + 1, A + 1] in onehot's dtype, embedded as
    onehot @ E: a zero BOS column, led by BOS's one-hot; the mask of the one-hot's argmax)."""
    B, L, A = onehot.shape
    x = jnp.concatenate([onehot, jnp.zeros((B, L, 1), onehot.dtype)], axis=-1)
    first = jnp.broadcast_to(jax.nn.one_hot(A, A + 1, dtype=onehot.dtype), (B, 1, A + 1))
    _, mask = lab_inputs(jnp.argmax(onehot, axis=-1), A)
    return jnp.concatenate([first, x], axis=1), mask


def token_mask(tokens: Array, eos: int) -> Array:
    """[B, L] bool: True up to and including the first EOS (the sequence's real tokens).

    Args:
      tokens: [B, L] EOS-continued sequences.
      eos: the EOS id.
    """
    ended_before = jnp.cumsum(tokens == eos, axis=1) - (tokens == eos)
    return ended_before == 0


def sequence_logprob(logits_fn: LogitsFn, params: Any, tokens: Array) -> Array:
    """log pi(x) = sum_t log pi(x_t | BOS, x_<t) over the real tokens of each sequence.

    Args:
      logits_fn: a policy (see the module docstring); A = its output width.
      params: its parameters.
      tokens: [B, L] EOS-continued sequences in [0, A).
    Returns:
      [B] log-probabilities (differentiable in params).
    """
    lg = logits_fn(params, with_bos(tokens, _bos_of(logits_fn, params)))[:, :-1]
    a = lg.shape[-1]
    logp = jax.nn.log_softmax(lg, axis=-1)
    terms = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(token_mask(tokens, a - 1), terms, 0.0), axis=1)


def _bos_of(logits_fn: LogitsFn, params: Any) -> int:
    """BOS = A, read from the policy's output width (shape evaluation only, no compute)."""
    probe = jax.eval_shape(logits_fn, params, jnp.zeros((1, 1), jnp.int32))
    return probe.shape[-1]


def sample(key: Array, logits_fn: LogitsFn, params: Any, num: int, depth: int) -> Array:
    """Draw sequences from a policy, token by token (ancestral sampling).

    Args:
      key: PRNG key.
      logits_fn, params: the policy.
      num: B sequences (static).
      depth: L (static).
    Returns:
      [B, L] int32 tokens; after the first EOS every token is EOS.
    """
    a = _bos_of(logits_fn, params)
    ids = jnp.full((num, depth + 1), a, jnp.int32)

    def step(ids, xs):
        t, k = xs
        lg = logits_fn(params, ids)  # causal: positions > t do not affect position t
        tok = jax.random.categorical(k, jax.lax.dynamic_index_in_dim(lg, t, axis=1, keepdims=False))
        prev = jax.lax.dynamic_index_in_dim(ids, t, axis=1, keepdims=False)
        tok = jnp.where((t > 0) & (prev == a - 1), a - 1, tok).astype(jnp.int32)
        return jax.lax.dynamic_update_index_in_dim(ids, tok, t + 1, axis=1), None

    ids, _ = jax.lax.scan(step, ids, (jnp.arange(depth), jax.random.split(key, depth)))
    return ids[:, 1:]


# ---------------------------------------------------------------- the Markov source
class MarkovSource(NamedTuple):
    """A first-order Markov chain over A tokens (the last is EOS): the LM's training corpus.

    Fields:
      log_p_first: [A] log-probabilities of the first token.
      log_p_next: [A, A] log p(next | previous); row A - 1 (after EOS) is never used.
    """

    log_p_first: Array
    log_p_next: Array


SHARPNESS = 0.8
"""Default sharpness (inverse temperature) of the Markov source's Gaussian logits (see `markov_source`)."""
EOS_BIAS = -3.0
"""Default EOS bias of the Markov source: EOS ~e^-3 = 1/20 as likely as another token (see `markov_source`)."""
SOURCE_MAX = 100.0
"""The largest sharpness and |eos_bias| `check_source` accepts: past ~100 nats float32 probabilities are 0 or 1
(e^-104 is below its smallest subnormal), so larger values only make the source's rows deterministic."""


def check_source(sharpness: float, eos_bias: float) -> None:
    """ValueError unless 0 <= sharpness <= SOURCE_MAX and |eos_bias| <= SOURCE_MAX (both finite)."""
    if not (math.isfinite(sharpness) and 0 <= sharpness <= SOURCE_MAX):
        raise ValueError(f"sharpness must be in [0, {SOURCE_MAX:g}], got {sharpness:g}")
    if not (math.isfinite(eos_bias) and abs(eos_bias) <= SOURCE_MAX):
        raise ValueError(f"eos_bias must be in [-{SOURCE_MAX:g}, {SOURCE_MAX:g}], got {eos_bias:g}")


def markov_source(key: Array, vocab: int, sharpness: float = SHARPNESS, eos_bias: float = EOS_BIAS) -> MarkovSource:
    """A random source: log-probabilities log_softmax(sharpness * N(0, 1) + eos_bias * [a = EOS]).

    One row of A Gaussian logits for the first token and one per previous token; sharpness is the rows'
    inverse temperature (0: uniform rows), eos_bias shifts EOS's logit in every row, the first one included.

    The defaults make pi0 spread. The old ones (sharpness 2, no EOS bias) concentrated it in two ways: EOS as
    the first token (the empty sequence) took 59% of the trained LM's law when it drew the largest first
    logit (seed 0), and peaked rows (the most likely of 16 tokens ~0.43 at the median, 0.93 in 1% of rows)
    made a few short chains dominate: the top sequence held 4-59% over 8 seeds at A=16, L=4 (perplexity
    27-677 of N = 54,241). An EOS bias of -3 makes EOS ~1/20 as likely as another token (0.35% a step on
    average), so nearly every sequence runs to full length (~1% of the mass is shorter): at small L a short
    sequence is one of few (n^k of them) and holds much mass alone. Sharpness 0.8 keeps each row a
    structured, not peaked, law (the most likely token ~0.19 at the median, 0.44 in 1% of rows). At A=16,
    L=4 the source's most likely sequence then holds 0.35% at the median and 2.3% at most over 256 seeds,
    and the trained LM's law follows its source's (top mass 0.2-1.6%, entropy 9.3-9.8 nats, perplexity
    11,100-18,300 and 17,600-23,400 sequences holding 90%, over 8 seeds); the largest is the empty
    sequence when EOS draws the first row's largest logit. Larger sharpness or eos_bias concentrate the law.

    Args:
      key: PRNG key (the source's seed).
      vocab: A.
      sharpness: scale of the Gaussian logits, >= 0 (larger: more peaked; 0: uniform rows).
      eos_bias: added to EOS's logit in every row (larger: shorter sequences).
    """
    bias = jnp.zeros((vocab,)).at[vocab - 1].set(eos_bias)
    z = sharpness * jax.random.normal(key, (vocab + 1, vocab)) + bias
    lp = jax.nn.log_softmax(z, axis=-1)
    return MarkovSource(lp[0], lp[1:])


def sample_source(key: Array, source: MarkovSource, num: int, depth: int) -> Array:
    """[num, L] int32 sequences of the source, EOS-continued after the first EOS.

    Args:
      key: PRNG key.
      source: the Markov source.
      num: the number of sequences.
      depth: L, their length.
    """
    eos = source.log_p_first.shape[0] - 1
    k0, *ks = jax.random.split(key, depth)
    first = jax.random.categorical(k0, source.log_p_first, shape=(num,))

    def step(prev, k):
        nxt = jax.random.categorical(k, source.log_p_next[prev])
        nxt = jnp.where(prev == eos, eos, nxt)
        return nxt, nxt

    if depth == 1:
        return first[:, None].astype(jnp.int32)
    _, rest = jax.lax.scan(step, first, jnp.stack(ks))
    return jnp.concatenate([first[:, None], rest.T], axis=1).astype(jnp.int32)


def source_logprob(source: MarkovSource, tokens: Array) -> Array:
    """[B] log-probability of each EOS-continued sequence under the source.

    Args:
      source: the Markov source.
      tokens: [B, L] EOS-continued sequences.
    """
    eos = source.log_p_first.shape[0] - 1
    terms = jnp.concatenate([source.log_p_first[tokens[:, :1]],
                             source.log_p_next[tokens[:, :-1], tokens[:, 1:]]], axis=1)
    return jnp.sum(jnp.where(token_mask(tokens, eos), terms, 0.0), axis=1)


# ---------------------------------------------------------------- training
class Trained(NamedTuple):
    """Result of `train_lm`."""

    params: dict  # the trained LM
    loss: Array  # [steps] training cross-entropy (nats per real token) of each step's batch


def lm_loss(params: dict, tokens: Array, cfg: LMConfig) -> Array:
    """Mean next-token cross-entropy over the real tokens of tokens [B, L] (nats).

    Args:
      params: the LM's parameters (`init`).
      tokens: [B, L] EOS-continued sequences.
      cfg: its sizes (`LMConfig`).
    """
    lg = logits(params, with_bos(tokens, cfg.bos)[:, :-1], cfg)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(lg, axis=-1), tokens[..., None], axis=-1)[..., 0]
    m = token_mask(tokens, cfg.eos)
    return jnp.sum(jnp.where(m, nll, 0.0)) / jnp.sum(m)


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "batch"))
def train_lm(key: Array, cfg: LMConfig, source: MarkovSource, steps: int, batch: int = 256,
             lr: float = 3e-3, weight_decay: float = 0.01) -> Trained:
    """Train the lab LM on sequences of a Markov source: AdamW on `lm_loss`, one jitted `lax.scan`.

    Every step draws a fresh batch of `batch` source sequences of length
    `cfg.depth` (the corpus is steps x batch sequences); the learning rate
    decays by cosine from `lr` to lr / 10.

    Args:
      key: PRNG key (initialisation and data); the same key gives the same params.
      cfg: LM sizes (static).
      source: the Markov source (vocabulary cfg.vocab).
      steps, batch: static sizes.
      lr, weight_decay: AdamW's.
    Returns:
      Trained(params, loss [steps]).
    """
    k_init, k_data = jax.random.split(key)
    fit = adamw_scan(lambda p, k: lm_loss(p, sample_source(k, source, batch, cfg.depth), cfg),
                     init(k_init, cfg), jax.random.split(k_data, steps), lr, weight_decay)
    return Trained(fit.params, fit.loss)


# ---------------------------------------------------------------- checkpoint policies
class CheckpointPolicy(NamedTuple):
    """A causal-LM checkpoint restricted to a sub-vocabulary, in the lab's policy convention.

    Fields:
      logits_fn: (params, ids [B, T] in [0, A], ids[:, 0] = A) -> [B, T, A]: lab token a is the
        model's `tokens[a]`, lab BOS = A is the model's `start`; the logits are the model's at
        `tokens`, so their softmax is the next-token distribution renormalised over the sub-vocabulary.
      params: the checkpoint's parameters (`LoadedModel.params`).
      tokens: (A,) model ids of the lab tokens; the last acts as EOS.
      start: the model id fed first (the checkpoint's bos_token_id unless given).
      model: the `LoadedModel`.
    """

    logits_fn: LogitsFn
    params: dict
    tokens: tuple[int, ...]
    start: int
    model: LoadedModel


def checkpoint_logits(model: LoadedModel, tokens, start: int) -> LogitsFn:
    """The policy convention's logits_fn for a loaded causal LM on the sub-vocabulary `tokens`.

    Args:
      model: the loaded causal LM.
      tokens: the model ids of the lab tokens (lab id a is model id tokens[a]).
      start: the model id that lab BOS (id A) maps to.
    """
    table = jnp.asarray(tuple(tokens) + (start,), jnp.int32)  # lab id -> model id
    cols = jnp.asarray(tuple(tokens), jnp.int32)

    def logits_fn(params, ids):
        return model_logits(model, params, table[ids], cols)

    logits_fn.prefix_policy = checkpoint_prefix_policy(model, tokens, start)  # its KV-cache form (`prefix_policy`)
    return logits_fn


def sub_vocabulary(tokens, vocab: int) -> tuple[int, ...]:
    """The model ids of the lab tokens as a tuple, checked: >= 2 distinct ids in [0, V).

    Args:
      tokens: the model ids, one per lab token.
      vocab: V, the model's vocabulary size.
    Raises:
      UsageError: otherwise (one line naming the ids and V).
    """
    try:
        out = tuple(int(t) for t in tokens)
    except (TypeError, ValueError):
        out = ()
    if len(out) < 2 or len(set(out)) != len(out) or not all(0 <= t < vocab for t in out):
        raise UsageError(f"tokens must be >= 2 distinct ids in [0, {vocab}), got {list(tokens)}")
    return out


def start_token(path, vocab: int, start: int | None = None) -> int:
    """`start`, or the checkpoint's config.json bos_token_id (the first if a list), checked in [0, V).

    Args:
      path: the checkpoint's directory (its config.json is read when start is None).
      vocab: V, the model's vocabulary size.
      start: the start token, or None.
    Raises:
      UsageError: no such id.
    """
    if start is None:
        try:
            start = json.loads((Path(path) / "config.json").read_text()).get("bos_token_id")
        except (OSError, ValueError, AttributeError):
            start = None
        if isinstance(start, list):
            start = start[0] if start else None
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < vocab:
        raise UsageError(f"{path}: no start token (config.json bos_token_id={start!r}); give one in [0, {vocab})")
    return start


def load_policy(path, tokens, start: int | None = None, dtype: str | None = None) -> CheckpointPolicy:
    """A causal-LM checkpoint (any `models.load_model` reads) as a lab policy on the sub-vocabulary `tokens`.

    Args:
      path: checkpoint directory.
      tokens: A >= 2 distinct model ids; the last acts as EOS.
      start: model id fed before the sequence (default: config.json bos_token_id).
      dtype: "float32" / "bfloat16" / None (as stored).
    Raises:
      CheckpointError (a UsageError): a bad checkpoint, or one with no LM head (a reward model).
      UsageError: tokens repeated, fewer than 2, or outside the vocabulary; no start token.
    """
    model = load_model(path, dtype=dtype)
    if not model.has_lm_head:
        raise CheckpointError(f"{path} is not a causal LM (a {model.layout} checkpoint with no LM head)")
    tokens = sub_vocabulary(tokens, model.vocab_size)
    start = start_token(path, model.vocab_size, start)
    return CheckpointPolicy(checkpoint_logits(model, tokens, start), model.params, tokens, start, model)


# ---------------------------------------------------------------- prefix (KV) cache form of a policy
class PrefixPolicy(NamedTuple):
    """A policy that runs new tokens after cached prefixes: the KV-cache form of a logits_fn.

    Fields:
      run: (params, ids [B, S], cache: `models.KVCache` [B, P] | None, siblings=False)
        -> (logits [B, S, A], KVCache [B, S] of ids). Lab tokens as in the convention: without a
        cache, ids[:, 0] = BOS; with one, ids continue the cached prefix (causally, or as `siblings`:
        S alternative next tokens of each row, `models.DecoderBackbone`). logits equal logits_fn's at
        those positions of the whole rows, up to float rounding.
    """

    run: Callable[..., tuple[Array, KVCache]]


def lm_prefix_policy(cfg: LMConfig) -> PrefixPolicy:
    """The KV-cache form of the lab LM `make_logits(cfg)` (the same backbone and head as `logits`)."""
    def run(params, ids, cache=None, siblings=False):
        model = as_model(cfg, params)
        return model_prefix_logits(model, model.params, ids, cache, siblings)

    return PrefixPolicy(run)


def model_prefix_logits(model: LoadedModel, params: dict, ids: Array, cache: KVCache | None = None,
                        siblings: bool = False, cols: Array | None = None) -> tuple[Array, KVCache]:
    """`model_logits` of new tokens ids [B, S] after a cached prefix (`models.make_cached_hidden_fn`): returns
    (logits [B, S, A], the new tokens' KVCache [B, S]).

    Args:
      model: the loaded causal LM.
      params: its parameters.
      ids: [B, S] new model ids.
      cache: the prefix's KVCache (None: no prefix).
      siblings: each new token attends to the cached prefix and to itself only (`models.KVCache.siblings`),
        not to the other new tokens.
      cols: [A] the output columns kept (None: all).
    """
    out, new = make_cached_hidden_fn(model)(params, ids, None, cache, siblings)
    kernel = lm_kernel(model, params)
    return jnp.einsum("btd,da->bta", out.last_hidden_state, kernel if cols is None else kernel[:, cols]), new


def checkpoint_prefix_policy(model: LoadedModel, tokens, start: int) -> PrefixPolicy:
    """The KV-cache form of `checkpoint_logits(model, tokens, start)` (`checkpoint_logits` attaches it)."""
    table = jnp.asarray(tuple(tokens) + (start,), jnp.int32)  # lab id -> model id
    cols = jnp.asarray(tuple(tokens), jnp.int32)

    def run(params, ids, cache=None, siblings=False):
        return model_prefix_logits(model, params, table[ids], cache, siblings, cols)

    return PrefixPolicy(run)


def prefix_policy(logits_fn: LogitsFn) -> PrefixPolicy | None:
    """The KV-cache form of a policy, or None when it has none (then whole rows are evaluated).

    Known: the lab LM (`make_logits(cfg)`, a partial of `logits`) and checkpoint policies
    (`checkpoint_logits`); any other logits_fn may carry one as its attribute `prefix_policy`.
    """
    if isinstance(logits_fn, functools.partial) and logits_fn.func is logits and not logits_fn.args \
            and set(logits_fn.keywords) == {"cfg"}:
        return lm_prefix_policy(logits_fn.keywords["cfg"])
    found = getattr(logits_fn, "prefix_policy", None)
    return found if isinstance(found, PrefixPolicy) else None
