"""Shared pytest set-up: offline hub, CPU only, quiet JAX, one compilation cache for the whole run."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by the xdist workers and by every script and notebook kernel the
# tests start (they inherit this environment): the same programs are otherwise compiled again in each process.
# It stores compiled programs, keyed by the program, JAX version and backend, never results.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
