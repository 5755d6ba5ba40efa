"""The exact tree of an LM: brute-force enumeration, mdp's layout, checkpoint policies against PyTorch."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import io, mdp
from goodhart_jax.lab import lm, tree
from goodhart_jax.models import CheckpointError

CFG = lm.LMConfig(vocab=4, depth=3, layers=2, width=16, heads=2)
INIT = jax.jit(lm.init, static_argnames=("cfg", "dtype"))


@pytest.fixture(scope="module")
def base():
    """A random float32 LM and its tree."""
    params = INIT(jax.random.key(0), CFG)
    return params, tree.exact_tree(lm.make_logits(CFG), params, CFG.depth)


def brute_force_sequences(vocab: int, depth: int) -> list[tuple[int, ...]]:
    """Every terminal by itertools, in mdp level order: k non-EOS tokens then EOS (k < L), then length L."""
    n = vocab - 1
    out = [p + (n,) for k in range(depth) for p in itertools.product(range(n), repeat=k)]
    return out + list(itertools.product(range(n), repeat=depth))


def test_tree_equals_brute_force_enumeration_float64():
    """Each sequence's probability, multiplied out token by token from the LM run on that sequence alone,
    equals the tree's terminal probability to 1e-10; the probabilities sum to 1; mdp reads the same layout."""
    with jax.enable_x64(True):
        params = INIT(jax.random.key(3), CFG, jnp.float64)
        t = tree.exact_tree(lm.make_logits(CFG), params, CFG.depth, chunk=5)  # 5: chunks with padding
        assert all(lp.dtype == jnp.float64 for lp in t.log_pi0)
        seqs = brute_force_sequences(CFG.vocab, CFG.depth)
        assert len(seqs) == tree.num_terminals(4, 3) == 1 + 3 + 9 + 27 == t.tokens.shape[0]
        logits = jax.jit(lm.logits, static_argnames="cfg")
        want = []
        for s in seqs:
            lg = np.asarray(logits(params, jnp.asarray([[CFG.bos, *s]]), CFG)[0], np.float64)
            logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
            want.append(sum(logp[t_, tok] for t_, tok in enumerate(s)))
        np.testing.assert_allclose(np.asarray(t.log_p), want, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.exp(np.asarray(t.log_p)).sum(), 1.0, rtol=0, atol=1e-12)
        # the terminal rows are those sequences, EOS-continued
        np.testing.assert_array_equal(t.tokens, [list(s) + [3] * (3 - len(s)) for s in seqs])
        # mdp's own reach computation on the same log_pi0 gives the same terminal probabilities
        mt = tree.mdp_tree(t, jnp.zeros(len(seqs)), jnp.zeros(len(seqs)))
        got = tree.flatten(mdp.terminal_probs(mt, tuple(jnp.exp(lp) for lp in t.log_pi0)))
        np.testing.assert_allclose(got, np.exp(want), rtol=0, atol=1e-12)


@pytest.mark.parametrize("vocab,depth", [(5, 4), pytest.param(2, 3, marks=pytest.mark.slow),
                                         pytest.param(6, 1, marks=pytest.mark.slow)])  # ~12 s of CPU each
