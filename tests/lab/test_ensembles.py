"""Reward-model ensembles (`lab.ensembles`, issue 24 item 4) on an enumerable tree: the objectives against NumPy;
each objective's exact pi*(beta), gold at a KL and best-of-n against a NumPy float64 enumeration (best-of-n by
brute force over every n-tuple of draws, ties included); RL on each objective never above the exact optimum's
J(pi*); the trained ensemble's members, bootstrap and single proxy."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.lab import ensembles, lm, rewards, rl, summary
from goodhart_jax.lab import tree as lab_tree

CFG = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)  # N = 1 + 3 + 9 + 27 = 40 sequences
BETAS = (10.0, 1.0, 0.3, 0.1)
NS = (1, 2, 3, 16, 64)


@pytest.fixture(scope="module")
def small_tree():
    params = jax.jit(lm.init, static_argnames="cfg")(jax.random.key(0), CFG)
    return lab_tree.exact_tree(lm.make_logits(CFG), params, CFG.depth)


@pytest.fixture(scope="module")
def gold(small_tree):
    return rewards.gold_reward(jax.random.key(1), CFG, small_tree).reward


@pytest.fixture(scope="module")
def ens(small_tree, gold):
    """A trained Bradley-Terry ensemble: K = 3 members on bootstrap resamples of 400 comparisons, heavy error."""
    eps = rewards.annotator_error(jax.random.key(2), "student_t:df=2", small_tree.tokens.shape[0], 0.5)
    return ensembles.train_ensemble(jax.random.key(3), CFG, small_tree, gold, eps, 400, members=3, steps=40)


def _p0(tree):
    lp = np.asarray(tree.log_p, np.float64)
    p = np.exp(lp - lp.max())
    return p / p.sum()


def _objective_np(m, name, lam):
    m = np.asarray(m, np.float64)
    K, N = m.shape
    out = np.empty(N)
    for j in range(N):
        col = [m[k, j] for k in range(K)]
        mean = sum(col) / K
        out[j] = {"mean": mean, "wco": min(col), "uwo": mean - lam * sum((c - mean) ** 2 for c in col) / K}[name]
    return out


def test_objectives_against_numpy():
    m = jax.random.normal(jax.random.key(4), (5, 40)) * jnp.arange(1.0, 6.0)[:, None]
    for name, lam in [("mean", 1.0), ("wco", 1.0), ("uwo", 0.0), ("uwo", 0.5), ("uwo", 3.0)]:
        np.testing.assert_allclose(ensembles.objective(m, name, lam), _objective_np(m, name, lam), rtol=1e-5,
                                   atol=1e-5)  # float32
    np.testing.assert_allclose(ensembles.objective(m, "uwo", 0.0), ensembles.objective(m, "mean"), atol=1e-6)
    assert ensembles.objective_name("uwo", 0.5) == "uwo(lambda=0.5)" and ensembles.objective_name("wco") == "wco"
    for bad in [dict(name="max"), dict(name="uwo", uwo_lambda=-1.0), dict(name="uwo", uwo_lambda=float("nan"))]:
        with pytest.raises(ValueError, match="name|uwo_lambda"):
            ensembles.objective(m, **bad)
    with pytest.raises(ValueError, match="members"):
        ensembles.objective(m[0], "mean")


def test_tables_are_standardised_under_pi0(small_tree):
    raw = 3.0 + 2.0 * jax.random.normal(jax.random.key(5), (4, 40))
    e = ensembles.ensemble_from_tables(raw, small_tree.log_p)
    p = _p0(small_tree)
    for k in range(4):
        r = np.asarray(raw[k], np.float64)
        mean = p @ r
        sd = np.sqrt(p @ (r - mean) ** 2)
        np.testing.assert_allclose([e.mean[k], e.sd[k]], [mean, sd], rtol=1e-6)
        np.testing.assert_allclose(e.members[k], (r - mean) / sd, rtol=1e-5, atol=1e-5)


def test_trained_ensemble(ens, small_tree, gold):
    """Members differ (own initialisation and bootstrap), are standardised under pi0 and carry gold; each member's
    labels are a resample with replacement of the comparisons; the single proxy is trained on them as drawn."""
    K, P, N = 3, 400, small_tree.tokens.shape[0]
    assert ens.members.shape == (K, N) and ens.loss.shape == (K, 40) and ens.indices.shape == (K, P)
    idx = np.asarray(ens.indices)
    assert idx.min() >= 0 and idx.max() < P
    unique = [np.unique(row).size / P for row in idx]  # 1 - (1 - 1/P)^P ~ 0.632, sd ~ 0.024 at P = 400
    assert all(abs(u - 0.632) < 0.1 for u in unique) and not np.array_equal(idx[0], idx[1])
    assert not np.allclose(ens.members[0], ens.members[1])
    p = _p0(small_tree)
    for z in list(ens.members) + [ens.single.reward]:
        z = np.asarray(z, np.float64)
        np.testing.assert_allclose([p @ z, np.sqrt(p @ (z - p @ z) ** 2)], [0.0, 1.0], atol=1e-5)
        assert float(rewards.pi0_corr(jnp.asarray(z), gold, small_tree.log_p)) > 0.3
    assert ens.single.data is ens.data and ens.single.loss.shape == (40,) and ens.kind == "bt"
    px = ensembles.objective_proxy(ens, "wco", small_tree.log_p)
    np.testing.assert_allclose(px.raw, np.min(np.asarray(ens.members), axis=0), atol=1e-6)
    np.testing.assert_allclose(px.reward, (np.asarray(px.raw, np.float64) - px.mean) / px.sd, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="loss"):
        ensembles.train_ensemble(jax.random.key(3), CFG, small_tree, gold, ens.error, P, loss="hinge")


@pytest.mark.slow  # a second vmapped training program to compile (~35 s on the loaded 2-core box)
def test_mse_ensemble_without_bootstrap(ens, small_tree, gold):
    """The regression control as an ensemble: ratings, every member on every label (no resample)."""
    P = 400
    plain = ensembles.train_ensemble(jax.random.key(3), CFG, small_tree, gold, ens.error, P, members=2, steps=40,
                                     bootstrap=False, loss="mse")
    np.testing.assert_array_equal(plain.indices, np.broadcast_to(np.arange(P), (2, P)))  # every label, each
    assert isinstance(plain.data, rewards.Ratings) and plain.data.x.shape == (P,) and plain.kind == "mse"
    p = _p0(small_tree)
    for z in list(plain.members) + [plain.single.reward]:
        z = np.asarray(z, np.float64)
        np.testing.assert_allclose([p @ z, np.sqrt(p @ (z - p @ z) ** 2)], [0.0, 1.0], atol=1e-5)
        assert float(rewards.pi0_corr(jnp.asarray(z), gold, small_tree.log_p)) > 0.3
    assert not np.allclose(plain.members[0], plain.members[1])  # initialisations differ


def _pi_star_np(p, r, g, beta):
    lw = np.log(p) + r / beta
    q = np.exp(lw - lw.max())
    q /= q.sum()
    return q @ g, q @ r, float(np.sum(q * (np.log(q) - np.log(p))))


def _bon_brute(p, r, g, n):
    """E[gold], E[r], KL of best-of-n by summing over every n-tuple of draws (the first draw of the largest r wins);
    KL(P_n || pi0) summed over sequences."""
    N = p.size
    law = np.zeros(N)
    for tup in itertools.product(range(N), repeat=n):
        w = np.prod(p[list(tup)])
        best = max(range(n), key=lambda i: (r[tup[i]], -i))  # the largest r, the first among equals
        law[tup[best]] += w
    keep = law > 0
    return law @ g, law @ r, float(np.sum(law[keep] * np.log(law[keep] / p[keep])))


def _bon_order(p, r, g, n):
    """Best-of-n by the order statistic F(r)^n - F(r-)^n, distinct r (float64)."""
    order = np.argsort(r)
    F = np.cumsum(p[order])
    Fm = np.concatenate([[0.0], F[:-1]])
    law = np.empty_like(p)
    law[order] = F**n - Fm**n
    keep = law > 0
    return law @ g, law @ r, float(np.sum(law[keep] * np.log(law[keep] / p[keep])))


@pytest.mark.parametrize("name", ensembles.OBJECTIVES)
def test_exact_curves_equal_numpy_enumeration(name, ens, small_tree, gold):
    """Each objective of the trained ensemble: pi*(beta) (E gold, E objective, KL), gold at KL targets, and best-of-n
    equal a float64 NumPy enumeration of the 40 sequences; small n by brute force over all n-tuples."""
    px = ensembles.objective_proxy(ens, name, small_tree.log_p, uwo_lambda=2.0)
    ev = ensembles.evaluate(small_tree, gold, px.reward, BETAS, NS, kl_targets=(0.5, 1.0, 50.0), name=name)
    p, r, g = _p0(small_tree), np.asarray(px.reward, np.float64), np.asarray(gold, np.float64)
    want = np.asarray([_pi_star_np(p, r, g, b) for b in BETAS])
    np.testing.assert_array_equal(ev.exact.param, BETAS)
    # float32 tree: log-weights r / beta to ~1e-6 relative, KL from sums of 40 terms
    np.testing.assert_allclose(np.c_[ev.exact.gold, ev.exact.proxy, ev.exact.KL], want, rtol=2e-4, atol=2e-5)
    for t, gk, bk in zip(ev.kl_targets, ev.gold_at_kl, ev.beta_at_kl):
        if t == 50.0:  # beyond -log pi0 of the argmax: unreachable, refused (nan), not a wrong number
            assert np.isnan(gk) and np.isnan(bk) and -np.log(p[np.argmax(r)]) < 50
            continue
        g_b, _, kl_b = _pi_star_np(p, r, g, bk)
        assert kl_b == pytest.approx(t, rel=1e-3) and gk == pytest.approx(g_b, rel=1e-3, abs=1e-4)
    bon = np.asarray([_bon_brute(p, r, g, n) if n <= 3 else _bon_order(p, r, g, n) for n in NS])
    np.testing.assert_allclose(np.c_[ev.bon.gold, ev.bon.proxy, ev.bon.KL], bon, rtol=2e-4, atol=2e-5)
    pts, at = ensembles.evaluation_rows(ev)  # the lab's row forms carry the same numbers
    np.testing.assert_allclose([q["gold"] for q in pts], np.r_[ev.exact.gold, ev.bon.gold], rtol=1e-12)
    assert [q["method"] for q in pts] == ["exact"] * 4 + ["bon"] * 5 and at[2]["gold"] is None and at[2]["reason"]
    # the peaks: the enumeration's largest gold (BETAS descending: KL rising), no KL where it is the last point
    for pk, w, at in ((ev.exact_peak, want, BETAS), (ev.bon_peak, bon, NS)):
        i = int(np.argmax(w[:, 0]))
        assert pk.gold == pytest.approx(w[i, 0], rel=2e-4) and pk.at == at[i] and pk.points == len(at)
        if i == len(at) - 1:
            assert pk.KL is None and "still rising" in pk.reason
        else:
            assert pk.KL == pytest.approx(w[i, 2], rel=2e-4, abs=2e-5) and pk.reason == ""


def test_best_of_n_with_ties_by_brute_force(small_tree, gold):
    """wco of members with many equal values (rounded tables): ties split by pi0, as the brute force does."""
    raw = jnp.round(jax.random.normal(jax.random.key(6), (3, 40)) * 1.5)
    e = ensembles.ensemble_from_tables(raw, small_tree.log_p)
    table = ensembles.objective(e.members, "wco")
    assert np.unique(np.asarray(table)).size < 30  # ties
    ev = ensembles.evaluate(small_tree, gold, table, (), (1, 2, 3), kl_targets=())
    p, r, g = _p0(small_tree), np.asarray(table, np.float64), np.asarray(gold, np.float64)
    want = np.asarray([_bon_brute(p, r, g, n) for n in (1, 2, 3)])
    np.testing.assert_allclose(np.c_[ev.bon.gold, ev.bon.proxy, ev.bon.KL], want, rtol=2e-4, atol=2e-5)


def test_rl_never_beats_the_exact_optimum(ens, small_tree, gold):
    """RLOO with a tabular policy from pi0 on each objective: J(pi) = E[objective] - beta KL at every exact
    evaluation is at most J(pi*) = beta log E_pi0 exp(objective / beta) (NumPy float64) up to float32 round-off,
    and RL does move towards it (the check is not vacuous)."""
    cfg = rl.RLConfig(CFG.vocab, CFG.depth, batch=128, learning_rate=0.1, num_steps=60, eval_every=20)
    train = rl.make_train(cfg, rl.tabular_logits)
    p = _p0(small_tree)
    for name in ensembles.OBJECTIVES:
        table = ensembles.objective_proxy(ens, name, small_tree.log_p).reward
        r = np.asarray(table, np.float64)
        for beta in (0.3, 1.0):
            task = rl.RLTask(lab_tree.mdp_tree(small_tree, gold, table), jnp.float32(beta))
            _, _, ev = train(jax.random.key(7), small_tree.log_pi0, task)
            lw = np.log(p) + r / beta
            j_star = beta * (lw.max() + np.log(np.sum(np.exp(lw - lw.max()))))
            np.testing.assert_allclose(np.asarray(ev.optimum), j_star, rtol=1e-5, atol=1e-5)
            tol = 1e-5 * (1 + abs(j_star))  # float32 objective of a float32 policy
            assert np.all(np.asarray(ev.objective) <= j_star + tol), (name, beta, np.asarray(ev.objective), j_star)
            assert float(ev.objective[-1]) > float(ev.objective[0]) + 0.1 * (j_star - float(ev.objective[0]))


def test_versus_and_paired():
    beta = np.asarray([1.0, 0.5])  # pi*'s sweep: KL rising
    c = ensembles.Curve(beta, np.asarray([0.1, 0.4]), np.asarray([0.2, 0.1]), np.zeros(2))  # peak inside
    d = ensembles.Curve(beta, np.asarray([0.2, 0.9]), np.asarray([0.1, 0.3]), np.zeros(2))  # still rising
    e = ensembles.Curve(beta, np.asarray([0.3, 0.5]), np.asarray([0.4, 0.2]), np.zeros(2))  # peak inside
    peaks = {"c": summary.Peak(0.2, 0.1, 1.0, "", 2), "e": summary.Peak(0.4, 0.3, 1.0, "", 2),
             "d": summary.Peak(0.3, None, 0.5, "gold still rising at the curve's last point (KL 0.9): no peak within "
                               "it", 2)}
    mk = lambda cv, g, pk: ensembles.Evaluation("x", cv, cv, np.asarray([1.0]), np.asarray([g]),  # noqa: E731
                                                np.asarray([0.5]), pk, pk, [])
    for name, cv in (("c", c), ("d", d), ("e", e)):  # the peak of a Curve: lab.summary.peak of its rows
        pts, _ = ensembles.evaluation_rows(mk(cv, 0.0, None))
        assert summary.peak([q for q in pts if q["method"] == "exact"]) == peaks[name]
    v = ensembles.versus(mk(c, 0.3, peaks["c"]), mk(e, 0.1, peaks["e"]))
    assert v.peak_gold == pytest.approx(0.2 - 0.4) and v.KL_at_peak == pytest.approx(0.1 - 0.3)
    np.testing.assert_allclose(v.gold_at_kl, [0.2])
    v = ensembles.versus(mk(c, 0.3, peaks["c"]), mk(d, 0.1, peaks["d"]))  # d's peak KL is beyond its curve
    assert v.peak_gold == pytest.approx(0.2 - 0.3) and np.isnan(v.KL_at_peak)
    v = ensembles.versus(mk(c, 0.3, peaks["c"]), mk(c, 0.3, summary.Peak(None, None, None, "no point", 0)))
    assert np.isnan(v.peak_gold) and np.isnan(v.KL_at_peak)
    with pytest.raises(ValueError, match="method"):
        ensembles.versus(mk(c, 0.3, peaks["c"]), mk(c, 0.3, peaks["c"]), method="rl")
    rows = [dict(kind="headline", seed=s, noise="n", proxy=px, pairs=10, method="exact", beta=None,
                 quantity="peak_gold", at=None, value=val, how="h") for s, px, val in
            [(0, "single", 1.0), (0, "wco", 1.5), (1, "single", 2.0), (1, "wco", None)]]
    rows[3]["reason"] = "no point"
    out = ensembles.paired(rows, "single")
    assert [r["value"] for r in out] == [0.5, None] and out[1]["reason"] == "no point"
    assert all(r["quantity"] == "peak_gold_minus" and r["minus"] == "single" for r in out)
    s = summary.summarise(out)
    assert s[0]["mean"] == 0.5 and s[0]["seeds"] == 1
