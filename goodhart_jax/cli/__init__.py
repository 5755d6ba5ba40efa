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
    (`signals`): a KeyboardInterrupt that library code swallowed (a bare
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
  * without `--out`, each run gets a new directory `runs/<script>/<timestamp>`
    (with a -2, -3, ... suffix when two start in the same second).

Every int field (and every int in a tuple field) must fit in 64 bits; `seed`
checks a PRNG seed (an integer in [0, 2^32 - 1]).

Flags from fields (`typing` annotations of the dataclass):
  bool -> `--x/--no-x`; tuple[T, ...] -> `nargs="+"` (`"*"` when the default
  is empty or None); int/float/str -> `type=`; help, metavar, choices and
  `required` from `arg(...)` metadata. `foo_bar` becomes `--foo-bar`. A field
  holding a config dataclass (`cli.nest(SearchConfig, ...)`, or any field
  annotated with a dataclass) gives one flag for each of its fields, flat
  (`--length`) unless `nest(prefix=...)` is given; config.json records the
  flags flat (`cli.flag_values`).

The package, by concern: `flags` (flags from a Config, field checks),
`output` (`Run`), `outdir` (the output directory's checks and lock),
`signals` (Ctrl-C), `runner` (`run`, `main`), `processes` (the flags of a
multi-process run). Every name is here too: `cli.arg`, `cli.Run`, ...
Not imported here (it imports the numerics, slow to load): `lab_flags`, the
flags the lab's drivers share (`from goodhart_jax.cli import lab_flags` after
`cli.guard_startup`).

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

import sys
import types

from goodhart_jax.cli import flags, outdir, output, processes, runner, signals
from goodhart_jax.cli.flags import (INT32_MAX, INT64_MAX, SEED_MAX, Checked, Flag, RunConfig, arg, at_least,
                                    build_parser, check_memory, count, each, finite, flag_values, flags_of, inputs, nest, parse_config,
                                    positive, seed, within)
from goodhart_jax.cli.outdir import check_out_dir, check_out_free, prepare_out_dir
from goodhart_jax.cli.output import Run, SilentRun, format_table, open_run
from goodhart_jax.cli.processes import ProcessFlags
from goodhart_jax.cli.runner import main, run
from goodhart_jax.cli.signals import CTRL_C_GIVE_UP_S, CTRL_C_RESEND_S, guard_startup, prog_name
from goodhart_jax.errors import InputError, OutputError

__all__ = ["InputError", "OutputError", "Checked", "RunConfig", "arg", "nest", "flag_values", "flags_of", "Flag", "each", "positive", "finite", "within",
           "at_least", "count", "INT32_MAX", "seed", "inputs", "check_memory", "Run", "SilentRun", "open_run", "format_table",
           "check_out_dir", "check_out_free", "prepare_out_dir", "build_parser", "parse_config", "run", "main",
           "guard_startup", "prog_name", "ProcessFlags", "CTRL_C_RESEND_S", "CTRL_C_GIVE_UP_S", "SEED_MAX",
           "INT64_MAX"]


class _Package(types.ModuleType):
    """`cli.CTRL_C_GIVE_UP_S = 2.0` (a test's setting) reaches `signals`, where the courier reads it."""

    def __setattr__(self, name: str, value) -> None:
        if name in ("CTRL_C_RESEND_S", "CTRL_C_GIVE_UP_S"):
            setattr(signals, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
