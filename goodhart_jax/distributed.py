"""More than one process: joining them (`jax.distributed`), the global mesh, and who writes.

JAX's multi-controller runtime is the engine: every process runs the same
program, `jax.distributed.initialize` joins them, `jax.devices()` then lists
every process's devices, and a mesh over them is one global mesh. Only process
0 writes result files (`is_writer`; `cli.open_run`); every process gets the same
rows (`fetch`). Independent work units (seeds, sizes) are shared over the
processes and their results gathered by `run_units` (`share`, `gather_objects`).

    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, cli.ProcessFlags):
        ...

    def main(cfg):
        distributed.initialize(cfg)          # first: before anything touches a device
        with cli.open_run("my_study", cfg) as run:
            ...

This module knows nothing of the command line's runner: `initialize` reads the
fields `coordinator`, `num_processes`, `process_id` and `init_timeout` of any
config (`cli.ProcessFlags` declares them as flags). `distributed.Flags`,
`distributed.open_run` and `distributed.Silent` are kept as names for
`cli.ProcessFlags`, `cli.open_run` and `cli.SilentRun`.

On CPU the processes talk through gloo (set here); on GPU and TPU through the
platform's own collectives. `--coordinator auto` lets JAX read a SLURM,
Open MPI, Kubernetes or TPU-pod environment instead of the three flags.
A process says at once (stderr) that it is waiting for the others, and gives
up after `--init-timeout` seconds in one line, exit 2, instead of hanging
silently for JAX's five minutes and then aborting.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from goodhart_jax import io

__all__ = ["initialize", "is_writer", "fetch", "share", "gather_objects", "run_units"]


def initialize(cfg: Any, prog: str | None = None) -> bool:
    """Join the other processes of the run, when `cfg` (a `cli.ProcessFlags`) names any; returns whether it did.

    Call before anything touches a device. On CPU the cross-process collectives are gloo's. Says on stderr, at
    once, what it waits for; if the processes have not all joined within `cfg.init_timeout` seconds, prints
    `prog: error: ...` (`prog`: by default the script's file name) and exits 2 (JAX's own timeout aborts the
    process from C++, which Python cannot catch: a watchdog thread ends the process first, and JAX's timeout is
    set a little later as a backstop). Its messages name `cfg`'s fields `coordinator` and `init_timeout`, or what
    `cfg.param_flags` maps them to (a `cli.ProcessFlags`: the flags).
    """
    names = {"coordinator": "coordinator", "init_timeout": "init_timeout", **getattr(cfg, "param_flags", {})}
    coordinator = getattr(cfg, "coordinator", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not coordinator:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = float(getattr(cfg, "init_timeout", 60.0))
    if coordinator == "auto":
        what, args = f"the other processes ({names['coordinator']} auto)", {}
    else:
        what = f"{cfg.num_processes} processes at {coordinator} (this is process {cfg.process_id})"
        args = dict(coordinator_address=coordinator, num_processes=cfg.num_processes, process_id=cfg.process_id)
    if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
        args["initialization_timeout"] = math.ceil(timeout) + 30  # the backstop: the watchdog below ends first
    io.log(f"waiting for {what}; giving up after {timeout:g} s ({names['init_timeout']})")
    prog = prog or Path(sys.argv[0]).name or "goodhart_jax"
    with _watchdog(timeout, f"{prog}: error: waited {timeout:g} s for {what}, and not all joined: start "
                            f"the others, check the address and port, or raise {names['init_timeout']}"):
        jax.distributed.initialize(**args)
    return True


class _watchdog:
    """Within the block, after `seconds`: write `line` to stderr and end the process with status 2 (the main
    thread is blocked in C++, where no exception can reach it). Leaving the block first disarms it."""

    def __init__(self, seconds: float, line: str):
        self.seconds, self.line = seconds, line
        self.lock, self.done = threading.Lock(), False

    def _fire(self) -> None:
        with self.lock:  # never once the block has been left: a joined run is not ended
            if not self.done:
                os.write(2, (" ".join(self.line.split()) + "\n").encode())
                os._exit(2)

    def __enter__(self):
        self.timer = threading.Timer(self.seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc) -> bool:
        with self.lock:
            self.done = True
        self.timer.cancel()
        return False


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def fetch(tree):
    """Host NumPy copies of (possibly multi-process, sharded) arrays: every process gets the whole of each.

    Args:
      tree: a pytree of arrays (global `jax.Array`s of any sharding, or host arrays).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def share(items: list) -> list:
    """This process's share of a list of work units: every `process_count()`-th item from its index (all of
    them in a single process). Each unit must be a pure function of its own inputs (keys folded from its seed),
    so that which process does it changes nothing.

    Args:
      items: the run's work units, in the run's order (the same list in every process).
    """
    return list(items)[jax.process_index()::jax.process_count()]


