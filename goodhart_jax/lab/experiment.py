"""One overoptimization lab run, assembled: pi0, its exact tree, gold, proxies, and every method's points.

The pieces live in `lab.lm`, `lab.tree`, `lab.rewards`, `lab.best_of_n`,
`lab.rl`, `lab.search`; this module builds them from a few sizes and returns
each method's points as plain dicts (the "lab" rows of `sims/overoptimization.py`):

    {"method", "n", "beta", "step", "KL", "d", "gold", "proxy_reward", "objective", "KL_bound"}

with None where a field does not apply; d = sqrt(KL); every KL and expectation is exact (enumeration).

Public API:
  Base(logits_fn, params, tree: LMTree, gold: Gold, lm: LMConfig | None, source: MarkovSource | None)
  Checkpoints(policy: lm.CheckpointPolicy | None, gold: rewards.CheckpointReward | None)
  load_checkpoints(vocab, depth, policy=None, tokens=(), gold=None) -> Checkpoints   # read and checked, no work
  build_base(key, vocab, depth, policy=None, tokens=(), gold=None, lm_steps=600, sharpness=lm.SHARPNESS,
             eos_bias=lm.EOS_BIAS) -> Base   # paths or Checkpoints'; the source's knobs: lm.markov_source
  ProxyBuild(proxy: Proxy, report: ProxyReport, tree: mdp.Tree, cfg: LMConfig | None)
  build_proxy(key, base, noise, scale, kind, pairs, bt_steps=1500, betas=(), error_map="iid") -> ProxyBuild
      # standardised proxy; error_map: lab.error_maps' spec (iid, feature, length, token:id=I)
  proxy_row(built) -> dict    # a "proxy" row's fields (accuracy and corr(X, eps) unseen / seen, xi on pi0's law)
  tail_rows(built) -> rows    # "tail" rows: exact mean-excess curves of X and proxy under pi0 and pi*(beta)
  annotator_error(key, noise, num, scale, error_map="iid", tree=None) -> [num]   # build_proxy(key, ...)'s eps, alone
      # (a map other than iid needs the LMTree)
  check_error(eps [N], betas) -> max |eps|           # ValueError past ERROR_MAX or where U / beta overflows
  exact_points(tree, betas [K]) -> rows;  bon_points(tree, ns [K], proxy=None) -> rows
  exact_mass(log_p [N], proxy [N], beta, member [N]) -> float   # pi*(beta)'s mass on a set of sequences
  method_points(key, base, built, betas, ns, rl_betas, rl_steps=250, eval_every=50, search=True) -> rows
      # every method on one proxy (best-of-n, pi*, RL, GCG), non-finite numbers nulled with a reason
  rl_policy(key, base, residual=True, table=True) -> (logits_fn, params)   # pi0 x exp(fresh LM + 30 x table, both 0 at the
      # start), or pi0's LM
  rl_points(key, base, tree, beta, steps=250, eval_every=50, batch=1024, lr=3e-3, residual=True,
            optimizer="adam", policy_pass="auto", table=True) -> rows
      # with "gap", "optimum", "share_closed" = 1 - gap / gap(step 0) (null with a "reason" where gap0 ~ 0)
  search_points(key, built, base, restarts=4, iters=40) -> rows (one per restart, with "rank")
  point(method, **fields) -> row
  gao_fits(rows) -> [{method, alpha, beta, r2, points}, ...]   # Gao's forms on gold against d (lab.fits):
      # one "bon" fit; one "rl" fit per RL beta (rows carry "rl_beta")
  check_size = lab_tree.check_size
  peak_bytes(vocab, depth, ...) -> float   # this process's peak memory for one run (calibrated: see its docstring)
MIN_TAIL_SAMPLES = rewards.MIN_TAIL_SEQUENCES = tail_index.MIN_SAMPLES (100): smaller trees get no xi
SHARE_MIN_GAP = 1e-5  # relative to 1 + |optimum|: below it the gap at step 0 is float32 round-off (no share)
MIN_FIT_POINTS = 4  # Gao's forms have 2 parameters; a fit needs 2 more distinct d > 0 to say anything
ERROR_MAX = 1e15  # the largest |annotator error| the float32 lab carries (see check_error)

Glossary: A vocabulary (EOS last), L depth, N terminals, K sweep points.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from goodhart_jax import io, mdp
from goodhart_jax.best_of_n import MIN_FIT_POINTS, too_few_fit_points  # 2 parameters + 2 distinct d > 0
from goodhart_jax import search as gcg
from goodhart_jax.lab import best_of_n as lab_bon
from goodhart_jax.lab import error_maps
from goodhart_jax.lab import fits
from goodhart_jax.lab import lm, rewards, rl
from goodhart_jax.lab import search as lab_search
from goodhart_jax.lab import tree as lab_tree

__all__ = ["Base", "ProxyBuild", "Checkpoints", "load_checkpoints", "build_base", "build_proxy", "annotator_error",
           "check_error", "point", "exact_points", "exact_mass", "bon_points", "method_points", "LAB_NUMBERS", "rl_points",
           "search_points", "gao_fits", "rl_policy", "check_size", "peak_bytes", "FIELDS", "SHARE_MIN_GAP", "proxy_row",
           "tail_rows"]

check_size = lab_tree.check_size
MIN_TAIL_SAMPLES = rewards.MIN_TAIL_SEQUENCES  # tail_index.diagnose's minimum; smaller trees get no xi
RL_BATCH = rl.RLConfig.batch  # RL's default batch (1024)
SHARE_MIN_GAP = 1e-5
"""RL's share closed 1 - gap / gap0 needs the gap at step 0 (J(pi*) - J(pi0) >= 0) above float32 round-off:
gap0 > SHARE_MIN_GAP (1 + |J(pi*)|), else the share is null with a reason (pi0 is already optimal)."""
ERROR_MAX = 1e15
"""The largest |annotator error| the float32 lab carries. The pi0 variance of the proxy sums squares of
proxy - mean (finite below ~9e18); RL's gradient is about |proxy| times d log pi / d theta (~10) on each of
~1e5 parameters, and its global-norm clipping sums their squares, which must stay below 3.4e38 (|proxy| up to
~1e16). U / beta must stay finite as well: `check_error` asks max |eps| / beta <= MAX_U_OVER_BETA."""
MAX_U_OVER_BETA = 1e36  # below float32's 3.4e38 by a margin for gold's own values and the sums of the sweep

FIELDS = ("method", "n", "beta", "step", "KL", "d", "gold", "proxy_reward", "objective", "KL_bound")


class Base(NamedTuple):
    """pi0 and what does not depend on the proxy."""

    logits_fn: Any  # policy convention (lab.lm)
    params: Any  # pi0's parameters
    tree: lab_tree.LMTree  # the exact tree of pi0
    gold: rewards.Gold  # standardised gold on every terminal
    lm: Any  # lm.LMConfig of the lab LM (None for a checkpoint policy)
    source: Any = None  # lm.MarkovSource the lab LM was trained on (its corpus; None for a checkpoint policy)


class ProxyBuild(NamedTuple):
    """One proxy and its diagnostics."""

    proxy: rewards.Proxy
    report: rewards.ProxyReport
    tree: mdp.Tree  # mdp.Tree(log pi0, X = proxy - gold, V = gold)
    cfg: Any  # the learned proxy model's lm.LMConfig (None for direct)


class Checkpoints(NamedTuple):
    """The checkpoints of a run, read and checked (`load_checkpoints`); None where the lab's own model is used."""

    policy: Any  # lm.CheckpointPolicy or None
    gold: Any  # rewards.CheckpointReward or None


