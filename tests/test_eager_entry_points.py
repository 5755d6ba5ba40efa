"""Public entry points of best_of_n, tilting, mitigations, conditioning, upweighting and gpd are jitted at their boundary: called eagerly, as the
README calls them, each compiles once and a second call with new values (same shapes) reuses that program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import best_of_n, conditioning, gpd, mdp, mitigations, tilting, upweighting
from goodhart_jax.tails import parse

N = parse("normal")


def _tree():
    return mdp.make_tree(jax.random.key(3), mdp.TreeSpec(3, 2), N, parse("normal:scale=2"))


# (function, args of the first call, args of the second: the same shapes and static arguments, new values)
CASES = {
    "bon_mc": (best_of_n.bon_mc, lambda v: (jax.random.key(v), N, parse(f"normal:scale={v}"), (1, 4, 16), 20)),
    "bon_exact": (best_of_n.bon_exact, lambda v: (N, parse(f"normal:scale={v}"), jnp.array([1.0, 4.0 * v]))),
    "tilt": (tilting.tilt, lambda v: (N, N, 1.0 * v)),
    "tilt_component": (tilting.tilt_component, lambda v: (N, 0.5 * v)),
    "kl_target_tilt": (mitigations.kl_target_tilt, lambda v: (N, N, 0.5 * v)),
    "quantilizer_continuous": (mitigations.quantilizer_continuous, lambda v: (N, N, 0.5 * v)),
    "sigmoid_of_mean_tilt": (mitigations.sigmoid_of_mean_tilt, lambda v: (N, N, 0.5 * v)),
    "sigmoid_proxy_tilt_mc": (mitigations.sigmoid_proxy_tilt_mc, lambda v: (jax.random.key(v), N, N, 0.5 * v, 2000)),
    "kl_target_tree": (mitigations.kl_target_tree, lambda v: (_tree(), 0.1 * v)),
    "quantilizer_policy": (mitigations.quantilizer_policy, lambda v: (_tree(), 0.3 * v)),
    "quantilizer_tree": (mitigations.quantilizer_tree, lambda v: (_tree(), 0.3 * v)),
    "quantilizer_tree_kl": (mitigations.quantilizer_tree_kl, lambda v: (_tree(), 0.1 * v)),
    "sigmoid_of_mean_tree": (mitigations.sigmoid_of_mean_tree, lambda v: (_tree(), 0.5 * v)),
    "threshold": (conditioning.threshold, lambda v: (parse("student_t:df=3"), N, 2.0 * v)),
    "threshold_mc": (conditioning.threshold_mc, lambda v: (jax.random.key(v), parse("student_t:df=3"), N, 2.0 * v,
                                                           2000)),
    "exponential_limit": (conditioning.exponential_limit, lambda v: (0.5 * v, N)),
    "footnote4": (conditioning.footnote4, lambda v: (2.0 * v,)),
    "footnote4_mc": (conditioning.footnote4_mc, lambda v: (jax.random.key(v), 2.0 * v, 2000)),
    "upweight_at_kl": (upweighting.upweight_at_kl, lambda v: (parse("student_t:df=3"), 2.0 * v, 0.5)),
    "kl_bounded_optimum": (upweighting.kl_bounded_optimum, lambda v: (N, 0.5 * v)),
    "fit_gpd_mle": (gpd.fit_gpd_mle, lambda v: (jax.random.pareto(jax.random.key(v), 2.0, (500,)) - 1.0,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiles_once_when_called_eagerly(name):
    fn, args = CASES[name]
    before = fn._cache_size()
    first = fn(*args(1))
    after_first = fn._cache_size()
    second = fn(*args(2))
    assert after_first - before <= 1 and fn._cache_size() == after_first  # no new program for new values
    leaves = [np.asarray(x) for x in jax.tree.leaves((first, second)) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.number)]
    assert leaves and any(np.any(np.isfinite(x)) for x in leaves)  # it computed something
