"""One command-line runner for every study in `sims/`.

A study is a frozen `Config` dataclass and a `main(cfg) -> rows` function.
This module derives the study's flags from the dataclass, and owns what every
study shares: the output directory with its `config.json`, incremental atomic
`results.jsonl` / `results.csv`, figures, `--json` (stdout carries only JSON
lines), progress on stderr, and one error path:

  * bad input (a flag argparse rejects, any `InputError`, a `ValueError`
    raised inside `with cli.inputs():`) -> one line `script: error: ...`, exit 2;
  * Ctrl-C -> one line saying what is on disk, exit 130; every finished file is
    intact because every file is written atomically. A script that calls
    `cli.guard_startup(__name__)` before its heavy imports answers Ctrl-C during
    them the same way (one line, exit 130);
  * a file that cannot be written (a full disk) -> one line naming it and the
    files that are complete, exit 2 (`OutputError`).

The output directory belongs to one run at a time and holds one run's files:
  * a run locks it (`flock` on the directory) for its life; a second run with
    the same `--out` is refused at once in one line, exit 2;
  * a directory that holds an earlier run (a `config.json`) is refused in one
    line, exit 2, unless `--overwrite` is given: then the earlier run's files
    (config.json and every plain file beside it) are removed, under the lock,
    before anything is written. Subdirectories and hidden files (but for
    temporary files of a killed write) are left alone;
  * without `--out`, each run gets a new directory runs/<script>/<timestamp>
    (with a -2, -3, ... suffix when two start in the same second).

Every int field (and every int in a tuple field) must fit in 64 bits; `seed`
checks a PRNG seed (an integer in [0, 2^32 - 1]).

Flags from fields (`typing` annotations of the dataclass):
  bool -> `--x/--no-x`; tuple[T, ...] -> `nargs="+"` (`"*"` when the default
  is empty or None); int/float/str -> `type=`; help, metavar, choices and
  `required` from `arg(...)` metadata. `foo_bar` becomes `--foo-bar`.

    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig):
        error: tuple[str, ...] = cli.arg(("normal",), "error families X", metavar="FAMILY")
        vocab: int = cli.arg(8, "tokens per state", metavar="A")

    def main(cfg: Config) -> list[dict]:
        with cli.inputs():                       # ValueError here is the user's input
            families = [tails.parse(s) for s in cfg.error]
        with cli.Run("my_study", cfg) as run:
            for spec, fam in run.progress(list(zip(cfg.error, families)), "families"):
                run.emit([...])                    # rows: written at once, atomically
            run.figure("plot.png", fig)
        return run.rows

    if __name__ == "__main__":
        cli.main(Config, main)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import itertools
import json
import math
import numbers
import os
import signal
import sys
import tempfile
import threading
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from goodhart_jax import io

__all__ = ["InputError", "OutputError", "Checked", "RunConfig", "arg", "each", "positive", "finite", "within",
           "at_least", "seed", "inputs", "check_memory", "Run", "check_out_dir", "check_out_free", "prepare_out_dir",
           "build_parser", "parse_config", "run", "main", "guard_startup"]

InputError = io.UsageError  # one class for bad input: subclasses (CheckpointError, ...) take the same path


class OutputError(OSError):
    """A run's file could not be written (a full disk, a quota): its message names the file and what is complete
    on disk; the runner prints it in one line, exit 2."""


_DISK_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # written outside a Run: one line, exit 2


def arg(default: Any = dataclasses.MISSING, help: str = "", *, metavar: str | None = None,
        choices: Sequence[Any] | None = None, required: bool = False, flag: str | None = None,
        nargs: str | None = None, show_default: bool = True, check: Callable[[Any], Any] | None = None) -> Any:
    """A Config field with its command-line help: `x: int = cli.arg(3, "what x is", metavar="N")`.

    Args:
      default: the field's default (tuples for sequences; None for "not given").
      help: one line for `--help`; "(default: ...)" is appended unless show_default is False.
      metavar, choices: as in argparse.
      required: the flag must be given (the default is then only for `main(Config())` in code).
      flag: the flag's name when it is not `--field-name`.
      nargs: override the derived nargs (e.g. "*" for a sequence that may be given empty).
      check: called with the value when the Config is made (from flags or in code); a ValueError it raises
        becomes an `InputError` naming the flag. See `positive`, `at_least`, `finite`.
    """
    meta = dict(help=help, metavar=metavar, choices=choices, required=required, flag=flag, nargs=nargs,
                show_default=show_default, check=check)
    return dataclasses.field(default=default, metadata=meta)


INT64_MAX = 2**63 - 1


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Checked:
    """A frozen Config whose fields check themselves when it is made (from flags or in code).

    Runs each field's `check` (see `arg`), and refuses an int field (or an int in a tuple field) that does not
    fit in 64 bits: such a value would overflow in NumPy/JAX long after the flags were read.
    """

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), _flag(f)
            tp, _ = _strip_optional(hints.get(f.name))
            if typing.get_origin(tp) is tuple:
                tp = (typing.get_args(tp) or (None,))[0]
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if tp is int and isinstance(v, int) and not -INT64_MAX <= v <= INT64_MAX:
                    raise InputError(f"{flag}: {v} does not fit in 64 bits")
            chk = f.metadata.get("check")
            if chk is None:
                continue
            try:
                chk(value)
            except InputError:
                raise
            except ValueError as e:
                raise InputError(str(e) if str(e).startswith(flag) else f"{flag}: {e}") from None


@dataclasses.dataclass(frozen=True)
class RunConfig(Checked):
    """The fields the runner owns; a study's Config subclasses this."""
    out: str = arg("", "output directory (default: runs/<script>/<timestamp>)", metavar="DIR", show_default=False)
    overwrite: bool = arg(False, "replace the files of an earlier run in --out (default: refuse, so a directory "
                                 "never mixes two runs' files)")
    json: bool = arg(False, "stdout carries only the result rows, as JSON lines (logs go to stderr)")
    plots: bool = arg(True, "write the PNG figures")