def load_checkpoints(vocab: int, depth: int, policy: str | None = None, tokens: tuple = (),
                     gold: str | None = None) -> Checkpoints:
    """Read the checkpoints and check them and the tree's size, before any work (the LM's training, ...).

    Args:
      vocab, depth: A and L of the lab LM (a checkpoint policy's A is len(tokens)).
      policy: a causal-LM checkpoint directory, or None for the lab LM.
      tokens: the checkpoint's model ids of the lab tokens (last = EOS); also the gold checkpoint's.
      gold: a reward-model checkpoint directory, or None for a random lab reward model.
    Raises:
      UsageError: the tree is too large to enumerate; a bad checkpoint or token list.
    """
    lab_tree.check_size(len(tokens) if policy else vocab, depth)
    pol = lm.load_policy(policy, tokens) if policy else None
    vocab = len(pol.tokens) if pol is not None else vocab
    ck = rewards.load_reward(gold, tokens if tokens else tuple(range(vocab))) if gold else None
    return Checkpoints(pol, ck)


def build_base(key, vocab: int, depth: int, policy=None, tokens: tuple = (), gold=None, lm_steps: int = 600,
               sharpness: float = lm.SHARPNESS, eos_bias: float = lm.EOS_BIAS) -> Base:
    """pi0 (the lab LM trained on a random Markov source, or a checkpoint on --tokens), its tree, the gold.

    Args:
      key: PRNG key (source, LM training, gold initialisation).
      vocab, depth: A and L of the lab LM (a checkpoint policy's A is len(tokens)).
      policy: a causal-LM checkpoint directory or its `lm.CheckpointPolicy` (`load_checkpoints`), or None for
        the lab LM.
      tokens: the checkpoint's model ids of the lab tokens (last = EOS); also the gold checkpoint's.
      gold: a reward-model checkpoint directory or its `rewards.CheckpointReward`, or None for a random lab
        reward model.
      lm_steps: training steps of the lab LM.
      sharpness, eos_bias: the lab LM's Markov source (`lm.markov_source`: the defaults make pi0 spread);
        unused with a checkpoint policy.
    Raises:
      UsageError: the tree is too large to enumerate; a bad checkpoint or token list.
      ValueError: sharpness or eos_bias out of range (`lm.check_source`).
    """
    k_src, k_lm, k_gold = jax.random.split(key, 3)
    if isinstance(policy, str) or isinstance(gold, str):
        ck = load_checkpoints(vocab, depth, policy if isinstance(policy, str) else None, tokens,
                              gold if isinstance(gold, str) else None)
        policy = ck.policy if isinstance(policy, str) else policy
        gold = ck.gold if isinstance(gold, str) else gold
    source = None
    if policy is not None:
        pol = policy
        vocab, logits_fn, params, cfg = len(pol.tokens), pol.logits_fn, pol.params, None
        lab_tree.check_size(vocab, depth)
    else:
        lab_tree.check_size(vocab, depth)
        cfg = lm.LMConfig(vocab, depth)
        lm.check_source(sharpness, eos_bias)
        source = lm.markov_source(k_src, vocab, sharpness, eos_bias)
        params = lm.train_lm(k_lm, cfg, source, lm_steps).params
        logits_fn = lm.make_logits(cfg)
    tree = lab_tree.exact_tree(logits_fn, params, depth)
    if gold is not None:
        g = rewards.gold_from(gold.reward_fn, gold.params, tree)
    else:
        g = rewards.gold_reward(k_gold, rewards.gold_config(vocab, depth), tree)
    return Base(logits_fn, params, tree, g, cfg, source)


