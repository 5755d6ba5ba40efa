"""The flags of a multi-process run (`jax.distributed`), a mixin for a study's Config.

    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, cli.ProcessFlags):
        ...

    def main(cfg):
        distributed.initialize(cfg)          # first: before anything touches a device
        with cli.open_run("my_study", cfg) as run:
            ...

`distributed.initialize` reads these fields; `cli.open_run` gives process 0 a `Run` and the other processes
one that writes nothing. (`distributed.Flags` and `distributed.open_run` are these names.)
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar

from goodhart_jax.cli.flags import Checked, arg, at_least, positive
from goodhart_jax.errors import InputError

__all__ = ["ProcessFlags"]

_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")


def _address(v: str) -> None:
    if v and v != "auto" and not _ADDRESS.match(v):
        raise ValueError(f"must be HOST:PORT (e.g. 10.0.0.1:1234) or 'auto', got {v!r}")
    if v and v != "auto" and not 0 < int(v.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"port must be in 1..65535, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ProcessFlags(Checked):
    """The flags of a multi-process run (a mixin for a study's Config)."""

    param_flags: ClassVar[dict] = {"coordinator": "--coordinator", "init_timeout": "--init-timeout"}
    """How `distributed.initialize`'s messages name its parameters here: as these flags."""

    coordinator: str = arg("", "HOST:PORT of process 0, where the processes meet (jax.distributed); 'auto': "
                               "read SLURM / Open MPI / TPU-pod settings; default: one process "
                               "(or $JAX_COORDINATOR_ADDRESS)", metavar="HOST:PORT", show_default=False,
                           check=_address)
    num_processes: int = arg(1, "processes in the run (with --coordinator)", metavar="N",
                             check=at_least("--num-processes", 1))
    process_id: int = arg(0, "this process's index, 0 .. N-1 (with --coordinator); 0 writes the files",
                          metavar="I", check=at_least("--process-id", 0))
    init_timeout: float = arg(60.0, "seconds to wait for every process to join (with --coordinator); then "
                                    "one line and exit 2", metavar="S", check=positive("--init-timeout"))

    def __post_init__(self):
        super().__post_init__()
        if self.process_id >= self.num_processes:
            raise InputError(f"--process-id {self.process_id} must be below --num-processes {self.num_processes}")
        if self.num_processes > 1 and not self.coordinator:
            raise InputError(f"--num-processes {self.num_processes} needs --coordinator HOST:PORT (or auto)")

    @property
    def writes_files(self) -> bool:
        """Whether this process will write the run's files (process 0), as far as the flags tell before joining:
        with 'auto' the launcher assigns the index, so not known (False). `cli.run` checks --out only here."""
        coordinator = self.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
        return self.process_id == 0 and coordinator != "auto"
