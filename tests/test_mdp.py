"""Token trees: the exact optimum against brute-force enumeration in float64 NumPy."""
import json
import os
import subprocess
import sys
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import mdp, tails

NORMAL, LAPLACE, T3 = tails.parse("normal"), tails.parse("laplace"), tails.parse("student_t:df=3")

# The library's functions, jitted for the tests: called eagerly, each of their ~100 operations compiles on its
# own, once per tree shape (2.5 s for a first soft_optimum against 0.5 s for the whole program).
_soft_optimum = jax.jit(mdp.soft_optimum)
_optimal_policy = jax.jit(mdp.optimal_policy)
_trajectory_stats = jax.jit(mdp.trajectory_stats)
_terminal_probs = jax.jit(mdp.terminal_probs)
_thm2 = jax.jit(mdp.thm2)
_thm2_policy = jax.jit(mdp.thm2_policy)
_conditional_value = jax.jit(mdp.conditional_value)


def enumerate_terminals(spec, tree):
    """Every terminal: (tokens, log pi0(tau), U, V), walking the tree recursively."""
    lp0 = [np.asarray(a, np.float64) for a in tree.log_pi0]
    X = [np.asarray(a, np.float64) for a in tree.X]
    V = [np.asarray(a, np.float64) for a in tree.V]
    out = []

    def walk(k, idx, lp, toks):
        if k == spec.depth:
            out.append((toks, lp, X[k][idx] + V[k][idx], V[k][idx]))
            return
        for a in range(spec.vocab):
            if spec.eos and a == spec.vocab - 1:
                out.append((toks + (a,), lp + lp0[k][idx, a], X[k][idx] + V[k][idx], V[k][idx]))
            else:
                walk(k + 1, idx * spec.n + a, lp + lp0[k][idx, a], toks + (a,))

    walk(0, 0, 0.0, ())
    return out


def brute_force(terms, log_p, base_policy):
    """E_U, E_V, trajectory KL and per-state KL of the trajectory law exp(log_p)."""
    toks = [t[0] for t in terms]
    lp0 = np.array([t[1] for t in terms])
    U = np.array([t[2] for t in terms])
    V = np.array([t[3] for t in terms])
    p = np.exp(log_p)
    mass = defaultdict(float)  # prefix -> probability of passing through it
    for tk, pk in zip(toks, p):
        for i in range(len(tk) + 1):
            mass[tk[:i]] += pk

    def state_kl(prefix):
        kids = [prefix + (a,) for a in range(len(base_policy(prefix)))]
        pi = np.array([mass[c] for c in kids]) / mass[prefix]
        pi0 = base_policy(prefix)
        nz = pi > 0
        return np.sum(pi[nz] * (np.log(pi[nz]) - np.log(pi0[nz])))

    per_state = np.array([np.mean([state_kl(tk[:i]) for i in range(len(tk))]) for tk in toks])
    return p @ U, p @ V, p @ (log_p - lp0), p @ per_state


def base_policy_fn(spec, tree):
    lp0 = [np.asarray(a, np.float64) for a in tree.log_pi0]

    def f(prefix):
        idx = 0
        for a in prefix:
            idx = idx * spec.n + a
        return np.exp(lp0[len(prefix)][idx])

    return f


CASES = [(mdp.TreeSpec(3, 4, False), "uniform"), (mdp.TreeSpec(4, 3, False), "random"),
         (mdp.TreeSpec(4, 3, True), "uniform"), (mdp.TreeSpec(5, 3, True), "random"), (mdp.TreeSpec(2, 1, False), "random")]


@pytest.mark.parametrize("spec,pi0", CASES)
def test_soft_optimum_matches_brute_force(spec, pi0):
    with jax.enable_x64(True):
        tree = mdp.make_tree(jax.random.key(3), spec, NORMAL, LAPLACE, pi0=pi0, temperature=0.7, dtype=jnp.float64)
        terms = enumerate_terminals(spec, tree)
        assert len(terms) == spec.num_terminals
        lp0 = np.array([t[1] for t in terms])
        U = np.array([t[2] for t in terms])
        for beta in (0.25, 1.0, 7.0):
            lw = lp0 + U / beta
            log_p = lw - np.logaddexp.reduce(lw)  # pi*(tau) ∝ pi0(tau) exp(U/beta), Theorem 4
            ref = brute_force(terms, log_p, base_policy_fn(spec, tree))
            r = jax.device_get(_soft_optimum(tree, jnp.float64(beta)))
            np.testing.assert_allclose([r.E_U, r.E_V, r.KL, r.KL_per_state], ref, rtol=1e-10, atol=1e-12)
            _, W0 = _optimal_policy(tree, jnp.float64(beta))
            np.testing.assert_allclose(W0, beta * np.logaddexp.reduce(lw), rtol=1e-12)


