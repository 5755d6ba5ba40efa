"""More than one process: sims/sweep_beta.py on 2 processes x 2 CPU devices equals a single-process run."""
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

ARGS = ["--error", "laplace", "--betas", "0.3", "3", "--vocab", "5", "--depth", "3", "--eos",
        "--pi0", "random", "--seeds", "2", "--thm2-t", "2", "--no-plots"]


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


@pytest.mark.slow  # ~1 minute of CPU on 2 cores (three runs of the script, each compiling)
def test_two_processes_equal_one(tmp_path):
    """Two processes join through jax.distributed on 127.0.0.1 (gloo), each with 2 forced CPU devices: one
    4-device mesh over which each seed's tree is drawn and split along its leaves. Only process 0 writes;
    its rows equal those of this process (1 device) on the same flags."""
    port, out = free_port(), tmp_path / "multi"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "sims" / "sweep_beta.py"), *ARGS, "--out", str(out),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert "on 4 device(s), 2 process(es)" in results[0][1]
    assert "sweep_beta" not in results[1][1]  # process 1 logs nothing of the run's (and writes nothing)
    multi = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    sweep_beta = load_script("sweep_beta")
    single = sweep_beta.main(cli.parse_config(sweep_beta.Config, ARGS + ["--out", str(tmp_path / "single")]))
    assert len(multi) == len(single) == 2 + 2 * (2 + 1)
    bad = [(a, b) for a, b in zip(multi, single) if not same(a, json.loads(json.dumps(b)))]
    assert not bad, bad[:3]


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
