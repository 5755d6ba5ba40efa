"""Rotary cos/sin tables: one table for every path (constant mask, traced mask, packed positions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from goodhart_jax import models
from goodhart_jax.models import layers
from goodhart_jax.models.testing import make_tiny_checkpoint


def _padded_mask(t=16):
    cols = np.arange(t)[None]
    lengths = np.array([t, 3, 9])
    return np.concatenate([cols < lengths[:, None], cols >= t - lengths[:, None]]).astype(np.int32)  # [6, T]


@pytest.mark.parametrize("r, theta", [(8, 10000.0), (32, 500.0), (128, 500000.0)])
def test_table_equals_traced_tables_and_float64(r, theta):
    """rotary_from_mask with a NumPy mask (program constants) and a traced one (a gather) gives the traced
    rotary_cos_sin bitwise, and cos/sin of the float32 angle in float64 to 2 ulp."""
    t = 1024
    mask = _padded_mask(t)
    traced = jax.jit(lambda m: layers.rotary_cos_sin(layers.positions_from_mask(m), r, theta))(mask)
    const = jax.jit(lambda: layers.rotary_from_mask(mask, r, theta))()
    gathered = jax.jit(lambda m: layers.rotary_from_mask(m, r, theta))(mask)
    for a, b, c in zip(traced, const, gathered):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
        np.testing.assert_array_equal(np.asarray(c), np.asarray(a))
    # independent reference: the same float32 angles (p * inv_freq, as PyTorch forms them), cos/sin in float64
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    inv = (np.float32(1) / np.float32(theta) ** (np.arange(0, r, 2, dtype=np.float32) / np.float32(r)))
    ang = (pos[..., None].astype(np.float32) * inv.astype(np.float32)).astype(np.float64)
    ang = np.concatenate([ang, ang], axis=-1)
    for got, ref in zip(const, (np.cos(ang), np.sin(ang))):
        np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - ref), 2 * np.spacing(np.float32(1)) + 1e-30)


def test_packed_positions_read_the_same_table():
    """rotary_at (packed rows' positions) = the rows' tables at those positions."""
    t, r = 32, 16
    pos = np.array([[0, 5, 31, 17, 17, 2]], np.int32)
    got = jax.jit(lambda p: layers.rotary_at(p, t, r, 10000.0))(pos)
    full = layers.rotary_from_mask(np.ones((1, t), np.int32), r, 10000.0)
    for g, f in zip(got, full):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(f)[0][pos[0]][None])


def test_known_mask_compiles_no_cos_and_scores_alike(tmp_path):
    """A reward function jitted with an all-ones mask known while tracing (the search's) holds no cos or
    sin in its compiled program (XLA would otherwise evaluate them in every rotary fusion) and scores as
    the traced mask does, bitwise."""
    ckpt = make_tiny_checkpoint(tmp_path / "rm", "gpt_neox", "oasst", seed=3)
    model = models.load_model(ckpt.path)
    fn = models.make_reward_fn(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, model.vocab_size, (4, 12)), jnp.int32)
    ones = np.ones(ids.shape, np.int32)
    known = jax.jit(lambda p, x: fn(p, x, ones))
    text = known.lower(model.params, ids).compile().as_text()
    assert " cosine(" not in text and " sine(" not in text
    traced = jax.jit(fn)(model.params, ids, jnp.asarray(ones))
    np.testing.assert_array_equal(np.asarray(known(model.params, ids)), np.asarray(traced))