def test_no_perturbation_beats_the_optimum():
    spec, beta = mdp.TreeSpec(4, 3, True), 0.6
    with jax.enable_x64(True):
        tree = mdp.make_tree(jax.random.key(5), spec, T3, NORMAL, pi0="random", dtype=jnp.float64)
        pi, _ = _optimal_policy(tree, jnp.float64(beta))
        best = _soft_optimum(tree, jnp.float64(beta))
        objective = lambda r: r.E_U - beta * r.KL  # noqa: E731

        @jax.jit
        def perturbed(ks, scale):  # the objective of pi with its logits perturbed by scale N(0, 1) draws
            new = tuple(jax.nn.softmax(jnp.log(p) + scale * jax.random.normal(k, p.shape, p.dtype), axis=-1)
                        for p, k in zip(pi, ks))
            return objective(mdp.trajectory_stats(tree, new))

        key = jax.random.key(0)
        for i in range(30):
            key, *ks = jax.random.split(key, len(pi) + 1)
            assert perturbed(ks, 0.5 if i < 15 else 0.01) < objective(best)


@pytest.mark.parametrize("spec", [mdp.TreeSpec(3, 4, False), mdp.TreeSpec(4, 3, True)])
def test_thm2_policy_reproduces_rho_t(spec):
    with jax.enable_x64(True):
        tree = mdp.make_tree(jax.random.key(11), spec, T3, NORMAL, pi0="random", dtype=jnp.float64)
        U = np.concatenate([np.asarray(x + v) for x, v in zip(tree.X, tree.V)])
        lr0 = np.log(np.concatenate([np.asarray(p) for p in _terminal_probs(tree, tuple(jnp.exp(l) for l in tree.log_pi0))]))
        t, c = float(np.quantile(U, 0.9)), 0.5
        F = np.exp(lr0[U <= t]).sum()
        rho = np.exp(lr0) * np.where(U <= t, (1 - c / t) / F, (c / t) / (1 - F))
        pi, log_rho, valid = _thm2_policy(tree, jnp.float64(t), jnp.float64(c))
        assert bool(valid)
        np.testing.assert_allclose(np.exp(np.concatenate(log_rho)), rho, rtol=1e-12, atol=1e-15)
        induced = np.concatenate([np.asarray(p) for p in _terminal_probs(tree, pi)])
        np.testing.assert_allclose(induced, rho, rtol=1e-10, atol=1e-15)  # Tr(pi) = rho_t
        np.testing.assert_allclose(rho[U > t].sum(), c / t, rtol=1e-12)
        r, _ = _thm2(tree, jnp.float64(t), jnp.float64(c))
        nz = rho > 0
        np.testing.assert_allclose(r.KL, np.sum(rho[nz] * (np.log(rho[nz]) - lr0[nz])), rtol=1e-10)
        assert 0 <= r.KL_per_state <= r.KL
        # Undefined constructions are flagged: no terminal above t, or t <= c.
        _, valid = _thm2(tree, jnp.float64(U.max() + 1), jnp.float64(c))
        assert not bool(valid)
        _, valid = _thm2(tree, jnp.float64(0.5), jnp.float64(c))
        assert not bool(valid)


def test_conditional_value_matches_enumeration():
    spec = mdp.TreeSpec(4, 3, True)
    with jax.enable_x64(True):
        tree = mdp.make_tree(jax.random.key(2), spec, NORMAL, NORMAL, pi0="random", dtype=jnp.float64)
        terms = enumerate_terminals(spec, tree)
        p0 = np.exp([t[1] for t in terms])
        U = np.array([t[2] for t in terms])
        V = np.array([t[3] for t in terms])
        for t in (-1.0, 0.5, 2.0):
            m = U >= t
            ev, log_p = _conditional_value(tree, jnp.float64(t))
            np.testing.assert_allclose(ev, p0[m] @ V[m] / p0[m].sum(), rtol=1e-12)
            np.testing.assert_allclose(log_p, np.log(p0[m].sum()), rtol=1e-12)


