"""The prefix (KV) cache of the decoders: new tokens after cached keys/values equal the one causal pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax.models import GPTNeoXConfig, GPTNeoXModel, KVCache, LlamaConfig, LlamaModel, apply_cached

V = 23
ARCHS = {
    # partial rotary (rotary_pct 0.5), sequential residual: both GPT-NeoX code paths of the cache
    "gpt_neox": GPTNeoXModel(GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, rotary_pct=0.5)),
    "gpt_neox_seq": GPTNeoXModel(GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, rotary_pct=1.0,
                                               use_parallel_residual=False)),
    # grouped-query attention: 4 query heads on 2 key/value heads
    "llama": LlamaModel(LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64, head_dim=8)),
}


def setup(arch, dtype=jnp.float32):
    module = ARCHS[arch].clone(dtype=dtype)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, V, (3, 9)), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(2), ids, jnp.ones(ids.shape, jnp.int32))
    params = jax.tree.map(lambda p: p + 0.05 * np.random.default_rng(3).normal(size=p.shape).astype(p.dtype), params)
    return module, params, ids


def one_pass(module, params, ids, mask=None):
    """The plain causal pass over whole rows (parity-tested against PyTorch): states [B, T, D] and KVCache."""
    out, cache = apply_cached(module, params, ids, mask)
    return out.last_hidden_state, cache


@pytest.mark.parametrize("arch", list(ARCHS))
def test_causal_continuation_equals_one_pass(arch):
    """Rows run as 4 tokens, then 2 more after their cache, then 3 more (positions offset by the cache):
    the states of every token and the keys/values (rotated at the right positions) equal the one pass."""
    module, params, ids = setup(arch)

    @jax.jit
    def both(params, ids):
        out1, c1 = apply_cached(module, params, ids[:, :4])
        out2, c2 = apply_cached(module, params, ids[:, 4:6], cache=c1)
        c12 = c1.concat(c2)
        out3, c3 = apply_cached(module, params, ids[:, 6:], cache=c12)
        return one_pass(module, params, ids), (out1, out2, out3), (c12, c3)

    (want, want_cache), (out1, out2, out3), (c12, c3) = both(params, ids)
    got = jnp.concatenate([out1.last_hidden_state, out2.last_hidden_state, out3.last_hidden_state], axis=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    for (k, v), (wk, wv) in zip(c12.concat(c3).kv, want_cache.kv):
        np.testing.assert_allclose(k, wk, rtol=0, atol=2e-5)
        np.testing.assert_allclose(v, wv, rtol=0, atol=2e-5)
    assert out2.last_hidden_state.shape == (3, 2, 32) and len(out3.hidden_states) == 3


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_padded_cache_and_new_tokens(arch):
    """A left-padded cached prefix (positions count its real tokens only) and right-padded new tokens:
    the real new tokens' states equal the one pass of the row with the same padding."""
    module, params, ids = setup(arch)
    mask = np.ones(ids.shape, np.int32)
    mask[1, :3] = 0          # row 1: 3 left pads inside the cached part
    mask[2, 8:] = 0          # row 2: the last new token is padding

    @jax.jit
    def both(params, ids, mask):
        _, c = apply_cached(module, params, ids[:, :5], mask[:, :5])
        return one_pass(module, params, ids, mask)[0], apply_cached(module, params, ids[:, 5:], mask[:, 5:], c)[0]

    want, out = both(params, ids, mask)
    real = mask[:, 5:] > 0
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[real], np.asarray(want)[:, 5:][real], rtol=0,
                               atol=2e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_siblings_equal_each_child_run_alone(arch):
    """siblings=True: S alternative next tokens after each cached row, in one call, each equal to the one
    pass over [prefix, that token]; KVCache.siblings gives each child's cache (row b * S + s), and a
    causal continuation from it equals the one pass over [prefix, child, next]."""
    module, params, ids = setup(arch)
    prefix, kids = ids[:, :5], jnp.asarray([[4, 0, 17, 9], [1, 1, 22, 3], [8, 6, 5, 2]], jnp.int32)
    nxt = jnp.full((12, 1), 7, jnp.int32)

    @jax.jit
    def both(params):
        _, c = apply_cached(module, params, prefix)
        out, new = apply_cached(module, params, kids, cache=c, siblings=True)
        grown = c.siblings(new)
        after, _ = apply_cached(module, params, nxt, cache=grown)
        alone = [one_pass(module, params, jnp.concatenate([prefix, kids[:, s:s + 1], nxt[:3]], axis=1))
                 for s in range(4)]
        return out, grown, after, alone

    out, grown, after, alone = both(params)
    for s in range(4):
        want, want_cache = alone[s]
        np.testing.assert_allclose(out.last_hidden_state[:, s], want[:, 5], rtol=0, atol=2e-5)
        np.testing.assert_allclose(after.last_hidden_state[s::4, 0], want[:, 6], rtol=0, atol=2e-5)
        for (k, v), (wk, wv) in zip(grown.kv, want_cache.kv):
            np.testing.assert_allclose(k[s::4], wk[:, :6], rtol=0, atol=2e-5)
            np.testing.assert_allclose(v[s::4], wv[:, :6], rtol=0, atol=2e-5)
    assert grown.mask.shape == (12, 6)


def test_distinct_hint_with_siblings():
    """GPT-NeoX's first-layer per-token hint (distinct ids [U], src [B, S]) under a cache: the same states."""
    module, params, ids = setup("gpt_neox")
    kids = jnp.tile(jnp.arange(6, dtype=jnp.int32)[None], (3, 1))

    @jax.jit
    def both(params):
        _, c = apply_cached(module, params, ids[:, :4])
        return (apply_cached(module, params, kids, cache=c, siblings=True)[0],
                apply_cached(module, params, kids, cache=c, siblings=True, distinct=(jnp.arange(6), kids))[0])

    plain, hinted = both(params)
    np.testing.assert_allclose(hinted.last_hidden_state, plain.last_hidden_state, rtol=0, atol=2e-6)


def test_cache_refuses_index():
    module, params, ids = setup("llama")
    _, c = jax.jit(lambda p, x: apply_cached(module, p, x))(params, ids[:, :4])
    with pytest.raises(ValueError, match="KV cache"):
        module.apply(params, ids[:, 4:], None, index=jnp.zeros(3, jnp.int32), cache=c)
    assert isinstance(c, KVCache) and c.kv[0][0].shape == (3, 4, 2, 8)
