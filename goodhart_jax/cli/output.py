"""One run's outputs: the directory with its `config.json`, incremental atomic result files, figures, `--json`
(stdout carries only JSON lines), progress on stderr, and on Ctrl-C one line saying what is on disk.

A `Run` made with `writes=False` (`open_run` on a process other than 0 of a multi-process run) keeps its rows
and writes, logs and prints nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import math
import numbers
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from goodhart_jax import io
from goodhart_jax.cli import flags, outdir, signals
from goodhart_jax.errors import OutputError

__all__ = ["Run", "SilentRun", "open_run", "format_table"]


class Run:
    """One run's output directory: config.json, incremental atomic results, figures, JSON lines on stdout.

    Use as a context manager; on Ctrl-C its exit says (on stderr) exactly what is on disk.

    Args:
      name: the study's name; the default directory is `runs/<name>/<timestamp>/`.
      cfg: the study's Config (written to config.json). Its `out`, `json` and `plots` fields, where present,
        choose the directory, JSON lines on stdout, and whether `figure` writes anything.
      results: base name of the row files (results.jsonl and results.csv); None writes no row files.
      csv_rows: which rows go into the CSV too (default: all); e.g. leave out rows whose cells are lists.
      writes: False for a process that writes nothing (not process 0 of a multi-process run, see `open_run`):
        the run keeps its rows, and writes no file, logs nothing and prints no row; `dir` is None.
    """

    def __init__(self, name: str, cfg: Any, results: str | None = "results",
                 csv_rows: Callable[[dict], bool] | None = None, writes: bool = True):
        self.name = name
        self.cfg = cfg
        self.writes = writes
        self.json = writes and bool(getattr(cfg, "json", False))
        self.plots = writes and bool(getattr(cfg, "plots", True))
        self.results = results if writes else None
        self.csv_rows = csv_rows
        self.rows: list[dict] = []
        self.files: list[str] = []  # finished files, in the order first written
        self.dir: Path | None = None
        self._lock: int | None = None
        if not writes:  # (the static log and progress, silenced for this run)
            self.log = lambda *args: None
            self.progress = functools.partial(Run.progress, disable=True)
            return
        out = getattr(cfg, "out", "")
        self.dir = outdir.prepare_out_dir(out) if out else outdir.new_dir(io.default_out_dir(name))
        self._lock = outdir.lock(self.dir)
        try:
            outdir.remove_earlier_run(self.dir, bool(getattr(cfg, "overwrite", False)))
            self.save_json("config.json", flags.flag_values(cfg) if dataclasses.is_dataclass(cfg) else cfg)
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
        with signals.holding_ctrl_c():  # both files, self.rows and the rows on stdout, or none of them
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

    def save_json(self, fname: str, obj: Any) -> Path | None:
        """Write `obj` as JSON (non-finite numbers as null) to DIR/fname, atomically."""
        if not self.writes:
            return None
        with signals.holding_ctrl_c():
            return self._save(fname, io.json_text(obj))

    def write(self, fname: str, data: bytes | str) -> Path | None:
        """Write bytes or text to DIR/fname, atomically."""
        if not self.writes:
            return None
        with signals.holding_ctrl_c():
            return self._save(fname, data)

    def figure(self, fname: str, fig, dpi: int = 110) -> Path | None:
        """Save a matplotlib figure atomically (closed either way); nothing when plots are off."""
        if not self.plots:
            import matplotlib.pyplot as plt

            plt.close(fig)
            return None
        data = io.figure_bytes(fig, Path(fname).suffix.lstrip(".") or "png", dpi)
        with signals.holding_ctrl_c():
            return self._save(fname, data)

    @staticmethod
    def log(*args) -> None:
        """A line on stderr (`Run.log(...)` too; nothing from a run that writes nothing)."""
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
    def progress(iterable: Iterable, desc: str, total: int | None = None, disable: bool | None = None):
        """tqdm progress on stderr (`Run.progress(...)` too; silent when stderr is not a terminal, or from a run
        that writes nothing)."""
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=disable)

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
        if self.writes:
            signals.enter(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        signals.leave(self)
        if not self.writes:
            return False
        if exc_type is None:
            io.log(f"wrote {', '.join(self.files)} in {self.dir}")
        elif issubclass(exc_type, KeyboardInterrupt) or (issubclass(exc_type, Exception) and signals.interrupted()):
            # (an exception after Ctrl-C: a library swallowed the KeyboardInterrupt and failed instead)
            if signals.may_report():
                io.log(f"{signals.prog_name()}: interrupted: {self.on_disk()}")
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


class SilentRun(Run):
    """`Run(name, cfg, writes=False)`: keeps the rows; writes, logs and prints nothing."""

    def __init__(self, name: str, cfg: Any, *args, **kwargs):
        kwargs.pop("writes", None)
        super().__init__(name, cfg, *args, writes=False, **kwargs)


def open_run(name: str, cfg: Any, **kwargs) -> Run:
    """`Run(name, cfg, **kwargs)` on process 0 of a (multi-process) run; one that writes nothing on the others."""
    from goodhart_jax import distributed  # imports jax: not at start-up (see `guard_startup`)

    return Run(name, cfg, writes=distributed.is_writer(), **kwargs)
