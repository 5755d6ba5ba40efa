"""Data-parallel and parameter-sharded scoring over 2 host devices (in a subprocess)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from goodhart_jax import models
from goodhart_jax.models.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import sys, numpy as np, jax
    from goodhart_jax import models
    assert len(jax.devices()) == 2, jax.devices()
    model = models.load_model(sys.argv[1])
    ids, mask = np.load(sys.argv[2]), np.load(sys.argv[3])
    mesh = models.data_mesh()
    # min_size=1: every matrix with an even axis is split over the 2 devices.
    params = models.shard_params(model.params, mesh, min_size=1)
    sharded = [x for x in jax.tree.leaves(params) if len(x.sharding.device_set) == 2
               and not x.sharding.is_fully_replicated]
    assert sharded, "no parameter was sharded"
    with jax.default_matmul_precision("highest"):
        out = models.score_array(models.make_reward_fn(model), params, ids, mask, batch_size=3, mesh=mesh)
    np.save(sys.argv[4], out)
""")


def test_two_device_scoring_matches_one_device(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "c", "gpt_neox", "oasst", seed=4)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 103, (5, 10))
    mask = np.ones_like(ids, dtype=np.int32)
    mask[2, 7:] = 0
    mask[4, :3] = 0
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = subprocess.run([sys.executable, "-c", CHILD, str(ckpt.path), str(tmp_path / "ids.npy"),
                          str(tmp_path / "mask.npy"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    model = models.load_model(ckpt.path)
    import jax
    with jax.default_matmul_precision("highest"):
        want = np.asarray(jax.jit(models.make_reward_fn(model))(model.params, ids, mask))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_score_array_buckets_do_not_retrace(tmp_path):
    """Batches of different lengths reuse one trace per bucket; results equal a direct call."""
    import jax
    ckpt = make_tiny_checkpoint(tmp_path / "c", "llama", "seq_cls", seed=6)
    model = models.load_model(ckpt.path)
    fn = models.make_reward_fn(model)
    traces = []

    def counted(params, ids, mask):
        traces.append(ids.shape)
        return fn(params, ids, mask)

    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.vocab_size, (7, 20))
    mask = np.zeros((7, 20), dtype=np.int32)
    lengths = [3, 4, 2, 18, 5, 20, 6]
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    with jax.default_matmul_precision("highest"):
        got = models.score_array(counted, model.params, ids, mask, batch_size=2, buckets=(8, 20))
        want = np.asarray(jax.jit(fn)(model.params, ids, mask))
    # Batches: rows (0,1)->8, (2,3)->20, (4,5)->20, (6)->8: two shapes, two traces.
    assert sorted(set(traces)) == [(2, 8), (2, 20)] and len(traces) == 2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
