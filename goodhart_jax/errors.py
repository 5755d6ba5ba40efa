"""The errors every layer shares, at the bottom of the package (it imports nothing of goodhart_jax).

  * `UsageError` (a ValueError; also `InputError`): input a user gave was bad - a file that is not a
    checkpoint, a sample with no tail. The command-line layer prints it in one line and exits 2. A core
    function that checks its own arguments raises a plain ValueError naming its parameter; `UsageError` is
    for modules that read what the user named (files, token lists) and whose message is for that user.
  * `OutputError` (an OSError): a run's file could not be written (a full disk); the command-line layer
    prints it in one line and exits 2.

`io.UsageError`, `cli.InputError` and `cli.OutputError` are these classes.
"""
from __future__ import annotations

__all__ = ["UsageError", "InputError", "OutputError"]


class UsageError(ValueError):
    """Bad input from the command line: reported in one line, exit status 2."""


InputError = UsageError  # one class for bad input: subclasses (CheckpointError, ...) take the same path


class OutputError(OSError):
    """A run's file could not be written (a full disk, a quota): its message names the file and what is complete
    on disk; the runner prints it in one line, exit 2."""
