"""Result files: atomic writes, permissions, JSON with non-finite numbers."""
import json
import math
import os

import numpy as np
import pytest

from goodhart_jax import io


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    p = tmp_path / "sub" / "x.json"
    io.atomic_write(p, "first")
    io.atomic_write(p, b"second")
    assert p.read_text() == "second"
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]     # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "x.txt"
    io.atomic_write(p, "old")

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(p, "new")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["x.txt"]


def test_json_safe_turns_non_finite_into_null():
    row = {"a": np.float32(1.5), "b": float("inf"), "c": [np.nan, 2], "d": np.int64(3)}
    out = json.loads(json.dumps(io.json_safe(row)))
    assert out == {"a": 1.5, "b": None, "c": [None, 2], "d": 3}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in out.values() if v is not None)


def test_start_run_creates_the_directory_and_config(tmp_path, monkeypatch):
    out = io.start_run("x", tmp_path / "given", {"a": 1})
    assert out == tmp_path / "given" and json.loads((out / "config.json").read_text()) == {"a": 1}
    monkeypatch.chdir(tmp_path)
    auto = io.start_run("study", None, {"b": float("nan")})
    assert auto.parts[:2] == ("runs", "study") and json.loads((auto / "config.json").read_text()) == {"b": None}