def build_proxy(key, base: Base, noise: str, scale: float, kind: str, pairs: int | None,
                bt_steps: int = 1500, betas=(), error_map: str = "iid") -> ProxyBuild:
    """A "learned" (Bradley-Terry on `pairs` comparisons) or "direct" (gold + eps) proxy, standardised under pi0,
    with diagnostics (`rewards.diagnose_proxy`: accuracy on unseen and seen sequences, tails under pi0 and under
    pi*(beta) for each of `betas`).

    The annotator error eps comes from `fold_in(key, 0)` for both kinds, so the learned and direct proxies of one
    family share the same eps: by default (error_map "iid") eps = scale * Z, Z ~ `noise` i.i.d. per sequence; any
    other `lab.error_maps` spec ("feature", "length", "token:id=3", ...) assigns `noise`'s pi0-quantiles by a
    deterministic ranking of the sequences (`error_maps.error`), and is checked (`check_error` with `betas`:
    ValueError where float32 cannot carry it, e.g. a heavy family's value on a sequence of tiny pi0 mass). The
    tree's X = proxy - gold uses the standardised proxy (`Proxy.reward`). A tree of fewer than MIN_TAIL_SAMPLES
    sequences gets no xi (nan, verdict "n/a ...").

    Args:
      key: PRNG key (eps from fold_in(key, 0), the fit from fold_in(key, 1), the diagnostics from fold_in(key, 2)).
      base: pi0, its tree and the gold (`Base`).
      noise: the error family (`tails` spec); scale: its scale.
      kind: "learned" or "direct".
      pairs: P comparisons of a learned proxy (unused by direct).
      bt_steps: training steps of a learned proxy (`rewards.learned_proxy`).
      betas: the pi*(beta) whose tails are diagnosed (and at which eps is checked).
      error_map: a `lab.error_maps` spec.
    """
    k_fit, k_diag = (jax.random.fold_in(key, i) for i in (1, 2))
    n = base.tree.log_p.shape[0]
    eps = jnp.asarray(annotator_error(key, noise, n, scale, error_map, base.tree)).astype(base.gold.reward.dtype)
    if not error_maps.is_iid(error_map):  # a rank map's extremes depend on pi0's masses: checked on the tree
        try:
            check_error(eps, betas)
        except ValueError as e:
            raise ValueError(f"error map {error_map}, noise {noise}, scale {scale:g}: {e}") from None
    cfg = None
    if kind == "direct":
        px = rewards.direct_proxy(base.gold.reward, eps, base.tree.log_p)
    else:
        a, depth = base.tree.log_pi0[0].shape[-1], len(base.tree.log_pi0)
        cfg = rewards.proxy_config(a, depth)
        px = rewards.learned_proxy(k_fit, cfg, base.tree, base.gold.reward, eps, pairs, steps=bt_steps)
    report = rewards.diagnose_proxy(k_diag, px.reward, base.gold.reward, base.tree.log_p, px.data, px.error,
                                    betas=betas)
    return ProxyBuild(px, report, lab_tree.mdp_tree(base.tree, base.gold.reward, px.reward), cfg)