@pytest.mark.parametrize("spec", [mdp.TreeSpec(5, 3, True), mdp.TreeSpec(3, 3, False)])
def test_terminal_probs_and_logprobs_match_enumeration(spec):
    """The reach pass, in probabilities and in logs: each terminal's Tr(pi0) at its level and index."""
    with jax.enable_x64(True):
        tree = mdp.make_tree(jax.random.key(8), spec, NORMAL, NORMAL, pi0="random", dtype=jnp.float64)
        probs = _terminal_probs(tree, tuple(jnp.exp(l) for l in tree.log_pi0))
        logs = jax.jit(mdp.terminal_logprobs, static_argnums=0)(spec, tree.log_pi0)
        assert [x.shape for x in logs] == [x.shape for x in probs] == [(s,) for s in spec.level_sizes()]
        for toks, lp, _, _ in enumerate_terminals(spec, tree):
            inner = toks[:-1] if spec.eos and toks[-1] == spec.vocab - 1 else toks  # the state it exits from
            level, idx = len(inner), 0
            for a in inner:
                idx = idx * spec.n + a
            np.testing.assert_allclose(logs[level][idx], lp, rtol=1e-12)
            np.testing.assert_allclose(probs[level][idx], np.exp(lp), rtol=1e-12)


def test_public_helpers_and_named_results():
    spec = mdp.TreeSpec(4, 3, True)
    tree = mdp.make_tree(jax.random.key(6), spec, NORMAL, NORMAL, pi0="random")
    assert mdp.spec_of(tree) == spec
    # action_values: children's values in row-major order, then the EOS exit's.
    below, exit_ = jnp.arange(9.0), jnp.array([100.0, 200.0, 300.0])
    np.testing.assert_array_equal(mdp.action_values(spec, below, exit_),
                                  [[0, 1, 2, 100], [3, 4, 5, 200], [6, 7, 8, 300]])
    pol = _optimal_policy(tree, jnp.float32(0.5))
    assert isinstance(pol, mdp.Policy) and len(pol.pi) == spec.depth
    U = np.concatenate([np.asarray(u) for u in mdp.terminal_values(tree)])
    t = float(np.quantile(U, 0.8))
    res = _thm2(tree, jnp.float32(t), jnp.float32(0.5 * t))
    assert isinstance(res, mdp.Thm2Result) and isinstance(res.stats, mdp.TreeResult) and bool(res.exists)
    assert bool(_thm2_policy(tree, jnp.float32(t), jnp.float32(0.5 * t)).exists)
    cv = _conditional_value(tree, jnp.float32(t))
    assert cv._fields == ("E_V", "log_p")


def test_large_beta_recovers_pi0_and_kl_nonnegative():
    spec = mdp.TreeSpec(5, 3, True)
    tree = mdp.make_tree(jax.random.key(4), spec, LAPLACE, NORMAL, pi0="random")
    pi, _ = _optimal_policy(tree, jnp.float32(1e6))
    for p, l0 in zip(pi, tree.log_pi0):
        np.testing.assert_allclose(p, np.exp(l0), atol=1e-5)  # exp(U/beta) -> 1
    # The last beta is large enough that E_pi[U] - E_pi0[U] ~ Var(U) / beta ~ 3e-4.
    r = mdp.sweep_tree(tree, jnp.geomspace(0.05, 1e4, 12))
    assert np.all(r.KL >= -1e-6) and np.all(r.KL_per_state >= -1e-6)
    assert np.all(np.diff(r.KL) <= 1e-6)  # KL shrinks as beta grows
    base = _trajectory_stats(tree, tuple(jnp.exp(l) for l in tree.log_pi0))
    np.testing.assert_allclose([r.E_U[-1], r.E_V[-1]], [base.E_U, base.E_V], atol=5e-3)


def test_same_seed_same_numbers_and_vmap_over_seeds():
    spec = mdp.TreeSpec(4, 4, False)
    betas = jnp.asarray([0.3, 1.0, 3.0])
    f = jax.jit(jax.vmap(lambda k: mdp.sweep_betas(mdp.make_tree(k, spec, T3, NORMAL), betas)))
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    a, b = f(keys), f(keys)
    np.testing.assert_array_equal(a.E_V, b.E_V)
    one = mdp.sweep_tree(mdp.make_tree(jax.random.key(1), spec, T3, NORMAL), betas)
    np.testing.assert_allclose(a.E_V[1], one.E_V, rtol=1e-5)
    assert not np.allclose(a.E_V[0], a.E_V[1])