# ------------------------------------------------------------------ checks for `arg(check=...)`

def each(what: str, ok: Callable[[Any], bool], must: str) -> Callable[[Any], None]:
    """Check: every value (one, or a non-empty tuple) satisfies `ok`; else "<what> must be <must>, got x"."""
    def check(v):
        vals = list(v) if isinstance(v, (tuple, list)) else [v]
        if not vals:
            raise ValueError(f"give at least one {what}")
        for x in vals:
            if not ok(x):
                raise ValueError(f"{what} must be {must}, got {x if isinstance(x, int) else format(x, 'g')}")
    return check


def positive(what: str) -> Callable[[Any], None]:
    """Check: every value is a finite number > 0."""
    return each(what, lambda x: math.isfinite(x) and x > 0, "finite and > 0")


def finite(what: str) -> Callable[[Any], None]:
    """Check: every value is a finite number."""
    return each(what, math.isfinite, "finite")


def within(what: str, lo: float, hi: float) -> Callable[[Any], None]:
    """Check: every value lies in the open interval (lo, hi)."""
    return each(what, lambda x: lo < x < hi, f"in ({lo:g}, {hi:g})")


def at_least(what: str, lo: int) -> Callable[[Any], None]:
    """Check: every value is an integer >= lo."""
    return each(what, lambda x: math.isfinite(x) and int(x) == x and x >= lo, f"an integer >= {lo}")


SEED_MAX = 2**32 - 1
seed = each("seed", lambda x: 0 <= x <= SEED_MAX and int(x) == x, f"an integer in [0, 2^32 - 1 = {SEED_MAX}]")
"""Check for a PRNG seed. JAX keeps only the low 32 bits of a larger seed without x64 (2^32 would run as 0)
and overflows past 2^63, so a seed is an integer in [0, 2^32 - 1], which means the same in either mode."""


@contextlib.contextmanager
def inputs():
    """Inside this block a ValueError is the user's bad input: it becomes an `InputError` (exit 2)."""
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from None


def check_memory(need: float, what: str) -> None:
    """Raise InputError, in one line, if an estimate of `need` bytes exceeds `io.available_memory()`."""
    have = io.available_memory()
    if have is not None and need > have:
        raise InputError(f"{what} needs about {need / 2**30:.1f} GiB (estimated), but {have / 2**30:.1f} GiB "
                         "is available")


