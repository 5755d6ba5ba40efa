"""frontier: values read off a sweep at equal KL."""
import numpy as np
import pytest

from goodhart_jax import frontier


def test_exact_for_values_linear_in_log_kl():
    rng = np.random.default_rng(0)
    kl = np.exp(rng.uniform(-3, 3, size=(3, 11)))          # unsorted, as a beta sweep may give them
    value = 0.7 - 0.2 * np.log(kl) + np.arange(3)[:, None]  # linear in log KL: interpolation is exact
    targets = np.array([0.1, 1.0, 5.0, 1e3])
    at = frontier.value_at_kl(kl, value, targets)
    expect = 0.7 - 0.2 * np.log(targets) + np.arange(3)[:, None]
    inside = (targets >= kl.min(axis=1, keepdims=True)) & (targets <= kl.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(at.exists, inside)
    np.testing.assert_allclose(at.value[inside], expect[inside], rtol=1e-12)
    assert np.all(np.isnan(at.value[~inside])) and not inside[:, -1].any()
    np.testing.assert_allclose(at.kl_max, kl.max(axis=1))


def test_non_finite_points_are_skipped_and_bad_targets_refused():
    at = frontier.value_at_kl([[1.0, np.nan, 4.0]], [[1.0, 5.0, 3.0]], [2.0])
    np.testing.assert_allclose(at.value, [[2.0]])  # halfway in log KL between (1, 1) and (4, 3)
    with pytest.raises(ValueError, match="> 0"):
        frontier.value_at_kl([1.0], [1.0], [0.0])
    text = frontier.table(["normal"], [at], [2.0], columns={"tail": ["light"]}, label="error")
    assert "E[V] @KL=2" in text and "2.000" in text and "+-" not in text and "light" in text  # one row: no sd
    two = frontier.value_at_kl([[1.0, 4.0], [3.0, 4.0], [1.0, 8.0]], [[1.0, 3.0], [0.0, 1.0], [1.0, 7.0]], [2.0])
    text = frontier.table(["a"], [two], [2.0])  # the second row never reaches KL 2
    assert "2.500 +- 0.500 [2/3]" in text and "only n of the S seeds" in text  # mean of 2 and 3


def test_sweep_rows_say_why_a_number_is_missing():
    """A point that exists but whose number is not finite is null with the caller's reason where it names one
    (e.g. float32 rounding at tiny beta), else the float32-overflow reason; a point that does not exist says why."""
    from typing import NamedTuple

    class V(NamedTuple):
        KL: np.ndarray

    vals = V(np.array([1.0, np.nan, np.inf, 2.0]))
    why = {1: "rounded in float32", 3: "diverges"}
    rows = frontier.sweep_rows("tilt", dict(error="e"), dict(beta=[1, 2, 3, 4]), vals, ("KL",),
                               np.array([True, True, True, False]), lambda i: why.get(i))
    assert [r["KL"] for r in rows] == [1.0, None, None, None]
    assert "reason" not in rows[0] and rows[1]["reason"] == "rounded in float32"
    assert "overflow" in rows[2]["reason"] and rows[3]["reason"] == "diverges" and not rows[3]["exists"]


def test_summary_rows_with_null_values_say_why():
    """A family whose sweep never falls to a target KL (a heavy tail saturating a big tree at every beta: 16^7
    leaves, Pareto error, KL 19.4 at beta = 1000) gets a null there and a reason; a complete one gets no reason."""
    full = frontier.value_at_kl([[0.1, 10.0]], [[0.0, 1.0]], [1.0])
    saturated = frontier.value_at_kl([[19.3, 19.4]], [[0.0, 1.0]], [1.0])
    rows, text = frontier.summarize([frontier.FamilySummary("normal", "light", 3, full),
                                     frontier.FamilySummary("pareto", "heavy", 0, saturated)], [1.0], 16, 7)
    assert "reason" not in rows[0] and np.isfinite(rows[0]["E_V_at_KL"]).all()
    assert np.isnan(rows[1]["E_V_at_KL"]).all() and "does not reach" in rows[1]["reason"]