def test_sweep_entry_point_does_not_retrace_on_new_betas():
    tree = mdp.make_tree(jax.random.key(0), mdp.TreeSpec(3, 3), NORMAL, NORMAL)
    mdp.sweep_tree(tree, jnp.asarray([0.1, 1.0]))
    after_first = mdp.sweep_tree._cache_size()   # counted after a call: another test may share it
    for betas in ([0.2, 5.0], [3.0, 9.0]):
        mdp.sweep_tree(tree, jnp.asarray(betas))
    assert mdp.sweep_tree._cache_size() == after_first


def test_footnote4_dependent_returns():
    spec = mdp.TreeSpec(8, 5)
    tree = mdp.make_tree(jax.random.key(0), spec, NORMAL, NORMAL, dependent=True)
    X, V = np.concatenate(tree.X), np.concatenate(tree.V)
    assert np.all(X[np.abs(V) > 1] == 0)
    np.testing.assert_allclose(np.std(X[np.abs(V) <= 1]), 2.0, rtol=0.02)  # ~22k draws: se 0.5%


@pytest.mark.parametrize("vocab,depth,match", [(1, 3, "vocab must be an integer >= 2"), (4, 0, "depth must be")])
def test_bad_tree_spec(vocab, depth, match):
    with pytest.raises(ValueError, match=match):
        mdp.TreeSpec(vocab, depth)


SHARDED = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from goodhart_jax import mdp, tails
T3, N = tails.parse("student_t:df=3"), tails.parse("normal")
out = dict(devices=jax.device_count())
spec, key = mdp.TreeSpec(5, 3, True), jax.random.key(7)
ref = mdp.make_tree(key, spec, T3, N, pi0="random", dtype=jnp.float64)
# Betas over one axis of any name (the old form): float32, EOS tree (ref cast: a tree program compiles in ~5 s).
tree = jax.tree.map(lambda a: a.astype(jnp.float32), ref)
betas = jnp.geomspace(0.1, 10.0, 8)
mesh = jax.make_mesh((jax.device_count(),), ("x",))
out["betas"] = [np.stack(mdp.sweep_tree(tree, betas, mesh=mesh)).tolist(), np.stack(mdp.sweep_tree(tree, betas)).tolist()]
# Leaves split over devices, float64: n = 4 tokens + EOS, a random pi0 (top levels replicated, the rest split).
U = np.concatenate([np.asarray(u) for u in mdp.terminal_values(ref)])
t, c, betas = float(np.quantile(U, 0.9)), 0.5, jnp.geomspace(0.1, 10.0, 4)
f = lambda tr, m: (mdp.sweep_tree(tr, betas, mesh=m), mdp.soft_optimum(tr, betas[1], mesh=m), mdp.thm2(tr, t, c, mesh=m),
                   mdp.conditional_value(tr, t, mesh=m))
flat = lambda r: np.concatenate([np.ravel(x) for x in jax.tree.leaves(r)]).astype(float).tolist()
out["single"] = flat(jax.device_get(jax.jit(lambda tr: f(tr, None))(ref)))  # one program, not op by op
for shape, names in [((4,), ("leaf",)), ((2, 2), ("leaf", "beta")), ((2,), ("leaf",))]:
    mesh = jax.make_mesh(shape, names, devices=jax.devices()[: int(np.prod(shape))])
    tree = mdp.make_tree(key, spec, T3, N, pi0="random", dtype=jnp.float64, mesh=mesh)
    r = dict(leaf_rows=tree.X[-1].addressable_shards[0].data.shape[0],
             XV_equal=all(np.array_equal(a, b) for a, b in zip(tree.X + tree.V, ref.X + ref.V)),
             pi0_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(tree.log_pi0, ref.log_pi0)))
    if shape == (2,):
        r["values"] = flat(jax.device_get(mdp.sweep_tree(tree, betas, mesh=mesh)))
    else:
        r["values"] = flat(jax.device_get(f(tree, mesh) if names == ("leaf",) else mdp.sweep_tree(tree, betas, mesh=mesh)))
    out["x".join(map(str, shape))] = r
try:
    mdp.split_level(mdp.TreeSpec(3, 4), 2)
