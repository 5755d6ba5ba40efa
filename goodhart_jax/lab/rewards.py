"""Rewards of the lab: a gold reward model r*, Bradley-Terry proxies learned from its labels, diagnostics.

Every reward is scored once over all N terminal sequences of the LM's tree
(`lab.tree.LMTree.tokens`, mdp level order), so expectations under any policy
are exact sums. A reward function follows the convention

    reward_fn(params, tokens [B, L]) -> [B]

on EOS-continued lab tokens (`lab.lm`). The lab's own reward model is a
decoder from `goodhart_jax.models` (sizes in an `lm.LMConfig`; BOS = A first,
the reward read by a linear head at the last real token, the first EOS or
position L); `load_reward` wraps any reward checkpoint `models.load_model`
reads (lab token a is model id `tokens[a]`, BOS is `start`).

Gold: a randomly initialised reward model (its own seed, wider than the
proxies), standardised to mean 0 and sd 1 under pi0 exactly (weights
pi0(x) = exp(tree.log_p)). Annotators rate u(x) = gold(x) + eps(x), with a
fixed per-sequence error eps(x) = scale * Z(x), Z ~ a `goodhart_jax.tails`
family (drawn once per terminal). Preference pairs (a, b) are drawn i.i.d.
from pi0 and labelled a > b with the Bradley-Terry probability
sigmoid((u(a) - u(b)) / temperature) (temperature 0: the sign, ties 1/2).
Proxies: `learned` (a smaller reward model trained with AdamW on the BT
log-loss of those labels) or `direct` (gold + eps exactly, no learning).
Every proxy is then shifted and scaled to mean 0, sd 1 under pi0 (exact
weights, float64 moments: `Proxy.reward`), so that one beta means the same
for every proxy; its own scores stay in `Proxy.raw` (a learned model's scale,
what GCG's scorer sees). X = proxy - gold uses the standardised proxy.

Diagnostics per proxy (`diagnose_proxy`):
- pair accuracy against gold on pairs drawn from pi0 conditioned on the
  sequences in no training comparison (`pair_accuracy_unseen`: they share no
  sequence with the training pairs), and separately among the training pairs'
  sequences (`pair_accuracy_seen`), with the seen set's pi0 mass; a direct
  proxy has no training pairs (unseen = all of pi0, seen nan with a reason);
- corr(proxy, gold) under pi0 (exact), and corr(X, eps) under pi0 on the
  unseen and on the seen sequences (how much annotator error the proxy
  carries off and on its training pairs: i.i.d. error is not learnable);
- xi and verdict (`tail_index.diagnose`) of X and of the proxy on i.i.d. draws
  from pi0 with repeats, i.e. on pi0's own law (not its support);
- exact weighted mean-excess curves e(u) = E[Z - u | Z > u] at the law's own
  q-quantiles u (QUANTILES) for Z = X and Z = proxy, under pi0 and under
  pi*(beta) (proportional to pi0 exp(proxy / beta)) at each beta asked for.

Public API:
  gold_config(vocab, depth) / proxy_config(vocab, depth) -> lm.LMConfig   # defaults: 2 x 64 and 1 x 32
  rm_init(key, cfg, dtype=float32) -> params {"backbone", "score": {"kernel": [D, 1], "bias": [1]}}
  rm_model(cfg, params) -> models.LoadedModel   # with RM_HEAD (last real position, linear with bias)
  rm_reward(params, tokens [B, L], cfg) -> [B];  make_rm_reward(cfg) -> reward_fn   # models.make_reward_fn
  load_reward(path, tokens, start=None, base_model=None) -> CheckpointReward(reward_fn, params, tokens, start, model)
  score_terminals(reward_fn, params, tokens [N, L], chunk=8192) -> [N]     # jitted, chunked
  pi0_moments(r [N], log_p [N]) -> Moments(mean, sd);  standardise(r, log_p) -> [N]
  pi0_standardise(r [N], log_p [N]) -> Standardised(z [N], mean, sd)   # float64 moments; sd 0: shifted only
  pi0_corr(x [N], y [N], log_p [N]) -> []
  Gold(reward [N] standardised, raw [N], mean, sd)
  gold_reward(key, cfg, tree) -> Gold;  gold_from(reward_fn, params, tree) -> Gold
  annotator_error(key, family, num, scale) -> [N]
  Comparisons(a [P], b [P], label [P]);  sample_terminals(key, log_p, num) -> [num]   # -inf log_p: never drawn
  sample_pairs(key, log_p, num) -> (a [num], b [num])     # i.i.d. from pi0
  comparisons(key, log_p, utility [N], num, temperature=1.0) -> Comparisons
  bt_loss(reward_fn, params, tokens, data, weights=None) -> []
  checkpoints(steps, every) -> [every, 2 every, .., steps]     # where early stopping measures validation loss
  fit_minibatched(loss_fn, params, keys [S], data, num, batch, lr, weight_decay, val_loss=None, every=10)
      -> Trained         # the one minibatched AdamW fit: lm.adamw_scan on minibatches (un-jitted; jit/vmap it)
  train_bt(key, reward_fn, params, tokens [N, L], data, steps, batch=256, lr=1e-3, weight_decay=0.01, val=None,
           val_weights=None, every=10)
      -> Trained(params, loss [steps], stop, val_loss [C])   # jitted lax.scan, minibatches drawn with replacement;
                                                             # with val: the checkpoint of least validation loss
  validation_comparisons(key, log_p, utility, seen, num, temperature=1.0) -> Comparisons   # off seen's sequences
  Proxy(reward [N] standardised, error [N], params, loss, raw [N], mean, sd, data: Comparisons | None)
  direct_proxy(gold, error, log_p) -> Proxy
  learned_proxy(key, cfg, tree, gold, error, pairs, steps=2000, temperature=1.0, ...) -> Proxy
  pair_accuracy(proxy [N], gold [N], a [P], b [P]) -> []   # nan: no pair with distinct gold, or non-finite
  seen_terminals(data, num) -> [num] bool
  PairSplit(seen [N], seen_mass, unseen (a, b), seen_pairs (a, b))
  split_pairs(key, log_p, data, num) -> PairSplit     # pi0 conditioned on unseen / on seen sequences
  QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
  weighted_quantile(z [N], log_w [N], q [Q]) -> [Q];  mean_excess(z [N], log_w [N], u [Q]) -> [Q]   # float64
  ExcessCurve(q [Q], u [K, Q], mean_excess [K, Q], mass_above [K, Q]);  excess_curve(z, log_w [K, N], q) -> ExcessCurve
  Tails(betas [K], x: ExcessCurve, proxy: ExcessCurve)   # laws: pi0, then pi*(betas[k])
  tail_curves(proxy [N], gold [N], log_p [N], betas=(), q=QUANTILES) -> Tails
  MIN_TAIL_SEQUENCES = 100
  ProxyReport(pair_accuracy_unseen, pair_accuracy_seen, seen_mass, seen, corr, xi, verdict, xi_proxy,
              verdict_proxy, draws, error [N], diagnosis, diagnosis_proxy, tails, pairs, reasons,
              error_corr_unseen, error_corr_seen)
  diagnose_proxy(key, proxy [N], gold [N], log_p [N], data=None, error=None, heldout_pairs=10000,
                 tail_sample=20000, betas=(), q=QUANTILES) -> ProxyReport
  Ratings(x [P], y [P]) (.a = .b = x);  ratings(key, log_p, utility [N], num, noise=0.0) -> Ratings
  mse_loss(reward_fn, params, tokens, data) -> [];  train_mse(key, reward_fn, params, tokens, data, steps,
      batch=256 | None, lr=1e-3, weight_decay=0.01) -> Trained          # the regression control's fit
  regression_proxy(key, cfg, tree, gold, error, num, steps=2000, noise=0.0, ...) -> Proxy   # MSE on ratings

Glossary: N terminals, L depth, A vocabulary, B batch, P pairs, D model.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from goodhart_jax import tail_index, tails
from goodhart_jax.lab import lm
from goodhart_jax.lab.tree import LMTree
from goodhart_jax.models import CheckpointError, LoadedModel, load_model, make_reward_fn
from goodhart_jax.models.heads import HeadSpec

RewardFn = Callable[[Any, Array], Array]  # (params, tokens [B, L] EOS-continued lab tokens) -> [B]


def gold_config(vocab: int, depth: int) -> lm.LMConfig:
    """Default gold reward model: 2 layers, width 64, 4 heads.

    Args:
      vocab: A, the lab vocabulary (EOS = A - 1).
      depth: L, the sequence length.
    """
    return lm.LMConfig(vocab, depth, layers=2, width=64, heads=4)


def proxy_config(vocab: int, depth: int) -> lm.LMConfig:
    """Default proxy reward model: 1 layer, width 32, 2 heads (smaller than the gold).

    Args:
      vocab: A, the lab vocabulary (EOS = A - 1).
      depth: L, the sequence length.
    """
    return lm.LMConfig(vocab, depth, layers=1, width=32, heads=2)


# ---------------------------------------------------------------- reward models
def rm_init(key: Array, cfg: lm.LMConfig, dtype=jnp.float32) -> dict:
    """Random reward-model parameters: the decoder and a scalar head {"kernel": [D, 1], "bias": [1]}.

    Args:
      key: PRNG key (decoder and head).
      cfg: the model's sizes (`lm.LMConfig`).
      dtype: the parameters' dtype.
    """
    k_body, k_head = jax.random.split(key)
    ids = jnp.full((1, cfg.depth + 1), cfg.bos, jnp.int32)
    body = lm.module(cfg, dtype).init(k_body, ids, jnp.ones_like(ids))["params"]
    kernel = jax.random.normal(k_head, (cfg.width, 1), dtype) / jnp.sqrt(cfg.width).astype(dtype)
    return {"backbone": body, "score": {"kernel": kernel, "bias": jnp.zeros((1,), dtype)}}


rm_init_jit = jax.jit(rm_init, static_argnames=("cfg", "dtype"))


RM_HEAD = HeadSpec("score", bias=True, pooling="last")  # the lab reward models' head


def rm_model(cfg: lm.LMConfig, params: dict) -> LoadedModel:
    """A lab reward model as a `models.LoadedModel` (`lm.as_model` with `RM_HEAD`: the last real position, a
    linear map with bias), so `models.make_reward_fn` and `reward_scorer` serve it.

    Args:
      cfg: the model's sizes (`lm.LMConfig`).
      params: its parameters (`rm_init`'s form).
    """
    return lm.as_model(cfg, params, RM_HEAD)


def rm_reward(params: dict, tokens: Array, cfg: lm.LMConfig) -> Array:
    """Reward of each EOS-continued sequence: the head on the final hidden state of its last real token.

    `models.make_reward_fn` of `rm_model` (every position computed) on [BOS, x_1..x_L] with the tokens
    after the first EOS masked out (right padding: `lm.lab_inputs`).

    Args:
      params: from `rm_init` / `train_bt`.
      tokens: [B, L] lab tokens.
      cfg: the model's sizes (static).
    Returns:
      [B] float32 rewards.
    """
    ids, mask = lm.lab_inputs(tokens, cfg.vocab)
    model = rm_model(cfg, params)
    return make_reward_fn(model, one_position=False)(model.params, ids, mask)


@functools.lru_cache(maxsize=None)
def make_rm_reward(cfg: lm.LMConfig) -> RewardFn:
    """reward_fn(params, tokens [B, L]) -> [B] of the lab reward model `cfg` (cached: one object per config)."""
    return functools.partial(rm_reward, cfg=cfg)


class CheckpointReward(NamedTuple):
    """A reward checkpoint in the lab's reward convention.

    Fields:
      reward_fn: (params, tokens [B, L] lab tokens) -> [B]: the model's reward of
        [start, tokens[x_1], ..] with the tokens after the first EOS masked out
        (and set to the head's pad id when it pools before the first pad).
      params, tokens (A model ids, the last for EOS), start (model id), model (`LoadedModel`).
    """

    reward_fn: RewardFn
    params: dict
    tokens: tuple[int, ...]
    start: int
    model: LoadedModel


def load_reward(path, tokens, start: int | None = None, base_model=None, dtype: str | None = None) -> CheckpointReward:
    """Any reward checkpoint `models.load_model` reads, scoring lab tokens through the model ids `tokens`.

    Args:
      path: checkpoint directory.
      tokens: A model ids of the lab tokens (the last for EOS).
      start: model id fed first (default: bos_token_id of path's, else base_model's, config.json).
      base_model: the config directory of a checkpoint that ships none (Starling).
      dtype: "float32" / "bfloat16" / None (as stored).

    Raises:
      CheckpointError: a bad checkpoint, or one with no reward head (a plain causal LM).
      UsageError: tokens repeated, fewer than 2 or out of the vocabulary; no start token.
    """
    model = load_model(path, base_model=base_model, dtype=dtype)
    if model.reward_head is None:
        raise CheckpointError(f"{path} has no reward head (a {model.layout} checkpoint); the gold needs a reward model")
    tokens = lm.sub_vocabulary(tokens, model.vocab_size)
    if start is None and base_model is not None and not (Path(path) / "config.json").is_file():
        path = base_model  # where the config (and its bos_token_id) lives
    start = lm.start_token(path, model.vocab_size, start)
    table = jnp.asarray(tokens + (start,), jnp.int32)
    spec = model.reward_head
    pad = spec.pad_id if spec.pooling == "before_first_pad" and spec.pad_id is not None else tokens[-1]
    score = make_reward_fn(model)
    a = len(tokens)

    def reward_fn(params, x):
        ids, mask = lm.lab_inputs(x, a)
        return score(params, jnp.where(mask > 0, table[ids], pad), mask)

    return CheckpointReward(reward_fn, model.params, tokens, start, model)


@functools.partial(jax.jit, static_argnames=("reward_fn", "chunk"))
def score_terminals(reward_fn: RewardFn, params: Any, tokens: Array, chunk: int = 8192) -> Array:
    """Rewards of all terminal sequences [N, L] -> [N], in chunks of `chunk` rows.

    Jitted entry point; `reward_fn` is static (hashed by identity: pass the
    same object, e.g. the cached `make_rm_reward(cfg)`, to reuse the compilation).
    """
    n, depth = tokens.shape
    size = min(chunk, n)
    pad = -n % size
    rows = jnp.concatenate([tokens, jnp.broadcast_to(tokens[:1], (pad, depth))]).reshape(-1, size, depth)
    return jax.lax.map(lambda batch: reward_fn(params, batch), rows).reshape(-1)[:n]


# ---------------------------------------------------------------- exact moments under pi0
class Moments(NamedTuple):
    """Exact mean and sd of a reward under pi0 (`pi0_moments`)."""

    mean: Array  # [] E_pi0[r]
    sd: Array  # [] sqrt(E_pi0[(r - mean)^2])


def pi0_moments(r: Array, log_p: Array) -> Moments:
    """Exact mean and sd of r [N] under pi0(x) = exp(log_p [N]) (log_p normalised)."""
    p = jnp.exp(log_p - jax.scipy.special.logsumexp(log_p))
    mean = jnp.sum(p * r)
    return Moments(mean, jnp.sqrt(jnp.sum(p * jnp.square(r - mean))))


def standardise(r: Array, log_p: Array) -> Array:
    """(r - E_pi0[r]) / sd_pi0(r): [N], mean 0 and sd 1 under pi0.

    Args:
      r: [N] a reward of every terminal.
      log_p: [N] log pi0 (any normalisation).
    """
    m = pi0_moments(r, log_p)
    return (r - m.mean) / m.sd


def pi0_corr(x: Array, y: Array, log_p: Array) -> Array:
    """Pearson correlation of x and y [N] under pi0, exact.

    Args:
      x, y: [N] values of every terminal.
      log_p: [N] log pi0 (any normalisation).
    """
    p = jnp.exp(log_p - jax.scipy.special.logsumexp(log_p))
    return jnp.sum(p * standardise(x, log_p) * standardise(y, log_p))


# ---------------------------------------------------------------- gold
class Gold(NamedTuple):
    """The gold reward of every terminal, standardised under pi0, with its raw scores and their moments."""

    reward: Array  # [N] r*(x), standardised: mean 0, sd 1 under pi0
    raw: Array  # [N] the model's own scores
    mean: Array  # [] E_pi0[raw]
    sd: Array  # [] sd_pi0(raw)


def gold_from(reward_fn: RewardFn, params: Any, tree: LMTree, chunk: int = 8192) -> Gold:
    """Score every terminal of `tree` with a reward model and standardise under pi0.

    Args:
      reward_fn: the reward model, reward_fn(params, tokens [B, L]) -> [B].
      params: its parameters.
      tree: the LM's tree (its tokens [N, L] are scored, its log_p [N] weighs the moments).
      chunk: rows per scoring chunk (`score_terminals`).
    """
    raw = score_terminals(reward_fn, params, tree.tokens, chunk)
    m = pi0_moments(raw, tree.log_p)
    return Gold((raw - m.mean) / m.sd, raw, m.mean, m.sd)


def gold_reward(key: Array, cfg: lm.LMConfig, tree: LMTree, chunk: int = 8192) -> Gold:
    """The default gold: a randomly initialised lab reward model (`rm_init(key, cfg)`), standardised under pi0.

    Args:
      key: PRNG key of the initialisation.
      cfg: the model's sizes (`gold_config`).
      tree: the LM's tree, every terminal of which is scored.
      chunk: rows per scoring chunk (`score_terminals`).
    """
    params = rm_init_jit(key, cfg)
    return gold_from(make_rm_reward(cfg), params, tree, chunk)


# ---------------------------------------------------------------- annotators and comparisons
def annotator_error(key: Array, family: str | tails.Family, num: int, scale: float) -> Array:
    """eps = scale * Z, Z ~ `family` (a `tails` spec such as "student_t:df=2"), i.i.d. per terminal: [num].

    Args:
      key: PRNG key of the draws.
      family: the noise law (`tails` spec or Family).
      num: N, the number of terminals.
      scale: the scale s.
    """
    return scale * tails.parse(family).sample(key, (num,))


class Comparisons(NamedTuple):
    """Bradley-Terry preference data: pairs of terminal indices and their labels (`comparisons`)."""

    a: Array  # [P] terminal index of the first sequence
    b: Array  # [P] terminal index of the second
    label: Array  # [P] float 1.0 when a is preferred (0.5 on a tie at temperature 0)


def sample_terminals(key: Array, log_p: Array, num: int) -> Array:
    """num i.i.d. terminal indices from pi0 by inverse CDF ([num] int32; O(N + num log N) memory and time).

    A terminal with log_p = -inf (pi0 conditioned on a subset: `split_pairs`) is never drawn.

    Args:
      key: PRNG key.
      log_p: [N] log pi0 (any normalisation).
      num: the number of draws (static).
    """
    p = jnp.exp(log_p - jax.scipy.special.logsumexp(log_p))
    cdf = jnp.cumsum(p)
    u = jax.random.uniform(key, (num,), cdf.dtype) * cdf[-1]
    last = log_p.shape[0] - 1 - jnp.argmax(p[::-1] > 0)  # u rounded up to cdf[-1]: the last with pi0 > 0
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), last).astype(jnp.int32)


def sample_pairs(key: Array, log_p: Array, num: int) -> tuple[Array, Array]:
    """num independent pairs of terminals, each drawn from pi0: ([P], [P]) indices.

    Args:
      key: PRNG key.
      log_p: [N] log pi0 (any normalisation).
      num: P pairs (static).
    """
    ka, kb = jax.random.split(key)
    return sample_terminals(ka, log_p, num), sample_terminals(kb, log_p, num)


def comparisons(key: Array, log_p: Array, utility: Array, num: int, temperature: float = 1.0) -> Comparisons:
    """Preference data: pairs from pi0, labels a > b with probability sigmoid((u(a) - u(b)) / temperature).

    Args:
      key: PRNG key (pairs and label draws).
      log_p: [N] pi0's terminal log-probabilities.
      utility: [N] the annotators' utility u = gold + eps.
      num: P pairs (static).
      temperature: BT label noise; 0 gives the deterministic sign (ties 1/2).
    """
    k_pairs, k_label = jax.random.split(key)
    a, b = sample_pairs(k_pairs, log_p, num)
    diff = utility[a] - utility[b]
    if temperature == 0:
        label = jnp.where(diff > 0, 1.0, jnp.where(diff < 0, 0.0, 0.5))
    else:
        label = jax.random.bernoulli(k_label, jax.nn.sigmoid(diff / temperature)).astype(jnp.float32)
    return Comparisons(a, b, label)


# ---------------------------------------------------------------- Bradley-Terry training
class Trained(NamedTuple):
    """A trained reward model's parameters and its loss per step (`train_bt`, `train_mse`).

    With validation (`train_bt`'s `val`), `params` are those of the checkpoint of least validation loss and `stop`
    its step; without, `params` are the last step's and `stop` = steps.
    """

    params: Any  # trained parameters
    loss: Array  # [steps] minibatch BT log-loss per step
    stop: Any = None  # [] int32: the step whose parameters are kept (steps without validation; 0: no finite val loss)
    val_loss: Any = None  # [C] validation loss at each checkpoint (`checkpoints`); [0] without validation


def bt_loss(reward_fn: RewardFn, params: Any, tokens: Array, data: Comparisons, weights: Array | None = None) -> Array:
    """Mean Bradley-Terry log-loss -[y log s(r_a - r_b) + (1 - y) log s(r_b - r_a)] over pairs.

    Args:
      reward_fn: the reward model, reward_fn(params, tokens [B, L]) -> [B].
      params: its parameters.
      tokens: [N, L] terminal sequences; data indexes them.
      data: the comparisons ([P] each).
      weights: None (the plain mean), or [P] >= 0 with a positive sum: the weighted mean sum w l / sum w (0 leaves
        a padding pair out: `lab.scaling` pads each member's validation pairs to one length).
    """
    ra = reward_fn(params, tokens[data.a])
    rb = reward_fn(params, tokens[data.b])
    d = ra - rb
    loss = data.label * jax.nn.softplus(-d) + (1.0 - data.label) * jax.nn.softplus(d)
    return jnp.mean(loss) if weights is None else jnp.sum(weights * loss) / jnp.sum(weights)


def checkpoints(steps: int, every: int) -> list[int]:
    """The steps after which `fit_minibatched` measures the validation loss: every, 2 every, .., and steps (the last
    step always, also where every does not divide it).

    Args:
      steps: S >= 1 training steps.
      every: >= 1 steps between checkpoints.
    Raises:
      ValueError: steps or every < 1.
    """
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be >= 1, got steps={steps}, every={every}")
    return list(range(every, steps + 1, every)) + ([steps] if steps % every else [])


def fit_minibatched(loss_fn: Callable[[Any, Any], Array], params: Any, keys: Array, data: Any, num, batch: int | None,
                    lr: float, weight_decay: float, val_loss: Callable[[Any], Array] | None = None,
                    every: int = 10) -> Trained:
    """Fit by minibatched AdamW: the lab's reward-model training loop (`train_bt`, `train_mse`, `lab.scaling`).

    Step s draws `batch` row indices uniform in [0, num) with keys[s] (with replacement) and takes one AdamW step on
    loss_fn(params, those rows of data): `lm.adamw_scan`, the lab's one training loop (cosine decay from lr to
    lr / 10 over the steps). Without `val_loss` that is all: the last step's parameters. With it, early stopping
    (`lm.adamw_scan`'s checkpoint hook): after every `every` steps (and after the last: `checkpoints`)
    val_loss(params) is measured and the parameters of the least one are kept (the first on a tie; a nan never
    counts), selected by `jnp.where` inside the scan, so the fit stays one program that `jax.vmap` can batch (over
    `num` and the validation data, as `lab.scaling` does).

    Not jitted: call it inside `jax.jit` (and `jax.vmap`).

    Args:
      loss_fn: (params, rows) -> [] loss of a minibatch; rows has data's structure with leading axis batch.
      params: initial parameters.
      keys: [S] one PRNG key a step (S = the number of steps).
      data: a pytree of arrays with a leading axis of rows (Comparisons, Ratings).
      num: rows the minibatches draw from: the first num of data ([] int, may be traced; <= data's rows).
      batch: rows a step (static), or None: every row of data at every step (full batch; keys unused).
      lr: the peak learning rate.
      weight_decay: AdamW's decoupled weight decay.
      val_loss: None, or params -> [] validation loss (early stopping).
      every: steps between validation checkpoints (static; used with val_loss).
    Returns:
      Trained(params, loss [S], stop [] int32, val_loss [C] at the C = len(checkpoints(S, every)) checkpoints).
    """
    def loss(p, k):
        if batch is None:
            return loss_fn(p, data)
        idx = jax.random.randint(k, (batch,), 0, num)
        return loss_fn(p, jax.tree.map(lambda x: x[idx], data))

    fit = lm.adamw_scan(loss, params, keys, lr, weight_decay, val_loss, every)
    return Trained(fit.params, fit.loss, fit.stop, fit.val_loss)


def train_bt(key: Array, reward_fn: RewardFn, params: Any, tokens: Array, data: Comparisons, steps: int,
             batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.01, val: Comparisons | None = None,
             val_weights: Array | None = None, every: int = 10) -> Trained:
    """Fit a reward model to comparisons by AdamW on `bt_loss`: one jitted `lax.scan` over steps
    (`fit_minibatched`), optionally early-stopped on validation comparisons.

    Each step draws `batch` comparisons with replacement; the learning rate
    decays by cosine to lr / 10. Jitted, with `reward_fn` static (hashed by
    identity: the cached `make_rm_reward(cfg)` compiles once per config).

    Args:
      key: PRNG key (minibatches).
      reward_fn, params: the model and its initial parameters.
      tokens: [N, L] terminal sequences.
      data: the comparisons (indices into tokens).
      steps, batch: static sizes.
      lr: peak AdamW learning rate (cosine decay to lr / 10).
      weight_decay: AdamW's decoupled weight decay.
      val: None (train `steps` steps, keep the last parameters), or validation comparisons [V]
        (`validation_comparisons`): keep the parameters of least `bt_loss` on them among the `checkpoints`.
      val_weights: None, or [V] weights of the validation pairs (`bt_loss`'s weights).
      every: steps between validation checkpoints (static).
    Returns:
      Trained(params, loss [steps], stop, val_loss [C]).
    """
    if val is not None:
        checkpoints(steps, every)  # refuses every < 1
    return _train_bt(key, reward_fn, params, tokens, data, steps, batch, lr, weight_decay, val, val_weights, every)


@functools.partial(jax.jit, static_argnames=("reward_fn", "steps", "batch", "every"))
def _train_bt(key, reward_fn, params, tokens, data, steps, batch, lr, weight_decay, val, val_weights,
              every) -> Trained:
    check = None if val is None else (lambda p: bt_loss(reward_fn, p, tokens, val, val_weights))
    return fit_minibatched(lambda p, rows: bt_loss(reward_fn, p, tokens, rows), params, jax.random.split(key, steps),
                           data, data.a.shape[0], batch, lr, weight_decay, check, every)


def validation_comparisons(key: Array, log_p: Array, utility: Array, seen: Comparisons, num: int,
                           temperature: float = 1.0) -> Comparisons:
    """Validation comparisons for a proxy trained on `seen`: `comparisons` of the same annotators (utility,
    temperature) on pairs from pi0 conditioned on the sequences in no pair of `seen` (disjoint from the training
    sequences, as `split_pairs`' held-out pairs are).

    Args:
      key: PRNG key (pairs and labels).
      log_p: [N] pi0's terminal log-probabilities.
      utility: [N] the annotators' u = gold + eps.
      seen: the training comparisons.
      num: V validation pairs (static).
      temperature: BT label noise (`comparisons`).
    Raises:
      ValueError: every sequence is in a training pair (nothing left to validate on).
    """
    keep = ~seen_terminals(seen, log_p.shape[0])
    if not bool(jnp.any(keep)):
        raise ValueError("every sequence is in a training pair: no sequence is left for validation pairs")
    return comparisons(key, jnp.where(keep, log_p, -jnp.inf), utility, num, temperature)


# ---------------------------------------------------------------- proxies
class Standardised(NamedTuple):
    """A reward standardised under pi0 with its float64 moments (`pi0_standardise`)."""

    z: Array  # [N] (r - mean) / sd, in r's dtype: mean 0, sd 1 under pi0
    mean: np.float64  # E_pi0[r]
    sd: np.float64  # sd_pi0(r) (the divisor, except where r is constant under pi0: sd 0, divided by 1)


def pi0_standardise(r: Array, log_p: Array) -> Standardised:
    """r [N] shifted and scaled to mean 0, sd 1 under pi0 = exp(log_p) (normalised), moments in float64 (NumPy).

    z = (r - mean) / sd is then rounded to r's dtype: its pi0 mean and sd are 0 and 1 to that rounding (~1e-7 in
    float32). An r constant under pi0 (sd 0) is shifted only (divided by 1); a non-finite r gives nan moments.
    """
    r64 = np.asarray(r, np.float64)
    lp = np.asarray(log_p, np.float64)
    p = np.exp(lp - _logsumexp(lp))
    mean = float(p @ r64)
    sd = float(np.sqrt(p @ np.square(r64 - mean)))
    z = (r64 - mean) / (sd if sd > 0 else 1.0)
    return Standardised(jnp.asarray(z, jnp.asarray(r).dtype), np.float64(mean), np.float64(sd))


class Proxy(NamedTuple):
    """A proxy reward of every terminal, standardised under pi0, with its raw scores and what built it.

    Fields:
      reward: [N] the standardised proxy (raw - mean) / sd: mean 0, sd 1 under pi0, so that one beta means the
        same for every proxy. Every method optimises it (`lab.tree.mdp_tree`: X = reward - gold).
      error: [N] the annotator error eps it was built from.
      params: the learned model's parameters (None for direct).
      loss: [steps] its training loss (None for direct).
      raw: [N] the proxy's own scores (learned: the model's scale, what its `lab.search.rm_scorer` returns;
        direct: gold + eps).
      mean, sd: E_pi0[raw] and sd_pi0(raw), float64 (`pi0_standardise`).
      data: the `Comparisons` a learned proxy was trained on (None for direct: no training pairs).
    """

    reward: Array
    error: Array
    params: Any
    loss: Any
    raw: Array
    mean: Any  # np.float64
    sd: Any  # np.float64
    data: Any


def direct_proxy(gold: Array, error: Array, log_p: Array) -> Proxy:
    """The control: raw proxy = gold + eps exactly (the paper's U = X + V on the LM's tree), standardised under
    pi0 = exp(log_p [N]).

    Args:
      gold: [N] standardised gold.
      error: [N] annotator error eps.
      log_p: [N] log pi0.
    """
    raw = gold + error
    s = pi0_standardise(raw, log_p)
    return Proxy(s.z, error, None, None, raw, s.mean, s.sd, None)


def learned_proxy(key: Array, cfg: lm.LMConfig, tree: LMTree, gold: Array, error: Array, pairs: int,
                  steps: int = 2000, temperature: float = 1.0, batch: int = 256, lr: float = 3e-3,
                  weight_decay: float = 0.01, chunk: int = 8192) -> Proxy:
    """A smaller reward model trained on BT comparisons of annotator utility gold + eps, scored on every terminal
    and standardised under pi0 (`Proxy`; the comparisons are kept in `data`).

    Args:
      key: PRNG key (comparisons, initialisation, minibatches).
      cfg: the proxy's sizes.
      tree: the LM's tree (pairs are drawn from its pi0).
      gold: [N] standardised gold.
      error: [N] annotator error eps.
      pairs: P comparisons.
      steps, temperature, batch, lr, weight_decay: training (see `comparisons`, `train_bt`).
      chunk: rows per chunk when the trained model scores every terminal (`score_terminals`).
    """
    k_data, k_init, k_train = jax.random.split(key, 3)
    data = comparisons(k_data, tree.log_p, gold + error, pairs, temperature)
    fn = make_rm_reward(cfg)
    params = rm_init_jit(k_init, cfg)
    fit = train_bt(k_train, fn, params, tree.tokens, data, steps, batch, lr, weight_decay)
    raw = score_terminals(fn, fit.params, tree.tokens, chunk)
    s = pi0_standardise(raw, tree.log_p)
    return Proxy(s.z, error, fit.params, fit.loss, raw, s.mean, s.sd, data)


# ---------------------------------------------------------------- held-out pairs
def pair_accuracy(proxy: Array, gold: Array, a: Array, b: Array) -> Array:
    """Share of pairs (a, b) the proxy orders as gold does; gold ties are skipped, proxy ties count 1/2; nan
    where no pair has distinct gold (no pair, or every pair a gold tie) or where a reward in the pairs is not
    finite (inf - inf has no order).

    Args:
      proxy, gold: [N] rewards.
      a, b: [P] terminal indices (P may be 0).
    """
    dg, dp = gold[a] - gold[b], proxy[a] - proxy[b]
    score = jnp.where(dp == 0, 0.5, (jnp.sign(dp) == jnp.sign(dg)).astype(jnp.float32))
    counted = dg != 0
    acc = jnp.sum(jnp.where(counted, score, 0.0)) / jnp.maximum(jnp.sum(counted), 1)
    finite = jnp.all(jnp.isfinite(jnp.stack([proxy[a], proxy[b], gold[a], gold[b]])))
    return jnp.where(finite & jnp.any(counted), acc, jnp.nan)


def seen_terminals(data: Comparisons | None, num: int) -> Array:
    """[num] bool: the terminal is one side of at least one comparison in `data` (all False for None)."""
    seen = jnp.zeros((num,), bool)
    return seen if data is None else seen.at[data.a].set(True).at[data.b].set(True)


class PairSplit(NamedTuple):
    """Evaluation pairs split by the training comparisons' sequences."""

    seen: Array  # [N] bool: in at least one training pair
    seen_mass: float  # pi0(seen) (float64)
    unseen: tuple  # ([P], [P]) i.i.d. pairs from pi0 conditioned on ~seen; ([0], [0]) where every sequence is seen
    seen_pairs: tuple  # ([P], [P]) i.i.d. pairs from pi0 conditioned on seen; ([0], [0]) where none is


def split_pairs(key: Array, log_p: Array, data: Comparisons | None, num: int) -> PairSplit:
    """Evaluation pairs on the sequences in no training comparison, and separately among those in one.

    The unseen pairs are drawn from pi0 conditioned on the sequences absent from every training pair (log_p set
    to -inf on the seen ones: `sample_terminals` never draws them), so they share no sequence with the training
    data; the seen pairs from pi0 conditioned on the training pairs' sequences (how the proxy ranks what it was
    fitted on). With data None (a direct proxy) nothing is seen: the unseen pairs are pi0's own.

    Args:
      key: PRNG key.
      log_p: [N] pi0's terminal log-probabilities.
      data: the training comparisons, or None.
      num: P pairs of each kind.
    """
    n = log_p.shape[0]
    seen = seen_terminals(data, n)
    lp = np.asarray(log_p, np.float64)
    mass = float(np.exp(_logsumexp(lp[np.asarray(seen)]) - _logsumexp(lp)))
    k_unseen, k_seen = jax.random.split(key)
    empty = (jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32))

    def draw(k, keep):
        return sample_pairs(k, jnp.where(keep, log_p, -jnp.inf), num) if bool(jnp.any(keep)) else empty

    return PairSplit(seen, mass, draw(k_unseen, ~seen), draw(k_seen, seen))


# ---------------------------------------------------------------- exact weighted tails
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 0.999)  # the levels q of the mean-excess curves
QUANTILE_TOL = 1e-12  # P(Z <= z) >= q - QUANTILE_TOL: float64 rounding of the cumulative sum


def _logsumexp(lw: np.ndarray) -> float:
    """log sum exp(lw) in float64; -inf for an empty or all -inf lw."""
    if lw.size == 0:
        return -np.inf
    top = np.max(lw)
    return float(top) if not np.isfinite(top) else float(top + np.log(np.sum(np.exp(lw - top))))


def _sorted_law(z, log_w) -> tuple[np.ndarray, np.ndarray]:
    """(z ascending, its normalised log-weights) in float64, from z [N] and log_w [N] (any normalisation)."""
    z = np.asarray(z, np.float64)
    lw = np.asarray(log_w, np.float64)
    order = np.argsort(z, kind="stable")
    return z[order], lw[order] - _logsumexp(lw)


def _quantiles(zs: np.ndarray, lw: np.ndarray, q) -> np.ndarray:
    cdf = np.cumsum(np.exp(lw))
    i = np.searchsorted(cdf, np.asarray(q, np.float64) - QUANTILE_TOL, side="left")
    last = zs.shape[0] - 1 - int(np.argmax(np.isfinite(lw)[::-1]))  # the largest z of positive weight
    return zs[np.minimum(i, last)]


def _excess(zs: np.ndarray, lw: np.ndarray, u) -> tuple[np.ndarray, np.ndarray]:
    u = np.atleast_1d(np.asarray(u, np.float64))
    e, m = np.full(u.shape, np.nan), np.zeros(u.shape)
    for k, uk in enumerate(u):
        j = int(np.searchsorted(zs, uk, side="right"))  # zs[j:] > uk
        la = _logsumexp(lw[j:])
        if np.isfinite(la):
            e[k] = np.sum(np.exp(lw[j:] - la) * (zs[j:] - uk))
            m[k] = np.exp(la)
    return e, m


def weighted_quantile(z, log_w, q) -> np.ndarray:
    """The q-quantiles min{z_i : P(Z <= z_i) >= q} of the law of Z = z(x), x ~ w(x) = exp(log_w) / sum, exactly.

    float64; weights in log space (any normalisation; -inf: weight 0, never a quantile).

    Args:
      z: [N] values.
      log_w: [N] log-weights.
      q: [Q] levels in (0, 1] (a scalar gives [1]).
    Returns:
      [Q] quantiles.
    """
    return _quantiles(*_sorted_law(z, log_w), np.atleast_1d(q))


def mean_excess(z, log_w, u) -> np.ndarray:
    """The mean excess e(u) = E[Z - u | Z > u] under w(x) = exp(log_w) / sum, exactly (float64, log space).

    Args:
      z: [N] values.
      log_w: [N] log-weights (any normalisation; -inf: weight 0).
      u: [Q] thresholds (a scalar gives [1]).
    Returns:
      [Q] mean excesses; nan where the law puts no mass above u.
    """
    return _excess(*_sorted_law(z, log_w), u)[0]


class ExcessCurve(NamedTuple):
    """Exact mean-excess curves of one Z under several laws, at each law's own quantiles."""

    q: np.ndarray  # [Q] quantile levels
    u: np.ndarray  # [K, Q] the law's q-quantile of Z (`weighted_quantile`)
    mean_excess: np.ndarray  # [K, Q] E[Z - u | Z > u] under the law (nan where it puts no mass above u)
    mass_above: np.ndarray  # [K, Q] P(Z > u) under the law (<= 1 - q)


def _law_curve(zs: np.ndarray, order: np.ndarray, log_w: np.ndarray, q: np.ndarray):
    """(u, mean excess, mass above) [Q] of z sorted (zs = z[order]) under one law log_w [N] (unsorted)."""
    lw = log_w[order] - _logsumexp(log_w)
    u = _quantiles(zs, lw, q)
    return (u, *_excess(zs, lw, u))


def excess_curve(z, log_w, q=QUANTILES) -> ExcessCurve:
    """`weighted_quantile` and `mean_excess` of z [N] at its own q-quantiles under each law log_w [K, N] (or [N]:
    K = 1); z is sorted once. float64 NumPy."""
    z = np.asarray(z, np.float64)
    q = np.asarray(q, np.float64)
    order = np.argsort(z, kind="stable")
    rows = [_law_curve(z[order], order, lw, q) for lw in np.atleast_2d(np.asarray(log_w, np.float64))]
    return ExcessCurve(q, *(np.stack([r[i] for r in rows]) for i in range(3)))


class Tails(NamedTuple):
    """Exact mean-excess curves of X = proxy - gold and of the proxy under pi0 and pi*(beta)."""

    betas: np.ndarray  # [K] KL coefficients; law 0 is pi0, law k + 1 is pi*(betas[k])
    x: ExcessCurve  # of X, [1 + K, Q]
    proxy: ExcessCurve  # of the proxy, [1 + K, Q]


def tail_curves(proxy: Array, gold: Array, log_p: Array, betas=(), q=QUANTILES) -> Tails:
    """Mean-excess curves of X = proxy - gold and of the proxy under pi0 and under each pi*(beta), exactly.

    pi*(beta)(x) is proportional to pi0(x) exp(proxy(x) / beta), the optimum the lab's methods approach.

    Args:
      proxy: [N] the proxy as optimised (standardised: `Proxy.reward`).
      gold: [N] gold.
      log_p: [N] log pi0.
      betas: [K] KL coefficients.
      q: [Q] quantile levels.
    """
    lp = np.asarray(log_p, np.float64)
    pr = np.asarray(proxy, np.float64)
    b = np.asarray(betas, np.float64).reshape(-1)
    q = np.asarray(q, np.float64)
    curves = []
    for z in (pr - np.asarray(gold, np.float64), pr):
        order = np.argsort(z, kind="stable")
        zs = z[order]
        rows = [_law_curve(zs, order, lp, q)] + [_law_curve(zs, order, lp + pr / bk, q) for bk in b]  # O(N) each
        curves.append(ExcessCurve(q, *(np.stack([r[i] for r in rows]) for i in range(3))))
    return Tails(b, *curves)


# ---------------------------------------------------------------- diagnostics
MIN_TAIL_SEQUENCES = tail_index.MIN_SAMPLES  # tail_index.diagnose's minimum sample; a smaller tree gets no xi


class ProxyReport(NamedTuple):
    """A proxy against gold. A nan number has its reason in `reasons` (field name -> why)."""

    pair_accuracy_unseen: float  # pairs from pi0 on sequences in no training pair (direct: all of pi0)
    pair_accuracy_seen: float  # pairs from pi0 on the training pairs' sequences (nan for direct)
    seen_mass: float  # pi0 mass of the training pairs' sequences (nan for direct)
    seen: int  # distinct sequences in the training pairs (0 for direct)
    corr: float  # corr(proxy, gold) under pi0, exact
    xi: float  # GPD shape of X's upper tail on i.i.d. pi0 draws (the verdict's primary evidence)
    verdict: str  # "heavy" | "light" | "inconclusive" (tail_index.verdict_from), or "n/a (why)"
    xi_proxy: float  # the same of the proxy's upper tail, on the same draws
    verdict_proxy: str
    draws: int  # i.i.d. pi0 draws behind xi and xi_proxy (0: none)
    error: Array  # [N] X = proxy - gold
    diagnosis: Any  # tail_index.Diagnosis of X's draws (None: none)
    diagnosis_proxy: Any  # of the proxy's
    tails: Tails  # exact mean-excess curves under pi0 and pi*(beta)
    pairs: PairSplit  # the evaluation pairs
    reasons: dict  # {field: why it is nan}
    error_corr_unseen: float  # corr(X, eps) under pi0 conditioned on the unseen sequences (direct: all of pi0)
    error_corr_seen: float  # corr(X, eps) under pi0 conditioned on the training pairs' sequences (nan for direct)


def diagnose_proxy(key: Array, proxy: Array, gold: Array, log_p: Array, data: Comparisons | None = None,
                   error: Array | None = None, heldout_pairs: int = 10_000, tail_sample: int = 20_000, betas=(), q=QUANTILES,
                   bayes: bool = False, tail_fraction: float = 0.1) -> ProxyReport:
    """Pair accuracy against gold on unseen and seen sequences, exact corr under pi0, and the tails of
    X = proxy - gold and of the proxy under pi0's own law.

    xi and the verdicts: `tail_index.diagnose` on `tail_sample` i.i.d. draws from pi0 (with repeats: pi0's law,
    not its support); none below MIN_TAIL_SEQUENCES sequences. Exact mean-excess curves (`tail_curves`) under
    pi0 and pi*(beta) for each of `betas`.

    Args:
      key: PRNG key (evaluation pairs, the tail draws, the diagnosis).
      proxy: [N] the proxy as optimised (standardised under pi0: `Proxy.reward`).
      gold: [N] standardised gold.
      log_p: [N] pi0's terminal log-probabilities.
      data: the proxy's training comparisons (`Proxy.data`; None for a direct proxy).
      error: [N] the annotator error eps (`Proxy.error`), for corr(X, eps) on unseen and on seen sequences (how
        much of the error the proxy carries off and on its training pairs); None: nan.
      heldout_pairs: pairs of each kind (unseen, seen) for the accuracies.
      tail_sample: i.i.d. pi0 draws whose X and proxy are diagnosed.
      betas, q: the pi*(beta) laws and quantile levels of the mean-excess curves.
      bayes, tail_fraction: `tail_index.diagnose` options (the MLE is the primary evidence by default).
    """
    k_pairs, k_tail, k_diag = jax.random.split(key, 3)
    n = log_p.shape[0]
    reasons = {}
    split = split_pairs(k_pairs, log_p, data, heldout_pairs)
    acc_unseen = float(pair_accuracy(proxy, gold, *split.unseen))
    acc_seen = float(pair_accuracy(proxy, gold, *split.seen_pairs))
    seen_mass, seen = split.seen_mass, int(jnp.sum(split.seen))
    if data is None:
        seen_mass = float("nan")
        reasons.update(pair_accuracy_seen="a direct proxy has no training pairs",
                       seen_mass="a direct proxy has no training pairs")
    elif not np.isfinite(acc_seen):
        reasons["pair_accuracy_seen"] = "no pair of seen sequences has distinct gold and finite rewards"
    if not np.isfinite(acc_unseen):
        reasons["pair_accuracy_unseen"] = (f"every sequence ({n}) is in a training pair" if seen == n else
                                           "no pair of unseen sequences has distinct gold and finite rewards")
    x = proxy - gold
    diag = {}
    idx = sample_terminals(k_tail, log_p, tail_sample)  # i.i.d. from pi0, repeats included
    for name, z in (("xi", x), ("xi_proxy", proxy)):
        if n < MIN_TAIL_SEQUENCES:
            diag[name] = (float("nan"), f"n/a (N = {n} < {MIN_TAIL_SEQUENCES} sequences)", None)
        else:
            try:
                d = tail_index.diagnose(k_diag, np.asarray(z[idx]), bayes=bayes, tail_fraction=tail_fraction)
                diag[name] = (float(d.verdict.evidence[0].xi), d.verdict.verdict, d)
            except tail_index.TailInputError as e:
                diag[name] = (float("nan"), f"n/a ({e})", None)
        if not np.isfinite(diag[name][0]):
            reasons[name] = diag[name][1]
    corr = float(pi0_corr(proxy, gold, log_p))
    ecorr = {}
    for f, keep in (("error_corr_unseen", ~split.seen), ("error_corr_seen", split.seen)):
        ecorr[f] = float("nan")
        if error is None:
            reasons[f] = "no annotator error given"
        elif not bool(jnp.any(keep)):
            reasons[f] = ("a direct proxy has no training pairs" if data is None and f == "error_corr_seen" else
                          f"every sequence ({n}) is in a training pair")
        else:
            ecorr[f] = float(pi0_corr(x, error, jnp.where(keep, log_p, -jnp.inf)))
            if not np.isfinite(ecorr[f]):
                reasons[f] = "not finite (X or eps constant on these sequences, or not finite)"
    if not np.isfinite(corr):
        reasons["corr"] = "not finite (a reward is not finite, or one is constant under pi0)"
    return ProxyReport(acc_unseen, acc_seen, seen_mass, seen, corr, diag["xi"][0], diag["xi"][1],
                       diag["xi_proxy"][0], diag["xi_proxy"][1], tail_sample if n >= MIN_TAIL_SEQUENCES else 0,
                       x, diag["xi"][2], diag["xi_proxy"][2],
                       tail_curves(proxy, gold, log_p, betas, q), split, reasons, ecorr["error_corr_unseen"],
                       ecorr["error_corr_seen"])


# ---------------------------------------------------------------- control: a regression proxy (MSE on ratings)
class Ratings(NamedTuple):
    """Noisy scalar ratings of sequences drawn from pi0: the regression proxy's training data.

    `a` and `b` both name the rated sequences, so that `seen_terminals`, `split_pairs` and `diagnose_proxy` treat
    them as the proxy's training sequences exactly as they do a Bradley-Terry proxy's pairs.
    """

    x: Array  # [P] terminal index of each rated sequence (i.i.d. from pi0, repeats included)
    y: Array  # [P] its rating u(x) (+ rating noise)

    @property
    def a(self) -> Array:
        return self.x

    @property
    def b(self) -> Array:
        return self.x


def ratings(key: Array, log_p: Array, utility: Array, num: int, noise: float = 0.0) -> Ratings:
    """Ratings y = u(x) + noise * N(0, 1) of `num` sequences x drawn i.i.d. from pi0.

    The annotator's utility u = gold + eps carries the per-sequence error eps (as for `comparisons`); `noise` adds
    independent per-label noise on top (0: none, the default: a rating is the utility itself, and a sequence rated
    twice gets the same rating).

    Args:
      key: PRNG key (sequences, label noise).
      log_p: [N] pi0's terminal log-probabilities.
      utility: [N] u = gold + eps.
      num: P ratings (static).
      noise: sd of the per-label noise, >= 0.
    """
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    k_x, k_y = jax.random.split(key)
    x = sample_terminals(k_x, log_p, num)
    y = utility[x]
    if noise > 0:
        y = y + noise * jax.random.normal(k_y, y.shape, y.dtype)
    return Ratings(x, y)


def mse_loss(reward_fn: RewardFn, params: Any, tokens: Array, data: Ratings) -> Array:
    """Mean squared error mean_i (r(x_i) - y_i)^2 of the reward model on ratings.

    Args:
      reward_fn: the reward model, reward_fn(params, tokens [B, L]) -> [B].
      params: its parameters.
      tokens: [N, L] terminal sequences; data indexes them.
    """
    return jnp.mean(jnp.square(reward_fn(params, tokens[data.x]) - data.y))


def train_mse(key: Array, reward_fn: RewardFn, params: Any, tokens: Array, data: Ratings, steps: int,
              batch: int | None = 256, lr: float = 1e-3, weight_decay: float = 0.01) -> Trained:
    """Fit a reward model to ratings by AdamW on `mse_loss`: one jitted `lax.scan` (`lm.adamw_scan`), as `train_bt`.

    Each step draws `batch` ratings with replacement (batch None: every rating, every step: full-batch AdamW, a
    deterministic gradient); the learning rate decays by cosine to lr / 10.

    Args:
      key: PRNG key (minibatches).
      reward_fn, params: the model and its initial parameters.
      tokens: [N, L] terminal sequences.
      data: the ratings (indices into tokens).
      steps, batch: static sizes.
      lr: peak AdamW learning rate (cosine decay to lr / 10).
      weight_decay: AdamW's decoupled weight decay.
    Returns:
      Trained(params, loss [steps]).
    """
    return _train_mse(key, reward_fn, params, tokens, data, steps, batch, lr, weight_decay)


@functools.partial(jax.jit, static_argnames=("reward_fn", "steps", "batch"))
def _train_mse(key, reward_fn, params, tokens, data, steps, batch, lr, weight_decay) -> Trained:
    fit = fit_minibatched(lambda p, rows: mse_loss(reward_fn, p, tokens, rows), params, jax.random.split(key, steps),
                          data, data.x.shape[0], batch, lr, weight_decay)
    return Trained(fit.params, fit.loss)


def regression_proxy(key: Array, cfg: lm.LMConfig, tree: LMTree, gold: Array, error: Array, num: int,
                     steps: int = 2000, noise: float = 0.0, batch: int = 256, lr: float = 3e-3,
                     weight_decay: float = 0.01, chunk: int = 8192) -> Proxy:
    """The control beside `learned_proxy`: the same reward model trained by MSE on noisy ratings u = gold + eps
    of `num` sequences from pi0, scored on every terminal and standardised under pi0 (`Proxy`, the `Ratings` in
    `data`).

    Matching the Bradley-Terry proxy: `num` ratings for `pairs` comparisons is one label each (a comparison is one
    bit about two sequences, a rating one real number about one sequence); pass num = 2 pairs to match the
    sequences seen instead. A rating carries the error's magnitude, which a comparison saturates (sigmoid), so
    the two tell label saturation from the model's capacity.

    Args:
      key: PRNG key (ratings, initialisation, minibatches).
      cfg: the proxy's sizes.
      tree: the LM's tree (rated sequences are drawn from its pi0).
      gold: [N] standardised gold.
      error: [N] annotator error eps (any map: i.i.d. or a function of the sequence).
      num: P ratings.
      steps, noise, batch, lr, weight_decay: training (see `ratings`, `train_mse`).
      chunk: rows per chunk when the trained model scores every terminal (`score_terminals`).
    """
    k_data, k_init, k_train = jax.random.split(key, 3)
    data = ratings(k_data, tree.log_p, gold + error, num, noise)
    fn = make_rm_reward(cfg)
    params = rm_init_jit(k_init, cfg)
    fit = train_mse(k_train, fn, params, tree.tokens, data, steps, batch, lr, weight_decay)
    raw = score_terminals(fn, fit.params, tree.tokens, chunk)
    s = pi0_standardise(raw, tree.log_p)
    return Proxy(s.z, error, fit.params, fit.loss, raw, s.mean, s.sd, data)
