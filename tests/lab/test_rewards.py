"""Lab rewards: exact moments by brute force, BT training against a known linear reward and SciPy's MLE,
reward models against unbatched/unpadded evaluation and PyTorch, proxy diagnostics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from goodhart_jax import io
from goodhart_jax.lab import lm, rewards, tree
from goodhart_jax.models import ARCHITECTURES, CheckpointError

CFG = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)
RM_CFG = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)


@pytest.fixture(scope="module")
def small_tree():
    params = jax.jit(lm.init, static_argnames="cfg")(jax.random.key(0), CFG)
    return tree.exact_tree(lm.make_logits(CFG), params, CFG.depth)


def random_log_p(key, n):
    z = 2.0 * np.asarray(jax.random.normal(key, (n,)), np.float64)
    return z - np.log(np.exp(z).sum())


def test_moments_and_corr_by_brute_force():
    with jax.enable_x64(True):
        lp = random_log_p(jax.random.key(0), 37)
        r = np.asarray(jax.random.normal(jax.random.key(1), (37,)), np.float64) ** 3
        s = np.asarray(jax.random.normal(jax.random.key(2), (37,)), np.float64) + 0.5 * r
        p = [float(np.exp(v)) for v in lp]
        mean = sum(pi * ri for pi, ri in zip(p, r))
        sd = sum(pi * (ri - mean) ** 2 for pi, ri in zip(p, r)) ** 0.5
        m = rewards.pi0_moments(jnp.asarray(r), jnp.asarray(lp))
        np.testing.assert_allclose([m.mean, m.sd], [mean, sd], rtol=1e-12)
        z = rewards.standardise(jnp.asarray(r), jnp.asarray(lp))
        np.testing.assert_allclose(z, [(ri - mean) / sd for ri in r], rtol=1e-12)
        ms = sum(pi * si for pi, si in zip(p, s))
        ss = sum(pi * (si - ms) ** 2 for pi, si in zip(p, s)) ** 0.5
        corr = sum(pi * (ri - mean) * (si - ms) for pi, ri, si in zip(p, r, s)) / (sd * ss)
        np.testing.assert_allclose(rewards.pi0_corr(jnp.asarray(r), jnp.asarray(s), jnp.asarray(lp)), corr,
                                   rtol=1e-12)
        # unnormalised log_p are normalised first
        np.testing.assert_allclose(rewards.pi0_moments(jnp.asarray(r), jnp.asarray(lp + 3.0)).mean, mean, rtol=1e-12)


def test_pair_accuracy_by_brute_force():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 30).astype(np.float32)  # many gold ties
    proxy = np.round(gold + rng.normal(0, 1.5, 30)).astype(np.float32)  # some proxy ties
    a, b = rng.integers(0, 30, 500), rng.integers(0, 30, 500)
    num = den = 0.0
    for i, j in zip(a, b):
        if gold[i] == gold[j]:
            continue
        den += 1
        num += 0.5 if proxy[i] == proxy[j] else float((proxy[i] > proxy[j]) == (gold[i] > gold[j]))
    got = rewards.pair_accuracy(jnp.asarray(proxy), jnp.asarray(gold), jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(got, num / den, rtol=1e-6)
    # a non-finite proxy in a pair has no order: nan, not a comparison counted wrong (was 0.065 at eps = inf)
    for bad in (np.inf, np.nan):
        p = proxy.copy()
        p[a[0]] = bad
        assert np.isnan(rewards.pair_accuracy(jnp.asarray(p), jnp.asarray(gold), jnp.asarray(a), jnp.asarray(b)))


def test_sample_terminals_frequencies():
    lp = random_log_p(jax.random.key(3), 11)
    num = 50_000
    idx = np.asarray(rewards.sample_terminals(jax.random.key(4), jnp.asarray(lp, jnp.float32), num))
    p = np.exp(lp)
    counts = np.bincount(idx, minlength=11)
    assert counts.sum() == num and idx.max() < 11
    assert np.all(np.abs(counts / num - p) <= 4 * np.sqrt(p * (1 - p) / num) + 1e-12)


def test_comparison_labels_follow_bradley_terry():
    u = jnp.asarray([0.0, 1.0, -0.5, 2.0])
    lp = jnp.log(jnp.full((4,), 0.25))
    data = rewards.comparisons(jax.random.key(5), lp, u, 60_000, temperature=0.7)
    a, b, y = (np.asarray(v) for v in data)
    for i, j in itertools.product(range(4), repeat=2):
        sel = (a == i) & (b == j)
        want = 1 / (1 + np.exp(-(float(u[i]) - float(u[j])) / 0.7))
        assert abs(y[sel].mean() - want) <= 4 * np.sqrt(want * (1 - want) / sel.sum()) + 1e-9
    hard = rewards.comparisons(jax.random.key(5), lp, u, 1000, temperature=0.0)
    d = np.asarray(u)[np.asarray(hard.a)] - np.asarray(u)[np.asarray(hard.b)]
    np.testing.assert_array_equal(hard.label, np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5)))


def test_bt_training_recovers_a_linear_reward():
    """r(x) = sum of w[x_t] over real tokens, labels drawn from BT: AdamW on bt_loss reaches SciPy's exact
    logistic MLE on the same data, and the MLE is near the true w (a statistical check)."""
    vocab, depth = 5, 3
    x = tree.terminal_tokens(vocab, depth)
    feats = jax.vmap(lambda row: jnp.zeros(vocab).at[row].add(lm.token_mask(row[None], vocab - 1)[0]))(x)
    w_true = jnp.asarray([1.0, -0.5, 0.3, 0.8, -1.2])
    lp = jnp.log(jnp.full((x.shape[0],), 1.0 / x.shape[0]))
    data = rewards.comparisons(jax.random.key(6), lp, feats @ w_true, 20_000, temperature=1.0)
    linear = lambda w, tokens: jax.vmap(lambda r: jnp.sum(jnp.where(lm.token_mask(r[None], vocab - 1)[0], w[r], 0.0)))(tokens)  # noqa: E731
    fit = rewards.train_bt(jax.random.key(7), linear, jnp.zeros(vocab), x, data, steps=2000, batch=8192, lr=0.02,
                           weight_decay=0.0)
    F = np.asarray(feats, np.float64)
    D = F[np.asarray(data.a)] - F[np.asarray(data.b)]
    y = np.asarray(data.label, np.float64)
    nll = lambda w: np.mean(y * np.logaddexp(0, -D @ w) + (1 - y) * np.logaddexp(0, D @ w))  # noqa: E731
    mle = optimize.minimize(nll, np.zeros(vocab), method="BFGS", options=dict(gtol=1e-10)).x
    np.testing.assert_allclose(fit.params, mle, atol=0.01)  # minibatch Adam ends within its noise of the MLE
    s = 1 / (1 + np.exp(-D @ mle))
    se = np.sqrt(np.diag(np.linalg.inv(D.T @ (D * (s * (1 - s))[:, None]))))  # inverse Fisher information
    assert np.all(np.abs(mle - np.asarray(w_true)) < 4 * se), (mle, se)
    assert se.max() < 0.2  # the data pin w down (the constant direction is the weakest: most lengths are 3)
    assert fit.loss[-100:].mean() < fit.loss[:10].mean()


def test_reward_model_pools_the_last_real_token(small_tree):
    """Chunked scoring of every terminal = the decoder run on [BOS, real tokens] alone, read at its last position."""
    params = jax.jit(rewards.rm_init, static_argnames="cfg")(jax.random.key(8), RM_CFG)
    got = rewards.score_terminals(rewards.make_rm_reward(RM_CFG), params, small_tree.tokens, chunk=7)
    module = ARCHITECTURES["gpt_neox"].module(lm.backbone_config(RM_CFG))
    apply = jax.jit(lambda ids: module.apply({"params": params["backbone"]}, ids, jnp.ones_like(ids)))
    for row, r in zip(np.asarray(small_tree.tokens), np.asarray(got)):
        real = row[: int(np.asarray(lm.token_mask(jnp.asarray(row[None]), RM_CFG.eos))[0].sum())]
        h = apply(jnp.asarray([[RM_CFG.bos, *real]])).last_hidden_state[0, -1]
        want = h @ params["score"]["kernel"][:, 0] + params["score"]["bias"][0]
        np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-5)


def test_gold_is_standardised_exactly(small_tree):
    g = rewards.gold_reward(jax.random.key(9), RM_CFG, small_tree)
    p = np.exp(np.asarray(small_tree.log_p, np.float64))
    raw = np.asarray(g.raw, np.float64)
    mean = sum(pi * r for pi, r in zip(p, raw))
    sd = sum(pi * (r - mean) ** 2 for pi, r in zip(p, raw)) ** 0.5
    np.testing.assert_allclose([g.mean, g.sd], [mean, sd], rtol=1e-5)
    np.testing.assert_allclose(g.reward, (raw - mean) / sd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p @ np.asarray(g.reward, np.float64), 0.0, atol=1e-5)
    again = rewards.gold_reward(jax.random.key(9), RM_CFG, small_tree)
    np.testing.assert_array_equal(g.reward, again.reward)
    other = rewards.gold_reward(jax.random.key(10), RM_CFG, small_tree)
    assert not np.allclose(g.reward, other.reward)


@pytest.fixture(scope="module")
def learned(small_tree):
    """(gold, eps, a proxy learned on 4000 BT pairs over 300 steps with light annotator error): one training run
    for the two tests that read it (what it learned, and how it is standardised)."""
    g = rewards.gold_reward(jax.random.key(11), RM_CFG, small_tree)
    eps = rewards.annotator_error(jax.random.key(12), "normal", small_tree.tokens.shape[0], 0.2)
    px = rewards.learned_proxy(jax.random.key(13), RM_CFG, small_tree, g.reward, eps, 4000, steps=300, lr=1e-2)
    return g, eps, px


def test_learned_proxy_tracks_gold(small_tree, learned):
    """Trained on 4000 BT pairs (300 steps) with light annotator error, the proxy orders held-out pairs as gold mostly
    does; an untrained proxy does not (the check can fail)."""
    g, eps, px = learned
    a, b = rewards.sample_pairs(jax.random.key(14), small_tree.log_p, 5000)
    acc = float(rewards.pair_accuracy(px.reward, g.reward, a, b))
    corr = float(rewards.pi0_corr(px.reward, g.reward, small_tree.log_p))
    untrained = rewards.score_terminals(rewards.make_rm_reward(RM_CFG),
                                        jax.jit(rewards.rm_init, static_argnames="cfg")(jax.random.key(15), RM_CFG),
                                        small_tree.tokens)
    acc0 = float(rewards.pair_accuracy(untrained, g.reward, a, b))
    assert acc > 0.8 and corr > 0.9 and acc0 < 0.7, (acc, corr, acc0)
    np.testing.assert_array_equal(rewards.direct_proxy(g.reward, eps, small_tree.log_p).raw, g.reward + eps)


def _pi0_moments64(z, log_p):
    p = np.exp(np.asarray(log_p, np.float64))
    p /= p.sum()
    z = np.asarray(z, np.float64)
    mean = p @ z
    return mean, np.sqrt(p @ (z - mean) ** 2)


def test_proxies_are_standardised_under_pi0(small_tree, learned):
    """Direct and learned proxies: mean 0 and sd 1 under pi0 to 1e-6 (float64 NumPy weighted moments of the
    float32 proxy), the raw scores kept with their pi0 mean and sd; also a heavy-tailed direct proxy on 20,000
    sequences with a spread-out pi0. The learned proxy is the `learned` fixture's (a second training run, 20
    steps on 500 pairs, compiled another program for the same checks)."""
    g, eps, learned = learned
    assert isinstance(learned.data, rewards.Comparisons) and learned.data.a.shape == (4000,)
    raw = rewards.score_terminals(rewards.make_rm_reward(RM_CFG), learned.params, small_tree.tokens)
    np.testing.assert_array_equal(learned.raw, raw)  # the model's own scale, as GCG's scorer returns it
    direct = rewards.direct_proxy(g.reward, eps, small_tree.log_p)
    assert direct.data is None and direct.params is None
    np.testing.assert_array_equal(direct.raw, g.reward + eps)
    n = 20_000
    lp = jnp.asarray(random_log_p(jax.random.key(20), n), jnp.float32)
    heavy = rewards.direct_proxy(jax.random.normal(jax.random.key(21), (n,)),
                                 rewards.annotator_error(jax.random.key(22), "student_t:df=2", n, 3.0), lp)
    for px, log_p in ((learned, small_tree.log_p), (direct, small_tree.log_p), (heavy, lp)):
        assert px.reward.dtype == jnp.float32
        mean, sd = _pi0_moments64(px.reward, log_p)
        assert abs(mean) < 1e-6 and abs(sd - 1) < 1e-6, (mean, sd)
        raw_mean, raw_sd = _pi0_moments64(px.raw, log_p)
        np.testing.assert_allclose([px.mean, px.sd], [raw_mean, raw_sd], rtol=1e-9)
        np.testing.assert_allclose(px.reward, (np.asarray(px.raw, np.float64) - raw_mean) / raw_sd, rtol=1e-6,
                                   atol=1e-6)
    # a constant proxy (sd 0) is shifted only, not divided by 0
    flat = rewards.pi0_standardise(jnp.full((5,), 2.5), jnp.log(jnp.full((5,), 0.2)))
    np.testing.assert_array_equal(flat.z, np.zeros(5))
    assert float(flat.sd) == 0.0


def test_sample_terminals_skips_zero_mass():
    """pi0 conditioned on a subset (log_p -inf elsewhere, the last entries included): never a -inf terminal."""
    lp = np.log(np.asarray([0.3, 1.0, 0.5, 0.2, 1.0, 1.0]))
    lp[[1, 4, 5]] = -np.inf
    idx = np.asarray(rewards.sample_terminals(jax.random.key(0), jnp.asarray(lp, jnp.float32), 100_000))
    assert set(np.unique(idx).tolist()) == {0, 2, 3}


def test_split_pairs_are_disjoint_from_training():
    """Unseen evaluation pairs share no sequence with any training pair, seen ones lie inside them; each side
    follows pi0 conditioned on its set (frequencies within 4 sd); seen_mass = the set's pi0 mass (NumPy)."""
    n = 60
    lp = jnp.asarray(random_log_p(jax.random.key(23), n), jnp.float32)
    data = rewards.comparisons(jax.random.key(24), lp, jnp.arange(n, dtype=jnp.float32), 25)
    split = rewards.split_pairs(jax.random.key(25), lp, data, 20_000)
    train = set(np.asarray(data.a).tolist()) | set(np.asarray(data.b).tolist())
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(split.seen)), sorted(train))
    unseen = np.concatenate([np.asarray(v) for v in split.unseen])
    seen = np.concatenate([np.asarray(v) for v in split.seen_pairs])
    assert unseen.shape == (40_000,) and seen.shape == (40_000,)
    assert not set(unseen.tolist()) & train and set(seen.tolist()) <= train
    p = np.exp(np.asarray(lp, np.float64))
    p /= p.sum()
    mask = np.zeros(n, bool)
    mask[sorted(train)] = True
    np.testing.assert_allclose(split.seen_mass, p[mask].sum(), rtol=1e-6)
    for draws, keep in ((unseen, ~mask), (seen, mask)):
        want = np.where(keep, p, 0.0) / p[keep].sum()
        freq = np.bincount(draws, minlength=n) / draws.size
        assert np.all(np.abs(freq - want) <= 4 * np.sqrt(want * (1 - want) / draws.size) + 1e-12)
    # no training pairs (a direct proxy): pi0's own pairs, no seen pairs
    none = rewards.split_pairs(jax.random.key(25), lp, None, 100)
    assert not np.any(np.asarray(none.seen)) and none.seen_mass == 0.0 and none.seen_pairs[0].shape == (0,)
    assert none.unseen[0].shape == (100,)
    # every sequence seen: no unseen pairs
    full = rewards.Comparisons(jnp.arange(n), jnp.arange(n)[::-1], jnp.ones(n))
    assert rewards.split_pairs(jax.random.key(26), lp, full, 10).unseen[0].shape == (0,)


