"""planning: the drivers' run planning (float32 input ranges, device layout, memory)."""
import jax
import pytest

from goodhart_jax import mdp, planning, tails


def test_check_float32_names_the_parameter_or_the_callers_flag():
    planning.check_float32([0.1, 1e3], [tails.parse("normal:scale=2")], temperature=0.5)  # in range: no error
    with pytest.raises(ValueError, match=r"^temperature 1e-30 is below 1e-06"):
        planning.check_float32([1.0], [], temperature=1e-30)
    with pytest.raises(ValueError, match=r"^--temperature 1e-30 is below 1e-06"):
        planning.check_float32([1.0], [], temperature=1e-30, temperature_name="--temperature")
    with pytest.raises(ValueError, match=r"beta=1e\+31 is outside \[1e-30, 1e\+30\]"):
        planning.check_float32([1.0, 1e31], [])
    with pytest.raises(ValueError, match=r"\|scale\|=2000 is outside \[1e-10, 1000\]"):
        planning.check_float32([1.0], [tails.parse("laplace:scale=2000")])
    planning.check_float32([1.0], [], temperature=None)  # a uniform pi0 has no temperature to check


def test_layout_and_memory_on_one_device():
    spec = mdp.TreeSpec(3, 4, eos=True)  # n = 2: 1 + 2 + 4 + 8 exits and 16 leaves
    assert planning.leaf_shards(spec, 1) == 1 and planning.leaf_shards(mdp.TreeSpec(3, 4), 2) == 1  # 3^k never splits
    assert planning.leaf_shards(mdp.TreeSpec(4, 3), 2) == 2
    if jax.device_count() == 1:
        assert planning.sweep_meshes(spec, 4) == (None, None) and planning.sweep_layout(spec, 4) == ""
    # 40 bytes a terminal on each of the shards, plus 0.5 GiB.
    assert planning.sweep_peak_bytes(spec) == spec.num_terminals * 40 + 2**29
    assert planning.sweep_peak_bytes(spec, 2) == spec.num_terminals * 20 + 2**29


def test_the_library_imports_no_driver_code():
    """mdp (and frontier) load neither the drivers' planning nor the CLI nor conditioning (mdp has its own result)."""
    import subprocess
    import sys

    banned = ("goodhart_jax.planning", "goodhart_jax.cli", "goodhart_jax.conditioning")
    code = f"import sys, goodhart_jax.mdp, goodhart_jax.frontier; print(sorted(set(sys.modules) & set({banned})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
