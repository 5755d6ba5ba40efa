"""lab.error_maps: each map's law of eps under pi0 against its family (SciPy's quantiles, the lab's tail verdict),
iid against the lab's old draw bit for bit, determinism, and what each ranking promises (a function of the
tokens; monotone in length; the n-gram's sequences on top), each checked by brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from goodhart_jax import tails
from goodhart_jax.lab import error_maps, experiment, lm, rewards, tree

A, L = 8, 5  # N = 19,608 sequences: enough distinct pi0 atoms for a tail verdict on 20,000 pi0 draws
SCIPY = {"normal": stats.norm(), "student_t:df=2": stats.t(2), "student_t:df=0.7,loc=1,scale=3": stats.t(0.7, 1, 3),
         "student_t:df=30": stats.t(30), "laplace:scale=2": stats.laplace(scale=2), "logistic": stats.logistic(),
         "gumbel:loc=1": stats.gumbel_r(loc=1), "exponential:rate=2": stats.expon(scale=0.5),
         "lognormal:scale=0.5": stats.lognorm(0.5), "pareto:alpha=1.5": stats.pareto(1.5),
         "weibull:concentration=0.5": stats.weibull_min(0.5)}
RANKED = ("feature", "length", "token:id=3", "token:id=3+5")


@pytest.fixture(scope="module")
def lab():
    """pi0 = a random Markov source (lab.lm's defaults) on the enumerated tree: tokens [N, L], log_p [N] float32."""
    toks = tree.terminal_tokens(A, L)
    return toks, lm.source_logprob(lm.markov_source(jax.random.key(1), A), toks)


_cache = {}


def eps_of(lab, spec, family, scale=1.0, key=2):
    k = (spec, family, scale, key)
    if k not in _cache:
        _cache[k] = np.asarray(error_maps.error(jax.random.key(key), spec, *lab, family, scale, A))
    return _cache[k]


# ---------------------------------------------------------------- the family's quantile function
@pytest.mark.parametrize("family", list(SCIPY))
def test_quantile_matches_scipy_far_into_both_tails(family):
    """F^{-1} at levels 1e-30 .. 1 - 1e-30, given as (u, 1 - u): SciPy's ppf below 1/2 and isf above (float64).
    rtol 1e-12: closed forms and a 200-halving bisection are exact to a few ulps; Student-t near its median is
    resolved to ~1e-7 absolute (its log tail function is flat there: log 1/2 - O(x)), below float32's ulp of eps."""
    u = np.array([1e-30, 1e-12, 1e-6, 1e-3, 0.02, 0.3, 0.45, 0.5])
    lower, upper = np.concatenate([u, 1 - u[::-1]]), np.concatenate([1 - u, u[::-1]])
    d = SCIPY[family]
    want = np.where(lower < 0.5, d.ppf(lower), d.isf(upper))
    got = error_maps.quantile(family, lower, upper)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-7 if "student_t" in family else 0)


def test_quantile_beyond_float64_is_infinite():
    """Student-t(0.7) at 1 - 1e-300 lies past 1e300 (P(T > x) ~ x^-0.7): +-inf, not a wrong finite number; the
    normal's is finite (37.05)."""
    got = error_maps.quantile("student_t:df=0.7", np.array([1e-300, 1.0]), np.array([1.0, 1e-300]))
    assert got[0] == -np.inf and got[1] == np.inf
    np.testing.assert_allclose(error_maps.quantile("normal", np.array([1.0]), np.array([1e-300])),
                               stats.norm.isf(1e-300), rtol=1e-12)
    with pytest.raises(ValueError, match="family"):
        error_maps.quantile(tails.Family("nope", {}, 0.0), np.array([0.5]))


# ---------------------------------------------------------------- the law of eps under pi0
def reference(eps, log_p, family, scale):
    """scale F^{-1}(midpoint of the pi0 CDF step) of every sequence, ranked by eps itself (float64, SciPy)."""
    order = np.argsort(eps, kind="stable")
    p = np.exp(np.asarray(log_p, np.float64)[order])
    p /= p.sum()
    lower, upper = np.cumsum(p) - p / 2, np.cumsum(p[::-1])[::-1] - p / 2
    d = SCIPY[family]
    return order, scale * np.where(lower < 0.5, d.ppf(lower), d.isf(upper))