def test_pair_accuracy_without_a_counted_pair_is_nan():
    gold, proxy = jnp.asarray([1.0, 1.0, 2.0]), jnp.asarray([0.0, 1.0, 2.0])
    assert np.isnan(rewards.pair_accuracy(proxy, gold, jnp.asarray([0, 1]), jnp.asarray([1, 0])))  # gold ties
    assert np.isnan(rewards.pair_accuracy(proxy, gold, jnp.zeros((0,), int), jnp.zeros((0,), int)))  # no pair


def _quantile_ref(z, w, q):
    """min{c in z: P(Z <= c) >= q}, by enumerating the candidates (w normalised, float64)."""
    return min(c for c in np.unique(z) if w[z <= c].sum() >= q - 1e-12)


def _excess_ref(z, w, u):
    above = z > u
    return np.nan if w[above].sum() == 0 else (w[above] @ (z[above] - u)) / w[above].sum()


def test_weighted_quantile_and_mean_excess_by_hand():
    """z = [3, 1, 2, 2, 5], p = [.1, .2, .3, .2, .2]: F(1) = .2, F(2) = .7, F(3) = .8, F(5) = 1."""
    z = np.asarray([3.0, 1.0, 2.0, 2.0, 5.0])
    lw = np.log([0.1, 0.2, 0.3, 0.2, 0.2]) + 7.0  # any normalisation
    np.testing.assert_array_equal(rewards.weighted_quantile(z, lw, [0.1, 0.5, 0.75, 0.9, 0.999]), [1, 2, 3, 5, 5])
    np.testing.assert_allclose(rewards.mean_excess(z, lw, [0.0, 2.0, 3.0, 4.0]),
                               [2.5, (0.1 * 1 + 0.2 * 3) / 0.3, 2.0, 1.0], rtol=1e-12)
    assert np.isnan(rewards.mean_excess(z, lw, 5.0)[0])  # no mass above the largest value
    lw0 = lw.copy()
    lw0[4] = -np.inf  # weight 0 on z = 5: never a quantile, no mass above 3
    np.testing.assert_array_equal(rewards.weighted_quantile(z, lw0, [0.999]), [3.0])
    assert np.isnan(rewards.mean_excess(z, lw0, 3.0)[0])
    c = rewards.excess_curve(z, lw, (0.5, 0.75))
    np.testing.assert_array_equal(c.u, [[2.0, 3.0]])
    np.testing.assert_allclose(c.mass_above, [[0.3, 0.2]], rtol=1e-12)


