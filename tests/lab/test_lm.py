"""The lab LM: training fits the Markov source (exact KL by enumeration), sampling and log-probabilities agree."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from goodhart_jax.lab import lm

CFG = lm.LMConfig(vocab=5, depth=3, layers=1, width=32, heads=2)
STEPS, BATCH, LR = 200, 128, 1e-2
LOGITS = jax.jit(lm.logits, static_argnames="cfg")
SEQ_LOGPROB = jax.jit(lambda params, x: lm.sequence_logprob(lm.make_logits(CFG), params, x))


def all_sequences(vocab: int, depth: int) -> np.ndarray:
    """Every EOS-continued sequence, by brute force: k non-EOS tokens then EOS (k < L), or L non-EOS tokens."""
    eos, out = vocab - 1, []
    for k in range(depth + 1):
        for prefix in itertools.product(range(vocab - 1), repeat=k):
            out.append(list(prefix) + [eos] * (depth - k))
    return np.array(out, np.int32)


@pytest.fixture(scope="module")
def source():
    return lm.markov_source(jax.random.key(0), CFG.vocab)


@pytest.fixture(scope="module")
def trained(source):
    return lm.train_lm(jax.random.key(1), CFG, source, STEPS, batch=BATCH, lr=LR)


def test_config_checks():
    with pytest.raises(ValueError, match="arch"):
        lm.LMConfig(arch="gpt2")
    with pytest.raises(ValueError, match="heads"):
        lm.LMConfig(width=64, heads=3)
    assert (CFG.bos, CFG.eos, CFG.n) == (5, 4, 4)


def test_token_mask():
    x = jnp.array([[0, 1, 2], [4, 4, 4], [1, 4, 4], [3, 3, 4]])
    np.testing.assert_array_equal(lm.token_mask(x, 4), [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_source_logprob_is_a_distribution(source):
    """Brute force: the source's probabilities of all 85 terminal sequences sum to 1, and match a hand loop."""
    x = all_sequences(CFG.vocab, CFG.depth)
    assert len(x) == 1 + 4 + 16 + 64
    lp = np.asarray(lm.source_logprob(source, jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-5)  # float32 sums
    p1, pn = np.asarray(source.log_p_first), np.asarray(source.log_p_next)
    for row, got in zip(x[::7], lp[::7]):
        want, prev = p1[row[0]], row[0]
        for tok in row[1:]:
            if prev == CFG.eos:
                break
            want, prev = want + pn[prev, tok], tok
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_sample_source_frequencies(source):
    """Monte Carlo: frequencies of the source's draws match its exact probabilities (4 sigma per sequence)."""
    x = all_sequences(CFG.vocab, CFG.depth)
    p = np.exp(np.asarray(lm.source_logprob(source, jnp.asarray(x)), np.float64))
    num = 40_000
    draws = np.asarray(lm.sample_source(jax.random.key(5), source, num, CFG.depth))
    index = {tuple(r): i for i, r in enumerate(x)}
    counts = np.bincount([index[tuple(r)] for r in draws], minlength=len(x))
    se = np.sqrt(p * (1 - p) / num)
    assert np.all(np.abs(counts / num - p) <= 4 * se + 1e-12)


def test_training_fits_the_source_exactly_measured(source, trained):
    """KL(Tr(source) || Tr(LM)) by enumerating every sequence is small, and every reachable state fits.

    The LM's sequence probabilities also sum to 1 over the enumeration (a check of `sequence_logprob`).
    """
    x = jnp.asarray(all_sequences(CFG.vocab, CFG.depth))
    ls = np.asarray(lm.source_logprob(source, x), np.float64)
    ll = np.asarray(SEQ_LOGPROB(trained.params, x), np.float64)
    np.testing.assert_allclose(np.exp(ll).sum(), 1.0, rtol=1e-5)
    kl = np.sum(np.exp(ls) * (ls - ll))
    # Untrained, the same KL is large: the test can fail.
    l0 = np.asarray(SEQ_LOGPROB(jax.jit(lm.init, static_argnames='cfg')(jax.random.key(1), CFG), x), np.float64)
    kl0 = np.sum(np.exp(ls) * (ls - l0))
    assert kl < 0.02 < 0.5 < kl0, (kl, kl0)
    # Per state: the next-token distribution after every non-EOS prefix the source reaches with prob > 1%.
    p1, pn = np.exp(np.asarray(source.log_p_first, np.float64)), np.exp(np.asarray(source.log_p_next, np.float64))
    checked = 0
    xs = np.asarray(x)
    lg = LOGITS(trained.params, lm.with_bos(x, CFG.bos), CFG)  # [85, L + 1, A]; row i, position k: after xs[i, :k]
    for k in range(CFG.depth):
        for prefix in itertools.product(range(CFG.n), repeat=k):
            reach = np.prod([p1[prefix[0]]] + [pn[a, b] for a, b in zip(prefix, prefix[1:])]) if k else 1.0
            if reach < 0.01:
                continue
            row = np.flatnonzero((xs[:, :k] == prefix).all(axis=1))[0]
            q = np.asarray(jax.nn.softmax(lg[row, k]), np.float64)
            want = pn[prefix[-1]] if k else p1
            assert np.sum(want * np.log(want / q)) < 0.05, prefix
            checked += 1
    assert checked >= 5


def test_same_key_same_params(source, trained):
    again = lm.train_lm(jax.random.key(1), CFG, source, STEPS, batch=BATCH, lr=LR)
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    assert trained.loss.shape == (STEPS,) and trained.loss[-1] < trained.loss[0]


W_TRUE = np.array([1.0, -2.0, 0.5], np.float32)
VAL_LOSSES = {  # the checkpoint hook's validation losses: (jax for adamw_scan, float64 NumPy for the reference)
    # least halfway to W_TRUE: falls, then rises as the fit passes it (the least is interior: step 21)
    "interior": (lambda w: jnp.sum(jnp.square(w - 0.5 * W_TRUE)), lambda w: np.sum(np.square(w - 0.5 * W_TRUE))),
    # falls all along, but nan once |w| > 1.4: a nan never counts, the last finite checkpoint is kept (step 28)
    "nan_later": (lambda w: jnp.where(jnp.linalg.norm(w) > 1.4, jnp.nan, -jnp.linalg.norm(w)),
                  lambda w: np.nan if np.linalg.norm(w) > 1.4 else -np.linalg.norm(w)),
    # falls all along: the last step, at the end of the shorter last chunk, is kept (step 50)
    "last": (lambda w: -jnp.linalg.norm(w), lambda w: -np.linalg.norm(w)),
    # a tie everywhere: the first checkpoint is kept
    "constant": (lambda w: jnp.ones(()), lambda w: 1.0),
    # nothing finite: stop 0, the initial parameters
    "all_nan": (lambda w: jnp.full((), jnp.nan), lambda w: np.nan),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", sorted(VAL_LOSSES))
def test_adamw_scan_checkpoint_hook_equals_a_step_by_step_optax_run(case, jit):
    """adamw_scan with val_loss = a plain optax AdamW loop, one jitted step at a time, that records the parameters
    at every checkpoint (every = 7 does not divide 50 steps: the last step is one too) and their validation loss
    in float64 NumPy: the kept step is the first argmin (nan as +inf; 0 when none is finite), the kept parameters
    that checkpoint's (the initial ones at 0), the losses and validation losses those of the loop. Without val_loss:
    the last step's parameters, stop = steps, no validation loss."""
    steps, every, lr, wd = 50, 7, 0.05, 0.01
    val_jax, val_np = VAL_LOSSES[case]
    p0 = {"w": jnp.zeros(3)}

    def loss_fn(p, k):  # least squares toward W_TRUE on a fresh batch of 8 Gaussian rows a step
        x = jax.random.normal(k, (8, 3))
        return jnp.mean(jnp.square(x @ (p["w"] - W_TRUE)))

    keys = jax.random.split(jax.random.key(0), steps)
    run = functools.partial(lm.adamw_scan, loss_fn, lr=lr, weight_decay=wd, every=every)
    run = jax.jit(run, static_argnames="val_loss") if jit else run
    fit = run(p0, keys, val_loss=lambda p: val_jax(p["w"]))

    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, alpha=0.1), weight_decay=wd)

    @jax.jit
    def step(p, state, k):
        value, g = jax.value_and_grad(loss_fn)(p, k)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state, value

    p, state, saved, values = p0, opt.init(p0), {0: p0}, []
    for s, k in enumerate(keys, start=1):
        p, state, v = step(p, state, k)
        values.append(float(v))
        if s % every == 0 or s == steps:
            saved[s] = p
    marks = [s for s in saved if s]
    assert marks == [7, 14, 21, 28, 35, 42, 49, 50]  # every 7 steps, and the last
    val = np.asarray([val_np(np.asarray(saved[s]["w"], np.float64)) for s in marks])
    finite = np.isfinite(val)
    want = marks[int(np.argmin(np.where(finite, val, np.inf)))] if finite.any() else 0
    assert want == {"interior": 21, "nan_later": 28, "last": steps, "constant": every, "all_nan": 0}[case]  # the case is as meant
    assert int(fit.stop) == want and fit.stop.dtype == jnp.int32
    # float32 in both; the scan and the stepped loop may round differently
    np.testing.assert_allclose(fit.params["w"], saved[want]["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.val_loss, val, rtol=1e-5, atol=1e-6)  # nan where the reference is nan
    np.testing.assert_allclose(fit.loss, values, rtol=1e-5, atol=1e-6)
    plain = lm.adamw_scan(loss_fn, p0, keys, lr, wd)
    assert int(plain.stop) == steps and plain.val_loss.shape == (0,)
    np.testing.assert_allclose(plain.params["w"], saved[steps]["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.loss, values, rtol=1e-5, atol=1e-6)


def test_adamw_scan_refuses_every_below_one():
    with pytest.raises(ValueError, match="every"):
        lm.adamw_scan(lambda p, k: jnp.sum(p ** 2), jnp.ones(2), jax.random.split(jax.random.key(0), 3), 0.1, 0.0,
                      val_loss=jnp.sum, every=0)


def test_sample_matches_sequence_logprob(trained):
    """Monte Carlo: the LM's ancestral samples have the frequencies exp(sequence_logprob) (4 sigma)."""
    fn = lm.make_logits(CFG)
    x = all_sequences(CFG.vocab, CFG.depth)
    p = np.exp(np.asarray(SEQ_LOGPROB(trained.params, jnp.asarray(x)), np.float64))
    num = 20_000
    draws = np.asarray(jax.jit(lm.sample, static_argnums=(1, 3, 4))(jax.random.key(3), fn, trained.params, num,
                                                                       CFG.depth))
    index = {tuple(r): i for i, r in enumerate(x)}
    counts = np.bincount([index[tuple(r)] for r in draws], minlength=len(x))
    se = np.sqrt(p * (1 - p) / num)
    assert np.all(np.abs(counts / num - p) <= 4 * se + 1e-4)


def test_llama_block_runs():
    cfg = lm.LMConfig(vocab=5, depth=3, layers=1, width=16, heads=2, arch="llama")
    params = jax.jit(lm.init, static_argnames="cfg")(jax.random.key(0), cfg)
    out = LOGITS(params, jnp.array([[5, 0, 1], [5, 4, 4]]), cfg)
    assert out.shape == (2, 3, 5) and np.all(np.isfinite(out))
    # causal: changing a later token leaves earlier logits unchanged
    out2 = LOGITS(params, jnp.array([[5, 0, 2], [5, 4, 4]]), cfg)
    np.testing.assert_array_equal(out[:, :2], out2[:, :2])