@pytest.mark.parametrize("spec, family", [(s, f) for s in RANKED for f in ("normal", "student_t:df=2")]
                         + [("feature", "gumbel:loc=1"), ("feature", "pareto:alpha=1.5")])
def test_pi0_law_is_the_family_discretised(lab, spec, family):
    """Every value is scale F^{-1} of its pi0-CDF midpoint (SciPy, rtol 2e-6: eps is float32); then the pi0
    q-quantile of eps (rewards.weighted_quantile) is scale F^{-1}(m) with |m - q| <= p_max / 2, p_max the largest
    pi0 mass of a sequence (0.0084 here: a sequence is one atom, the tolerance the enumeration allows)."""
    toks, lp = lab
    scale = 1.0
    eps = eps_of(lab, spec, family, scale)
    assert eps.dtype == np.float32 and eps.shape == (toks.shape[0],) and np.all(np.isfinite(eps))
    order, want = reference(eps, lp, family, scale)
    np.testing.assert_allclose(eps[order], want, rtol=2e-6, atol=1e-6)
    p = np.exp(np.asarray(lp, np.float64))
    half = p.max() / p.sum() / 2
    q = np.array([0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999])
    got = rewards.weighted_quantile(eps, lp, q)
    d = SCIPY[family]
    lo, hi = scale * d.ppf(np.maximum(q - half, 0)), scale * d.ppf(np.minimum(q + half, 1))
    assert np.all((lo - 1e-6 * np.abs(lo) <= got) & (got <= hi + 1e-6 * np.abs(hi))), (q, lo, got, hi)


@pytest.mark.parametrize("family, verdict", [("normal", "light"), ("student_t:df=2", "heavy")])
def test_tail_verdict_on_pi0s_law(lab, family, verdict):
    """Under the feature map (the other rankings' laws are the same transform: test_pi0_law_is_the_family_discretised),
    the lab's own diagnosis (rewards.diagnose_proxy: tail_index.diagnose on 20,000 i.i.d. pi0 draws, repeats
    included) of X = eps (a direct proxy on a zero gold) reads the family's tail: heavy for Student-t(2) (xi near
    1/2), light for the normal (xi <= 0)."""
    toks, lp = lab
    eps = jnp.asarray(eps_of(lab, "feature", family))
    r = rewards.diagnose_proxy(jax.random.key(5), eps, jnp.zeros_like(eps), lp, heldout_pairs=10)
    assert r.verdict == verdict, (r.verdict, r.xi)
    assert (r.xi > 0.25) if verdict == "heavy" else (r.xi < 0.1), r.xi


# ---------------------------------------------------------------- iid: the old draw
def test_iid_is_the_old_draw_bit_for_bit(lab):
    """error_maps iid = scale * Z, Z ~ family (the lab's draw before the maps); experiment.annotator_error's default
    (and "iid" with a tree) = the same of fold_in(key, 0), exactly."""
    toks, lp = lab
    n, key = toks.shape[0], jax.random.key(9)
    for family in ("normal", "student_t:df=2"):
        old = 1.3 * tails.parse(family).sample(key, (n,))
        assert np.array_equal(np.asarray(error_maps.error(key, "iid", toks, lp, family, 1.3)), np.asarray(old))
        old0 = 1.3 * tails.parse(family).sample(jax.random.fold_in(key, 0), (n,))
        assert np.array_equal(np.asarray(experiment.annotator_error(key, family, n, 1.3)), np.asarray(old0))
        t = tree.LMTree((jnp.zeros((1, A)),), toks, lp)
        assert np.array_equal(np.asarray(experiment.annotator_error(key, family, n, 1.3, "iid", t)), np.asarray(old0))


