"""The sims scripts as modules, for tests that drive them in process (imported as `scripts` by test files)."""
from __future__ import annotations

import importlib.util
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