def test_one_pass_levels_equal_each_prefix_run_alone_float64(vocab, depth):
    """Both evaluations of every prefix: log_pi0_levels (the lab LM has a KV-cache form: each prefix one
    token after its parent's cache, chunk 7 splitting the tree into subtrees) and row_levels (level k read
    off position k of the longest prefixes' pass); each entry equals the LM run on [BOS, prefix] alone (a
    separate forward per prefix), float64 to 1e-10."""
    cfg = lm.LMConfig(vocab=vocab, depth=depth, layers=2, width=16, heads=2)
    with jax.enable_x64(True):
        params = INIT(jax.random.key(7), cfg, jnp.float64)
        assert lm.prefix_policy(lm.make_logits(cfg)) is not None
        both = [jax.jit(f, static_argnums=(0, 2, 3))(lm.make_logits(cfg), params, depth, 7)
                for f in (tree.log_pi0_levels, tree.row_levels)]
        logits = jax.jit(lm.logits, static_argnames="cfg")
        for k in range(depth):
            pre = list(itertools.product(range(vocab - 1), repeat=k))
            for i, p in enumerate(pre):
                lg = np.asarray(logits(params, jnp.asarray([[cfg.bos, *p]]), cfg)[0, -1], np.float64)
                want = lg - np.log(np.exp(lg).sum())
                for got in both:
                    assert got[k].shape == (len(pre), vocab)
                    np.testing.assert_allclose(np.asarray(got[k][i]), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("vocab,depth,chunk,arch", [(5, 3, 8192, "gpt_neox"), (16, 3, 8192, "gpt_neox"),
                                                    (16, 3, 100, "llama"), (5, 4, 9, "gpt_neox")])
def test_cached_levels_equal_the_row_pass_float32(vocab, depth, chunk, arch):
    """The KV-cached evaluation (each prefix once) equals the one pass over whole rows to float32 round-off
    (max abs difference of the log-probabilities <= 1e-5), the lab LM's default width, both architectures;
    chunks 100 and 9 evaluate the deeper levels as lax.map over subtrees (9: 2 subtrees a chunk)."""
    cfg = lm.LMConfig(vocab=vocab, depth=depth, arch=arch)
    params = INIT(jax.random.key(4), cfg)
    fn = lm.make_logits(cfg)
    run = functools.partial(jax.jit, static_argnums=(0, 2, 3))
    cached = run(tree.log_pi0_levels)(fn, params, depth, chunk)
    rows = run(tree.row_levels)(fn, params, depth, chunk)
    assert len(cached) == depth
    for k, (a, b) in enumerate(zip(cached, rows)):
        assert a.shape == b.shape == ((vocab - 1) ** k, vocab)
        assert float(jnp.abs(a - b).max()) <= 1e-5, k
        assert float(jnp.std(b)) > 0.1  # log-probabilities that vary (not a degenerate comparison)


@pytest.mark.parametrize("n,depth,chunk", [(15, 5, 8192), (15, 4, 8192), (15, 5, 2048), (4, 4, 9), (4, 4, 7),
                                           (1, 6, 8), (7, 6, 8192), (3, 1, 2), (15, 5, 1)])
def test_split_levels_bounds_every_chunk(n, depth, chunk):
    """split_levels: m is the first level whose subtrees' deepest level fits in a chunk, r divides the n^m
    subtrees and r subtrees' deepest level fits (r = 1 when even one subtree of level m does not)."""
    m, r = tree.split_levels(n, depth, chunk)
    deep = depth - 1
    assert n ** (deep - m) <= chunk or m == deep
    assert m == 0 or n ** (deep - m + 1) > chunk
    assert n**m % r == 0 and (r * n ** (deep - m) <= chunk or r == 1)
    assert not any(n**m % q == 0 and q * n ** (deep - m) <= chunk for q in range(r + 1, n**m + 1))


def test_policies_without_a_cache_take_the_row_pass():
    """A logits_fn with no KV-cache form (a plain function of (params, ids)) gives the same tree by the
    row pass; prefix_policy finds the lab LM's form and nothing on a plain function."""
    cfg = lm.LMConfig(vocab=4, depth=3, layers=1, width=16, heads=2)
    params = INIT(jax.random.key(5), cfg)
    plain = lambda p, ids: lm.logits(p, ids, cfg)  # noqa: E731
    assert lm.prefix_policy(plain) is None and lm.prefix_policy(lm.make_logits(cfg)) is not None
    a = tree.exact_tree(plain, params, 3)
    b = tree.exact_tree(lm.make_logits(cfg), params, 3)
    np.testing.assert_allclose(a.log_p, b.log_p, rtol=0, atol=1e-5)


@pytest.mark.parametrize("vocab,depth", [(6, 3), (2, 4), (7, 1)])
def test_terminal_index_inverts_terminal_tokens(vocab, depth):
    x = tree.terminal_tokens(vocab, depth)
    assert x.shape == (tree.num_terminals(vocab, depth), depth)
    np.testing.assert_array_equal(tree.terminal_index(x, vocab), np.arange(x.shape[0]))
    assert len({tuple(r) for r in np.asarray(x)}) == x.shape[0]
    for k, lev in enumerate(tree.levels(jnp.arange(x.shape[0]), vocab, depth)):
        assert lev.shape == ((vocab - 1) ** k,)


def test_sampled_sequences_land_on_their_terminals(base):
    """Monte Carlo: lm.sample's draws, mapped by terminal_index, have the tree's probabilities (4 sigma)."""
    params, t = base
    fn = lm.make_logits(CFG)
    num = 20_000
    draws = jax.jit(lm.sample, static_argnums=(1, 3, 4))(jax.random.key(1), fn, params, num, CFG.depth)
    counts = np.bincount(np.asarray(tree.terminal_index(draws, CFG.vocab)), minlength=t.tokens.shape[0])
    p = np.exp(np.asarray(t.log_p, np.float64))
    assert np.all(np.abs(counts / num - p) <= 4 * np.sqrt(p * (1 - p) / num) + 1e-4)


def test_mdp_tree_large_beta_is_pi0(base):
    """The exact optimum at huge beta keeps pi0: E[gold] and E[proxy] are the pi0 expectations."""
    _, t = base
    gold = jax.random.normal(jax.random.key(1), t.log_p.shape)
    proxy = gold + jax.random.normal(jax.random.key(2), t.log_p.shape)
    res = jax.jit(mdp.soft_optimum)(tree.mdp_tree(t, gold, proxy), jnp.float32(1e6))  # one program, not op by op
    p = np.exp(np.asarray(t.log_p, np.float64))
    np.testing.assert_allclose(res.E_V, p @ np.asarray(gold), atol=1e-4)
    np.testing.assert_allclose(res.E_U, p @ np.asarray(proxy), atol=1e-4)
    assert tree.spec(t) == mdp.TreeSpec(4, 3, eos=True)


def test_sizes_too_large_are_refused():
    assert tree.check_size(16, 5) == 813_616
    with pytest.raises(io.UsageError, match=r"A=16, depth L=7 give 183063616 terminal sequences.*4194304 = 2\^22"):
        tree.check_size(16, 7)
    with pytest.raises(ValueError, match="at most 100$"):
        tree.check_size(4, 5, limit=100)
    with pytest.raises(ValueError, match="A >= 2"):
        tree.check_size(1, 3)
    for vocab, depth in ((3, 10**9), (2**62, 2**62), (2, 2**22)):  # refused without forming n^L (was a hang)
        with pytest.raises(io.UsageError, match=r"more than 4194304 = 2\^22 terminal sequences"):
            tree.check_size(vocab, depth)
    assert tree.check_size(2, 2**22 - 1) == 2**22  # A=2: N = L + 1


# ---------------------------------------------------------------- checkpoint policies
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_checkpoint_policy_matches_torch_renormalised(tmp_path, arch):
    """A tiny random causal-LM checkpoint on a sub-vocabulary: each level of the tree is the torch
    model's own softmax after [start, prefix], restricted to the listed ids and renormalised."""
    from goodhart_jax.models.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "lm", arch=arch, layout="causal_lm", seed=2)
    tokens = (7, 50, 3, 99)  # A = 4 lab tokens; model id 99 acts as EOS
    pol = lm.load_policy(ckpt.path, tokens, start=None if arch == "gpt_neox" else 11)
    assert pol.start == (0 if arch == "gpt_neox" else 11)  # GPT-NeoX: the config's bos_token_id
    assert lm.prefix_policy(pol.logits_fn) is not None     # evaluated by the KV cache, each prefix once
    t = tree.exact_tree(pol.logits_fn, pol.params, 3)
    rows = jax.jit(tree.row_levels, static_argnums=(0, 2))(pol.logits_fn, pol.params, 3)
    for a, b in zip(t.log_pi0, rows):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    ref = ckpt.torch_model
    n = len(tokens) - 1
    for k in range(3):
        pre = list(itertools.product(range(n), repeat=k))
        ids = torch.as_tensor([[pol.start] + [tokens[a] for a in p] for p in pre], dtype=torch.long)
        with torch.no_grad():
            h = ref.backbone(input_ids=ids).last_hidden_state[:, -1]
            full = torch.softmax(ref.lm_head(h).double(), dim=-1).numpy()
        sub = full[:, list(tokens)]
        want = np.log(sub / sub.sum(axis=1, keepdims=True))
        np.testing.assert_allclose(np.asarray(t.log_pi0[k], np.float64), want, rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.exp(np.asarray(t.log_p, np.float64)).sum(), 1.0, atol=1e-5)


