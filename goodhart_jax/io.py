"""Host-side plumbing shared by the `sims/` scripts: atomic files, JSON lines, CLI errors.

Everything a run writes goes through `atomic_write`: the bytes land in a
temporary file in the destination directory, which then replaces the target
(`os.replace` is atomic on POSIX), so an interrupt never leaves a half-written
file behind.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from goodhart_jax.errors import UsageError  # re-exported: io.UsageError is errors.UsageError

__all__ = [
    "UsageError", "atomic_write", "load_array", "check_token_ids", "npy_bytes", "npz_bytes", "csv_text", "jsonl_text",
    "save_json", "save_jsonl", "save_csv", "save_figure", "json_text", "figure_bytes", "json_safe", "default_out_dir",
    "log", "available_memory", "null_nonfinite",
]


_UMASK = os.umask(0)   # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)

def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (temp file in the same dir + os.replace).

    The file gets the usual permissions (0o666 minus the umask), not mkstemp's 0o600. An OSError (a full
    disk: ENOSPC) leaves the old file, if any, and no temporary file; it names `path` (`filename`) where the
    failing call did not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise
    return path


def load_array(path: str | os.PathLike, npy_only: bool = False) -> np.ndarray:
    """One numeric (or boolean) array from a .npy file, or from a text file of numbers (one row a line).

    Args:
      path: the file; a `.npy` suffix (any suffix with `npy_only`) is read by `np.load` without pickles,
        anything else by `np.loadtxt` (at least 1-D).
    Returns:
      the array, as stored.
    Raises:
      UsageError (one line, naming the file): missing, unreadable, an .npz archive, or not numbers.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        a = np.load(p, allow_pickle=False) if npy_only or p.suffix == ".npy" else np.loadtxt(p, ndmin=1)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a numeric array file: {first}") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        a.close()
        raise UsageError(f"{path} holds no single array (an .npz archive?)")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise UsageError(f"{path}: expected a numeric array, got dtype {a.dtype}")
    return a


def check_token_ids(tokens: np.ndarray, vocab: int, what: str = "--input") -> np.ndarray:
    """`tokens` if it is a non-empty integer array [B, T] of ids in [0, vocab); else UsageError naming the first
    bad id and its position.

    Args:
      what: the flag or parameter named in the message (default "--input").
    """
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise UsageError(f"{what} must be an integer array [B, T]; got {tokens.dtype} {tokens.shape}")
    if tokens.size == 0:
        raise UsageError(f"{what} has no tokens (shape {tokens.shape})")
    bad = np.argwhere((tokens < 0) | (tokens >= vocab))
    if len(bad):
        i, j = bad[0]
        raise UsageError(f"token id {tokens[i, j]} at [{i}, {j}] is outside the vocabulary [0, {vocab})"
                         + (f" ({len(bad)} such ids)" if len(bad) > 1 else ""))
    return tokens


def json_safe(value: Any) -> Any:
    """Plain-JSON version of a value: numpy scalars unwrapped, non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, np.ndarray) or hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        return json_safe(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def save_json(path, obj) -> Path:
    """Write `obj` as indented JSON (`json_text`: non-finite numbers as null) to `path`, atomically; returns the path.

    Args:
      path: the file.
      obj: as in `json_text`.
    """
    return atomic_write(path, json_text(obj))


def json_text(obj) -> str:
    """`save_json`'s text: indented JSON, non-finite numbers as null.

    Args:
      obj: any value `json_safe` reads (dicts, lists, NumPy and JAX arrays and scalars, dataclasses).
    """
    return json.dumps(json_safe(obj), indent=2) + "\n"


def save_jsonl(path, rows: Iterable[dict]) -> Path:
    """Write `rows` as JSON lines (`jsonl_text`) to `path`, atomically; returns the path.

    Args:
      path: the file.
      rows: dicts, one a line.
    """
    return atomic_write(path, jsonl_text(rows))


def jsonl_text(rows: Iterable[dict]) -> str:
    """One JSON object a line (non-finite numbers as null).

    Args:
      rows: dicts, one a line.
    """
    return "".join(json.dumps(json_safe(r)) + "\n" for r in rows)


def npy_bytes(array) -> bytes:
    """A NumPy array as the bytes of one .npy file (`np.save`), for `atomic_write` / `cli.Run.write`."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getvalue()


def npz_bytes(**arrays) -> bytes:
    """NumPy arrays by name as the bytes of one .npz file (`np.savez`), for `atomic_write` / `cli.Run.write`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_csv(path, rows: list[dict]) -> Path:
    """CSV with the union of the rows' keys as columns (first-seen order); None -> empty.

    Args:
      path: the file, written atomically.
    """
    return atomic_write(path, csv_text(rows))


def csv_text(rows: list[dict]) -> str:
    """`save_csv`'s text: the union of the rows' keys as columns (first-seen order); None -> empty."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in json_safe(r).items()})
    return buf.getvalue()


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG or GIF by suffix) and close it.

    Args:
      fig: a matplotlib figure.
      path: the file; its suffix (.png, .gif) picks the format.
      dpi: resolution in dots per inch.
    """
    return atomic_write(path, figure_bytes(fig, Path(path).suffix.lstrip(".") or "png", dpi))


def figure_bytes(fig, fmt: str = "png", dpi: int = 110) -> bytes:
    """A matplotlib figure as the bytes of one image file (`fmt`: png, gif, ...); the figure is closed.

    Args:
      fig: a matplotlib figure.
      dpi: resolution in dots per inch.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def default_out_dir(name: str) -> Path:
    """`runs/<name>/<YYYYmmdd-HHMMSS>/` relative to the working directory."""
    return Path("runs") / name / time.strftime("%Y%m%d-%H%M%S")


def _read_int(path: str, field: str | None = None) -> int | None:
    """An integer from a /proc or /sys file (the value after `field:` when given), or None."""
    try:
        text = Path(path).read_text()
        if field is None:
            return int(text.split()[0])
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(field + ":"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def available_memory() -> int | None:
    """Bytes a new computation can still use on JAX's default device, or None where unknown.

    CPU: /proc/meminfo MemAvailable, capped by a cgroup v2 limit (memory.max - memory.current) if there is
    one. An accelerator: its bytes_limit - bytes_in_use (`Device.memory_stats`).
    """
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0) if "bytes_limit" in stats else None
    kib = _read_int("/proc/meminfo", "MemAvailable")
    have = None if kib is None else kib * 1024
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        have = limit - used if have is None else min(have, limit - used)
    return have


def log(*args) -> None:
    """Progress and logs go to stderr, so `--json` stdout stays machine-readable.

    Args:
      args: printed as `print` would, to stderr.
    """
    print(*args, file=sys.stderr, flush=True)


def null_nonfinite(row: dict, fields) -> dict:
    """Null a row's non-finite numbers among `fields` and say why (float32 overflow), instead of printing them."""
    bad = [f for f in fields if row[f] is not None and not np.isfinite(row[f])]
    if bad:
        row.update({f: None for f in fields}, reason=f"{', '.join(bad)} not finite in float32 (overflow past 3.4e38)")
    return row