def test_tail_curves_on_an_enumerable_tree(small_tree):
    """Exact mean-excess curves of X = proxy - gold and of the proxy under pi0 and pi*(beta) on the 40 sequences
    of a tree: the brute-force float64 reference (candidates enumerated, pi*(beta) = p0 e^{proxy / beta} / Z)."""
    g = rewards.gold_reward(jax.random.key(11), RM_CFG, small_tree)
    eps = rewards.annotator_error(jax.random.key(27), "student_t:df=2", small_tree.tokens.shape[0], 1.0)
    px = rewards.direct_proxy(g.reward, eps, small_tree.log_p)
    betas = (0.1, 1.0, 10.0)
    t = rewards.tail_curves(px.reward, g.reward, small_tree.log_p, betas)
    lp = np.asarray(small_tree.log_p, np.float64)
    pr, gd = np.asarray(px.reward, np.float64), np.asarray(g.reward, np.float64)
    laws = [np.exp(lp)] + [np.exp(lp + pr / b - (lp + pr / b).max()) for b in betas]
    for curve, z in ((t.x, pr - gd), (t.proxy, pr)):
        assert curve.u.shape == (4, len(rewards.QUANTILES))
        for k, w in enumerate(laws):
            w = w / w.sum()
            for j, q in enumerate(rewards.QUANTILES):
                u = _quantile_ref(z, w, q)
                assert curve.u[k, j] == u
                e = _excess_ref(z, w, u)
                if np.isnan(e):
                    assert np.isnan(curve.mean_excess[k, j]) and curve.mass_above[k, j] == 0
                else:
                    np.testing.assert_allclose(curve.mean_excess[k, j], e, rtol=1e-9, atol=1e-12)
                    np.testing.assert_allclose(curve.mass_above[k, j], w[z > u].sum(), rtol=1e-9)
                    assert curve.mass_above[k, j] <= 1 - q + 1e-12
    np.testing.assert_array_equal(t.betas, betas)


