"""RL of a policy against the proxy with a KL penalty in the reward, measured exactly on the tree.

The RLHF objective J(pi) = E_pi[r] - beta KL(pi || pi0) is maximised by a
policy gradient with the penalty folded into the reward of each sampled
sequence, as in RLHF (Ziegler et al. 2019; Ouyang et al. 2022):

    R(x) = r(x) - beta (log pi(x) - log pi0(x)),
    grad J = E_pi[R(x) grad log pi(x)]   (E_pi[grad log pi] = 0, so the -beta term needs no gradient).

REINFORCE with the leave-one-out baseline (RLOO, Kool et al. 2019; Ahmadian
et al. 2024): with B samples per step, A_i = R_i - mean_{j != i} R_j and the
loss is -mean_i A_i log pi(x_i). Optax Adam (gradient clipped by global norm,
cosine decay to lr / 10), one jitted `lax.scan` over steps. A step runs the
policy either on the sampled rows, each token from the prefix before it only
(`sample`: L (L + 1) / 2 positions a sequence, not L (L + 1)), or, where the
tree has fewer prefixes than the batch has positions, on every prefix once
(`policy_levels`, the KV-cache pass), drawing and scoring the batch on that
table (`RLConfig.policy_pass`, `uses_tree`): the same estimator, at a cost
that does not grow with the batch (A = 16, L = 4: 3,616 prefixes a step).

Every `eval_every` steps the current policy is evaluated exactly: its log
pi(a|s) on every prefix gives its tree (`lab.tree.log_pi0_levels`), and `mdp` gives its
exact E[gold], E[proxy], trajectory KL, and the gap to the exact optimum
pi*(beta) of the same objective (`mdp.optimal_policy`, soft backward
induction): gap = J(pi*) - J(pi) >= 0 (up to float round-off).

The policy is any `logits_fn(params, ids [B, T]) -> [B, T, A]` in the lab's
convention (`lab.lm`: ids[:, 0] = BOS = A, logits[:, t] the next-token logits
after ids[:, :t + 1], sequences EOS-continued): the lab LM, or the tabular
policy `tabular_logits` (one free logit vector per state), or
`residual_logits(f)`: pi proportional to pi0 exp(f + 30 T) with pi0's tree
frozen, a fresh network f (zero head) and a zero table T of free logits per
state (pi = pi0 at the start), the lab's default (`lab.experiment.rl_policy`).
A direct proxy's error is one independent draw per sequence: a network shared
across sequences (f) cannot hold it from a few samples each, a table can;
with both, at batch 1024 x 250 steps, RL reaches the optimum on the lab's
light-noise proxies (benchmarks/README.md, "RL against the exact optimum"). Rewards live on
the tree `mdp.Tree(log_pi0, X = r - g, V = g)` (`lab.tree.mdp_tree`): E_U is the proxy, E_V the gold.

API (blackjax/gcg style): `make_rl(config, logits_fn) -> (init, step)`,
`init(params) -> RLState`, `step(key, state, task) -> (RLState, RLInfo)`;
`make_eval` for the exact evaluation; `make_run` / `train` loop both under
`lax.scan` (the step key is fold_in(key, state.step), so chunked runs equal one run).
`sample(key, logits_fn, params, num, depth)`: `lm.sample`'s draw at half the work;
`residual_logits(logits_fn)`: the policy pi0 x exp(f + 30 T) (params {"log_pi0", "f", "table"});
`policy_levels(logits_fn, params, L)`: a policy's log pi on every prefix (residual ones by the KV-cache pass).

Glossary: B batch, T sequence (with BOS), L depth, A vocabulary, n = A - 1
non-EOS tokens, N terminal sequences, S steps, E eval points.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from goodhart_jax import mdp
from goodhart_jax.lab import lm
from goodhart_jax.lab import tree as lab_tree

__all__ = [
    "RLConfig", "RLTask", "RLState", "RLInfo", "RLEval", "make_rl", "make_eval", "make_run", "make_train", "train",
    "tabular_logits", "residual_logits", "policy_levels", "uses_tree", "sample", "TABLE_SCALE",
]

TABLE_SCALE = 30.0  # the residual policy's table logits are TABLE_SCALE x its parameters (see residual_logits)

LogitsFn = Callable[[Any, Array], Array]


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Static settings of the RL run.

    Fields:
      vocab: A, tokens of the policy (the last is EOS).
      depth: L, the maximum sequence length.
      batch: B >= 2 sequences sampled per step (RLOO needs two).
      learning_rate: Adam's peak rate.
      num_steps: S, steps of a full run (the cosine schedule's horizon).
      eval_every: steps between exact evaluations (divides num_steps).
      max_grad_norm: global-norm gradient clipping.
      baseline: "rloo" (leave-one-out mean of the others) or "none" (plain REINFORCE).
      optimizer: "adam" or "sgd" (after the clipping: normalised steps; no better on the lab's tree).
      policy_pass: how a step runs the policy: "rows" (on the sampled sequences only), "tree" (on every prefix
        of the tree once, `policy_levels`; the batch is then drawn from and scored on that table) or "auto"
        (the cheaper, `uses_tree`). The same estimator and the same draws up to float round-off; "tree" costs
        the same at any batch (at A = 16, L = 4: 3,616 prefixes against 10,240 sampled positions at B = 1024).
    The defaults are the lab's (benchmarks/README.md, "RL against the exact optimum").
    """

    vocab: int
    depth: int
    batch: int = 1024
    learning_rate: float = 3e-3
    num_steps: int = 250
    eval_every: int = 50
    max_grad_norm: float = 1.0
    baseline: str = "rloo"
    optimizer: str = "adam"
    policy_pass: str = "auto"

    def __post_init__(self):
        if self.vocab < 2 or self.depth < 1:
            raise ValueError(f"need vocab >= 2 and depth >= 1, got {self.vocab}, {self.depth}")
        if self.batch < 2:
            raise ValueError(f"batch must be >= 2 (RLOO), got {self.batch}")
        if self.num_steps < 1 or self.eval_every < 1 or self.num_steps % self.eval_every:
            raise ValueError(f"eval_every ({self.eval_every}) must divide num_steps ({self.num_steps}), both >= 1")
        if not self.learning_rate > 0 or not self.max_grad_norm > 0:
            raise ValueError("learning_rate and max_grad_norm must be > 0")
        if self.baseline not in ("rloo", "none"):
            raise ValueError(f"baseline must be 'rloo' or 'none', got {self.baseline!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.policy_pass not in ("auto", "rows", "tree"):
            raise ValueError(f"policy_pass must be 'auto', 'rows' or 'tree', got {self.policy_pass!r}")

    @property
    def spec(self) -> mdp.TreeSpec:
        return mdp.TreeSpec(self.vocab, self.depth, eos=True)


class RLTask(NamedTuple):
    """Traced inputs: the tree (pi0 and rewards) and the KL coefficient.

    Fields:
      tree: `mdp.Tree(log_pi0, X = proxy - gold, V = gold)` (`lab.tree.mdp_tree`), EOS tree.
      beta: [] > 0, the KL coefficient.
    """

    tree: mdp.Tree
    beta: Array


class RLState(NamedTuple):
    """The RL loop's carry: the policy's parameters, the optimiser's state and the steps taken."""

    params: Any  # the policy's parameters
    opt_state: Any  # optax state
    step: Array  # [] int32, steps taken


class RLInfo(NamedTuple):
    """Per-step diagnostics from the sampled batch (Monte-Carlo, for monitoring only)."""

    proxy: Array  # [] mean proxy r of the batch
    reward: Array  # [] mean penalised reward R = r - beta log(pi / pi0)
    kl: Array  # [] mean log(pi(x) / pi0(x)), the sampled KL estimate
    loss: Array  # [] the surrogate loss


class RLEval(NamedTuple):
    """Exact evaluation of a policy on the tree; fields [] (or [E] from a run)."""

    step: Array  # steps taken when evaluated
    gold: Array  # E_pi[gold]
    proxy: Array  # E_pi[proxy]
    KL: Array  # KL(Tr(pi) || Tr(pi0)), exact trajectory KL
    objective: Array  # E_pi[proxy] - beta KL
    optimum: Array  # the exact optimum's objective at the same beta, beta log E_pi0[exp(r / beta)]
    gap: Array  # optimum - objective, >= 0 up to round-off


def tabular_logits(table: tuple, ids: Array) -> Array:
    """The tabular policy: one free logit vector per state (a `logits_fn` with params = table).

    Args:
      table: L arrays [n^k, A] of logits (e.g. pi0's log-probabilities to start at pi0).
      ids: [B, T] lab tokens, ids[:, 0] = BOS; positions >= L (and prefixes
        holding EOS, which are never used) get the root's row or zeros.
    Returns:
      [B, T, A] logits.
    """
    A = table[0].shape[-1]
    n, L, (B, T) = A - 1, len(table), ids.shape
    out, idx = [], jnp.zeros((B,), jnp.int32)
    for t in range(T):
        if t >= L:
            out.append(jnp.zeros((B, A), table[0].dtype))
            continue
        if t > 0:
            idx = idx * n + jnp.clip(ids[:, t], 0, n - 1)
        out.append(table[t][jnp.clip(idx, 0, n**t - 1)])
    return jnp.stack(out, axis=1)


@functools.lru_cache(maxsize=None)
def residual_logits(logits_fn: LogitsFn) -> LogitsFn:
    """The policy pi(a | s) proportional to pi0(a | s) exp(f(s)[a] + TABLE_SCALE T(s)[a]): pi0 frozen, a network f
    and (optionally) a table T of free logits per state trained on top.

    Its params are {"log_pi0": pi0's tree (L arrays [n^k, A], `lab.tree.LMTree.log_pi0`; no gradient flows
    into them), "f": params of `logits_fn`, and optionally "table": L arrays [n^k, A]}; its logits are
    log pi0(. | s) + logits_fn(f, ids) + TABLE_SCALE tabular_logits(table, ids). With f's outputs 0 at the start
    (a zero LM head) and a zero table the policy starts at pi0 exactly, as a zero-initialised adapter (LoRA's
    B = 0) does. f generalises across sequences; the table can hold what does not generalise (a direct
    proxy's error is one independent draw a sequence), as a policy much larger than the tree could; its
    logits are TABLE_SCALE times its parameters, so that Adam moves them TABLE_SCALE times faster than f's
    (benchmarks/README.md, "RL against the exact optimum": 30 beats 100 and no table). Cached: the same
    `logits_fn` gives the same function (one compilation); `policy_levels` evaluates it on the tree.
    """

    def fn(params, ids):
        table = jax.tree.map(lax.stop_gradient, params["log_pi0"])
        out = logits_fn(params["f"], ids)
        lg = tabular_logits(table, ids).astype(out.dtype) + out
        if "table" in params:
            lg = lg + TABLE_SCALE * tabular_logits(params["table"], ids).astype(out.dtype)
        return lg

    fn.residual_of = logits_fn
    return fn


def policy_levels(logits_fn: LogitsFn, params: Any, depth: int) -> tuple:
    """log pi(. | s) on every prefix s of the tree (`lab.tree.log_pi0_levels`), differentiable in params.

    A residual policy (`residual_logits`) is evaluated as log_softmax(log pi0 + f + TABLE_SCALE T) with f on
    the tree by its KV-cache pass (each prefix once), not by the row pass over whole sequences.

    Args:
      logits_fn: the policy (`residual_logits` or any logits function `lab.tree.log_pi0_levels` takes).
      params: its parameters.
      depth: L, the tree's depth.
    Returns:
      L arrays [n^k, A] of log-probabilities (mdp's `Tree.log_pi0` layout).
    """
    inner = getattr(logits_fn, "residual_of", None)
    if inner is None:
        return lab_tree.log_pi0_levels(logits_fn, params, depth)
    f = lab_tree.log_pi0_levels(inner, params["f"], depth)
    table = params.get("table")
    out = []
    for k, (p0, fk) in enumerate(zip(params["log_pi0"], f)):
        lg = lax.stop_gradient(p0).astype(fk.dtype) + fk
        if table is not None:
            lg = lg + TABLE_SCALE * table[k].astype(fk.dtype)
        out.append(jax.nn.log_softmax(lg, axis=-1))
    return tuple(out)


def uses_tree(config: RLConfig, logits_fn: LogitsFn) -> bool:
    """Whether a step runs the policy on the whole tree (`RLConfig.policy_pass`; "auto": the cheaper).

    Cost in token positions run: the tree's prefixes sum_{k<L} n^k with a KV-cache form (the lab LM, a residual
    policy over it), else the row pass's n^(L-1) L, x 3 (forward and backward), against the rows' B L (L + 1) / 2
    (sampling) + 3 B (L + 1) (forward and backward).

    Args:
      config: static `RLConfig`.
      logits_fn: the policy (a KV-cache form is looked for in it, or in the logits function a residual policy wraps).
    """
    if config.policy_pass != "auto":
        return config.policy_pass == "tree"
    n, L, B = config.vocab - 1, config.depth, config.batch
    inner = getattr(logits_fn, "residual_of", logits_fn)
    positions = lab_tree.num_prefixes(config.vocab, L) if lm.prefix_policy(inner) is not None else n ** (L - 1) * L
    return 3 * positions <= B * (L * (L + 1) // 2 + 3 * (L + 1))


def _flat(task: RLTask):
    """(log pi0 [N], proxy [N], gold [N]) in mdp's level order."""
    t = task.tree
    return lab_tree.terminal_logprobs(t.log_pi0), lab_tree.flatten(mdp.terminal_values(t)), lab_tree.flatten(t.V)


def sample(key: Array, logits_fn: LogitsFn, params: Any, num: int, depth: int) -> Array:
    """`lm.sample`'s draw (same key, same tokens up to float round-off), each token from the prefix before it only.

    `lm.sample` runs the policy on all L + 1 positions for each of the L tokens (L (L + 1) positions a
    sequence); a causal policy's logits at position t depend on positions <= t only, so token t + 1 needs
    the t + 1 positions before it: L (L + 1) / 2 positions in all, half the work (A read from the output).

    Args:
      key: PRNG key (split into one key per token).
      logits_fn: the causal policy, logits_fn(params, ids [B, T]) -> [B, T, A].
      params: its parameters.
      num: B, the number of sequences.
      depth: L, tokens per sequence.
    Returns:
      [num, L] int32 tokens, EOS-continued.
    """
    keys = jax.random.split(key, depth)
    a = jax.eval_shape(logits_fn, params, jnp.zeros((1, 1), jnp.int32)).shape[-1]
    ids = jnp.full((num, 1), a, jnp.int32)
    for t in range(depth):
        tok = jax.random.categorical(keys[t], logits_fn(params, ids)[:, t]).astype(jnp.int32)
        if t > 0:
            tok = jnp.where(ids[:, t] == a - 1, a - 1, tok)
        ids = jnp.concatenate([ids, tok[:, None]], axis=1)
    return ids[:, 1:]


def _optimizer(config: RLConfig):
    sched = optax.cosine_decay_schedule(config.learning_rate, config.num_steps, alpha=0.1)
    step = optax.adam(sched) if config.optimizer == "adam" else optax.sgd(sched)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), step)


