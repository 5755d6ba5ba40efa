"""lab.scaling: proxies trained together on nested data equal rewards.train_bt one by one; parameter counts from
the architecture's closed form; OLS trends against SciPy; peaks of a curve."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from goodhart_jax.lab import lm, rewards, scaling
from goodhart_jax.lab import tree as lab_tree


def neox_params(vocab: int, layers: int, width: int) -> int:
    """GPT-NeoX reward model by hand: embedding (A + 1) x D; per layer two LayerNorms (2 x 2D), fused QKV
    (D x 3D + 3D), output (D x D + D), MLP D -> 4D -> D with biases; final LayerNorm 2D; head D + 1."""
    d = width
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return (vocab + 1) * d + layers * per_layer + 2 * d + d + 1


@pytest.mark.parametrize("size", scaling.SIZES)
def test_num_params_closed_form(size):
    layers, width, heads = size
    cfg = scaling.size_config(16, 4, layers, width, heads)
    assert scaling.num_params(cfg) == neox_params(16, layers, width)


def test_default_sizes_span_30x():
    n = [scaling.num_params(scaling.size_config(16, 4, *s)) for s in scaling.SIZES]
    assert n == sorted(n) and n[-1] / n[0] >= 30 and len(n) >= 4


def test_members_equal_train_bt_on_their_first_pairs():
    """Member i of the vmapped program = rewards.train_bt on the first P_i comparisons, same keys; its raw scores
    = score_terminals of that model; the largest member is learned_proxy's model."""
    vocab, depth = 4, 3
    cfg_lm = lm.LMConfig(vocab, depth, layers=1, width=16, heads=2)
    params = lm.init(jax.random.key(0), cfg_lm)
    tree = lab_tree.exact_tree(lm.make_logits(cfg_lm), params, depth)
    u = jax.random.normal(jax.random.key(1), tree.log_p.shape)
    cfg = scaling.size_config(vocab, depth, 1, 8, 2)
    pairs, steps = (7, 30, 64), 25
    key = jax.random.key(2)
    m, data = scaling.train_members(key, cfg, tree, u, pairs, steps, batch=16)
    assert m.raw.shape == (3, tree.log_p.shape[0]) and m.loss.shape == (3, steps)
    np.testing.assert_array_equal(m.pairs, pairs)
    k_data, k_init, k_train = jax.random.split(key, 3)
    fn = rewards.make_rm_reward(cfg)
    for i, p in enumerate(pairs):
        sub = rewards.Comparisons(data.a[:p], data.b[:p], data.label[:p])
        ref = rewards.train_bt(k_train, fn, rewards.rm_init_jit(k_init, cfg), tree.tokens, sub, steps, batch=16,
                               lr=3e-3)
        np.testing.assert_allclose(m.loss[i], ref.loss, rtol=2e-5, atol=2e-6)
        raw = rewards.score_terminals(fn, ref.params, tree.tokens)
        np.testing.assert_allclose(m.raw[i], raw, rtol=2e-4, atol=2e-5)
    proxy = rewards.learned_proxy(key, cfg, tree, jnp.zeros_like(u), u, max(pairs), steps=steps, batch=16)
    np.testing.assert_allclose(m.raw[-1], proxy.raw, rtol=2e-4, atol=2e-5)
    assert not np.allclose(m.raw[0], m.raw[-1], atol=1e-3)  # the data sizes trained different models


