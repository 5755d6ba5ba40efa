"""Optional: the real published reward models, when present on disk.

Set GOODHART_OASST_RM to a local copy of OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5,
and/or GOODHART_STARLING_RM + GOODHART_STARLING_BASE to berkeley-nest/Starling-RM-7B-alpha
and the Llama-2-7b-chat config directory. Nothing is downloaded.
"""
import os

import jax
import numpy as np
import pytest

from goodhart_jax import models


def _check(model):
    rng = np.random.default_rng(0)
    seq = rng.integers(0, model.vocab_size, 6)
    ids = np.zeros((3, 9), dtype=np.int64)
    mask = np.zeros((3, 9), dtype=np.int32)
    ids[0, :6], mask[0, :6] = seq, 1      # right-padded
    ids[1, 3:], mask[1, 3:] = seq, 1      # left-padded
    ids[2, :6], mask[2, :6] = seq[::-1], 1
    r = np.asarray(jax.jit(models.make_reward_fn(model))(model.params, ids, mask))
    assert np.all(np.isfinite(r))
    np.testing.assert_allclose(r[0], r[1], rtol=1e-3, atol=1e-3)  # padding side does not matter
    assert r[0] != r[2]


@pytest.mark.skipif(not os.environ.get("GOODHART_OASST_RM"), reason="GOODHART_OASST_RM not set (no local OpenAssistant RM)")
def test_openassistant_pythia_rm():
    model = models.load_model(os.environ["GOODHART_OASST_RM"])
    assert model.layout == "oasst" and model.config.rotary_pct == 0.25
    _check(model)


@pytest.mark.skipif(not (os.environ.get("GOODHART_STARLING_RM") and os.environ.get("GOODHART_STARLING_BASE")),
                    reason="GOODHART_STARLING_RM / GOODHART_STARLING_BASE not set (no local Starling RM)")
def test_starling_rm():
    model = models.load_model(os.environ["GOODHART_STARLING_RM"], base_model=os.environ["GOODHART_STARLING_BASE"],
                              dtype="bfloat16")
    assert model.layout == "starling" and model.has_lm_head
    _check(model)