def proxy_row(built: ProxyBuild) -> dict:
    """The fields of a "proxy" row: accuracies on unseen and seen sequences, the seen set's pi0 mass and size,
    corr, corr(X, eps) on unseen and on seen sequences, xi and verdict of X and of the proxy and the law they were fitted on (tail_law: i.i.d. pi0 draws), the
    raw proxy's pi0 mean and sd (divided out), and `reason` ("field: why; ...") where a field is null.

    Args:
      built: the proxy and its diagnostics (`build_proxy`).
    """
    r, px = built.report, built.proxy
    row = dict(pair_accuracy_unseen=r.pair_accuracy_unseen, pair_accuracy_seen=r.pair_accuracy_seen,
               seen_mass=r.seen_mass, seen_sequences=r.seen, corr=r.corr, error_corr_unseen=r.error_corr_unseen,
               error_corr_seen=r.error_corr_seen, xi=r.xi, verdict=r.verdict,
               xi_proxy=r.xi_proxy, verdict_proxy=r.verdict_proxy,
               tail_law=f"pi0: {r.draws} i.i.d. draws (repeats included)" if r.draws else None,
               raw_mean=float(px.mean), raw_sd=float(px.sd))
    reasons = dict(r.reasons)
    if row["tail_law"] is None:
        reasons.setdefault("tail_law", r.verdict)
    for f, v in row.items():
        if isinstance(v, float) and not np.isfinite(v):
            row[f] = None
            reasons.setdefault(f, "not finite")
    if reasons:
        row["reason"] = "; ".join(f"{f}: {why}" for f, why in reasons.items())
    return row


def tail_rows(built: ProxyBuild) -> list[dict]:
    """Rows of the exact mean-excess curves (`rewards.tail_curves`): law ("pi0" or "pi*"), beta (null for pi0),
    of ("X" or "proxy"), q, u (the law's q-quantile), mean_excess E[Z - u | Z > u], mass_above P(Z > u); a null
    mean_excess carries its `reason`.

    Args:
      built: the proxy and its diagnostics (`build_proxy`; its report's tails are read).
    """
    t = built.report.tails
    rows = []
    for of, c in (("X", t.x), ("proxy", t.proxy)):
        for k in range(c.u.shape[0]):
            law = dict(law="pi0", beta=None) if k == 0 else dict(law="pi*", beta=float(t.betas[k - 1]))
            for j, q in enumerate(c.q):
                row = dict(**law, of=of, q=float(q), u=float(c.u[k, j]), mean_excess=float(c.mean_excess[k, j]),
                           mass_above=float(c.mass_above[k, j]))
                if not np.isfinite(row["mean_excess"]):
                    row.update(mean_excess=None, reason=f"the law puts no mass above u, its {q:g}-quantile "
                               f"(the largest value of {of} it weighs)")
                rows.append(row)
    return rows


def annotator_error(key, noise: str, num: int, scale: float, error_map: str = "iid", tree=None):
    """The annotator error eps [num] that `build_proxy(key, ...)` uses, alone. The default map "iid" (eps = scale * Z,
    Z ~ `noise` i.i.d.) needs no tree and can be checked (`check_error`) before any work; any other map
    (`lab.error_maps`) needs pi0's tree (`tree`: an LMTree of `num` sequences).

    Raises:
      ValueError: a bad error_map or noise spec; a map other than iid without a tree of num sequences.
    """
    k = jax.random.fold_in(key, 0)
    if error_maps.is_iid(error_map):
        return rewards.annotator_error(k, noise, num, scale)
    if tree is None or tree.log_p.shape[0] != num:
        raise ValueError(f"error_map {error_map!r} needs pi0's tree of {num} sequences (tree)")
    return error_maps.error(k, error_map, tree.tokens, tree.log_p, noise, scale, tree.log_pi0[0].shape[-1])


def check_error(eps, betas) -> float:
    """max |eps|, or ValueError where the float32 lab cannot carry the annotator error `eps`.

    The lab needs max |eps| <= ERROR_MAX (sums of squares, RL's gradient norm) and max |eps| / beta <=
    MAX_U_OVER_BETA for every beta (the exact optimum's U / beta); an error that overflowed float32 (inf or
    nan) fails both.

    Args:
      eps: [N] the annotator error (`annotator_error`).
      betas: every KL coefficient of the run (exact and RL).
    """
    top = float(jnp.max(jnp.abs(eps)))  # nan propagates: nan fails every comparison below
    if not top <= ERROR_MAX:
        raise ValueError(f"the annotator error reaches |eps| = {top:.3g} on these {eps.shape[0]} sequences; the "
                         f"float32 lab carries |eps| <= {ERROR_MAX:.0e} (variances, RL's gradient norm)")
    low = min(betas, default=None)
    if low is not None and not top / low <= MAX_U_OVER_BETA:
        raise ValueError(f"the annotator error reaches |eps| = {top:.3g} on these {eps.shape[0]} sequences: "
                         f"|eps| / beta for beta = {low:g} exceeds {MAX_U_OVER_BETA:.0e} (float32 max 3.4e38)")
    return top


def _dims(cfg) -> tuple[int, int, int, int]:
    """(layers, width D, heads H, MLP width) of a lab `lm.LMConfig` or a checkpoint's model config."""
    if isinstance(cfg, lm.LMConfig):
        return cfg.layers, cfg.width, cfg.heads, 4 * cfg.width
    return cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size


