"""Searching the lab's sequences for a high proxy: exhaustive top-k and GCG, against enumeration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import search as gcg
from goodhart_jax.lab import tree as lab_tree
from goodhart_jax.lab.search import eos_masked, exhaustive, rm_scorer as rm_scorer_of, search_proxy
from goodhart_jax.scorer import Scorer

VOCAB, DEPTH = 5, 3  # N = 1 + 4 + 16 + 64 = 85 sequences


def mlp_scorer(key, vocab=VOCAB, depth=DEPTH, width=16):
    """A small nonlinear reward model of one-hot inputs: v . tanh(W vec(onehot * mask))."""
    kw, kv = jax.random.split(key)
    params = {"W": jax.random.normal(kw, (depth * vocab, width)) / 2.0, "v": jax.random.normal(kv, (width,))}

    def on_onehot(p, onehot, mask):
        x = (onehot * mask[..., None]).reshape(onehot.shape[0], -1)
        return jnp.tanh(x @ p["W"]) @ p["v"]

    def on_tokens(p, ids, mask):
        return on_onehot(p, jax.nn.one_hot(ids, vocab), mask)

    return Scorer(params, on_tokens, on_onehot, vocab)


def tables(scorer):
    seqs = jnp.asarray(lab_tree.terminal_tokens(VOCAB, DEPTH))
    masked = eos_masked(scorer, VOCAB - 1)
    proxy = jax.jit(masked.score_tokens)(scorer.params, seqs, jnp.ones(seqs.shape, jnp.int32))
    gold = jax.random.normal(jax.random.key(9), proxy.shape)
    log_p0 = jax.nn.log_softmax(jax.random.normal(jax.random.key(8), proxy.shape))
    return seqs, proxy, gold, log_p0


def test_eos_masked_ignores_tokens_after_eos():
    scorer = mlp_scorer(jax.random.key(0))
    m = eos_masked(scorer, VOCAB - 1)
    a = jnp.asarray([[1, 4, 4], [2, 0, 4]])
    b = jnp.asarray([[1, 4, 2], [2, 0, 4]])  # differs only after the first EOS
    ones = jnp.ones(a.shape, jnp.int32)
    np.testing.assert_array_equal(m.score_tokens(scorer.params, a, ones), m.score_tokens(scorer.params, b, ones))
    oh = jax.nn.one_hot(b, VOCAB)
    np.testing.assert_allclose(m.score_onehot(scorer.params, oh, ones), m.score_tokens(scorer.params, b, ones),
                               rtol=1e-6)
    assert not np.allclose(scorer.score_tokens(scorer.params, a, ones), scorer.score_tokens(scorer.params, b, ones))


def test_exhaustive_top_k():
    _, proxy, gold, log_p0 = tables(mlp_scorer(jax.random.key(0)))
    top = exhaustive(proxy, gold, log_p0, 5)
    ref = np.argsort(-np.asarray(proxy), kind="stable")[:5]
    np.testing.assert_array_equal(top.index, ref)
    np.testing.assert_array_equal(top.rank, np.arange(5))  # continuous scores: no ties
    np.testing.assert_array_equal(top.gold, np.asarray(gold)[ref])


def test_search_finds_the_enumerated_argmax():
    """GCG on the model's gradient reaches the proxy argmax of all 85 sequences; its scores equal the table's."""
    scorer = mlp_scorer(jax.random.key(1))
    _, proxy, gold, log_p0 = tables(scorer)
    cfg = gcg.SearchConfig(length=DEPTH, topk=3, num_candidates=16, num_iters=25, schedule="gcg", edits=1)
    f = search_proxy(jax.random.key(2), cfg, scorer, proxy, gold, log_p0, vocab=VOCAB, num_restarts=4)
    np.testing.assert_allclose(f.score, f.found.proxy, rtol=1e-5)  # the search's view = the enumeration
    assert np.all(np.asarray(f.found.proxy) <= float(f.best.proxy[0]))
    assert int(np.min(f.found.rank)) == 0
    i = int(np.argmin(f.found.rank))
    assert int(f.found.index[i]) == int(f.best.index[0]) and float(f.found.gold[i]) == float(gold[f.best.index[0]])
    np.testing.assert_array_equal(lab_tree.terminal_index(jnp.asarray(f.tokens), VOCAB), f.found.index)


def test_rm_scorer_and_search_on_a_lab_reward_model():
    """The lab reward model as a Scorer: one-hot path = rm_reward on every sequence; GCG finds its argmax."""
    from goodhart_jax.lab import lm, rewards

    cfg = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)  # N = 1 + 3 + 9 + 27 = 40
    params = rewards.rm_init(jax.random.key(0), cfg)
    sc = rm_scorer_of(cfg, params)
    seqs = lab_tree.terminal_tokens(cfg.vocab, cfg.depth)
    ones = jnp.ones(seqs.shape, jnp.int32)
    proxy = jax.jit(lambda p, x: rewards.rm_reward(p, x, cfg))(params, seqs)
    via_onehot = jax.jit(sc.score_onehot)(params, jax.nn.one_hot(seqs, cfg.vocab), ones)
    np.testing.assert_allclose(via_onehot, proxy, rtol=1e-5, atol=1e-6)  # float32, same decoder
    # the token path: models.reward_scorer (last layer at the pooled position only) = rm_reward (every position)
    np.testing.assert_allclose(jax.jit(sc.score_tokens)(params, seqs, ones), proxy, rtol=1e-5, atol=1e-6)
    assert rewards.rm_model(cfg, params).layout == "lab" and sc.vocab_size == cfg.vocab
    gold = jax.random.normal(jax.random.key(9), proxy.shape)
    log_p0 = jax.nn.log_softmax(jax.random.normal(jax.random.key(8), proxy.shape))
    scfg = gcg.SearchConfig(length=cfg.depth, topk=2, num_candidates=8, num_iters=15, schedule="gcg", edits=1)
    f = search_proxy(jax.random.key(3), scfg, sc, proxy, gold, log_p0, vocab=cfg.vocab, num_restarts=3)
    np.testing.assert_allclose(f.score, f.found.proxy, rtol=1e-5, atol=1e-6)
    assert int(np.min(f.found.rank)) == 0


@pytest.mark.slow  # ~40 s of CPU: compiling GCG with a base model
def test_lm_scorer_and_kl_penalised_search():
    """The lab LM as GCG's base: its one-hot path = lm.sequence_logprob = the tree's log pi0 on all 40
    sequences; with penalty beta, GCG reaches the enumerated argmax of proxy + beta log pi0 (= proxy - beta KL
    of a point mass), which differs from the proxy argmax."""
    from goodhart_jax.lab import lm, rewards
    from goodhart_jax.lab.search import lm_scorer

    cfg = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)
    params = lm.init(jax.random.key(4), cfg)
    base = lm_scorer(cfg, params)
    tree = lab_tree.exact_tree(lm.make_logits(cfg), params, cfg.depth)
    seqs = tree.tokens
    ones = jnp.ones(seqs.shape, jnp.int32)
    np.testing.assert_allclose(jax.jit(base.score_tokens)(params, seqs, ones), tree.log_p, rtol=0, atol=1e-5)
    np.testing.assert_allclose(jax.jit(base.score_onehot)(params, jax.nn.one_hot(seqs, cfg.vocab), ones),
                               tree.log_p, rtol=0, atol=1e-5)  # float32, same decoder

    rm_cfg = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)
    rm = rewards.rm_init(jax.random.key(5), rm_cfg)
    proxy = 3.0 * jax.jit(lambda p, x: rewards.rm_reward(p, x, rm_cfg))(rm, seqs)
    gold = jax.random.normal(jax.random.key(9), proxy.shape)
    beta = 1.0
    target = int(np.argmax(np.asarray(proxy) + beta * np.asarray(tree.log_p)))
    assert target != int(np.argmax(np.asarray(proxy)))  # the penalty changes the answer here
    scfg = gcg.SearchConfig(length=cfg.depth, topk=2, num_candidates=8, num_iters=15, schedule="gcg", edits=1)
    f = search_proxy(jax.random.key(6), scfg, rm_scorer_of(rm_cfg, rm), proxy / 3.0, gold, tree.log_p,
                     vocab=cfg.vocab, base=base, penalty=beta / 3.0, num_restarts=3)
    assert target in set(np.asarray(f.found.index).tolist())
    np.testing.assert_allclose(f.found.log_p0, np.asarray(tree.log_p)[np.asarray(f.found.index)])