except ValueError as e:
    out["refusal"] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_trees_match_single_device():
    """4 forced CPU devices. Betas over a mesh axis; leaves split over 4 and 2 devices and a 2 x 2 (leaf, beta)
    mesh: the same tree drawn on each device from its own blocks (X, V bitwise; pi0 to rounding), and the sweep,
    soft optimum, Theorem 2 and E[V | U >= t] equal to the unsharded ones in float64."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4
    np.testing.assert_allclose(*res["betas"], rtol=1e-6)
    single = np.array(res["single"])
    for mesh, rows, n_values in [("4", 64 // 4, len(single)), ("2x2", 64 // 2, 16), ("2", 64 // 2, 16)]:
        r = res[mesh]
        assert r["leaf_rows"] == rows and r["XV_equal"] and r["pi0_diff"] < 1e-15, (mesh, r)
        np.testing.assert_allclose(r["values"], single[:n_values], rtol=1e-12, atol=1e-14)  # sweep first
    assert "cannot be split over 2 devices" in res["refusal"]


EIGHT = r"""
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from goodhart_jax import mdp, tails
# n = 2 tokens + EOS, depth 4: split at level 0, 1, 2, 3 on 1, 2, 4, 8 devices; drawn in 2^min(k, 4) blocks, so the
# EOS exits come from the one draw above the blocks (each device keeps its slice) and the leaves from 16 blocks.
spec, key, betas = mdp.TreeSpec(3, 4, True), jax.random.key(3), jnp.array([0.7])
L, N = tails.parse("laplace"), tails.parse("normal")
ref = mdp.make_tree(key, spec, L, N, dtype=jnp.float64)
out = dict(devices=jax.device_count(), sweep=np.stack(mdp.sweep_tree(ref, betas)).ravel().tolist())
for d in (1, 2, 4, 8):
    mesh = jax.make_mesh((d,), ("leaf",), devices=jax.devices()[:d])
    tree = mdp.make_tree(key, spec, L, N, dtype=jnp.float64, mesh=mesh)
    out[d] = dict(split=mdp.split_level(spec, d), leaf_rows=tree.X[-1].addressable_shards[0].data.shape[0],
                  devices=len(tree.X[-1].sharding.device_set),
                  XV_equal=all(np.array_equal(a, b) for a, b in zip(tree.X + tree.V, ref.X + ref.V)))
    if d == 8:  # one sweep point on the tree split 8 ways
        out[d]["sweep"] = np.stack(mdp.sweep_tree(tree, betas, mesh=mesh)).ravel().tolist()
print(json.dumps(out))
"""


def test_same_seed_same_tree_on_1_2_4_8_devices():
    """8 forced CPU devices: a tree drawn where it lives on meshes of 1, 2, 4 and 8 devices (each splitting at
    a different level) has X and V bitwise equal to the unsharded draw, and its sweep on 8 devices equals the
    unsharded one in float64 (uniform pi0 and one beta: cheap to compile; random pi0 and every quantity on
    4 devices: test_sharded_trees_match_single_device)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", EIGHT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    for d, split in [(1, 0), (2, 1), (4, 2), (8, 3)]:
        r = res[str(d)]
        assert r["split"] == split and r["devices"] == d and r["leaf_rows"] == 16 // d and r["XV_equal"], (d, r)
    np.testing.assert_allclose(res["8"]["sweep"], res["sweep"], rtol=1e-12, atol=1e-14)  # E_U, E_V, KL, KL/state


@pytest.mark.parametrize("beta", [1.0, 1e-20])
def test_kl_without_cancellation_when_u_over_beta_is_huge(beta):
    """float32 tree with U/beta ~ 1e18..1e38: the optimum is nearly a point mass and its KL ~ -log pi0(path).

    The old KL, sum pi q - log Z, cancelled two numbers of size U/beta and printed 0.0; reference: the
    float64 brute force over the 4^3 leaves of the same tree (float32 rounding of the inputs only, hence 1e-5).
    """
    spec = mdp.TreeSpec(4, 3, False)
    tree = mdp.make_tree(jax.random.key(5), spec, tails.parse("normal:scale=1e18"), NORMAL, pi0="random")
    terms = enumerate_terminals(spec, tree)
    lp0, U = np.array([t[1] for t in terms]), np.array([t[2] for t in terms])
    lw = lp0 + U / beta
    ref = brute_force(terms, lw - np.logaddexp.reduce(lw), base_policy_fn(spec, tree))
    r = jax.device_get(_soft_optimum(tree, jnp.float32(beta)))
    assert ref[2] > 1.0  # a real KL, not ~0
    np.testing.assert_allclose([r.E_U, r.KL, r.KL_per_state], [ref[0], ref[2], ref[3]], rtol=1e-5)
