"""More than one process: sims/sweep_beta.py on 2 processes x 2 CPU devices, and sims/rm_scaling.py with its
(seed, size) units shared over 2 processes, each equal a single-process run; `distributed.run_units` on 2 processes
(results and emits in unit order, a refused input and an unexpected error in one process's unit end both)."""
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys

import pytest

from goodhart_jax import cli, distributed
from scripts import ROOT, load_script

ARGS = ["--error", "laplace", "--betas", "0.3", "1", "3", "10", "--depth", "3", "--eos", "--pi0", "random",
        "--seeds", "2", "--thm2-t", "2", "--no-plots"]
# Two layouts on 2 processes x 2 devices: n = 4 tokens split the leaves over the 4 devices; n = 3 does not, so the
# 4 betas are sharded (each device holds the whole tree). The same 4 betas: the tilt compiles once.
RUNS = {"leaves": ["--vocab", "5"], "betas": ["--vocab", "4"]}
LAYOUT = {"leaves": "each tree split along its leaves over 4 devices", "betas": "the betas sharded over 4 devices"}
# rm_scaling at a tiny size: 2 seeds x 2 sizes = 4 units, 2 on each process (each process trains sizes of both
# seeds, so each builds both seeds' pi0).
SCALING = ["--vocab", "4", "--depth", "3", "--sizes", "1x8x2", "1x16x2", "--pairs", "40", "160", "--seeds", "2",
           "--bt-steps", "20", "--lm-steps", "20", "--betas", "0.1", "0.3", "1", "3", "10", "--ns", "1", "2", "4", "8",
           "16", "--no-plots"]
# Every run in one process pair (each script's runner, `cli.run`, once per flag list): one start-up and one
# jax.distributed join instead of three.
DRIVER = """
import json, sys
sys.path.insert(0, "tests")
from goodhart_jax import cli
from scripts import load_script
for name, argv in json.loads(sys.argv[1]):
    script = load_script(name)
    status = cli.run(script.Config, script.main, argv, prog=name + ".py")
    if status:
        sys.exit(status)
# Then, joined: distributed.run_units itself. Units "a" and "c" are process 0's, "b" and "d" process 1's.
import jax
from goodhart_jax import distributed
emitted = []
got = distributed.run_units(list("abcde"), lambda u: [u, jax.process_index()], emit=emitted.append)
def refuse(u):
    if u == "c":
        raise cli.InputError("bad input in unit c")
    return u
try:
    distributed.run_units(list("abcd"), refuse, carried=(cli.InputError,))
    refused = None
except cli.InputError as e:
    refused = [type(e).__name__, str(e)]
print("RUN_UNITS " + json.dumps(dict(got=got, emitted=emitted, refused=refused)), flush=True)
def broken(u):
    if u == "d":
        raise ValueError("boom")
    return u
distributed.run_units(list("abcd"), broken, carried=(cli.InputError,))  # raises on both: each exits 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same(a, b) -> bool:
    """Rows equal: strings, ints and flags exactly; numbers to float32 rounding (the split tree's upper levels
    are summed on other devices, by other compiled code)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.slow  # ~1 minute of CPU on 2 cores (two processes and this one, each compiling both runs)
def test_two_processes_equal_one(tmp_path):
    """Two processes join through jax.distributed on 127.0.0.1 (gloo), each with 2 forced CPU devices: one
    4-device mesh over which each seed's tree is drawn and split along its leaves, or, for a tree that does not
    split over 4 devices, over which the betas are sharded. Only process 0 writes and logs; its rows equal those
    of this process (1 device) on the same flags."""
    port = free_port()
    join = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    argvs = [("sweep_beta", ARGS + RUNS[name] + ["--out", str(tmp_path / name)] + join) for name in RUNS]
    argvs.append(("rm_scaling", SCALING + ["--out", str(tmp_path / "scaling")] + join))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps([(n, a + ["--process-id", str(i)]) for n, a in argvs])],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=600) for p in procs]  # a process left waiting in a gather fails here
    finally:
        for p in procs:
            p.kill()
    # run_units (after the scripts): results and emits in unit order on both; the refused input of process 0's
    # unit raised as itself on both; process 1's unexpected error a RuntimeError naming it on both, which end
    expect = dict(got=[[u, i % 2] for i, u in enumerate("abcde")], refused=["UsageError", "bad input in unit c"])
    expect["emitted"] = expect["got"]
    for i, (p, (out, err)) in enumerate(zip(procs, results)):
        assert p.returncode == 1, err[-3000:]
        assert "RuntimeError: process 1 of 2, unit 'd': ValueError: boom" in err, (i, err[-3000:])
        line = [x for x in out.splitlines() if x.startswith("RUN_UNITS ")]
        assert len(line) == 1 and json.loads(line[0].split(" ", 1)[1]) == expect, (i, out[-3000:])
    assert "sweep_beta" not in results[1][1] and "rm_scaling" not in results[1][1]  # process 1 logs nothing of the
    # runs' (and writes nothing)
    sweep_beta = load_script("sweep_beta")
    for name in RUNS:
        assert f"on 4 device(s), 2 process(es) ({LAYOUT[name]}" in results[0][1], name
        multi = [json.loads(line) for line in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        cfg = cli.parse_config(sweep_beta.Config, ARGS + RUNS[name] + ["--out", str(tmp_path / f"{name}-single")])
        single = sweep_beta.main(cfg)
        assert len(multi) == len(single) == 4 + 2 * (4 + 1), name
        bad = [(a, b) for a, b in zip(multi, single) if not same(a, json.loads(json.dumps(b)))]
        assert not bad, (name, bad[:3])
    assert "sequences, 2 process(es)" in results[0][1]  # rm_scaling says it ran on 2
    multi = [json.loads(line) for line in (tmp_path / "scaling" / "results.jsonl").read_text().splitlines()]
    rm_scaling = load_script("rm_scaling")
    single = rm_scaling.main(cli.parse_config(rm_scaling.Config, SCALING + ["--out", str(tmp_path / "scaling-1")]))
    assert len(multi) == len(single) and [r["kind"] for r in multi] == [r["kind"] for r in single]
    assert {r["seed"] for r in multi if r["kind"] == "proxy"} == {0, 1}
    bad = [(a, b) for a, b in zip(multi, single) if not same(a, json.loads(json.dumps(b)))]
    assert not bad, ("rm_scaling", bad[:3])


def test_run_units_in_one_process_emits_as_each_finishes_and_raises_as_is():
    """One process: every unit in order, each result emitted before the next unit runs (a progress wrapper sees
    the units); a unit's exception, carried type or not, propagates unchanged at that unit."""
    events, seen = [], []

    def fn(u):
        events.append(("run", u))
        return u * 10

    def progress(mine):
        seen.extend(mine)
        return mine

    got = distributed.run_units([3, 1, 2], fn, emit=lambda r: events.append(("emit", r)), progress=progress)
    assert got == [30, 10, 20] and seen == [3, 1, 2]
    assert events == [("run", 3), ("emit", 30), ("run", 1), ("emit", 10), ("run", 2), ("emit", 20)]
    assert distributed.run_units([], fn) == []

    def bad(u):
        if u == 1:
            raise cli.InputError("refused") if carried else ZeroDivisionError("boom")
        return u

    for carried in (True, False):
        events.clear()
        with pytest.raises(cli.InputError if carried else ZeroDivisionError, match="refused" if carried else "boom"):
            distributed.run_units([0, 1, 2], bad, emit=lambda r: events.append(r), carried=(cli.InputError,))
        assert events == [0]  # unit 0 was emitted; unit 2 never ran


@pytest.mark.parametrize("argv,msg", [
    (["--num-processes", "2"], "--num-processes 2 needs --coordinator"),
    (["--coordinator", "host", "--num-processes", "2"], "must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2 must be below"),
    (["--coordinator", "h:99999", "--num-processes", "2"], "port must be in 1..65535"),
])
def test_bad_flags_one_line(argv, msg):
    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, distributed.Flags):
        pass

    with pytest.raises(cli.InputError, match=msg):
        cli.parse_config(Config, argv)


