"""More than one process: `jax.distributed` flags any study can take, the global mesh, and who writes.

JAX's multi-controller runtime is the engine: every process runs the same
program, `jax.distributed.initialize` joins them, `jax.devices()` then lists
every process's devices, and a mesh over them is one global mesh. Only process
0 writes result files (`open_run`); every process gets the same rows.

    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, distributed.Flags):
        ...

    def main(cfg):
        distributed.initialize(cfg)          # first: before anything touches a device
        with distributed.open_run("my_study", cfg) as run:
            ...

On CPU the processes talk through gloo (set here); on GPU and TPU through the
platform's own collectives. `--coordinator auto` lets JAX read a SLURM,
Open MPI, Kubernetes or TPU-pod environment instead of the three flags.
A process says at once (stderr) that it is waiting for the others, and gives
up after `--init-timeout` seconds in one line, exit 2, instead of hanging
silently for JAX's five minutes and then aborting.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import threading
from typing import Any

import jax
import numpy as np

from goodhart_jax import cli, io

__all__ = ["Flags", "initialize", "is_writer", "open_run", "Silent", "fetch"]

_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")


def _address(v: str) -> None:
    if v and v != "auto" and not _ADDRESS.match(v):
        raise ValueError(f"must be HOST:PORT (e.g. 10.0.0.1:1234) or 'auto', got {v!r}")
    if v and v != "auto" and not 0 < int(v.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"port must be in 1..65535, got {v!r}")


@dataclasses.dataclass(frozen=True)
class Flags(cli.Checked):
    """The flags of a multi-process run (a mixin for a study's Config)."""

    coordinator: str = cli.arg("", "HOST:PORT of process 0, where the processes meet (jax.distributed); 'auto': "
                                   "read SLURM / Open MPI / TPU-pod settings; default: one process "
                                   "(or $JAX_COORDINATOR_ADDRESS)", metavar="HOST:PORT", show_default=False,
                               check=_address)
    num_processes: int = cli.arg(1, "processes in the run (with --coordinator)", metavar="N",
                                 check=cli.at_least("--num-processes", 1))
    process_id: int = cli.arg(0, "this process's index, 0 .. N-1 (with --coordinator); 0 writes the files",
                              metavar="I", check=cli.at_least("--process-id", 0))
    init_timeout: float = cli.arg(60.0, "seconds to wait for every process to join (with --coordinator); then "
                                        "one line and exit 2", metavar="S", check=cli.positive("--init-timeout"))

    def __post_init__(self):
        super().__post_init__()
        if self.process_id >= self.num_processes:
            raise cli.InputError(f"--process-id {self.process_id} must be below --num-processes "
                                 f"{self.num_processes}")
        if self.num_processes > 1 and not self.coordinator:
            raise cli.InputError(f"--num-processes {self.num_processes} needs --coordinator HOST:PORT (or auto)")

    @property
    def writes_files(self) -> bool:
        """Whether this process will write the run's files (process 0), as far as the flags tell before joining:
        with 'auto' the launcher assigns the index, so not known (False). `cli.run` checks --out only here."""
        coordinator = self.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
        return self.process_id == 0 and coordinator != "auto"


def initialize(cfg: Any) -> bool:
    """Join the other processes of the run, when `cfg` (a `Flags`) names any; returns whether it did.

    Call before anything touches a device. On CPU the cross-process collectives are gloo's. Says on stderr, at
    once, what it waits for; if the processes have not all joined within `cfg.init_timeout` seconds, prints
    `prog: error: ...` and exits 2 (JAX's own timeout aborts the process from C++, which Python cannot catch:
    a watchdog thread ends the process first, and JAX's timeout is set a little later as a backstop).
    """
    coordinator = getattr(cfg, "coordinator", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not coordinator:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = float(getattr(cfg, "init_timeout", 60.0))
    if coordinator == "auto":
        what, args = "the other processes (--coordinator auto)", {}
    else:
        what = f"{cfg.num_processes} processes at {coordinator} (this is process {cfg.process_id})"
        args = dict(coordinator_address=coordinator, num_processes=cfg.num_processes, process_id=cfg.process_id)
    if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
        args["initialization_timeout"] = math.ceil(timeout) + 30  # the backstop: the watchdog below ends first
    io.log(f"waiting for {what}; giving up after {timeout:g} s (--init-timeout)")
    with _watchdog(timeout, f"{cli.prog_name()}: error: waited {timeout:g} s for {what}, and not all joined: start "
                            "the others, check the address and port, or raise --init-timeout"):
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


class Silent:
    """`cli.Run`'s interface for the processes that write nothing: rows are kept, files and logs are not."""

    def __init__(self, name: str, cfg: Any, *args, **kwargs):
        self.name, self.cfg, self.rows, self.files = name, cfg, [], []
        self.dir = None

    def emit(self, rows) -> None:
        self.rows = self.rows + [dict(r) for r in rows]

    def save_json(self, *args) -> None:
        pass

    def write(self, *args) -> None:
        pass

    def figure(self, fname: str, fig, *args, **kwargs) -> None:
        import matplotlib.pyplot as plt

        plt.close(fig)

    @staticmethod
    def log(*args) -> None:
        pass

    def table(self, rows, columns, title=None) -> str:
        return cli.format_table(list(rows), columns)

    @staticmethod
    def progress(iterable, desc: str, total: int | None = None):
        return iterable

    def close(self) -> None:
        pass

    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc) -> bool:
        return False


def open_run(name: str, cfg: Any, **kwargs):
    """`cli.Run(name, cfg)` on process 0, a `Silent` stand-in on the others."""
    return cli.Run(name, cfg, **kwargs) if is_writer() else Silent(name, cfg, **kwargs)


def fetch(tree):
    """Host NumPy copies of (possibly multi-process, sharded) arrays: every process gets the whole of each."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
