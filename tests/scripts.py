"""The sims scripts as modules, for tests that drive them in process (imported as `scripts` by test files)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tuple(sorted(p.stem for p in (ROOT / "sims").glob("*.py")))  # every script, new ones included


def load_script(name: str):
    """sims/<name>.py as a module, loaded once (registered in sys.modules, so its dataclasses resolve their
    annotations)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", "").startswith(str(ROOT / "sims")):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "sims" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def compiles(optimised: bool):
    """XLA's optimisations on or off (jax_disable_most_optimizations), in this process and in the scripts and
    kernels it starts; on leaving, the value found is restored. JAX's in-memory caches are cleared on entering
    where the value changes, and on leaving: the flag is not part of their keys, so a test would otherwise reuse
    an executable compiled the other way (the on-disk cache keys on it)."""
    import jax

    old, old_env = jax.config.read("jax_disable_most_optimizations"), os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS")
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if optimised else "1"
    jax.config.update("jax_disable_most_optimizations", not optimised)
    if bool(old) == optimised:  # the value changes
        jax.clear_caches()
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
        else:
            os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = old_env
        jax.config.update("jax_disable_most_optimizations", old)
        jax.clear_caches()


def unoptimised_compiles():
    """XLA's optimisations off (`compiles(False)`), for tests of the command-line layer (files, JSON rows, exit
    codes) whose small runs cost compiling, not running. Since session 19 the whole suite compiles so by default
    (tests/conftest.py; `make test-optimised` compiles as users run, and the numerics hold to their references
    either way), so this is then a no-op but for files that conftest runs optimised.
    test_limit_clis: 118 s of CPU instead of 184 (fresh cache, load ~6)."""
    return compiles(False)


def run_notebook_with_dump(path: Path, dump: str, out: Path, timeout: int = 900):
    """Execute the committed notebook `path` (asserted output-free) headless with one cell appended,
    `OUT = <out>` + `dump` (code that writes the values to check to OUT as JSON). Fails on any cell's error.

    Returns:
      (the JSON that cell wrote, every stream output joined, the number of PNG images drawn).
    """
    import json

    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nb.cells.append(nbformat.v4.new_code_cell(f"OUT = {str(out)!r}\n" + dump))
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return json.loads(Path(out).read_text()), text, images
