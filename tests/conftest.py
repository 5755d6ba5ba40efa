"""Shared pytest set-up: offline hub, CPU only, quiet JAX, one compilation cache for the whole run, XLA's
optimisations off (but for OPTIMISED_FILES), the longest test files scheduled first."""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by the xdist workers and by every script and notebook kernel the
# tests start (they inherit this environment): the same programs are otherwise compiled again in each process.
# It stores compiled programs, keyed by the program, JAX version, backend and flags, never results. A fresh
# directory for each run (made by the first process, the xdist controller, before it starts the workers, and
# removed by it at the end): a run reuses only what it compiled itself, as a fresh clone does. To keep one across
# runs, set JAX_COMPILATION_CACHE_DIR yourself; it is then neither made nor removed here.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="goodhart-jax-test-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    atexit.register(shutil.rmtree, _OWN_CACHE, True)  # removed when this process ends, however pytest stops
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA's optimisations off for the test run (jax_disable_most_optimizations: LLVM at -O0 without its expensive
# passes; XLA's HLO passes still run), in the xdist workers and in every script and notebook kernel the tests start
# (they inherit this environment; it is set before jax is imported). Most of the suite's time is XLA compiling the
# programs under test, not running them (a test's programs run for milliseconds). Session 19
# (/work/notes/suite_time.md: CPU seconds, fresh cache, load 10-15): test_search_prefix 129 -> 80, lab/test_rl
# 124 -> 92 (its RL loops run ~3x slower and still cost < 1 s), lab/test_experiment and lab/test_notebook about
# the same. Every assertion is unchanged; results agree with the optimised programs to float rounding, not
# bitwise (float32 ulps; a parameter Adam moves on round-off alone differs more). Only the tests are affected:
# the library, its scripts, notebooks and benchmarks run with JAX's defaults. `make test-optimised`
# (JAX_DISABLE_MOST_OPTIMIZATIONS=0) runs the suite compiled as users run it.
# Not set: XLA:CPU's classic emitters (--xla_cpu_use_fusion_emitters=false) halve the compile time again, but
# lab/test_rl's check that a run cut into rounds equals the whole run (two programs, 1e-6) then fails by 0.014.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Files whose checks were tuned on the optimised programs' rounding, run compiled as users run them (whole files:
# `make test` hands each file to one worker). lab/test_error_maps: shuffling the sequences swaps a few near-ties
# of the feature, and its rtol 1e-3 on the swapped values was set from the optimised programs' swaps; unoptimised,
# one swap (1 of 19,608 values) differs by 1.09e-3 relative (session 19).
OPTIMISED_FILES = ("lab/test_error_maps.py",)


# The test files that take longest (seconds of one run on 2 loaded cores, session 10; the files whose time was
# cut in session 13 placed by their new CPU time, x1.6 for that load: /work/notes/suite_time.md; session 18: CPU
# seconds of each file alone, fresh cache: test_search_prefix 88, lab/test_rl 95, lab/test_notebook 60 and a
# notebook kernel's wall, test_interrupts 42 and its waits, lab/test_experiment 36, test_tail_cli 33, test_tails 31;
# test_search_prefix was collected 47th of 53, so a worker could start it last), run first: `make test` hands
# whole files to the two workers (--dist loadfile, so a module's fixtures and programs are built once) in
# collection order, and a long file started last would leave the other core idle. Other files keep their order.
LONG_FILES = (
    "test_conditioning.py", "test_best_of_n.py", "test_mdp.py", "test_limit_clis.py", "test_search_prefix.py",
    "lab/test_rl.py", "test_search_cli.py", "test_tilting.py", "models/test_parity.py", "test_tour_notebook.py",
    "lab/test_notebook.py", "lab/test_scaling_notebook.py", "lab/test_rewards.py", "test_mitigations.py", "lab/test_tree.py", "test_notebook.py",
    "test_search.py", "lab/test_lab_search.py", "test_overoptimization_cli.py", "test_cli_inputs.py",
    "test_sweep_beta.py", "test_interrupts.py", "lab/test_experiment.py", "test_tail_cli.py", "test_tails.py",
)


def pytest_collection_modifyitems(session, config, items):
    """The long files first; with GOODHART_TEST_SHUFFLE=<seed>, every test in a shuffled order instead (files and
    the cases within them), to find tests that depend on what ran before them in the same process."""
    seed = os.environ.get("GOODHART_TEST_SHUFFLE")
    if seed:
        import random

        random.Random(seed).shuffle(items)
        return
    rank = {f"tests/{f}": i for i, f in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: order within kept



@pytest.fixture(autouse=True, scope="module")
def _optimised_compiles(request):
    """For the modules in OPTIMISED_FILES: XLA's optimisations back on (in process and in what they start) while
    the module runs; on leaving, the value found restored and JAX's in-memory caches cleared (the flag is not in
    their keys; the on-disk cache keys on it)."""
    path = request.node.path.as_posix()
    if not any(path.endswith("tests/" + f) for f in OPTIMISED_FILES):
        yield
        return
    from scripts import compiles

    with compiles(True):
        yield
