"""A run's output directory: checked before any work, locked for the run's life, one run's files at a time.

  * `check_out_dir`: `--out` is a writable directory, or can be made one (no part of it a file); creates nothing;
  * `check_out_free`: no other run holds it, and it holds no earlier run (a `config.json`) unless `--overwrite`;
  * `prepare_out_dir`: create it, or say why not;
  * for a `Run`: `lock` it (flock on the directory) and `remove_earlier_run` under the lock; `new_dir` gives a
    run without `--out` its `runs/<script>/<timestamp>` (with a -2, -3, ... suffix when two start in the same
    second).

Each refusal is one `InputError` line.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import os
import tempfile
from pathlib import Path

from goodhart_jax import io
from goodhart_jax.cli.signals import holding_ctrl_c
from goodhart_jax.errors import InputError

__all__ = ["check_out_dir", "check_out_free", "prepare_out_dir", "lock", "remove_earlier_run", "new_dir"]


def _probe_write(directory: Path) -> str | None:
    """Why a file cannot be created in `directory` (by trying: os.access says yes to root on a read-only
    file system), or None."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".write-test.")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def check_out_dir(out: str | os.PathLike) -> None:
    """Raise InputError, in one line, if `out` cannot become a writable output directory; creates nothing.

    Checks: no part of the path is a file, and the directory (or its nearest existing parent, where the
    missing part would be made) accepts a new file.
    """
    path = Path(out)
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is a file" if parent.is_file() else "is not a directory"
                raise InputError(f"output directory {str(path)!r}: {str(parent)!r} {what}")
            why = _probe_write(parent)
            if why is not None:
                if parent == path:
                    raise InputError(f"output directory {str(path)!r} is not writable: {why}")
                raise InputError(f"cannot create output directory {str(path)!r}: {str(parent)!r}: {why}")
            return


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create the output directory, or raise InputError saying why it cannot be written (before any work).

    Args:
      out: the directory (made with its parents if missing).
    """
    path = Path(out)
    check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
    if (why := _probe_write(path)) is not None:
        raise InputError(f"output directory {str(path)!r} is not writable: {why}")
    return path


def lock(path: Path) -> int | None:
    """Lock the directory `path` for this run (flock; released when the fd is closed, or the process ends), or
    raise InputError, at once, if another run holds it. None where it cannot be locked (no locks on that file
    system): the run goes on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InputError(f"output directory {str(path)!r} is in use: another run holds it (wait for that run "
                             "to end, or choose another --out)") from None
        return None
    return fd


def _earlier_run(path: Path) -> list[str]:
    """The files of an earlier run in the directory `path`: where it holds a config.json (every run writes one
    first), that and every plain, not hidden, file beside it; else none."""
    if not (path / "config.json").is_file():
        return []
    return ["config.json"] + sorted(p.name for p in path.iterdir()
                                    if p.name != "config.json" and not p.name.startswith(".") and p.is_file())


def remove_earlier_run(path: Path, overwrite: bool) -> None:
    """With the lock held: refuse an earlier run's files in `path` (InputError), or with `overwrite` remove
    them (and the temporary files of a write that was killed) before anything of the new run is written."""
    earlier = _earlier_run(path)
    if not earlier:
        return
    if not overwrite:
        shown = ", ".join(earlier[:4]) + (f" and {len(earlier) - 4} more" if len(earlier) > 4 else "")
        raise InputError(f"output directory {str(path)!r} holds an earlier run ({shown}): give --overwrite to "
                         "replace it, or choose another --out")
    stale = [p.name for p in path.glob(".*.tmp")]  # io.atomic_write's temporary files, left by a killed write
    try:
        with holding_ctrl_c():  # config.json last: what is left still reads as an earlier run
            for f in stale + earlier[1:] + earlier[:1]:
                (path / f).unlink(missing_ok=True)
    except OSError as e:
        raise InputError(f"--overwrite: cannot remove the earlier run's {e.filename}: {e.strerror}") from None
    io.log(f"--overwrite: removed the earlier run's {len(earlier)} file(s) from {path}")


def check_out_free(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise InputError, in one line, if the directory `out` is held by another run, or holds an earlier run and
    `overwrite` is off; changes nothing. `Run` checks again under its lock: this is to refuse before any work."""
    path = Path(out)
    if not path.is_dir():
        return
    fd = lock(path)
    if fd is not None:
        os.close(fd)
    if not overwrite:
        remove_earlier_run(path, overwrite=False)  # refuses; removes nothing


def new_dir(base: Path) -> Path:
    """Create a new directory `base` (a default one), or base-2, base-3, ... where another run took it."""
    prepare_out_dir(base.parent)
    for i in itertools.count(1):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