# ---------------------------------------------------------------- what each ranking promises
@pytest.mark.parametrize("spec", ["iid", "token:id=3"])
def test_same_key_same_eps(lab, spec):
    """The same key gives the same eps (feature's: the cached one, computed in another test or here), another key
    another (the rankings share feature_scores(key): token's stands for them)."""
    toks, lp = lab
    a = eps_of(lab, spec, "student_t:df=2")
    b = np.asarray(error_maps.error(jax.random.key(2), spec, toks, lp, "student_t:df=2", 1.0, A))
    c = np.asarray(error_maps.error(jax.random.key(4), spec, toks, lp, "student_t:df=2", 1.0, A))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_feature_is_a_function_of_the_tokens(lab):
    """Learnable: eps is monotone in the random feature f(x), which is each sequence's own score (the same scored
    alone, 1e-5: float32 batching), and shuffling the sequences (tokens with their log_p) shuffles eps with them,
    up to float32: a shuffled batch rounds f differently, which swaps a few near-ties of f (4 of 19,608 seen), each
    swap exchanging two neighbouring levels (|difference| ~ one pi0 step: 1e-4 relative)."""
    toks, lp = lab
    eps = eps_of(lab, "feature", "student_t:df=2")
    f = np.asarray(error_maps.feature_scores(jax.random.key(2), toks, A))
    order = np.argsort(f, kind="stable")
    assert np.all(np.diff(eps[order]) >= 0)
    for i in (0, 17, 5000):
        alone = error_maps.feature_scores(jax.random.key(2), toks[i:i + 1], A)
        np.testing.assert_allclose(alone, f[i:i + 1], rtol=1e-5, atol=1e-6)
    perm = np.random.default_rng(0).permutation(toks.shape[0])
    shuffled = np.asarray(error_maps.error(jax.random.key(2), "feature", toks[perm], lp[perm], "student_t:df=2",
                                           1.0, A))
    same = shuffled == eps[perm]
    assert same.mean() > 0.999
    np.testing.assert_allclose(shuffled, eps[perm], rtol=1e-3)


def test_length_map_is_monotone_in_length(lab):
    """Every sequence of length k has eps <= every sequence of length k + 1 (lengths counted in Python)."""
    toks, lp = lab
    eps = eps_of(lab, "length", "student_t:df=2")
    n_real = np.array([list(row).index(A - 1) if A - 1 in row else L for row in np.asarray(toks).tolist()])
    np.testing.assert_array_equal(error_maps.lengths(toks, A), n_real)
    for k in range(L):
        assert eps[n_real == k].max() <= eps[n_real == k + 1].min()


@pytest.mark.parametrize("ngram", [(3,), (3, 5)])
def test_token_map_puts_the_ngram_on_top(lab, ngram):
    """The sequences holding the n-gram (found in Python) take exactly the top pi0 mass m of the law: all their
    values are above scale F^{-1}(1 - m), every other sequence's below."""
    toks, lp = lab
    spec = "token:id=" + "+".join(map(str, ngram))
    eps = eps_of(lab, spec, "student_t:df=2")
    rows = np.asarray(toks).tolist()
    has = np.array([any(tuple(r[j:j + len(ngram)]) == ngram for j in range(L - len(ngram) + 1)) for r in rows])
    np.testing.assert_array_equal(error_maps.contains(toks, ngram), has)
    np.testing.assert_array_equal(error_maps.hack_set(spec, toks), has)
    p = np.exp(np.asarray(lp, np.float64))
    m = p[has].sum() / p.sum()
    cut = stats.t(2).isf(m)
    assert 0 < m < 1 and eps[has].min() > cut * (1 - 1e-6) and eps[~has].max() < cut * (1 + 1e-6)


def test_mass_zero_sequences_stay_inside(lab):
    """A sequence of pi0 mass 0 (log_p = -inf) gets a finite value within the others' range."""
    toks, lp = lab
    lp = np.asarray(lp).copy()
    lp[::7] = -np.inf
    eps = np.asarray(error_maps.error(jax.random.key(2), "feature", toks, lp, "student_t:df=2", 1.0, A))
    inside = eps[np.isfinite(lp)]
    assert np.all(np.isfinite(eps)) and eps.min() >= inside.min() and eps.max() <= inside.max()