def test_diagnose_proxy_sees_the_error_tail():
    """Direct proxies on 20000 terminals: Student-t(2) error is called heavy with xi near 1/2, normal error is
    not heavy, on i.i.d. pi0 draws; X is proxy - gold; corr and accuracy match their definitions; a direct proxy
    has no seen pairs (nan with its reason)."""
    n = 20_000
    lp = jnp.asarray(random_log_p(jax.random.key(16), n) * 0.1, jnp.float32)
    lp = lp - jax.scipy.special.logsumexp(lp)
    gold = rewards.standardise(jax.random.normal(jax.random.key(17), (n,)), lp)
    for fam, heavy in [("student_t:df=2", True), ("normal", False)]:
        eps = rewards.annotator_error(jax.random.key(18), fam, n, 1.0)
        proxy = rewards.direct_proxy(gold, eps, lp).reward
        rep = rewards.diagnose_proxy(jax.random.key(19), proxy, gold, lp, betas=(0.5,))
        np.testing.assert_array_equal(rep.error, proxy - gold)
        np.testing.assert_allclose(rep.corr, rewards.pi0_corr(proxy, gold, lp), rtol=1e-6)
        assert 0.5 < rep.pair_accuracy_unseen < 1.0 and np.isnan(rep.pair_accuracy_seen)
        assert "pair_accuracy_seen" in rep.reasons and rep.seen == 0
        assert np.isnan(rep.error_corr_seen) and np.isnan(rep.error_corr_unseen)  # no eps given: nan, with reasons
        assert rep.reasons["error_corr_unseen"] == "no annotator error given"
        assert rep.draws == 20_000 and rep.diagnosis.n == 20_000
        assert (rep.verdict == "heavy") == heavy, rep.diagnosis.verdict.text()
        assert rep.tails.x.u.shape == (2, len(rewards.QUANTILES))
        if heavy:
            assert 0.3 < rep.xi < 0.7