# ------------------------------------------------------------------ flags from a dataclass

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _strip_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag_kwargs(f: dataclasses.Field, tp) -> tuple[str, dict]:
    meta = f.metadata
    name = meta.get("flag") or "--" + f.name.replace("_", "-")
    help_ = meta.get("help", "")
    kw: dict[str, Any] = {"dest": f.name}
    tp, _ = _strip_optional(tp)
    default = f.default if f.default is not dataclasses.MISSING else None
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
        kw["default"] = default
        if help_ and meta.get("show_default", True):
            help_ += " (default: on)" if default else " (default: off)"
    else:
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kw["type"] = elem
            kw["nargs"] = meta.get("nargs") or ("*" if not default else "+")
        else:
            kw["type"] = tp
            if meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
        kw["default"] = list(default) if isinstance(default, tuple) else default
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("choices") is not None:
            kw["choices"] = list(meta["choices"])
        if help_ and meta.get("show_default", True) and default not in (None, "", ()):
            shown = " ".join(format(v, "g") if isinstance(v, float) else str(v) for v in default) \
                if isinstance(default, tuple) else default
            help_ += f" (default: {shown})".replace("%", "%%")
    if meta.get("required"):
        kw["required"] = True
    kw["help"] = help_
    return name, kw


def build_parser(config_cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser whose flags are the fields of the frozen dataclass `config_cls`."""
    hints = typing.get_type_hints(config_cls)
    p = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        name, kw = _flag_kwargs(f, hints[f.name])
        p.add_argument(name, **kw)
    return p


def parse_config(config_cls: type, argv: Sequence[str] | None = None, prog: str | None = None,
                 description: str | None = None):
    """Parse `argv` into a `config_cls` instance (sequences as tuples). argparse errors exit 2 in one line."""
    ns = vars(build_parser(config_cls, prog, description).parse_args(argv))
    hints = typing.get_type_hints(config_cls)
    for k, v in ns.items():
        if isinstance(v, list) and typing.get_origin(_strip_optional(hints[k])[0]) is tuple:
            ns[k] = tuple(v)
    return config_cls(**ns)


# ------------------------------------------------------------------ one run's outputs

@contextlib.contextmanager
def _holding_ctrl_c():
    """Hold a Ctrl-C that arrives inside the block until it ends, then raise KeyboardInterrupt: a file written
    and the run's record of it stay in step, so the interrupt line never counts a row that is not on disk."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if held:
        raise KeyboardInterrupt


class Run:
    """One run's output directory: config.json, incremental atomic results, figures, JSON lines on stdout.

    Use as a context manager; on Ctrl-C its exit says (on stderr) exactly what is on disk.

    Args:
      name: the study's name; the default directory is runs/<name>/<timestamp>/.
      cfg: the study's Config (written to config.json). Its `out`, `json` and `plots` fields, where present,
        choose the directory, JSON lines on stdout, and whether `figure` writes anything.
      results: base name of the row files (results.jsonl and results.csv); None writes no row files.
      csv_rows: which rows go into the CSV too (default: all); e.g. leave out rows whose cells are lists.
    """

    def __init__(self, name: str, cfg: Any, results: str | None = "results",
                 csv_rows: Callable[[dict], bool] | None = None):
        self.name = name
        self.cfg = cfg
        self.json = bool(getattr(cfg, "json", False))
        self.plots = bool(getattr(cfg, "plots", True))
        out = getattr(cfg, "out", "")
        self.dir = prepare_out_dir(out) if out else _new_dir(io.default_out_dir(name))
        self.results = results
        self.csv_rows = csv_rows
        self.rows: list[dict] = []
        self.files: list[str] = []  # finished files, in the order first written
        self._lock = _lock(self.dir)
        try:
            _remove_earlier_run(self.dir, bool(getattr(cfg, "overwrite", False)))
            self.save_json("config.json", cfg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory for another run (also done on leaving the `with` block)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _wrote(self, fname: str) -> None:
        if fname not in self.files:
            self.files.append(fname)

    def _save(self, fname: str, data: bytes | str) -> Path:
        """Write DIR/fname atomically; an OSError (a full disk) becomes one `OutputError` naming the file and
        what is complete on disk."""
        try:
            path = io.atomic_write(self.dir / fname, data)
        except OSError as e:
            kept = " (it keeps its previous version)" if fname in self.files else ""
            err = OutputError(f"cannot write {self.dir / fname}{kept}: {e.strerror or e}; {self.on_disk()}")
            err.errno = e.errno
            raise err from None
        self._wrote(fname)
        return path

    def emit(self, rows: Iterable[dict]) -> None:
        """Add finished rows: results.jsonl/.csv are rewritten atomically, and with --json each row is printed."""
        rows = [io.json_safe(r) for r in rows]
        with _holding_ctrl_c():  # both files and self.rows, or none of them
            everything = self.rows + rows
            if self.results:
                self._save(f"{self.results}.jsonl", io.jsonl_text(everything))
                self.rows = everything  # the record of finished rows is on disk (whatever becomes of the CSV)
                self._save(f"{self.results}.csv",
                           io.csv_text(everything if self.csv_rows is None else
                                       [r for r in everything if self.csv_rows(r)]))
            self.rows = everything
        if self.json:
            for r in rows:
                sys.stdout.write(json.dumps(r, allow_nan=False) + "\n")
            sys.stdout.flush()

    def save_json(self, fname: str, obj: Any) -> Path:
        """Write `obj` as JSON (non-finite numbers as null) to DIR/fname, atomically."""
        with _holding_ctrl_c():
            return self._save(fname, io.json_text(obj))

    def write(self, fname: str, data: bytes | str) -> Path:
        """Write bytes or text to DIR/fname, atomically."""
        with _holding_ctrl_c():
            return self._save(fname, data)

    def figure(self, fname: str, fig, dpi: int = 110) -> Path | None:
        """Save a matplotlib figure atomically (closed either way); nothing when plots are off."""
        if not self.plots:
            import matplotlib.pyplot as plt

            plt.close(fig)
            return None
        data = io.figure_bytes(fig, Path(fname).suffix.lstrip(".") or "png", dpi)
        with _holding_ctrl_c():
            return self._save(fname, data)

    @staticmethod
    def log(*args) -> None:
        io.log(*args)

    def table(self, rows: Iterable[dict], columns: Sequence[tuple], title: str | None = None) -> str:
        """Log `rows` as a fixed-width table on stderr, and return its text.

        Args:
          rows: dicts (e.g. some of `self.rows`).
          columns: (header, key, format) triples; `key` is a row key or a function of the row, `format` a format
            spec such as ".4g" or "<16" (a missing, null or non-finite value prints as "n/a").
          title: a line printed above the table (after a blank line).
        """
        text = format_table(rows, columns)
        self.log(("\n" + title + "\n" if title else "\n") + text)
        return text

    @staticmethod
    def progress(iterable: Iterable, desc: str, total: int | None = None):
        """tqdm progress on stderr (silent when stderr is not a terminal)."""
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=None)

    def on_disk(self) -> str:
        """What this run has finished writing, in words."""
        n = len(self.rows)
        if self.results and n:
            rest = [f for f in self.files if not f.startswith(self.results + ".") and f != "config.json"]
            extra = f" (and {', '.join(rest)})" if rest else ""
            return f"{n} finished {'row is' if n == 1 else 'rows are'} in {self.dir}/{self.results}.jsonl{extra}"
        if len(self.files) > 1:
            return f"finished files in {self.dir}: {', '.join(self.files)}"
        if self.files:
            return f"no results yet: only {self.files[0]} is in {self.dir}"
        return f"nothing was written in {self.dir}"

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        if exc_type is None:
            io.log(f"wrote {', '.join(self.files)} in {self.dir}")
        elif issubclass(exc_type, KeyboardInterrupt):
            io.log(f"{_prog()}: interrupted: {self.on_disk()}")
            exc.reported = True  # the runner need not say it again
        return False


def format_table(rows: Iterable[dict], columns: Sequence[tuple]) -> str:
    """`rows` as fixed-width text: one header line, one line a row (see `Run.table` for `columns`)."""
    import numpy as np

    def cell(row, key, fmt):
        v = key(row) if callable(key) else row.get(key)
        if getattr(v, "shape", None) == ():  # a 0-d NumPy or JAX array (device_get of a scalar field)
            v = np.asarray(v)[()]
        number = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))  # NumPy scalars too
        if v is None or (number and not math.isfinite(v)):
            return "n/a"
        return format(v, fmt) if number else str(v)

    body = [[cell(r, key, fmt) for _, key, fmt in columns] for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in body]) + 2 for i, (h, _, _) in enumerate(columns)]
    first = lambda i: str.ljust if i == 0 else str.rjust  # noqa: E731  (labels left, numbers right)
    lines = [[h for h, _, _ in columns]] + body
    return "\n".join("".join(first(i)(c, w) for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in lines)


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
    """Create the output directory, or raise InputError saying why it cannot be written (before any work)."""
    path = Path(out)
    check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {str(path)!r}: {e.strerror}") from None
    if (why := _probe_write(path)) is not None:
        raise InputError(f"output directory {str(path)!r} is not writable: {why}")
    return path


def _lock(path: Path) -> int | None:
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


def _remove_earlier_run(path: Path, overwrite: bool) -> None:
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
        with _holding_ctrl_c():  # config.json last: what is left still reads as an earlier run
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
    fd = _lock(path)
    if fd is not None:
        os.close(fd)
    if not overwrite:
        _remove_earlier_run(path, overwrite=False)  # refuses; removes nothing


def _new_dir(base: Path) -> Path:
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


# ------------------------------------------------------------------ the runner

_PROG: list[str] = []  # the program name of the `run` in progress (for Run's interrupt line)
_FINISHED: list[int] = []  # the status of a script's finished `main`, for the Ctrl-C guard


def _prog() -> str:
    return _PROG[-1] if _PROG else Path(sys.argv[0]).name or "goodhart_jax"


def run(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None = None,
        prog: str | None = None, description: str | None = None) -> int:
    """Parse flags into `config_cls`, check `--out`, call `study_main(cfg)`, and map the outcome to an exit status.

    Returns:
      0 on success; 2 on bad input, or a file the disk refused (one line on stderr); 130 on Ctrl-C.
    """
    prog = prog or _prog()
    _PROG.append(prog)
    try:
        try:
            cfg = parse_config(config_cls, argv, prog, description)
        except SystemExit as e:  # --help (0), or argparse's one-line error (2)
            return int(e.code or 0)
        if isinstance(cfg, RunConfig) and cfg.out:
            check_out_dir(cfg.out)  # before any work (loading a model can take minutes)
            if getattr(cfg, "writes_files", True):  # a process that may not be process 0 never opens a Run
                check_out_free(cfg.out, cfg.overwrite)
        study_main(cfg)
    except (InputError, OutputError) as e:
        msg = " ".join(str(e).split())  # one line, whatever the message held
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if e.errno not in _DISK_REFUSED:
            raise
        where = f"cannot write {e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        if not getattr(e, "reported", False):
            print(f"{prog}: interrupted before any result was written", file=sys.stderr, flush=True)
        return 130
    finally:
        _PROG.pop()
    return 0


def _on_sigint(signum, frame) -> None:
    """`guard_startup`'s SIGINT handler: inside `run`, the usual KeyboardInterrupt (the run reports what is on
    disk); outside it, one line and exit 130 at once."""
    if _PROG:
        signal.default_int_handler(signum, frame)
    when = "after the run finished" if _FINISHED else "during start-up: nothing was written"
    os.write(2, f"{_prog()}: interrupted {when}\n".encode())
    os._exit(130)


def _on_unraisable(args) -> None:
    """A KeyboardInterrupt raised inside a finaliser or gc callback (`__del__`, jax's `_xla_gc_callback`) is
    printed and dropped by Python, and the run goes on: send the signal again, to land in the run's own code."""
    if isinstance(args.exc_value, KeyboardInterrupt) and _PROG:
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(args)


def guard_startup(module_name: str) -> None:
    """In a script, before its heavy imports: `cli.guard_startup(__name__)`.

    Ctrl-C during the seconds of imports (jax, transformers) before `main` then prints one line and exits
    130, instead of a KeyboardInterrupt traceback (or a crash of XLA's threads at teardown). Inside `run`
    Ctrl-C raises KeyboardInterrupt as usual, and again if Python dropped it in a finaliser. Nothing happens
    unless `module_name == "__main__"`, so a test or notebook importing the script keeps Python's own handler.
    """
    if module_name == "__main__" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _on_unraisable


def main(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """`run`, then exit with its status.

    After Ctrl-C the process leaves with `os._exit`: interpreter teardown while XLA's threads are still
    busy can crash (exit 139); every result file is already complete on disk by then.
    """
    if description is None:
        doc = sys.modules["__main__"].__doc__ or ""
        description = doc.strip() or None
    try:
        status = run(config_cls, study_main, argv, description=description)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        status = 130
    _FINISHED.append(status)
    sys.stdout.flush()
    sys.stderr.flush()
    if status == 130:
        os._exit(130)
    sys.exit(status)
