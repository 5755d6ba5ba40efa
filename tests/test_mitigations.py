"""Mitigations: KL target, bounded proxy, capped odds ratio (quantilizer), on the tree and the continuous model."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from goodhart_jax import mdp
from goodhart_jax.mitigations import (
    bounded_tree, kl_target_tilt, kl_target_tree, quantilizer_continuous, quantilizer_policy, quantilizer_tree,
)
from goodhart_jax.tails import parse


def _tree(vocab=5, depth=3, pi0="random"):
    return mdp.make_tree(jax.random.key(3), mdp.TreeSpec(vocab, depth), parse("normal"), parse("normal"), pi0=pi0)


def test_quantilizer_caps_and_brute_force_depth1():
    tree = _tree(7, 1)
    p0 = np.exp(np.asarray(tree.log_pi0[0][0]))
    u = np.asarray(mdp.terminal_values(tree)[-1])
    for q in (1.0, 0.6, 0.3, 0.1):
        pi = np.asarray(quantilizer_policy(tree, q)[0][0])
        assert np.all(pi <= p0 / q + 1e-6) and abs(pi.sum() - 1) < 1e-6
        # Brute force: the best capped distribution fills outcomes by decreasing U.
        want, left = np.zeros_like(p0), 1.0
        for i in np.argsort(-u):
            want[i] = min(p0[i] / q, left)
            left -= want[i]
        np.testing.assert_allclose(pi, want, atol=1e-6)  # float32 sums
    np.testing.assert_allclose(np.asarray(quantilizer_policy(tree, 1.0)[0]), np.exp(np.asarray(tree.log_pi0[0])),
                               atol=1e-6)


def test_quantilizer_tree_budget_monotone():
    tree = _tree()
    r = jax.vmap(quantilizer_tree, (None, 0))(tree, jnp.array([1.0, 0.5, 0.2, 0.05]))
    assert abs(float(r.KL[0])) < 1e-5
    assert np.all(np.diff(np.asarray(r.E_U)) >= -1e-5) and np.all(np.diff(np.asarray(r.KL)) > 0)


def test_kl_target_tree_hits_target():
    tree = _tree()
    targets = jnp.array([0.1, 0.5, 2.0])
    r = jax.jit(jax.vmap(kl_target_tree, (None, 0)))(tree, targets)
    assert np.all(r.exists)
    np.testing.assert_allclose(np.asarray(r.KL), targets, rtol=1e-3)  # 48 bisection steps in log beta, float32
    direct = jax.vmap(mdp.soft_optimum, (None, 0))(tree, r.param)
    np.testing.assert_allclose(np.asarray(direct.E_V), np.asarray(r.E_V), rtol=1e-6)


def test_bounded_proxy_tree():
    tree = _tree(pi0="uniform")
    b = bounded_tree(tree)
    U = np.concatenate([np.asarray(u) for u in mdp.terminal_values(tree)])
    Ub = np.concatenate([np.asarray(u) for u in mdp.terminal_values(b)])
    np.testing.assert_allclose(Ub, special.expit(U), atol=2e-6)  # float32: (sigmoid(U) - V) + V rounds at ~|V| ulp
    # beta -> inf gives pi0: E[sigmoid(U)] is the plain mean over uniform leaves.
    r = mdp.soft_optimum(b, jnp.float32(1e4))
    np.testing.assert_allclose(float(r.E_U), special.expit(U).mean(), rtol=1e-4)
    # A bounded proxy caps what optimisation can buy: KL stays bounded as beta -> 0.
    small = mdp.soft_optimum(b, jnp.float32(1e-3))
    assert float(small.KL) <= math.log(U.size) + 1e-3


def test_continuous_kl_target_and_quantilizer_closed_forms():
    with jax.enable_x64(True):
        kls = jnp.array([0.1, 1.0, 4.0])
        tgt = jax.jit(jax.vmap(kl_target_tilt, (None, None, 0)))(parse("normal"), parse("normal:scale=2"), kls)
        heavy = jax.jit(jax.vmap(kl_target_tilt, (None, None, 0)))(parse("student_t:df=3"), parse("normal"), kls)
        qc = jax.jit(jax.vmap(quantilizer_continuous, (None, None, 0)))(parse("normal"), parse("normal"), kls)
    # Gaussian tilt: KL = (sx^2 + sv^2) / (2 beta^2), E[V] = sv^2 / beta.
    beta = np.sqrt(5.0 / (2 * np.asarray(kls)))
    np.testing.assert_allclose(np.asarray(tgt.E_V), 4.0 / beta, rtol=1e-6)
    assert not np.any(heavy.exists)
    # Quantilizer = conditioning on the top q = e^-KL: E[V | U >= t_q] = (1/sqrt 2) phi(z)/Phibar(z).
    z = np.asarray(qc.param) / math.sqrt(2)
    np.testing.assert_allclose(special.log_ndtr(-z), -np.asarray(kls), rtol=1e-6)
    mills = np.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - special.log_ndtr(-z))
    np.testing.assert_allclose(np.asarray(qc.E_V), mills / math.sqrt(2), rtol=1e-8)