def test_diagnose_proxy_accuracy_on_unseen_and_seen():
    """A proxy with training comparisons: the accuracies are NumPy's brute-force counts on the report's pairs,
    the unseen pairs avoid every training sequence; corr(X, eps) on each subset is NumPy's weighted corr; below
    MIN_TAIL_SEQUENCES no xi (nan with the reason)."""
    for n in (80,):  # below MIN_TAIL_SEQUENCES: no tail fit to compile (test_diagnose_proxy_sees_the_error_tail has it)
        lp = jnp.asarray(random_log_p(jax.random.key(28), n), jnp.float32)
        gold = jax.random.normal(jax.random.key(29), (n,))
        proxy = rewards.pi0_standardise(gold + jax.random.normal(jax.random.key(30), (n,)), lp).z
        data = rewards.comparisons(jax.random.key(31), lp, gold, 40)
        eps = jax.random.normal(jax.random.key(33), (n,))
        rep = rewards.diagnose_proxy(jax.random.key(32), proxy, gold, lp, data, eps, heldout_pairs=3000)
        train = set(np.asarray(data.a).tolist()) | set(np.asarray(data.b).tolist())
        g, p = np.asarray(gold, np.float64), np.asarray(proxy, np.float64)
        mask = np.isin(np.arange(n), sorted(train))
        for f, keep in (("error_corr_unseen", ~mask), ("error_corr_seen", mask)):  # weighted corr on the subset
            w = np.where(keep, np.exp(np.asarray(lp, np.float64)), 0.0)
            w /= w.sum()
            x, e = p - g, np.asarray(eps, np.float64)
            cx, ce = x - w @ x, e - w @ e
            np.testing.assert_allclose(getattr(rep, f), (w @ (cx * ce)) / np.sqrt((w @ cx**2) * (w @ ce**2)),
                                       rtol=1e-4, atol=1e-5)
        for (a, b), acc, inside in ((rep.pairs.unseen, rep.pair_accuracy_unseen, False),
                                    (rep.pairs.seen_pairs, rep.pair_accuracy_seen, True)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == (3000,) and (set(a.tolist()) | set(b.tolist()) <= train) == inside
            if not inside:
                assert not (set(a.tolist()) | set(b.tolist())) & train
            hits = counted = 0.0
            for i, j in zip(a, b):
                if g[i] != g[j]:
                    counted += 1
                    hits += 0.5 if p[i] == p[j] else float((p[i] > p[j]) == (g[i] > g[j]))
            np.testing.assert_allclose(acc, hits / counted, rtol=1e-6)
        assert rep.seen == len(train) and not rep.reasons.get("pair_accuracy_seen")
        assert np.isnan(rep.xi) and rep.reasons["xi"].startswith("n/a (N = 80 < 100") and rep.draws == 0


# ---------------------------------------------------------------- reward checkpoints
torch = pytest.importorskip("torch")


def test_load_reward_matches_torch(tmp_path, small_tree):
    """A tiny OpenAssistant-layout checkpoint scores every terminal as torch does on [start, ids...] (right
    padded, reward at the last real token)."""
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "rm", arch="gpt_neox", layout="oasst", seed=4)
    ids = (9, 31, 2, 77)
    rw = rewards.load_reward(ckpt.path, ids)
    got = np.asarray(rewards.score_terminals(rw.reward_fn, rw.params, small_tree.tokens))
    x = np.asarray(small_tree.tokens)
    mask = np.concatenate([np.ones((len(x), 1), int), np.asarray(lm.token_mask(jnp.asarray(x), 3))], axis=1)
    model_ids = np.asarray([rw.start] + [0] * 3)[None].repeat(len(x), 0)
    model_ids[:, 1:] = np.asarray(ids)[x]
    ref = ckpt.torch_model
    with torch.no_grad():
        h = ref.backbone(input_ids=torch.as_tensor(model_ids), attention_mask=torch.as_tensor(mask)).last_hidden_state
        last = torch.as_tensor(mask.sum(1) - 1)
        want = ref.head(h[torch.arange(len(x)), last])[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_load_reward_refusals(tmp_path):
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "lm", arch="gpt_neox", layout="causal_lm")
    with pytest.raises(CheckpointError, match="no reward head"):
        rewards.load_reward(ck.path, (1, 2, 3))
    rm = make_tiny_checkpoint(tmp_path / "rm", arch="gpt_neox", layout="oasst")
    with pytest.raises(io.UsageError, match="distinct ids"):
        rewards.load_reward(rm.path, (1, 1))


