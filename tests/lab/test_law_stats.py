"""pi0's law statistics (`lab.tree.law_stats`) against hand values, brute force over subsets and the chain rule
on an enumerated LM tree; the default Markov source (`lab.lm`) gives a spread law where the old one did not."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.lab import lm, tree


def test_hand_computable_law():
    """p = 1/2, 1/4, 1/8, 1/8 (shuffled) and one impossible sequence: H = 1.75 ln 2, perplexity 2^1.75, top 1/2;
    the top 3 hold 7/8 < 0.9 so n90 = 4; N counts the impossible one. [1/2, 7/16, 1/16]: 15/16 >= 0.9 at k = 2."""
    s = tree.law_stats(np.log([0.125, 0.5, 0.125, 0.25]).tolist()[:2] + [-np.inf] + np.log([0.125, 0.25]).tolist())
    assert s.num == 5 and s.n90 == 4 and s.top_mass == 0.5
    assert s.entropy == pytest.approx(1.75 * math.log(2), rel=1e-15)
    assert s.perplexity == pytest.approx(2**1.75, rel=1e-15)
    assert tree.law_stats(np.log([1 / 16, 0.5, 7 / 16])).n90 == 2
    one = tree.law_stats(np.array([0.0, -np.inf]))  # a point mass
    assert (one.entropy, one.perplexity, one.top_mass, one.n90, one.num) == (0.0, 1.0, 1.0, 1, 2)


@pytest.mark.parametrize("num", [10, 1000, 54_241])
def test_uniform_law(num):
    """Uniform over N: H = log N, perplexity N, top 1/N, n90 = ceil(0.9 N) (exactly 0.9 N when an integer: the sum
    of 0.9 N terms 1/N that rounds just below 0.9 still counts)."""
    s = tree.law_stats(np.full(num, -math.log(num), np.float32))
    assert s.entropy == pytest.approx(math.log(num), rel=1e-12) and s.perplexity == pytest.approx(num, rel=1e-12)
    assert s.top_mass == pytest.approx(1 / num, rel=1e-12) and s.n90 == math.ceil(0.9 * num - 1e-9) and s.num == num


def test_against_brute_force_subsets():
    """Random laws of 12 sequences (some impossible), unnormalised log-probabilities: n90 = the size of the smallest
    of all 4,096 subsets holding >= 90%; entropy by math.fsum over the normalised law; shifting log_p changes nothing."""
    rng = np.random.default_rng(0)
    subsets = np.array(list(itertools.product((0, 1), repeat=12)), bool)  # [4096, 12]
    for trial in range(20):
        lp = rng.normal(0.0, 1.0 + trial / 4, 12) + 3.0  # not normalised: the law is softmax(lp)
        lp[rng.random(12) < 0.2] = -np.inf
        if np.isneginf(lp).all():
            continue
        p = np.exp(lp - lp.max())
        p = p / math.fsum(p)
        held = subsets.astype(np.float64) @ p
        want_n90 = int(subsets[held >= 0.9 - 1e-12].sum(axis=1).min())
        want_h = -math.fsum(q * math.log(q) for q in p if q > 0)
        s = tree.law_stats(lp)
        assert s.n90 == want_n90 and s.num == 12
        assert s.entropy == pytest.approx(want_h, rel=1e-12, abs=1e-15)
        assert s.perplexity == pytest.approx(math.exp(want_h), rel=1e-12)
        assert s.top_mass == pytest.approx(p.max(), rel=1e-12)
        assert tree.law_stats(lp - 7.5) == pytest.approx(s)


def test_tree_against_chain_rule():
    """On an enumerated tree (A=5, L=4: 341 sequences; random per-prefix laws, `tree.terminal_logprobs` multiplies
    them out): the entropy of the sequence law equals the chain rule's sum over prefixes of P(prefix) x
    H(pi(. | prefix)), float64; n90 and top mass from a plain Python sort and loop."""
    rng = np.random.default_rng(1)
    a, depth = 5, 4
    log_pi = []
    for k in range(depth):
        z = 2.0 * rng.normal(size=((a - 1) ** k, a))
        log_pi.append(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    with jax.enable_x64(True):
        log_p = np.asarray(tree.terminal_logprobs(tuple(jnp.asarray(lp) for lp in log_pi)))
    s = tree.law_stats(log_p)
    h, reach = 0.0, np.ones(1)
    for lp in log_pi:
        h -= math.fsum(reach @ (np.exp(lp) * lp))
        reach = (reach[:, None] * np.exp(lp[:, :-1])).reshape(-1)  # the non-EOS children, row-major
    assert s.num == tree.num_terminals(a, depth) == 341
    assert s.entropy == pytest.approx(h, rel=1e-12) and s.perplexity == pytest.approx(math.exp(h), rel=1e-12)
    p = sorted(np.exp(log_p), reverse=True)
    k, held = 0, 0.0
    while held < 0.9:
        held += p[k]
        k += 1
    assert s.n90 == k and s.top_mass == pytest.approx(p[0], rel=1e-12) and 1 < k < 300


def test_refuses_what_is_not_a_law():
    for bad in ([np.nan, 0.0], [np.inf, 0.0], [-np.inf, -np.inf], [], [[0.0]]):
        with pytest.raises(ValueError, match="law_stats"):
            tree.law_stats(np.array(bad, np.float64))


# ---------------------------------------------------------------- the default source is spread
SOURCE_SEEDS = range(8)


def source_laws(depth: int, **source) -> list[tree.LawStats]:
    """The Markov source's exact law over every sequence (A=16), for the keys `experiment.build_base` gives the
    source of seeds 0..7 (key(seed) -> fold_in 0 -> split 3 -> first)."""
    toks = tree.terminal_tokens(16, depth)
    logprob = jax.jit(lm.source_logprob)
    out = []
    for seed in SOURCE_SEEDS:
        k_src = jax.random.split(jax.random.fold_in(jax.random.key(seed), 0), 3)[0]
        out.append(tree.law_stats(logprob(lm.markov_source(k_src, 16, **source), toks)))
    return out


def test_default_source_is_spread():
    """A=16, L=4 (the lab's size; 54,241 sequences): under the defaults no sequence of the source's law holds more
    than 2.5% (the trained LM's law follows its source's: see lm.markov_source), the law's perplexity is over 10^4
    and >= 15,000 sequences hold 90%; the old settings (sharpness 2, no EOS bias) put > 5% on one sequence for most
    seeds and > 50% for seed 0 (the empty sequence)."""
    new = source_laws(4)
    assert max(s.top_mass for s in new) < 0.025, [s.top_mass for s in new]
    assert min(s.perplexity for s in new) > 1e4 and min(s.n90 for s in new) >= 15_000
    old = source_laws(4, sharpness=2.0, eos_bias=0.0)
    assert old[0].top_mass > 0.5 and sum(s.top_mass > 0.05 for s in old) > len(old) / 2


def test_source_checks():
    lm.check_source(0.0, -lm.SOURCE_MAX)  # uniform rows, EOS as unlikely as float32 says: accepted
    for sharp, bias, what in ((-0.1, 0.0, "sharpness"), (math.inf, 0.0, "sharpness"), (101.0, 0.0, "sharpness"),
                              (1.0, math.nan, "eos_bias"), (1.0, -1e3, "eos_bias")):
        with pytest.raises(ValueError, match=what):
            lm.check_source(sharp, bias)
    # sharpness 0 is the uniform law over each row; a large EOS bias, the empty sequence alone
    src = lm.markov_source(jax.random.key(0), 4, sharpness=0.0, eos_bias=0.0)
    np.testing.assert_allclose(np.exp(src.log_p_next), 0.25, rtol=1e-6)
    src = lm.markov_source(jax.random.key(0), 4, eos_bias=lm.SOURCE_MAX)
    assert tree.law_stats(lm.source_logprob(src, tree.terminal_tokens(4, 2))).top_mass == pytest.approx(1.0)