def test_members_with_early_stopping_equal_train_bt_with_their_validation_pairs():
    """With val_frac: member i has ceil(val_frac P_i) validation pairs on sequences in none of its training pairs,
    and is rewards.train_bt with those pairs (its row, its weights) and the same keys: the same kept step, the same
    validation curve, the same scores."""
    vocab, depth = 4, 3
    cfg_lm = lm.LMConfig(vocab, depth, layers=1, width=16, heads=2)
    tree = lab_tree.exact_tree(lm.make_logits(cfg_lm), lm.init(jax.random.key(0), cfg_lm), depth)
    cfg = scaling.size_config(vocab, depth, 1, 8, 2)
    fn = rewards.make_rm_reward(cfg)
    g = rewards.score_terminals(fn, rewards.rm_init_jit(jax.random.key(9), cfg), tree.tokens)
    u = 3.0 * (g - g.mean()) / g.std()  # learnable, so that the validation loss falls before it rises
    pairs, steps, every = (8, 16, 40), 40, 6
    key = jax.random.key(2)
    m, data = scaling.train_members(key, cfg, tree, u, pairs, steps, batch=8, lr=1e-3, val_frac=0.5, every=every)
    np.testing.assert_array_equal(m.val_pairs, [4, 8, 20])
    assert m.val.a.shape == (3, 20) and m.val_loss.shape == (3, len(rewards.checkpoints(steps, every)))
    _, k_init, k_train = jax.random.split(key, 3)
    for i, p in enumerate(pairs):
        seen = set(np.asarray(data.a[:p]).tolist()) | set(np.asarray(data.b[:p]).tolist())
        v = int(m.val_pairs[i])
        assert not seen & (set(np.asarray(m.val.a[i, :v]).tolist()) | set(np.asarray(m.val.b[i, :v]).tolist()))
        val = jax.tree.map(lambda x: x[i], m.val)
        w = (jnp.arange(20) < v).astype(jnp.float32)
        sub = rewards.Comparisons(data.a[:p], data.b[:p], data.label[:p])
        ref = rewards.train_bt(k_train, fn, rewards.rm_init_jit(k_init, cfg), tree.tokens, sub, steps, batch=8,
                               lr=1e-3, val=val, val_weights=w, every=every)
        assert int(m.stop[i]) == int(ref.stop)
        np.testing.assert_allclose(m.val_loss[i], ref.val_loss, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(m.raw[i], rewards.score_terminals(fn, ref.params, tree.tokens), rtol=2e-4,
                                   atol=2e-5)
    assert int(m.stop.min()) < steps  # some member stopped early
    with pytest.raises(ValueError, match="val_frac"):
        scaling.train_members(key, cfg, tree, u, pairs, steps, val_frac=0.0)


def test_pretrained_members_start_from_the_lm_trained_on_the_source():
    """pretrained_init: the decoder is lm.train_lm's on the source (bit for bit), the head rm_init's; it scores every
    sequence as a reward model; train_members(init=) is train_bt from those parameters, same keys."""
    vocab, depth = 4, 3
    cfg_lm = lm.LMConfig(vocab, depth, layers=1, width=16, heads=2)
    tree = lab_tree.exact_tree(lm.make_logits(cfg_lm), lm.init(jax.random.key(0), cfg_lm), depth)
    source = lm.markov_source(jax.random.key(5), vocab)
    cfg = scaling.size_config(vocab, depth, 1, 8, 2)
    pre = scaling.pretrained_init(jax.random.key(6), cfg, source, 20, batch=32)
    k_lm, k_head = jax.random.split(jax.random.key(6))
    body = lm.train_lm(k_lm, cfg, source, 20, 32).params["backbone"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pre["backbone"]), jax.tree.leaves(body)))
    assert jax.tree.structure(pre) == jax.tree.structure(rewards.rm_init_jit(k_head, cfg))
    np.testing.assert_array_equal(pre["score"]["kernel"], rewards.rm_init_jit(k_head, cfg)["score"]["kernel"])
    fn = rewards.make_rm_reward(cfg)
    assert np.all(np.isfinite(rewards.score_terminals(fn, pre, tree.tokens)))
    u = jax.random.normal(jax.random.key(1), tree.log_p.shape)
    key = jax.random.key(2)
    m, data = scaling.train_members(key, cfg, tree, u, (9, 30), 12, batch=8, init=pre)
    _, _, k_train = jax.random.split(key, 3)
    for i, p in enumerate((9, 30)):
        sub = rewards.Comparisons(data.a[:p], data.b[:p], data.label[:p])
        ref = rewards.train_bt(k_train, fn, pre, tree.tokens, sub, 12, batch=8, lr=3e-3)
        np.testing.assert_allclose(m.loss[i], ref.loss, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(m.raw[i], rewards.score_terminals(fn, ref.params, tree.tokens), rtol=2e-4,
                                   atol=2e-5)
    with pytest.raises(ValueError, match="steps"):
        scaling.pretrained_init(key, cfg, source, 0)
    with pytest.raises(ValueError, match="tokens"):
        scaling.pretrained_init(key, scaling.size_config(5, depth, 1, 8, 2), source, 3)


def test_train_members_refuses_bad_sizes():
    tree = lab_tree.exact_tree(lm.make_logits(lm.LMConfig(3, 2, 1, 8, 2)), lm.init(jax.random.key(0),
                               lm.LMConfig(3, 2, 1, 8, 2)), 2)
    cfg = scaling.size_config(3, 2, 1, 8, 2)
    u = jnp.zeros(tree.log_p.shape)
    for bad in ((), (0, 4), (2.5,)):
        with pytest.raises(ValueError, match="pairs"):
            scaling.train_members(jax.random.key(0), cfg, tree, u, bad, 3)
    with pytest.raises(ValueError, match="steps"):
        scaling.train_members(jax.random.key(0), cfg, tree, u, (4,), 0)


def test_trend_against_scipy():
    rng = np.random.default_rng(0)
    x = np.log10([1e3, 3e3, 3e4, 1e5] * 3)
    y = 0.4 * x + rng.normal(0, 0.2, x.size)
    t = scaling.trend(x, y)
    ref = stats.linregress(x, y)
    half = stats.t.ppf(0.975, x.size - 2) * ref.stderr
    assert t.n == x.size and t.reason == ""
    np.testing.assert_allclose([t.slope, t.intercept, t.r2], [ref.slope, ref.intercept, ref.rvalue ** 2],
                               rtol=1e-10)
    np.testing.assert_allclose([t.lo, t.hi], [ref.slope - half, ref.slope + half], rtol=1e-8)
    # non-finite pairs are left out; 2 points: exact line, no interval; constant x: nothing
    t2 = scaling.trend([0.0, 1.0, np.nan], [1.0, 3.0, 5.0])
    assert (t2.slope, t2.intercept, t2.n) == (2.0, 1.0, 2) and math.isnan(t2.lo) and "exact" in t2.reason
    t3 = scaling.trend([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert math.isnan(t3.slope) and "no line" in t3.reason