def test_checkpoints_end_at_the_last_step():
    assert rewards.checkpoints(30, 10) == [10, 20, 30]
    assert rewards.checkpoints(60, 7) == [7, 14, 21, 28, 35, 42, 49, 56, 60]
    assert rewards.checkpoints(3, 10) == [3]
    for steps, every in ((0, 1), (5, 0)):
        with pytest.raises(ValueError, match="every"):
            rewards.checkpoints(steps, every)


def test_weighted_bt_loss_against_numpy(small_tree):
    """Weights 0 leave pairs out: the weighted loss is the float64 loss of the kept pairs."""
    fn = rewards.make_rm_reward(RM_CFG)
    params = rewards.rm_init_jit(jax.random.key(3), RM_CFG)
    u = jax.random.normal(jax.random.key(4), small_tree.log_p.shape)
    data = rewards.comparisons(jax.random.key(5), small_tree.log_p, u, 40)
    w = (jnp.arange(40) < 25).astype(jnp.float32)
    r = np.asarray(rewards.score_terminals(fn, params, small_tree.tokens), np.float64)
    d = r[np.asarray(data.a)] - r[np.asarray(data.b)]
    y = np.asarray(data.label, np.float64)
    each = y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d)
    np.testing.assert_allclose(rewards.bt_loss(fn, params, small_tree.tokens, data, w), each[:25].mean(), rtol=1e-5)
    np.testing.assert_allclose(rewards.bt_loss(fn, params, small_tree.tokens, data), each.mean(), rtol=1e-5)


