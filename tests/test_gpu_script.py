"""benchmarks/gpu.sh and the benchmark flags it uses, checked on a CPU (nothing here needs a GPU)."""
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from goodhart_jax import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PY=sys.executable)


def _bench_module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))   # the scripts import `timing` from their own directory
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod               # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_gpu_script_parses_and_its_flags_exist():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    out = subprocess.run(["bash", str(SCRIPT)], env=ENV | {"GPU_SH_DRY": "1"}, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()
    assert [line.split()[0] for line in out] == ["tree", "scoring", "search"]
    assert sum(int(line.split()[1]) for line in out) <= 540       # the time limits fit the 9-minute budget
    for line in out:
        _, _, script, *args = shlex.split(line)
        cfg = cli.parse_config(_bench_module(Path(script).stem).Config, args)   # argparse exits on a bad flag
        if "scoring" in script:
            assert (cfg.size, cfg.dtype, cfg.length) == ("1.4b", "bfloat16", 1024)
        if "search" in script:
            assert cfg.size == "7b" and not cfg.torch and not cfg.target


def test_gpu_script_without_gpu_says_so():
    r = subprocess.run(["bash", str(SCRIPT)], env=ENV | {"LOG_DIR": "/tmp/gpu_bench_test"}, capture_output=True,
                       text=True)
    assert r.returncode == 3
    assert json.loads(r.stdout) == {"bench": "gpu.sh", "error": "jax sees no GPU here (its default backend is not gpu)"}


def test_7b_search_refuses_on_cpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--size", "7b"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["bench_search.py: error: --size 7b needs a GPU (jax's default backend "
                                             "here is cpu): run it through benchmarks/gpu.sh on a GPU machine"]


def test_random_llama_is_a_reward_model():
    """The 7b code path at a tiny shape: random weights in the Starling layout give the plain path's rewards."""
    import jax
    import jax.numpy as jnp

    from goodhart_jax import models

    bench = _bench_module("bench_search")
    m = bench.random_llama("llama-tiny", "float32")
    shapes = {k: v.shape for k, v in jax.tree_util.tree_flatten_with_path(m.params)[0]
              for k, v in [(jax.tree_util.keystr(k), v)]}
    assert shapes["['v_head']['kernel']"] == (32, 1) and shapes["['model']['embed_tokens']['embedding']"] == (97, 32)
    assert np.all(np.asarray(m.params["model"]["norm"]["scale"]) == 1)
    ids = jax.random.randint(jax.random.key(0), (3, 7), 0, 97)
    mask = jnp.ones(ids.shape, jnp.int32)
    fast = np.asarray(models.make_reward_fn(m)(m.params, ids, mask))
    plain = np.asarray(models.make_reward_fn(m, one_position=False)(m.params, ids, mask))
    assert np.all(np.isfinite(fast)) and np.ptp(fast) > 0
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # three benchmark processes, each compiling: ~75 s on a loaded 2-core machine
def test_gpu_script_runs_tiny_configurations_on_cpu(tmp_path):
    pytest.importorskip("torch")
    env = ENV | {"GPU_SH_CPU": "1", "LOG_DIR": str(tmp_path),
                 "TREE_ARGS": "--vocab 2 --depth 3 --betas 2 --repeats 1 --no-numpy --json",
                 "SCORING_ARGS": "--size 14m --batch 1 --length 8 --repeats 1 --torch-device none --json",
                 "SEARCH_ARGS": "--size llama-tiny --length 4 --candidates 2 --steps 1 --repeats 1 --scan 1 "
                                "--restarts 0 --no-target --no-torch"}
    rows = [json.loads(line) for line in subprocess.run(["bash", str(SCRIPT)], env=env, check=True,
                                                         capture_output=True, text=True).stdout.splitlines()]
    assert [r["bench"] for r in rows] == ["machine", "tree", "scoring", "search"]
    assert not any("error" in r for r in rows), rows
    assert rows[2]["jax_tokens_per_s"] > 0 and rows[3]["jax_iters_per_s"] > 0
    assert rows[1]["ratio_to_floor"] > 0 and rows[1]["numpy_ms"] is None and "--no-numpy" in rows[1]["reason"]