def _param_bytes(dims: tuple, vocab: int) -> float:
    """float32 parameters of a lab decoder: embedding and head (~2 A D) and ~12 D^2 a layer."""
    layers, width, _, mlp = dims
    return 4.0 * (2 * (vocab + 1) * width + layers * (4 * width + 2 * mlp) * width)


def _activation_bytes(batch: int, length: int, dims: tuple, train: bool, out: int = 1) -> float:
    """float32 activations of a decoder on [batch, length] with `out` outputs a position (A logits; 1 for a
    reward): per layer ~ (6 D + 2 MLP) T + 2 H T^2 floats a sequence (attention scores and probabilities); a
    forward pass holds about two layers' at a time, the logits and their softmax 2 A T. A training step keeps
    every layer's for the backward pass: measured on the lab LM's (A=2, batch 256, L = 100, 200, 300; peak RSS
    0.90, 1.80, 2.88 GiB above the imports), 5 x the linear term and 0.2 x the attention's T^2 (XLA fuses the
    softmax), taken as 5 and 0.5."""
    layers, width, heads, mlp = dims
    linear, square = batch * length * (6 * width + 2 * mlp), batch * 2 * heads * length * length
    if train:
        return 4.0 * (layers * (5 * linear + 0.5 * square) + 3 * batch * length * 2 * out)
    return 4.0 * (2 * (linear + square) + batch * length * 2 * out)


PEAK_BASE = 1.7 * 2**30  # bytes: JAX, XLA's compiled programs, matplotlib (calibrated: see peak_bytes)
PEAK_PER_TERMINAL = 160  # bytes a terminal sequence besides 8 L (tokens) and best-of-n's 24 K (calibrated: peak_bytes)


def peak_bytes(vocab: int, depth: int, *, ns: int = 9, pairs: int = 0, lm_steps: int = 0, bt_steps: int = 0,
               rl: bool = True, rl_steps: int = 0, checkpoints: Checkpoints | None = None) -> float:
    """Estimated peak memory (bytes) of one run of sims/overoptimization.py in this process, for refusing what
    cannot fit before any work (`cli.check_memory`).

    Terms: PEAK_BASE; PEAK_PER_TERMINAL + 8 L + 24 K bytes a terminal sequence (the tree, gold, one proxy's
    arrays and sweeps; best-of-n keeps [K, N] for K = `ns` sizes; the exact sweep runs one beta at a time);
    48 bytes a comparison pair (indices, labels, their draws; 5e7 pairs added 1.52 GiB, 31 bytes each); 16
    bytes a training step (lax.scan's keys and losses); the lab models' parameters (x 4 where trained:
    gradient and Adam's moments); the largest of the transformers' activations (`_activation_bytes`): the lab LM's training (256 sequences of L), the proxy's
    Bradley-Terry steps (512 of L + 1), RL (RL_BATCH of L + 1, the residual table x 4; a checkpoint policy
    adds 3 copies of its parameters),
    scoring in chunks of 8192 (the gold, the proxy, pi0's tree). Loaded checkpoints are already held.

    Calibration: peak RSS (/usr/bin/time -v) of `--noise normal --lm-steps 100 --bt-steps 100 --rl-steps 20
    --eval-every 10` (both proxies, search and plots on; 2 cores): 1.43 GiB at A=16, L=4 (54,241 sequences),
    1.65 GiB at A=16, L=5 (813,616), 2.73 GiB at A=2048, L=2 (4,192,257): ~1.4 GiB of imports and programs
    plus ~340 bytes a sequence; the whole default run (3 seeds, RL 1024 x 250, A=16, L=4) peaks at 1.99 GiB,
    0.45 GiB more than those short runs, which PEAK_BASE holds. This estimate: 2.01 GiB for the default run,
    2.01, 2.53, 3.64 GiB for the short runs (33-53 % above them).

    Args:
      vocab, depth: A and L (a checkpoint policy: A = len(tokens)).
      ns: K, the best-of-n sizes.
      pairs: the largest --pairs of a learned proxy (0: none).
      lm_steps, bt_steps, rl_steps: training steps (0: not run).
      rl: whether RL runs.
      checkpoints: `load_checkpoints`' result (their models' sizes), or None for the lab's own models.
    Returns:
      bytes.
    """
    n = lab_tree.num_terminals(vocab, depth)
    rows = (vocab - 1) ** (depth - 1)  # pi0's tree: one pass over the longest prefixes
    ck = checkpoints or Checkpoints(None, None)
    pol = _dims(ck.policy.model.config) if ck.policy is not None else _dims(lm.LMConfig(vocab, depth))
    gold = _dims(ck.gold.model.config) if ck.gold is not None else _dims(rewards.gold_config(vocab, depth))
    proxy = _dims(rewards.proxy_config(vocab, depth))
    total = (PEAK_BASE + n * (PEAK_PER_TERMINAL + 8 * depth + 24 * ns) + 48 * pairs
             + 16 * max(lm_steps, bt_steps, rl_steps)  # lax.scan's keys and losses
             + (4 * _param_bytes(pol, vocab) if ck.policy is None else 0)
             + (_param_bytes(gold, vocab) if ck.gold is None else 0) + 4 * _param_bytes(proxy, vocab))
    transient = [_activation_bytes(min(8192, rows), depth, pol, False, vocab),
                 _activation_bytes(min(8192, n), depth + 1, gold, False)]
    if ck.policy is None and lm_steps:
        transient.append(_activation_bytes(256, depth, pol, True, vocab))
    if bt_steps:
        transient += [_activation_bytes(512, depth + 1, proxy, True), _activation_bytes(min(8192, n), depth + 1,
                                                                                     proxy, False)]
    if rl:
        held = 3 * sum(x.nbytes for x in jax.tree.leaves(ck.policy.params)) if ck.policy is not None else 0
        table = 16 * vocab * lab_tree.num_prefixes(vocab, depth)  # float32, gradient, Adam's moments
        transient.append(held + table + _activation_bytes(RL_BATCH, depth + 1, pol, True, vocab)
                         + _activation_bytes(min(8192, rows), depth, pol, False, vocab))
    return float(total + max(transient))


