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
    them the same way (one line, exit 130), and its run sees each Ctrl-C through
    (`_courier`): a KeyboardInterrupt that library code swallowed (a bare
    `except:` in jax, a finaliser) is raised again, and a run that Ctrl-C has not
    ended after `CTRL_C_GIVE_UP_S` says what is on disk and exits 130;
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
import sysconfig
import tempfile
import threading
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from goodhart_jax import io
from goodhart_jax.errors import InputError, OutputError

__all__ = ["InputError", "OutputError", "Checked", "RunConfig", "arg", "each", "positive", "finite", "within",
           "at_least", "seed", "inputs", "check_memory", "Run", "check_out_dir", "check_out_free", "prepare_out_dir",
           "build_parser", "parse_config", "run", "main", "guard_startup", "prog_name"]



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
    """Hold a Ctrl-C that arrives inside the block until it ends, then deliver it: a file written and the run's
    record of it stay in step, so the interrupt line never counts a row that is not on disk. The block holds
    `_WRITING` too, so `_courier` never ends the process in the middle of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    with _WRITING:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if held:
        if callable(previous):  # the handler the signal would have met: the script's, Python's, an outer hold's
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
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
        with _holding_ctrl_c():  # both files, self.rows and the rows on stdout, or none of them
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
        _RUNS.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        if self in _RUNS:
            _RUNS.remove(self)
        if exc_type is None:
            io.log(f"wrote {', '.join(self.files)} in {self.dir}")
        elif issubclass(exc_type, KeyboardInterrupt) or (issubclass(exc_type, Exception) and "raised" in _CTRL_C):
            # (an exception after Ctrl-C: a library swallowed the KeyboardInterrupt and failed instead)
            if _may_report():
                io.log(f"{prog_name()}: interrupted: {self.on_disk()}")
            with contextlib.suppress(AttributeError):
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
_RUNS: list[Run] = []  # the Runs entered and not yet left (the courier's interrupt line names the last)

CTRL_C_RESEND_S = 1.0
"""A KeyboardInterrupt that library code swallowed is raised again after this many seconds (a run it reaches
ends within milliseconds)."""
CTRL_C_GIVE_UP_S = 10.0
"""If Ctrl-C has not ended a script's run this many seconds after its first KeyboardInterrupt (each one swallowed
again, or the run stuck in C code since), the process says what is on disk and exits 130."""

_CTRL_C: dict[str, Any] = {}
"""This run's Ctrl-C, shared by the main thread and `_courier`'s: `wake` (a pipe's write end), `first` and
`raised` (time.monotonic() of the first and the last KeyboardInterrupt), `exc` (the last), `kick` (a finaliser
dropped one), `reporter` (who says what is on disk: claimed by `setdefault`), `done`. The signal handler writes
it without a lock (one dict operation is atomic), so it never waits on a thread it interrupted."""
_CTRL_C_LOCK = threading.Lock()  # courier and run's end (never a signal handler): no signal sent after the run
_WRITING = threading.RLock()  # held by the main thread while a file and the run's record of it change
_LIBRARY = tuple(sorted({os.path.join(path, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")
                         if (path := sysconfig.get_path(k))}))  # where library code lives (see `_swallowed`)


def prog_name() -> str:
    """The name that starts this process's one-line messages (`prog: error: ...`): the run's, else the script's."""
    return _PROG[-1] if _PROG else Path(sys.argv[0]).name or "goodhart_jax"


def run(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None = None,
        prog: str | None = None, description: str | None = None) -> int:
    """Parse flags into `config_cls`, check `--out`, call `study_main(cfg)`, and map the outcome to an exit status.

    Returns:
      0 on success; 2 on bad input, or a file the disk refused (one line on stderr); 130 on Ctrl-C.
    """
    prog = prog or prog_name()
    _PROG.append(prog)
    courier = _start_courier()
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
    except (KeyboardInterrupt, Exception) as e:
        if not isinstance(e, KeyboardInterrupt) and "raised" not in _CTRL_C:
            if isinstance(e, OSError) and e.errno in _DISK_REFUSED:  # a full disk outside a Run: one line
                where = f"cannot write {e.filename}: " if e.filename else ""
                print(f"{prog}: error: {where}{e.strerror}", file=sys.stderr, flush=True)
                return 2
            raise  # a bug, shown as one (after Ctrl-C, a library that swallowed it may fail instead: 130 below)
        if not getattr(e, "reported", False) and _may_report():
            print(f"{prog}: interrupted before any result was written", file=sys.stderr, flush=True)
        return 130
    finally:
        _stop_courier(courier)
        _PROG.pop()
    return 0


def _on_sigint(signum, frame) -> None:
    """`guard_startup`'s SIGINT handler: inside `run`, KeyboardInterrupt (the run reports what is on disk) seen
    through by `_courier`; outside it, one line and exit 130 at once."""
    if _PROG:
        _interrupt()
        return
    when = "after the run finished" if _FINISHED else "during start-up: nothing was written"
    os.write(2, f"{prog_name()}: interrupted {when}\n".encode())
    os._exit(130)


def _interrupt() -> None:
    """Raise KeyboardInterrupt for a Ctrl-C in a run, noted in `_CTRL_C` for `_courier`. Nothing is raised once
    the run is saying what is on disk or has ended (a signal the courier sent just before)."""
    if _CTRL_C.get("reporter") or _CTRL_C.get("done"):
        return
    exc, now = KeyboardInterrupt(), time.monotonic()
    _CTRL_C.setdefault("first", now)
    _CTRL_C["raised"], _CTRL_C["exc"] = now, exc
    _wake()
    raise exc


def _wake() -> None:
    if (fd := _CTRL_C.get("wake")) is not None:
        with contextlib.suppress(OSError):  # a full pipe: the courier is awake already
            os.write(fd, b"\0")


def _swallowed(exc: BaseException) -> bool:
    """Whether library code stopped `exc`: the outermost frame it reached is in the standard library or
    site-packages (jax's bare `except:`s, its gc callback), generated code, or the signal handler (a catch in C).
    A KeyboardInterrupt that the study or goodhart_jax caught on purpose (gcg.run_chunks) is theirs to finish."""
    tb = exc.__traceback__
    if tb is None:
        return True
    code = tb.tb_frame.f_code
    return code in (_interrupt.__code__, _on_sigint.__code__) or code.co_filename.startswith(("<", *_LIBRARY))


def _start_courier() -> threading.Thread | None:
    """In a script (its SIGINT handler is `guard_startup`'s), start the thread that sees this run's Ctrl-C
    through; it sleeps on a pipe until the first."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not _on_sigint:
        return None
    _CTRL_C.clear()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    _CTRL_C["wake"] = wake_w
    courier = threading.Thread(target=_courier, args=(wake_r,), name="goodhart_jax Ctrl-C", daemon=True)
    courier.start()
    return courier


def _stop_courier(courier: threading.Thread | None) -> None:
    if courier is not None:
        with _CTRL_C_LOCK:
            _CTRL_C["done"] = True
        _wake()
        courier.join(timeout=5)
        os.close(_CTRL_C.pop("wake"))  # out of the dict first: a handler never writes to a closed descriptor
    _CTRL_C.clear()


def _courier(wake_r: int) -> None:
    """See a Ctrl-C through (a thread of `run`'s): if library code swallowed the KeyboardInterrupt, or a
    finaliser dropped it (`_on_unraisable`), so the run went on, send SIGINT again (every CTRL_C_RESEND_S); if
    Ctrl-C still has not ended the run CTRL_C_GIVE_UP_S after it came, `_give_up`."""
    try:
        os.read(wake_r, 1)  # the first Ctrl-C, or the run's end
        while not (_CTRL_C.get("done") or _CTRL_C.get("reporter")):
            time.sleep(0.05)
            exc, now = _CTRL_C.get("exc"), time.monotonic()
            lost = _CTRL_C.pop("kick", False) or (
                exc is not None and now - _CTRL_C.get("raised", now) >= CTRL_C_RESEND_S and _swallowed(exc))
            if not lost:
                continue
            if now - _CTRL_C.get("first", now) >= CTRL_C_GIVE_UP_S:
                _give_up()
                return
            with _CTRL_C_LOCK:
                if _CTRL_C.get("done"):
                    return
                _CTRL_C["raised"] = now
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        os.close(wake_r)


def _give_up() -> None:
    """Say what is on disk and exit 130 now, once no file is being written (never twice: see `_may_report`)."""
    with _WRITING:  # wait out a write in progress; no new one starts
        if _CTRL_C.get("done") or _CTRL_C.setdefault("reporter", "courier") != "courier":
            return  # the run ended, or the main thread is saying what is on disk
        run = _RUNS[-1] if _RUNS else None
        claim = f": {run.on_disk()}" if run is not None else " before any result was written"
        os.write(2, f"{prog_name()}: interrupted{claim}\n".encode())
        os._exit(130)


def _may_report() -> bool:
    """Whether the main thread may say what is on disk after Ctrl-C: not when it already did, nor when the
    courier is giving up (then wait here for the process to end)."""
    if "wake" not in _CTRL_C:  # no courier (not a script, or not the main thread)
        return True
    token = object()
    if _CTRL_C.setdefault("reporter", token) is token:
        return True
    if _CTRL_C["reporter"] == "courier" and _WRITING.acquire(timeout=5):  # the courier holds it until os._exit
        _WRITING.release()
    return False


def _on_unraisable(args) -> None:
    """A KeyboardInterrupt raised inside a finaliser or gc callback (`__del__`, jax's `_xla_gc_callback`) is
    printed and dropped by Python, and the run goes on: send the signal again, to land in the run's own code."""
    if isinstance(args.exc_value, KeyboardInterrupt) and _PROG:
        if "wake" in _CTRL_C:  # the courier sends it
            _CTRL_C["kick"] = True
            _wake()
            return
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(args)


def guard_startup(module_name: str) -> None:
    """In a script, before its heavy imports: `cli.guard_startup(__name__)`.

    Ctrl-C during the seconds of imports (jax, transformers) before `main` then prints one line and exits
    130, instead of a KeyboardInterrupt traceback (or a crash of XLA's threads at teardown). Inside `run`
    Ctrl-C raises KeyboardInterrupt as usual, and again if library code swallowed it or Python dropped it in
    a finaliser; if it still has not ended the run after CTRL_C_GIVE_UP_S, the process leaves. Nothing happens
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