# ---------------------------------------------------------------- specs and refusals
def test_parse_specs_and_refusals(lab):
    toks, lp = lab
    assert str(error_maps.parse("token:id=3+5")) == "token:id=3+5" and str(error_maps.parse(" feature ")) == "feature"
    assert error_maps.parse("feature:width=64,heads=4").params == dict(layers=1, width=64, heads=4)
    assert error_maps.is_iid("iid") and not error_maps.is_iid("length")
    for spec, says in [("", "empty error map"), ("bogus", "unknown error map 'bogus'"),
                       ("iid:x=1", "unknown parameter 'x'"), ("token:id=x", "id='x' is not an integer"),
                       ("token:id=-1", "id=-1 must be >= 0"), ("feature:width=33", "width=33"),
                       ("feature:layers=1,layers=2", "given twice"), ("length:heads", "expected param=value")]:
        with pytest.raises(ValueError, match=says):
            error_maps.parse(spec)
    with pytest.raises(ValueError, match=r"id=7 must be non-EOS tokens in \[0, 6\]"):
        error_maps.error(jax.random.key(0), "token:id=7", toks, lp, "normal", 1.0, A)
    with pytest.raises(ValueError, match=r"id=2\+7 must be non-EOS tokens in \[0, 6\]"):
        error_maps.check("token:id=2+7", A)
    assert error_maps.check("token:id=2+6", A).params["id"] == (2, 6)
    with pytest.raises(ValueError, match="unknown family"):
        error_maps.error(jax.random.key(0), "feature", toks, lp, "nope", 1.0, A)
    with pytest.raises(ValueError, match="error_map 'feature' needs pi0's tree"):
        experiment.annotator_error(jax.random.key(0), "normal", 10, 1.0, "feature")


def markov_base(key, vocab, depth) -> experiment.Base:
    """A lab Base without training: pi0 = a Markov source's tree (levels from its rows, terminal_logprobs), gold a
    random vector standardised under pi0 (build_proxy's direct proxy needs no more)."""
    src = lm.markov_source(key, vocab)
    n = vocab - 1
    log_pi0 = tuple(src.log_p_first[None] if k == 0 else src.log_p_next[tree.prefixes(n, k)[:, -1]]
                    for k in range(depth))
    t = tree.LMTree(log_pi0, tree.terminal_tokens(vocab, depth), tree.terminal_logprobs(log_pi0))
    raw = jax.random.normal(jax.random.fold_in(key, 1), t.log_p.shape)
    m = rewards.pi0_moments(raw, t.log_p)
    return experiment.Base(None, None, t, rewards.Gold((raw - m.mean) / m.sd, raw, m.mean, m.sd), None)


def test_build_proxy_uses_the_map():
    """build_proxy's eps (Proxy.error) is annotator_error's for the map: the old draw by default, the map's on the
    tree otherwise; a heavy map past float32's lab on this tree is refused (ValueError naming the map)."""
    key = jax.random.key(0)
    base = markov_base(key, 4, 3)
    np.testing.assert_allclose(base.tree.log_p, lm.source_logprob(lm.markov_source(key, 4), base.tree.tokens),
                               rtol=1e-6, atol=1e-6)  # the hand-built tree is the source's
    k = jax.random.fold_in(key, 1)
    n = base.tree.log_p.shape[0]
    old = experiment.build_proxy(k, base, "normal", 1.0, "direct", None)
    assert np.array_equal(np.asarray(old.proxy.error),
                          np.asarray(tails.parse("normal").sample(jax.random.fold_in(k, 0), (n,))))
    built = experiment.build_proxy(k, base, "normal", 1.0, "direct", None, error_map="feature")
    want = error_maps.error(jax.random.fold_in(k, 0), "feature", base.tree.tokens, base.tree.log_p, "normal", 1.0, 4)
    np.testing.assert_array_equal(np.asarray(built.proxy.error), want)
    with pytest.raises(ValueError, match="error map feature, noise normal, scale 1e"):  # |eps| ~ 2e16 > ERROR_MAX
        experiment.build_proxy(k, base, "normal", 1e16, "direct", None, error_map="feature")
