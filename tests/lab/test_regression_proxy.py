"""The regression control proxy (`rewards.regression_proxy`): ratings, MSE training against NumPy least squares,
the lab reward model fitted on ratings, standardised under pi0 and diagnosed like a Bradley-Terry proxy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.lab import lm, rewards, tree

CFG = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)


@pytest.fixture(scope="module")
def small_tree():
    params = jax.jit(lm.init, static_argnames="cfg")(jax.random.key(0), CFG)
    return tree.exact_tree(lm.make_logits(CFG), params, CFG.depth)


def test_ratings_are_the_utility_plus_label_noise():
    lp = jnp.log(jnp.asarray([0.1, 0.2, 0.3, 0.4]))
    u = jnp.asarray([0.0, 1.0, -2.0, 5.0])
    r = rewards.ratings(jax.random.key(1), lp, u, 40_000)
    x, y = np.asarray(r.x), np.asarray(r.y)
    np.testing.assert_array_equal(y, np.asarray(u)[x])  # no label noise: the utility itself
    freq = np.bincount(x, minlength=4) / x.size
    p = np.exp(np.asarray(lp))
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / x.size))  # i.i.d. from pi0
    np.testing.assert_array_equal(r.a, r.x) and np.testing.assert_array_equal(r.b, r.x)
    noisy = rewards.ratings(jax.random.key(1), lp, u, 40_000, noise=0.5)
    e = np.asarray(noisy.y) - np.asarray(u)[np.asarray(noisy.x)]
    assert abs(e.mean()) < 4 * 0.5 / np.sqrt(e.size) and abs(e.std() - 0.5) < 4 * 0.5 / np.sqrt(2 * e.size)
    with pytest.raises(ValueError, match="noise"):
        rewards.ratings(jax.random.key(1), lp, u, 10, noise=-1.0)


def test_mse_training_reaches_numpy_least_squares():
    """r(x) = sum of w[x_t] over real tokens, rated with heavy per-sequence error: full-batch AdamW on mse_loss
    ends at NumPy's least-squares solution on the same ratings (an independent, closed-form optimum); with
    minibatches, within their noise. The fit is not the truth (the check can fail): the error moves it."""
    vocab, depth = 5, 3
    x = tree.terminal_tokens(vocab, depth)
    n = x.shape[0]
    mask = lm.token_mask(x, vocab - 1)
    feats = jax.vmap(lambda row, m: jnp.zeros(vocab).at[row].add(m))(x, mask)  # counts (a first EOS is real)
    w_true = jnp.asarray([1.0, -0.5, 0.3, 0.8, -0.4])
    eps = 2.0 * jax.random.t(jax.random.key(2), 3.0, (n,))
    lp = jax.random.normal(jax.random.key(3), (n,))
    lp = lp - jax.scipy.special.logsumexp(lp)
    data = rewards.ratings(jax.random.key(4), lp, feats @ w_true + eps, 3000)

    def linear(w, tokens):
        return jnp.sum(jnp.where(lm.token_mask(tokens, vocab - 1), w[tokens], 0.0), axis=1)

    w0 = jnp.zeros(vocab)
    F = np.asarray(feats, np.float64)[np.asarray(data.x)]
    ls, *_ = np.linalg.lstsq(F, np.asarray(data.y, np.float64), rcond=None)
    fit = rewards.train_mse(jax.random.key(5), linear, w0, x, data, steps=2000, batch=None, lr=0.05,
                            weight_decay=0.0)
    np.testing.assert_allclose(fit.params, ls, atol=1e-3)  # float32 full-batch AdamW at its end
    assert np.max(np.abs(ls - np.asarray(w_true))) > 0.02  # not the truth
    mini = rewards.train_mse(jax.random.key(6), linear, w0, x, data, steps=2000, batch=512, lr=0.05,
                             weight_decay=0.0)
    np.testing.assert_allclose(mini.params, ls, atol=0.03)  # minibatch AdamW ends within its noise
    mse = np.mean((F @ ls - np.asarray(data.y, np.float64)) ** 2)
    np.testing.assert_allclose(float(rewards.mse_loss(linear, fit.params, x, data)), mse, rtol=1e-4)


def test_regression_proxy_tracks_gold_and_is_standardised(small_tree):
    """The lab reward model fitted on 4000 ratings with light error orders held-out pairs as gold mostly does;
    its table is standardised under pi0 (float64 moments), and the held-out pairs avoid the rated sequences."""
    g = rewards.gold_reward(jax.random.key(11), CFG, small_tree)
    n = small_tree.tokens.shape[0]
    eps = rewards.annotator_error(jax.random.key(12), "normal", n, 0.2)
    px = rewards.regression_proxy(jax.random.key(13), CFG, small_tree, g.reward, eps, 4000, steps=300, lr=1e-2)
    a, b = rewards.sample_pairs(jax.random.key(14), small_tree.log_p, 5000)
    acc = float(rewards.pair_accuracy(px.reward, g.reward, a, b))
    corr = float(rewards.pi0_corr(px.reward, g.reward, small_tree.log_p))
    assert acc > 0.8 and corr > 0.9, (acc, corr)
    p = np.exp(np.asarray(small_tree.log_p, np.float64))
    p /= p.sum()
    z = np.asarray(px.reward, np.float64)
    np.testing.assert_allclose([p @ z, np.sqrt(p @ (z - p @ z) ** 2)], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(px.reward, (np.asarray(px.raw, np.float64) - px.mean) / px.sd, rtol=1e-5, atol=1e-6)
    assert px.loss.shape == (300,) and px.loss[-20:].mean() < px.loss[:5].mean()
    seen = np.asarray(rewards.seen_terminals(px.data, n))
    np.testing.assert_array_equal(seen, np.isin(np.arange(n), np.asarray(px.data.x)))
    split = rewards.split_pairs(jax.random.key(15), small_tree.log_p, px.data, 200)  # diagnose_proxy's pairs
    assert not seen[np.asarray(split.unseen[0])].any() and seen[np.asarray(split.seen_pairs[1])].all()