def gather_objects(obj: Any) -> list:
    """Every process's `obj`, in process order, on every process (`[obj]` in a single process).

    Pickled to bytes and all-gathered (`multihost_utils.process_allgather`): for Python results (rows, NamedTuples
    of host arrays) that `fetch` cannot carry. Only between the processes of one run: pickle trusts its input.

    Args:
      obj: any picklable object.
    """
    if jax.process_count() == 1:
        return [obj]
    import pickle

    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded))  # [P, max size]
    return [pickle.loads(every[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def run_units(units: Sequence, fn: Callable[[Any], Any], emit: Callable[[Any], None] | None = None,
              progress: Callable[[Iterable], Iterable] | None = None,
              carried: tuple[type[BaseException], ...] = ()) -> list:
    """`[fn(u) for u in units]`, the units shared over the processes (`share`), on every process, in unit order.

    In a single process each unit runs in turn and `emit(result)` follows each as it finishes; an exception
    propagates as it is. With several processes each runs its share, the results are gathered
    (`gather_objects`), and every process calls `emit` on every result in unit order, once all are done: the
    calls are those of one process, later. Where a unit raises, its process stops its share and the exception
    is carried through the gather, so that no process waits for it there: every process raises, in the first
    failing process's terms (the lowest process index that failed) - an instance of one of `carried` (the first
    it is an instance of: e.g. `cli.InputError`, bad input that the runner reports in one line) with the same
    message, or else a RuntimeError naming the process, the unit, the exception's type and message (on the
    failing process chained to the exception itself).

    Each unit must be a pure function of its own inputs (keys folded from its seed, never from the process), so
    that the results are the same on any number of processes; `fn` must not use cross-process collectives (the
    processes run different units); the results must be picklable.

    Args:
      units: the run's work units, in the run's order (the same list in every process); each is named by its
        repr in an error.
      fn: unit -> result.
      emit: called with each result (rows to write, say), in unit order; None: nothing is called.
      progress: wraps the iterable of this process's units (a progress bar); None: none.
      carried: exception types re-raised as themselves (type and message) on every process; constructed
        from the message alone.
    Returns:
      [len(units)] the results, in unit order (the same list on every process).
    """
    units = list(units)
    single = jax.process_count() == 1
    mine = share(units)
    done, failed = {}, None
    for i, u in zip(range(jax.process_index(), len(units), jax.process_count()),
                    mine if progress is None else progress(mine)):
        try:
            result = fn(u)
        except Exception as e:
            if single:
                raise
            kind = next((k for k, t in enumerate(carried) if isinstance(e, t)), None)
            failed = (kind, f"{type(e).__name__}: {e}" if kind is None else str(e), repr(u), e)
            break
        if single and emit is not None:
            emit(result)
        done[i] = result
    if single:
        return [done[i] for i in range(len(units))]
    parts = gather_objects((done, None if failed is None else failed[:3]))
    for p, (_, f) in enumerate(parts):
        if f is not None:
            kind, msg, unit = f
            if kind is not None:
                raise carried[kind](msg)
            cause = failed[3] if p == jax.process_index() else None
            raise RuntimeError(f"process {p} of {len(parts)}, unit {unit}: {msg}") from cause
    for part, _ in parts:
        done.update(part)
    results = [done[i] for i in range(len(units))]
    if emit is not None:
        for r in results:
            emit(r)
    return results


_MOVED = {"Flags": "ProcessFlags", "open_run": "open_run", "Silent": "SilentRun"}  # -> goodhart_jax.cli


def __getattr__(name: str):
    """The names that moved to the command-line layer, kept for the scripts that use them here."""
    if name in _MOVED:
        return getattr(importlib.import_module("goodhart_jax.cli"), _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
