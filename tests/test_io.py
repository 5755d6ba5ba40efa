"""Result files: atomic writes, permissions, JSON with non-finite numbers."""
import json
import math
import os
import re
from io import BytesIO

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


def test_token_ids_checked_and_npy_bytes_round_trip():
    ok = np.array([[0, 3], [2, 1]], dtype=np.int64)
    assert io.check_token_ids(ok, 4) is ok
    for bad, needle in [(np.zeros((2, 0), np.int32), "no tokens"), (np.zeros(3, np.int32), "integer array [B, T]"),
                        (np.zeros((1, 2)), "integer array [B, T]"), (np.array([[0, 4, -1]]), "token id 4 at [0, 1]")]:
        with pytest.raises(io.UsageError, match=re.escape(needle)):
            io.check_token_ids(bad, 4)
    with pytest.raises(io.UsageError, match=re.escape("(2 such ids)")):
        io.check_token_ids(np.array([[0, 4, -1]]), 4)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = np.load(BytesIO(io.npy_bytes(a)))
    assert back.dtype == a.dtype and np.array_equal(back, a)


def test_a_full_disk_leaves_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    """ENOSPC while the new bytes go to disk: the old file stays whole, no temporary file is left, and the error
    names the file being written (the failing call itself names none)."""
    import errno

    p = tmp_path / "x.txt"
    io.atomic_write(p, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        io.atomic_write(p, "new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["x.txt"]
