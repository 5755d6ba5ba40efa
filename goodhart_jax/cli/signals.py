"""Ctrl-C in a run: one line saying what is on disk, exit 130, every finished file intact.

A script that calls `guard_startup(__name__)` before its heavy imports answers Ctrl-C during them in one line,
exit 130. Inside a run (`running`), Ctrl-C raises KeyboardInterrupt as usual, and `_courier`, a thread, sees it
through: a KeyboardInterrupt that library code swallowed (a bare `except:` in jax, a finaliser) is raised again,
and a run that Ctrl-C has not ended after `CTRL_C_GIVE_UP_S` says what is on disk and exits 130.
`holding_ctrl_c` holds a Ctrl-C while a file and the run's record of it change.

The state is per process (signals are): the stack of runs in progress (`running`), the output managers entered
(`entered`), and this run's Ctrl-C (`_CTRL_C`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["CTRL_C_RESEND_S", "CTRL_C_GIVE_UP_S", "prog_name", "guard_startup", "running", "finished",
           "holding_ctrl_c", "enter", "leave", "interrupted", "may_report"]

_PROG: list[str] = []  # the program name of the `run` in progress (for the one-line messages)
_FINISHED: list[int] = []  # the status of a script's finished `main`, for the Ctrl-C guard
_RUNS: list[Any] = []  # the output managers (cli.Run) entered and not yet left (a give-up line names the last)

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



@contextlib.contextmanager
def holding_ctrl_c():
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
    """Say what is on disk and exit 130 now, once no file is being written (never twice: see `may_report`)."""
    with _WRITING:  # wait out a write in progress; no new one starts
        if _CTRL_C.get("done") or _CTRL_C.setdefault("reporter", "courier") != "courier":
            return  # the run ended, or the main thread is saying what is on disk
        run = _RUNS[-1] if _RUNS else None
        claim = f": {run.on_disk()}" if run is not None else " before any result was written"
        os.write(2, f"{prog_name()}: interrupted{claim}\n".encode())
        os._exit(130)


def may_report() -> bool:
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


@contextlib.contextmanager
def running(prog: str) -> Iterator[None]:
    """A run named `prog` is in progress inside the block: its one-line messages start with `prog`, and in a
    script (`guard_startup`) the courier sees its Ctrl-C through."""
    _PROG.append(prog)
    courier = _start_courier()
    try:
        yield
    finally:
        _stop_courier(courier)
        _PROG.pop()


def finished(status: int) -> None:
    """The script's run ended with `status`: a Ctrl-C from now on says so (one line, exit 130)."""
    _FINISHED.append(status)


def enter(run: Any) -> None:
    """`run` (with an `on_disk() -> str`) is the output manager whose files a Ctrl-C that gives up names."""
    _RUNS.append(run)


def leave(run: Any) -> None:
    """`run` (one `enter` registered) no longer holds files a Ctrl-C should name; a run not registered is ignored.

    Args:
      run: the output manager `enter` registered.
    """
    if run in _RUNS:
        _RUNS.remove(run)


def interrupted() -> bool:
    """Whether Ctrl-C has raised KeyboardInterrupt in this run (an exception after it may be a library's
    failure to handle it)."""
    return "raised" in _CTRL_C