def test_validation_comparisons_avoid_the_training_sequences(small_tree):
    u = jax.random.normal(jax.random.key(4), small_tree.log_p.shape)
    train = rewards.comparisons(jax.random.key(5), small_tree.log_p, u, 30)
    val = rewards.validation_comparisons(jax.random.key(6), small_tree.log_p, u, train, 500)
    seen = set(np.asarray(train.a).tolist()) | set(np.asarray(train.b).tolist())
    assert not seen & (set(np.asarray(val.a).tolist()) | set(np.asarray(val.b).tolist()))
    # labels: Bernoulli(sigmoid(u_a - u_b)), 4 standard errors of the mean label
    p = 1 / (1 + np.exp(-(np.asarray(u)[np.asarray(val.a)] - np.asarray(u)[np.asarray(val.b)])))
    assert abs(np.asarray(val.label).mean() - p.mean()) < 4 * np.sqrt(np.sum(p * (1 - p))) / p.size
    every = rewards.Comparisons(jnp.arange(small_tree.log_p.shape[0]), jnp.arange(small_tree.log_p.shape[0]),
                                jnp.ones(small_tree.log_p.shape[0]))
    with pytest.raises(ValueError, match="validation"):
        rewards.validation_comparisons(jax.random.key(6), small_tree.log_p, u, every, 5)