def make_rl(config: RLConfig, logits_fn: LogitsFn):
    """KL-penalised policy gradient as a pure `(init, step)` pair.

    Args:
      config: static `RLConfig`.
      logits_fn: the policy (its params travel in the state, never baked in).
    Returns:
      init(params) -> RLState.
      step(key, state, task: RLTask) -> (RLState, RLInfo): sample B sequences
        from the current policy, R = r - beta log(pi/pi0) (no gradient through
        R), RLOO advantages, one Adam step on -mean(A log pi). With the tree pass
        (`uses_tree`) the policy's log pi on every prefix is computed once, the batch
        drawn and scored on it, and the gradient taken back through it (`jax.vjp`).
    """
    opt = _optimizer(config)
    B, L, A = config.batch, config.depth, config.vocab
    tree_pass = uses_tree(config, logits_fn)

    def init(params) -> RLState:
        return RLState(params, opt.init(params), jnp.zeros((), jnp.int32))

    def step(key: Array, state: RLState, task: RLTask):
        log_p0, proxy, _ = _flat(task)
        if tree_pass:
            levels, back = jax.vjp(lambda p: policy_levels(logits_fn, p, L), state.params)
            fn, params = tabular_logits, levels
        else:
            fn, params = logits_fn, state.params
        tokens = sample(key, fn, params, B, L)  # [B, L]
        idx = lab_tree.terminal_index(tokens, A)
        r, lp0 = proxy[idx], log_p0[idx]

        def loss_fn(params):
            lp = lm.sequence_logprob(fn, params, tokens)  # [B]
            R = lax.stop_gradient(r - task.beta * (lp - lp0))
            if config.baseline == "rloo":
                adv = R - (jnp.sum(R) - R) / (B - 1)
            else:
                adv = R
            return -jnp.mean(adv * lp), (R, lp)

        (loss, (R, lp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if tree_pass:
            (grads,) = back(grads)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        new = RLState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
        return new, RLInfo(jnp.mean(r), jnp.mean(R), jnp.mean(lp - lp0), loss)

    return init, step


def make_eval(config: RLConfig, logits_fn: LogitsFn):
    """Exact evaluation of a policy on the task's tree.

    Args:
      config: static `RLConfig`.
      logits_fn: the policy (its params travel in the state, never baked in).
    Returns:
      evaluate(params, task, step=0, optimum=None) -> RLEval. `optimum`
      (the exact optimum's objective) is computed when not given.
    """

    def evaluate(params, task: RLTask, step=0, optimum=None) -> RLEval:
        log_pi = policy_levels(logits_fn, params, config.depth)
        dtype = task.tree.V[-1].dtype
        pi = tuple(jnp.exp(l.astype(dtype)) for l in log_pi)
        res = mdp.trajectory_stats(task.tree, pi)
        kl = jnp.maximum(res.KL, 0.0)  # KL >= 0; round-off can leave -1e-7 at pi = pi0
        objective = res.E_U - task.beta * kl
        if optimum is None:
            optimum = mdp.optimal_policy(task.tree, task.beta).value
        return RLEval(jnp.asarray(step, jnp.int32), res.E_V, res.E_U, kl, objective, optimum,
                      optimum - objective)

    return evaluate


def make_run(config: RLConfig, logits_fn: LogitsFn, num_evals: int | None = None):
    """`num_evals` rounds of (`eval_every` steps, then an exact evaluation), under `lax.scan`.

    The step key is fold_in(key, state.step): running the rounds in several
    calls (for a progress bar) gives exactly the result of one call.

    Args:
      config: static `RLConfig`.
      logits_fn: the policy (its params travel in the state, never baked in).
      num_evals: rounds per call (default num_steps / eval_every, the whole run).
    Returns:
      run(key, state, task) -> (RLState, RLInfo with leading [rounds, eval_every] axes, RLEval [rounds]).
    """
    _, step = make_rl(config, logits_fn)
    evaluate = make_eval(config, logits_fn)
    rounds = num_evals or config.num_steps // config.eval_every

    def run(key, state, task):
        optimum = mdp.optimal_policy(task.tree, task.beta).value

        def one(state, _):
            return step(jax.random.fold_in(key, state.step), state, task)

        def round_(state, _):
            state, infos = lax.scan(one, state, None, length=config.eval_every)
            return state, (infos, evaluate(state.params, task, state.step, optimum))

        state, (infos, evals) = lax.scan(round_, state, None, length=rounds)
        return state, infos, evals

    return run


def make_train(config: RLConfig, logits_fn: LogitsFn):
    """The whole run as one jitted function (compiled once; new params, keys and betas reuse it).

    Args:
      config: static `RLConfig`.
      logits_fn: the policy (its params travel in the state, never baked in).
    Returns:
      train(key, params, task) -> (RLState, RLInfo [S/E, E], RLEval [S/E + 1]):
      the final state, per-step diagnostics, and the exact evaluations at
      steps 0, E, 2E, ..., S.
    """
    init, _ = make_rl(config, logits_fn)
    evaluate = make_eval(config, logits_fn)
    run = make_run(config, logits_fn)

    def go(key, params, task):
        state = init(params)
        first = evaluate(params, task)
        state, infos, evals = run(key, state, task)
        return state, infos, jax.tree.map(lambda a, b: jnp.concatenate([a[None], b.astype(a.dtype)]), first, evals)

    return jax.jit(go)


def train(key: Array, config: RLConfig, logits_fn: LogitsFn, params: Any, task: RLTask):
    """`make_train(config, logits_fn)(key, params, task)`: RL from `params` (pi0's, for RLHF); same key, same result."""
    return make_train(config, logits_fn)(key, params, task)