def point(method: str, **fields) -> dict:
    """A lab row: every field of FIELDS (None where absent), d = sqrt(KL), numbers as Python floats.

    Args:
      method: the row's method ("exact", "bon", "rl", "search").
      fields: the row's values by name (FIELDS' and any other; array scalars become Python numbers).
    """
    row = {f: None for f in FIELDS}
    row.update(method=method, **{k: (v.item() if hasattr(v, "item") else v) for k, v in fields.items()})
    if row["KL"] is not None:
        row["d"] = float(np.sqrt(max(row["KL"], 0.0)))
    return row


@jax.jit
def _exact(tree: mdp.Tree, betas):
    return mdp.sweep_betas(tree, betas)


def exact_points(tree: mdp.Tree, betas) -> list[dict]:
    """The exact optimum pi*(beta) on the proxy, per beta: E[gold], E[proxy], trajectory KL, objective.

    Args:
      tree: `mdp.Tree(log pi0, X = proxy - gold, V = gold)` (`ProxyBuild.tree`).
      betas: [M] KL coefficients > 0, one row each, in the order given.
    """
    b = np.asarray(betas, float)
    res = jax.device_get(_exact(tree, jnp.asarray(b, tree.V[-1].dtype)))
    return [point("exact", beta=float(bi), KL=max(float(res.KL[i]), 0.0), gold=res.E_V[i], proxy_reward=res.E_U[i],
                  objective=float(res.E_U[i]) - float(bi) * max(float(res.KL[i]), 0.0)) for i, bi in enumerate(b)]


def exact_mass(log_p, proxy, beta: float, member) -> float:
    """pi*(beta)'s mass on a set of terminal sequences, in float64: pi*(beta)(x) = pi0(x) exp(proxy(x) / beta) / Z,
    the terminal law of the KL-regularised optimum of a reward on whole sequences.

    Args:
      log_p: [N] log pi0 of the terminals.
      proxy: [N] the reward optimised (e.g. the standardised proxy).
      beta: the KL coefficient, > 0.
      member: [N] bool, the set (e.g. `error_maps.hack_set`).
    Returns:
      the mass, in [0, 1].
    """
    logit = np.asarray(log_p, np.float64) + np.asarray(proxy, np.float64) / float(beta)
    w = np.exp(logit - logit.max())
    return float(w[np.asarray(member, bool)].sum() / w.sum())


@jax.jit
def _bon(tree: mdp.Tree, ns):
    return lab_bon.bon_tree(tree, ns)


_bon_table = jax.jit(lab_bon.bon_stats)


def bon_points(tree: mdp.Tree, ns, proxy=None) -> list[dict]:
    """Exact best-of-n from pi0 on the proxy, per n: E[gold], E[proxy], exact KL and the bound log n - (n-1)/n.

    Args:
      tree: `lab.tree.mdp_tree` of the proxy (pi0's levels, X = proxy - gold, V = gold).
      ns: [K] best-of-n sizes >= 1.
      proxy: [N] the proxy table itself, when at hand: best-of-n ranks by it, so that its exact ties stay
        ties (without it the ranking is by the tree's X + V, where float32 rounding of (proxy - gold) + gold
        can split a tie; a continuous proxy ranks the same either way).
    """
    n = np.asarray(ns, float)
    dtype = tree.V[-1].dtype
    if proxy is None:
        res = jax.device_get(_bon(tree, jnp.asarray(n, dtype)))
    else:
        res = jax.device_get(_bon_table(lab_tree.terminal_logprobs(tree.log_pi0), jnp.asarray(proxy, dtype),
                                        lab_tree.flatten(tree.V), jnp.asarray(n, dtype)))
    return [point("bon", n=int(ni), KL=res.KL[i], gold=res.gold[i], proxy_reward=res.proxy[i],
                  KL_bound=res.KL_bound[i]) for i, ni in enumerate(n)]