def test_early_stopping_keeps_the_checkpoint_of_least_validation_loss(small_tree):
    """train_bt with validation pairs (`lm.adamw_scan`'s checkpoint hook, through `fit_minibatched`) = a plain
    step-by-step AdamW run (optax, not the lab's scan) that records the parameters at every checkpoint, the
    validation BT loss of each computed in NumPy float64, and its argmin: the kept parameters are that checkpoint's,
    `stop` its step. The utility is a learnable reward (3 x a random reward model's, standardised) and 16 pairs
    overfit, so the argmin is neither the first nor the last checkpoint; every = 7 does not divide 60 steps (the
    last, shorter chunk). The hook's own cases (ties, nan, the last step kept) are test_lm's."""
    import optax

    fn = rewards.make_rm_reward(RM_CFG)
    params0 = rewards.rm_init_jit(jax.random.key(3), RM_CFG)
    g = rewards.score_terminals(fn, rewards.rm_init_jit(jax.random.key(9), RM_CFG), small_tree.tokens)
    u = 3.0 * (g - g.mean()) / g.std()
    data = rewards.comparisons(jax.random.key(5), small_tree.log_p, u, 16)
    val = rewards.validation_comparisons(jax.random.key(6), small_tree.log_p, u, data, 200)
    steps, every, batch, lr, wd = 60, 7, 8, 1e-3, 0.01
    key = jax.random.key(7)
    fit = rewards.train_bt(key, fn, params0, small_tree.tokens, data, steps, batch, lr, wd, val=val, every=every)

    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, alpha=0.1), weight_decay=wd)

    @jax.jit
    def step(p, state, k):
        idx = jax.random.randint(k, (batch,), 0, data.a.shape[0])
        rows = rewards.Comparisons(data.a[idx], data.b[idx], data.label[idx])
        value, g = jax.value_and_grad(lambda q: rewards.bt_loss(fn, q, small_tree.tokens, rows))(p)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state, value

    p, state, saved, values = params0, opt.init(params0), {}, []
    for s, k in enumerate(jax.random.split(key, steps), start=1):
        p, state, v = step(p, state, k)
        values.append(float(v))
        if s in rewards.checkpoints(steps, every):
            saved[s] = p
    y = np.asarray(val.label, np.float64)

    def val64(q):
        r = np.asarray(rewards.score_terminals(fn, q, small_tree.tokens), np.float64)
        d = r[np.asarray(val.a)] - r[np.asarray(val.b)]
        return float(np.mean(y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d)))

    marks = list(saved)
    losses = np.asarray([val64(saved[s]) for s in marks])
    best = int(np.argmin(losses))
    assert 0 < best < len(marks) - 1  # early stopping has something to do: the validation loss turns up
    assert np.sort(losses)[1] - losses[best] > 1e-4  # no near-tie that float32 could order differently
    assert int(fit.stop) == marks[best]
    np.testing.assert_allclose(fit.val_loss, losses, rtol=1e-4)  # float32 in the scan
    np.testing.assert_allclose(fit.loss, values, rtol=1e-4, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), fit.params, saved[marks[best]])
    # without validation (adamw_scan's plain scan, no checkpoints) train_bt ends where the reference does
    plain = rewards.train_bt(key, fn, params0, small_tree.tokens, data, steps, batch, lr, wd)
    assert int(plain.stop) == steps and plain.val_loss.shape == (0,)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), plain.params, saved[steps])