def test_one_process_is_untouched_and_silent_keeps_rows():
    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, distributed.Flags):
        pass

    cfg = cli.parse_config(Config, [])
    assert not distributed.initialize(cfg) and distributed.is_writer()
    with distributed.Silent("x", cfg) as run:
        run.emit([dict(a=1)])
        run.log("not printed")
        assert run.rows == [dict(a=1)] and run.files == []


LONELY = """
import dataclasses, sys
from goodhart_jax import cli, distributed

@dataclasses.dataclass(frozen=True)
class Config(cli.RunConfig, distributed.Flags):
    pass

def main(cfg):
    distributed.initialize(cfg)
    print("joined", file=sys.stderr)

cli.main(Config, main, sys.argv[1:])
"""


def test_a_missing_process_is_one_line_and_exit_2_after_init_timeout(tmp_path):
    """Process 0 of 3 with no other process: it says at once what it waits for, and after --init-timeout gives
    up in one line, exit 2 (JAX alone would wait 300 s in silence, then abort from C++)."""
    import time

    addr = f"127.0.0.1:{free_port()}"
    argv = ["--coordinator", addr, "--num-processes", "3", "--process-id", "0", "--init-timeout", "3",
            "--out", str(tmp_path / "out")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", LONELY, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stderr.readline()
        waiting = p.poll() is None  # the line came while it waits, not with the error
        rest = p.communicate(timeout=120)[1]
    finally:
        p.kill()
    assert waiting and first.startswith(f"waiting for 3 processes at {addr} (this is process 0)"), first
    assert p.returncode == 2, rest
    assert rest == f"-c: error: waited 3 s for 3 processes at {addr} (this is process 0), and not all joined: " \
                   "start the others, check the address and port, or raise --init-timeout\n"
    assert time.monotonic() - t0 < 60  # well before JAX's own 300 s
    assert not (tmp_path / "out").exists()


def test_only_a_known_process_0_checks_out_before_joining(tmp_path, monkeypatch, capsys):
    """`cli.run` refuses a busy or used --out before any work only where this process will write it (process 0):
    another process must not refuse the directory that process 0 is already writing (it never opens a Run)."""
    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig, distributed.Flags):
        pass

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    out, calls = tmp_path / "out", []
    two = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--out", str(out)]
    with cli.Run("x", Config(out=str(out))):  # process 0's run, writing
        assert cli.run(Config, calls.append, two + ["--process-id", "1"], prog="x.py") == 0
        assert cli.run(Config, calls.append, ["--coordinator", "auto", "--out", str(out)], prog="x.py") == 0
        assert len(calls) == 2
        for argv in (two, two[-2:]):  # process 0, or a run of one process
            assert cli.run(Config, calls.append, argv, prog="x.py") == 2
            assert "is in use: another run holds it" in capsys.readouterr().err
    assert len(calls) == 2


def test_distributed_sits_below_cli():
    """The library module imports no part of the command-line layer; its old names for the CLI's pieces are the
    CLI's (looked up only when asked for)."""
    code = ("import sys; from goodhart_jax import distributed; "
            "print(sorted(m for m in sys.modules if m.startswith('goodhart_jax.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True).stdout
    assert out.strip() == "[]"
    assert (distributed.Flags, distributed.open_run, distributed.Silent) == (cli.ProcessFlags, cli.open_run,
                                                                             cli.SilentRun)