@functools.lru_cache(maxsize=None)
def _rl_train(config: rl.RLConfig, logits_fn):
    return rl.make_train(config, logits_fn)  # jitted; one compilation per (config, policy), reused across betas


def rl_policy(key, base: Base, residual: bool = True, table: bool = True):
    """(logits_fn, params) of RL's policy, equal to pi0 at the start.

    residual (default): pi proportional to pi0 exp(f + 30 T), f a fresh lab LM of pi0's sizes (a checkpoint
    policy: the lab LM's default sizes at its A, L) with a zero LM head and T a zero table of logits per state
    (`rl.residual_logits`; `key` draws f's body; table=False: pi0 exp(f) alone). Otherwise pi0's own LM,
    fine-tuned (`base.params`).
    """
    if not residual:
        return base.logits_fn, base.params
    a, depth = base.tree.log_pi0[0].shape[-1], len(base.tree.log_pi0)
    cfg = base.lm if base.lm is not None else lm.LMConfig(a, depth)
    f = lm.init(key, cfg)
    f["lm_head"]["kernel"] = jnp.zeros_like(f["lm_head"]["kernel"])
    params = {"log_pi0": base.tree.log_pi0, "f": f}
    if table:
        params["table"] = tuple(jnp.zeros_like(x) for x in base.tree.log_pi0)
    return rl.residual_logits(lm.make_logits(cfg)), params


def rl_points(key, base: Base, tree: mdp.Tree, beta: float, steps: int = 250, eval_every: int = 50,
              batch: int = RL_BATCH, lr: float = 3e-3, residual: bool = True, optimizer: str = "adam",
              policy_pass: str = "auto", table: bool = True) -> list[dict]:
    """RLOO from pi0 against the proxy with penalty beta, evaluated exactly every `eval_every` steps.

    The policy is `rl_policy(fold_in(key, 1), base, residual, table)`: by default pi0 frozen times exp(f + 30 T) for a
    fresh network f and a table T (it closes more of the gap than fine-tuning pi0's own LM or pi0 x exp(f):
    benchmarks/README.md, "RL against the exact optimum"); the defaults (batch 1024, 250 steps, lr 3e-3) are
    that section's choice; `policy_pass` is `rl.RLConfig`'s (the same estimator either way).

    Rows per evaluation (steps 0, E, .., S) with the objective E[proxy] - beta KL, the exact optimum's
    objective ("optimum"), the gap optimum - objective (>= 0 up to round-off) and "share_closed" =
    1 - gap / gap0, the share of pi0's gap gap0 = J(pi*) - J(pi0) closed (1: the optimum; null with
    "reason" where gap0 <= SHARE_MIN_GAP (1 + |optimum|), float32 round-off).

    Args:
      tree: `mdp.Tree(log pi0, X = proxy - gold, V = gold)` (`ProxyBuild.tree`), the task's tree.
      optimizer: "adam" or "sgd" (`rl.RLConfig`).
    """
    a, depth = base.tree.log_pi0[0].shape[-1], len(base.tree.log_pi0)
    config = rl.RLConfig(a, depth, batch=batch, learning_rate=lr, num_steps=steps, eval_every=eval_every,
                         optimizer=optimizer, policy_pass=policy_pass)
    task = rl.RLTask(tree, jnp.asarray(beta, tree.V[-1].dtype))
    logits_fn, params = rl_policy(jax.random.fold_in(key, 1), base, residual, table)
    _, _, ev = jax.device_get(_rl_train(config, logits_fn)(key, params, task))
    gap0, opt0 = float(ev.gap[0]), float(ev.optimum[0])
    closable = gap0 > SHARE_MIN_GAP * (1.0 + abs(opt0))
    out = []
    for i in range(len(ev.step)):
        row = dict(point("rl", beta=float(beta), step=int(ev.step[i]), KL=ev.KL[i], gold=ev.gold[i],
                         proxy_reward=ev.proxy[i], objective=ev.objective[i]), optimum=float(ev.optimum[i]),
                   gap=float(ev.gap[i]), share_closed=1.0 - float(ev.gap[i]) / gap0 if closable else None)
        if not closable:
            row["reason"] = (f"the gap at step 0, J(pi*) - J(pi0) = {gap0:.3g}, is float32 round-off "
                             f"(<= {SHARE_MIN_GAP:g} (1 + |J(pi*)|)): pi0 is already optimal")
        out.append(row)
    return out