def test_checkpoint_policy_refusals(tmp_path):
    from goodhart_jax.models.testing import make_tiny_checkpoint

    rm = make_tiny_checkpoint(tmp_path / "rm", arch="gpt_neox", layout="oasst")
    with pytest.raises(CheckpointError, match="not a causal LM"):
        lm.load_policy(rm.path, (1, 2, 3))
    ck = make_tiny_checkpoint(tmp_path / "lm", arch="gpt_neox", layout="causal_lm")
    for bad in [(1,), (1, 2, 1), (1, 103)]:
        with pytest.raises(io.UsageError, match="distinct ids in"):
            lm.load_policy(ck.path, bad)
    with pytest.raises(io.UsageError, match="no start token"):
        lm.load_policy(ck.path, (1, 2), start=500)


@pytest.mark.parametrize("vocab,depth,chunk", [(5, 3, 8192), (4, 4, 20)])
def test_cached_terminal_scores_equal_each_terminal_scored_alone(vocab, depth, chunk):
    """A lab reward model's score of every terminal from one walk of the tree (each prefix's A children as
    siblings after its cache; chunk 20: subtrees in lax.map) equals rewards.score_terminals, which runs
    every terminal [BOS, x_1.., EOS-padded] alone, to float32 round-off."""
    from goodhart_jax.lab import rewards
    from goodhart_jax.models import ARCHITECTURES, apply_cached

    cfg = lm.LMConfig(vocab=vocab, depth=depth, layers=2, width=32, heads=4)
    params = rewards.rm_init_jit(jax.random.key(6), cfg)
    module = ARCHITECTURES[cfg.arch].module(lm.backbone_config(cfg))

    def run(p, ids, cache, siblings):
        out, new = apply_cached(module, {"params": p["backbone"]}, ids, None, cache, siblings)
        return out.last_hidden_state, new

    def head(p, h):
        return (h @ p["score"]["kernel"])[..., 0] + p["score"]["bias"][0]

    got = jax.jit(tree.cached_terminal_scores, static_argnums=(0, 1, 3, 4, 5))(run, head, params, vocab, depth,
                                                                                chunk)
    want = rewards.score_terminals(rewards.make_rm_reward(cfg), params, tree.terminal_tokens(vocab, depth))
    assert got.shape == want.shape == (tree.num_terminals(vocab, depth),)
    assert float(jnp.std(want)) > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
