"""The runner: flags -> Config -> `--out` checked -> the study's `main` -> an exit status.

  * bad input (a flag argparse rejects, any `InputError`, a `ValueError` raised inside `with cli.inputs():`)
    -> one line `script: error: ...`, exit 2;
  * a file that cannot be written (a full disk) -> one line naming it and the files that are complete, exit 2;
  * Ctrl-C -> one line saying what is on disk, exit 130 (see `signals`).
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, Sequence

from goodhart_jax.cli import outdir, signals
from goodhart_jax.cli.flags import RunConfig, parse_config
from goodhart_jax.errors import InputError, OutputError

__all__ = ["run", "main"]

_DISK_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # written outside a Run: one line, exit 2


def run(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None = None,
        prog: str | None = None, description: str | None = None) -> int:
    """Parse flags into `config_cls`, check `--out`, call `study_main(cfg)`, and map the outcome to an exit status.

    Args:
      argv: the arguments (default: sys.argv[1:]).
      prog: the program name in messages (default: the script's).
      description: `--help`'s text.
    Returns:
      0 on success; 2 on bad input, or a file the disk refused (one line on stderr); 130 on Ctrl-C.
    """
    prog = prog or signals.prog_name()
    with signals.running(prog):
        return _run(config_cls, study_main, argv, prog, description)


def _run(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None, prog: str,
         description: str | None) -> int:
    try:
        try:
            cfg = parse_config(config_cls, argv, prog, description)
        except SystemExit as e:  # --help (0), or argparse's one-line error (2)
            return int(e.code or 0)
        if isinstance(cfg, RunConfig) and cfg.out:
            outdir.check_out_dir(cfg.out)  # before any work (loading a model can take minutes)
            if getattr(cfg, "writes_files", True):  # a process that may not be process 0 never opens a Run
                outdir.check_out_free(cfg.out, cfg.overwrite)
        study_main(cfg)
    except (InputError, OutputError) as e:
        msg = " ".join(str(e).split())  # one line, whatever the message held
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, Exception) as e:
        if not isinstance(e, KeyboardInterrupt) and not signals.interrupted():
            if isinstance(e, OSError) and e.errno in _DISK_REFUSED:  # a full disk outside a Run: one line
                where = f"cannot write {e.filename}: " if e.filename else ""
                print(f"{prog}: error: {where}{e.strerror}", file=sys.stderr, flush=True)
                return 2
            raise  # a bug, shown as one (after Ctrl-C, a library that swallowed it may fail instead: 130 below)
        if not getattr(e, "reported", False) and signals.may_report():
            print(f"{prog}: interrupted before any result was written", file=sys.stderr, flush=True)
        return 130
    return 0


def main(config_cls: type, study_main: Callable[[Any], Any], argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """`run`, then exit with its status.

    After Ctrl-C the process leaves with `os._exit`: interpreter teardown while XLA's threads are still
    busy can crash (exit 139); every result file is already complete on disk by then.

    Args:
      config_cls: the study's frozen Config dataclass (its fields are the flags).
      study_main: the study's `main(cfg)`, which returns its rows.
      argv: the arguments (default: sys.argv[1:]).
      description: `--help`'s text (default: the `__main__` module's docstring).
    """
    if description is None:
        doc = sys.modules["__main__"].__doc__ or ""
        description = doc.strip() or None
    try:
        status = run(config_cls, study_main, argv, description=description)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        status = 130
    signals.finished(status)
    sys.stdout.flush()
    sys.stderr.flush()
    if status == 130:
        os._exit(130)
    sys.exit(status)