def search_points(key, built: ProxyBuild, base: Base, restarts: int = 4, iters: int = 40) -> list[dict]:
    """GCG on the learned proxy model; each restart's best sequence as a point mass.

    KL of a point mass at x is -log pi0(x). Rows carry the sequence's rank among all N by proxy (0: an
    argmax), and the enumerated argmax's proxy and gold. proxy_reward and argmax_proxy are the standardised proxy
    (`Proxy.reward`, as in every other row); the search climbs and ranks the model's raw scores (`Proxy.raw`),
    the same order. A direct proxy has no model to differentiate: [].

    Args:
      key: PRNG key of the search (`lab.search.search_proxy`).
      built: the proxy (`build_proxy`; its learned model is searched).
      base: pi0's tree and the gold.
      restarts: independent restarts, one row each.
      iters: GCG iterations per restart.
    """
    if built.cfg is None:
        return []
    a, depth = built.cfg.vocab, built.cfg.depth
    config = gcg.SearchConfig(length=depth, topk=min(4, a), num_candidates=32, num_iters=iters, schedule="gcg")
    raw, gold, log_p = built.proxy.raw, base.gold.reward, base.tree.log_p
    # the scorer is the model's raw scale: ranks on the raw table (what the search climbs), values standardised
    f = lab_search.search_proxy(key, config, lab_search.rm_scorer(built.cfg, built.proxy.params), raw, gold,
                                log_p, vocab=a, num_restarts=restarts)
    f = jax.device_get(f)
    proxy = np.asarray(built.proxy.reward)  # the standardised proxy every other method reports
    return [dict(point("search", KL=-float(f.found.log_p0[r]), gold=f.found.gold[r],
                       proxy_reward=float(proxy[f.found.index[r]])),
                 restart=r, rank=int(f.found.rank[r]), argmax_proxy=float(proxy[f.best.index[0]]),
                 argmax_gold=float(f.best.gold[0])) for r in range(restarts)]


LAB_NUMBERS = ("KL", "d", "gold", "proxy_reward", "objective", "KL_bound", "optimum", "gap", "argmax_proxy",
               "argmax_gold", "share_closed")  # the numeric fields of a point row (nulled where not finite)


def method_points(key, base: Base, built: ProxyBuild, betas=(), ns=(), rl_betas=(), rl_steps: int = 250,
                  eval_every: int = 50, search: bool = True) -> list[dict]:
    """Every method's points on one proxy: exact best-of-n per n (ranking by the proxy table), pi*(beta) per
    beta, RL per RL beta (`rl_points`, key fold_in(fold_in(key, 7), j)) and GCG on a learned proxy
    (`search_points`, key fold_in(key, 8)); a non-finite number is null with a reason (`io.null_nonfinite`).

    Args:
      key: the proxy's PRNG key (as `build_proxy` took it).
      base, built: pi0's `Base` and the proxy's `ProxyBuild`.
      betas, ns, rl_betas: the exact optimum's KL coefficients, best-of-n sizes, RL's KL coefficients.
      rl_steps, eval_every: RL's steps and evaluation period.
      search: whether to run GCG (learned proxies only).
    """
    pts = bon_points(built.tree, ns, built.proxy.reward) + exact_points(built.tree, betas)
    for j, b in enumerate(rl_betas):
        pts += rl_points(jax.random.fold_in(jax.random.fold_in(key, 7), j), base, built.tree, b, rl_steps, eval_every)
    if search:
        pts += search_points(jax.random.fold_in(key, 8), built, base)
    return [io.null_nonfinite(p, [f for f in LAB_NUMBERS if f in p]) for p in pts]


_fit = jax.jit(fits.fit_gao, static_argnames=("form", "steps"))


def gao_fits(rows: list[dict]) -> list[dict]:
    """Gao's best-of-n form on the "bon" rows (one fit) and the RL form on the "rl" rows, one fit per RL beta
    (each beta is its own objective; its steps are pooled).

    The gain is E[gold] itself: gold is standardised to mean 0 under pi0. Rows whose d or gold was nulled are
    left out. A method (or RL beta) with no points is left out; one with fewer than MIN_FIT_POINTS distinct
    d > 0 (a tree of a few sequences, where best-of-n's d saturates at once) gets alpha, beta and r2 null with a
    reason: two parameters fit so few points (nearly) exactly, and r2 ~ 1 would say nothing.

    Returns:
      [{"method", "alpha", "beta", "r2", "points"} and "reason" where they are null], "bon" first, then "rl"
      by increasing RL beta; "rl" fits carry "rl_beta" (the KL coefficient; "beta" is Gao's coefficient).
    """
    out = []
    for method in fits.FORMS:
        pts = [r for r in rows if r["method"] == method and r["d"] is not None and r["gold"] is not None]
        groups = {None: pts} if method != "rl" else {
            b: [r for r in pts if r["beta"] == b] for b in sorted({r["beta"] for r in pts})}
        for b, group in groups.items():
            if not group:
                continue
            f = dict(method=method, **({} if b is None else {"rl_beta": float(b)}))
            d = np.asarray([r["d"] for r in group], float)
            if few := too_few_fit_points(d):
                out.append(dict(f, alpha=None, beta=None, r2=None, points=len(group), reason=few))
                continue
            g = jax.device_get(_fit(d, np.asarray([r["gold"] for r in group], float), form=method))
            f.update(alpha=float(g.alpha), beta=float(g.beta), r2=float(g.r2), points=len(group))
            if not np.isfinite(f["r2"]):
                f.update(r2=None, reason="gold is the same at every point: r2 is undefined")
            out.append(f)
    return out
