"""The one CLI runner: flags derived from a Config dataclass, one error path, incremental atomic results, Ctrl-C."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from goodhart_jax import cli

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Toy(cli.RunConfig):
    betas: tuple[float, ...] = cli.arg((0.5, 2.0), "KL coefficients", metavar="B")
    names: tuple[str, ...] = cli.arg((), "names, may be empty")
    vocab: int = cli.arg(8, "tokens per state", metavar="A")
    center: bool = cli.arg(True, "centre the families")
    eos: bool = cli.arg(False, "last token ends")
    pi0: str = cli.arg("uniform", "base policy", choices=("uniform", "random"))
    model: str | None = cli.arg(None, "a directory")
    ids: tuple[int, ...] | None = cli.arg(None, "token ids", nargs="*")


def test_flags_from_fields():
    assert cli.parse_config(Toy, []) == Toy()
    cfg = cli.parse_config(Toy, ["--betas", "1", "3e2", "--vocab", "5", "--no-center", "--eos", "--pi0", "random",
                                 "--model", "m", "--ids", "3", "4", "--names", "a", "b", "--out", "x", "--json",
                                 "--no-plots"])
    assert cfg == Toy(betas=(1.0, 300.0), names=("a", "b"), vocab=5, center=False, eos=True, pi0="random",
                      model="m", ids=(3, 4), out="x", json=True, plots=False)
    assert isinstance(cfg.betas, tuple) and isinstance(cfg.ids, tuple)
    assert cli.parse_config(Toy, ["--ids"]).ids == ()
    text = cli.build_parser(Toy, "toy").format_help()
    for needle in ("--betas B [B ...]", "(default: 0.5 2)", "--center, --no-center", "(default: on)",
                   "--vocab A", "{uniform,random}", "--no-plots"):
        assert needle in text, needle


@pytest.mark.parametrize("argv,needle", [
    (["--vocab", "x"], "invalid int value: 'x'"),
    (["--pi0", "other"], "invalid choice: 'other'"),
    (["--betas"], "expected at least one argument"),
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_argparse_errors_are_one_line_exit_2(argv, needle, capsys):
    assert cli.run(Toy, lambda cfg: None, argv, prog="toy.py") == 2
    err = capsys.readouterr().err
    assert err.startswith("toy.py: error: ") and needle in err and err.count("\n") == 1


def test_inputs_read_library_parameters_as_flags(capsys, tmp_path):
    """cli.inputs(params): a library's ValueError names its parameter; the CLI line names the flag, and only
    whole parameter names are read as flags (not a flag already, not inside a longer word)."""
    def study(cfg):
        with cli.inputs({"tokens": "--tokens", "gold": "--gold"}):
            raise ValueError("tokens must be >= 2 distinct ids, got [5]; subtokens; --gold x; gold ok")

    assert cli.run(Toy, study, ["--out", str(tmp_path)], prog="toy.py") == 2
    assert capsys.readouterr().err == ("toy.py: error: --tokens must be >= 2 distinct ids, got [5]; subtokens; "
                                       "--gold x; --gold ok\n")


def test_input_errors_one_path(capsys, tmp_path):
    def study(cfg):
        with cli.inputs():
            raise ValueError("beta must be > 0,\n  got -1")

    assert cli.run(Toy, study, ["--out", str(tmp_path)], prog="toy.py") == 2
    assert capsys.readouterr().err == "toy.py: error: beta must be > 0, got -1\n"

    class CheckpointLike(cli.InputError):
        pass

    def study2(cfg):
        raise CheckpointLike("model.safetensors is truncated")

    assert cli.run(Toy, study2, [], prog="toy.py") == 2
    assert capsys.readouterr().err == "toy.py: error: model.safetensors is truncated\n"

    def buggy(cfg):  # a ValueError outside `inputs()` is a bug, not the user's input: it is not hidden
        raise ValueError("internal")

    with pytest.raises(ValueError, match="internal"):
        cli.run(Toy, buggy, [], prog="toy.py")


def test_out_dir_checked_before_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    calls = []

    def study(cfg):
        with cli.Run("toy", cfg):
            calls.append(1)

    for out in (afile, afile / "sub"):
        assert cli.run(Toy, study, ["--out", str(out)], prog="toy.py") == 2
        err = capsys.readouterr().err
        assert err.startswith("toy.py: error: output directory") and "is a file" in err and err.count("\n") == 1
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert cli.run(Toy, study, ["--out", str(ro / "x")], prog="toy.py") == 2
        assert "cannot create output directory" in capsys.readouterr().err
    assert calls == []


def test_run_writes_rows_incrementally_and_json_stdout(tmp_path, capsys):
    cfg = Toy(out=str(tmp_path), json=True, plots=False)
    with cli.Run("toy", cfg) as run:
        run.emit([dict(kind="a", x=1.0, y=float("nan"))])
        assert (tmp_path / "results.jsonl").read_text().count("\n") == 1  # on disk at once
        run.emit([dict(kind="b", x=2, z=None)])
        import matplotlib.pyplot as plt

        assert run.figure("f.png", plt.figure()) is None  # plots off: nothing written
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rows == [dict(kind="a", x=1.0, y=None), dict(kind="b", x=2, z=None)]
    assert [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()] == rows
    assert (tmp_path / "results.csv").read_text().splitlines() == ["kind,x,y,z", "a,1.0,,", "b,2,,"]
    assert json.loads((tmp_path / "config.json").read_text())["betas"] == [0.5, 2.0]
    assert not (tmp_path / "f.png").exists() and not list(tmp_path.glob(".*.tmp"))


def test_interrupt_message_says_what_is_on_disk(tmp_path, capsys):
    def study(cfg):
        with cli.Run("toy", cfg) as run:
            if cfg.vocab == 1:
                run.emit([dict(k=1), dict(k=2)])
            raise KeyboardInterrupt

    assert cli.run(Toy, study, ["--out", str(tmp_path / "a")], prog="toy.py") == 130
    err = capsys.readouterr().err
    assert "interrupted: no results yet: only config.json" in err and err.count("\n") == 1
    assert cli.run(Toy, study, ["--out", str(tmp_path / "b"), "--vocab", "1"], prog="toy.py") == 130
    err = capsys.readouterr().err
    assert f"interrupted: 2 finished rows are in {tmp_path / 'b'}/results.jsonl" in err
    assert len((tmp_path / "b" / "results.jsonl").read_text().splitlines()) == 2


SLOW_STUDY = textwrap.dedent("""
    import dataclasses, os, signal, sys
    from goodhart_jax import cli
    cli.guard_startup(__name__)  # as every script does (it also holds if the parent left SIGINT ignored)
    import jax, jax.numpy as jnp
    from jax._src.interpreters import pxla

    @dataclasses.dataclass(frozen=True)
    class Config(cli.RunConfig):
        at: str = cli.arg("xla_busy", "where Ctrl-C lands", choices=("xla_busy", "compiling", "swallowed_by_jax"))

    def ctrl_c(*args, **kwargs):  # the handler runs inside raise_signal: the KeyboardInterrupt starts here
        signal.raise_signal(signal.SIGINT)

    class Executable:  # asked for its layouts after every XLA compile, inside jax's `try: ... except:`
        def get_parameter_layouts(self):
            ctrl_c()

    def main(cfg):
        f = jax.jit(lambda x: jnp.sort(jnp.sin(x @ x.T)).sum())
        x = jnp.ones((400, 400))
        with cli.Run("slow", cfg) as run:
            for i in range(3):
                run.emit([dict(i=i)])
            if cfg.at == "compiling":  # right after XLA compiled f, in jax's own code
                jax.monitoring.register_event_duration_secs_listener(
                    lambda event, secs, **kw: event == "/jax/core/compile/backend_compile_duration" and ctrl_c())
            elif cfg.at == "swallowed_by_jax":  # the window the CI run lost: jax's bare except drops it
                pxla._get_layouts_from_executable(Executable(), (), (), 0, (), ())
            f(x).block_until_ready()
            if cfg.at == "compiling":
                sys.exit("no compile event: the test never interrupted")
            print("ready", file=sys.stderr, flush=True)
            while True:   # XLA busy on its own threads when the signal lands
                f(x).block_until_ready()

    if __name__ == "__main__":
        cli.main(Config, main)
""")


@pytest.mark.parametrize("at", ["xla_busy", "compiling", "swallowed_by_jax"])
def test_ctrl_c_exits_130_with_files_intact(at, tmp_path):
    """Ctrl-C lands at a chosen point: while XLA runs (sent once the loop runs), inside jax's compile path (a
    monitoring listener), and inside the bare `except:` of jax's `_get_layouts_from_executable`, which drops
    it without a word (the CI run that never exited: issue 21). Each time: exit 130 with the 3 rows on disk."""
    pxla = pytest.importorskip("jax._src.interpreters.pxla")
    if at == "swallowed_by_jax" and not hasattr(pxla, "_get_layouts_from_executable"):
        pytest.skip("this jax has no _get_layouts_from_executable")
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STUDY)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(script), "--out", str(out), "--json", "--at", at],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if at == "xla_busy":
            deadline, line = time.time() + 120, ""
            while "ready" not in line and time.time() < deadline and p.poll() is None:
                line = p.stderr.readline()
            p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()  # no orphan left spinning if the interrupt was missed
    assert p.returncode == 130, stderr
    assert f"slow.py: interrupted: 3 finished rows are in {out}/results.jsonl" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert [json.loads(l) for l in stdout.splitlines()] == [dict(i=0), dict(i=1), dict(i=2)]
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


@dataclasses.dataclass(frozen=True)
class Checked(cli.RunConfig):
    betas: tuple[float, ...] = cli.arg((1.0,), "KL coefficients", check=cli.positive("beta"))
    seeds: int = cli.arg(1, "seeds", check=cli.at_least("--seeds", 1))
    t: tuple[float, ...] = cli.arg((0.0,), "thresholds", check=cli.finite("t"))


@pytest.mark.parametrize("argv,line", [
    (["--betas", "1", "0"], "toy.py: error: --betas: beta must be finite and > 0, got 0"),
    (["--betas", "inf"], "toy.py: error: --betas: beta must be finite and > 0, got inf"),
    (["--seeds", "0"], "toy.py: error: --seeds must be an integer >= 1, got 0"),
    (["--t", "nan"], "toy.py: error: --t must be finite, got nan"),  # the check names t: the flag takes its place
])
def test_field_checks_at_the_boundary(argv, line, capsys):
    assert cli.run(Checked, lambda cfg: None, argv, prog="toy.py") == 2
    assert capsys.readouterr().err == line + "\n"
    with pytest.raises(cli.InputError):  # the same check when the Config is made in code
        cli.parse_config(Checked, argv)


def test_run_write_csv_filter_and_at_least_on_non_finite(tmp_path, capsys):
    with cli.Run("toy", Toy(out=str(tmp_path)), csv_rows=lambda r: r["kind"] == "a") as run:
        run.emit([dict(kind="a", x=1), dict(kind="b", x=[1, 2])])
        run.write("blob.bin", b"\x00\x01")
    assert (tmp_path / "results.csv").read_text().splitlines() == ["kind,x", "a,1"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01" and "blob.bin" in run.files
    capsys.readouterr()

    @dataclasses.dataclass(frozen=True)
    class N(cli.RunConfig):
        n: float = cli.arg(1.0, "n", check=cli.at_least("n", 1))

    for bad in ("inf", "nan", "2.5"):
        assert cli.run(N, lambda cfg: None, ["--n", bad], prog="toy.py") == 2
        assert capsys.readouterr().err == f"toy.py: error: --n must be an integer >= 1, got {bad}\n"


def test_table_and_closing_line(tmp_path, capsys):
    """Run.table aligns columns, prints n/a for missing, null and non-finite cells, and a run that ends
    normally says which files it wrote (a run that fails does not)."""
    import numpy as np

    rows = [dict(name="a", x=np.float32(1.23456), n=np.int64(3)), dict(name="long name", x=None, n=12),
            dict(name="c", x=np.float64("nan")), dict(name="d", x=np.asarray(0.98765, np.float32), n=np.asarray(7))]
    with cli.Run("t", Toy(out=str(tmp_path / "r")), results=None) as run:
        text = run.table(rows, [("name", "name", ""), ("x", "x", ".3g"), ("n", "n", "d"),
                                ("2x", lambda r: 2 * r.get("n", 0), "d")])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "x", "n", "2x"]
    assert lines[1].split() == ["a", "1.23", "3", "6"]
    assert lines[2].split() == ["long", "name", "n/a", "12", "24"]
    assert lines[3].split() == ["c", "n/a", "n/a", "0"]
    assert lines[4].split() == ["d", "0.988", "7", "14"]  # 0-d arrays format as numbers
    assert len({len(line) for line in lines[:3]}) == 1  # right-aligned numbers: equal widths
    err = capsys.readouterr().err
    assert text in err and err.rstrip().endswith(f"wrote config.json in {tmp_path / 'r'}")
    with pytest.raises(ValueError), cli.Run("t", Toy(out=str(tmp_path / "s")), results=None):
        raise ValueError
    assert "wrote" not in capsys.readouterr().err


# ------------------------------------------------------------------ the output directory: one run's, one at a time

def _study(figure: bool = True):
    """A study that writes config.json, two emits (results.jsonl/.csv each time) and a figure."""
    def study(cfg):
        with cli.Run("toy", cfg) as run:
            run.emit([dict(k=1)])
            run.emit([dict(k=2)])
            if figure:
                run.write("fig.png", b"png")
    return study


def _full_disk_after(n: int, monkeypatch) -> list[str]:
    """io.atomic_write writes `n` files, then every later call fails as a full disk does (ENOSPC, nothing of
    the file on disk); returns the names it wrote."""
    import errno

    from goodhart_jax import io

    real, wrote = io.atomic_write, []

    def atomic_write(path, data):
        if len(wrote) >= n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        wrote.append(Path(path).name)
        return real(path, data)
    monkeypatch.setattr(io, "atomic_write", atomic_write)
    return wrote


@pytest.mark.parametrize("n,failed,complete", [
    (0, "config.json", "nothing was written in {out}"),
    (1, "results.jsonl", "no results yet: only config.json is in {out}"),
    (2, "results.csv", "1 finished row is in {out}/results.jsonl"),
    (5, "fig.png", "2 finished rows are in {out}/results.jsonl"),
])
def test_full_disk_is_one_line_naming_what_is_complete(n, failed, complete, tmp_path, monkeypatch, capsys):
    """A full disk (ENOSPC) while writing the n-th file: one line naming that file and what is complete, exit 2,
    not an OSError traceback; every file on disk is whole (it was written atomically or not at all)."""
    out = tmp_path / "out"
    wrote = _full_disk_after(n, monkeypatch)
    assert cli.run(Toy, _study(), ["--out", str(out)], prog="toy.py") == 2
    err = capsys.readouterr().err
    assert err == f"toy.py: error: cannot write {out}/{failed}: No space left on device; " \
                  f"{complete.format(out=out)}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(set(wrote))  # no temporary file
    if "results.jsonl" in wrote:
        assert (out / "results.jsonl").read_text().count("\n") == (1 if n < 5 else 2)


def test_full_disk_keeps_the_previous_version(tmp_path, monkeypatch, capsys):
    """The second emit's results.csv fails: the message says the CSV keeps its previous version, and counts the
    rows results.jsonl holds (both written before the CSV failed)."""
    out = tmp_path / "out"
    _full_disk_after(4, monkeypatch)  # config.json, results.jsonl, results.csv, results.jsonl, then the CSV
    assert cli.run(Toy, _study(), ["--out", str(out)], prog="toy.py") == 2
    assert capsys.readouterr().err == (f"toy.py: error: cannot write {out}/results.csv (it keeps its previous "
                                       f"version): No space left on device; 2 finished rows are in "
                                       f"{out}/results.jsonl\n")
    assert (out / "results.csv").read_text().splitlines() == ["k", "1"]


def test_full_disk_outside_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    """A study writing through io.atomic_write itself (score_rewards.py does): the error names the file."""
    import errno

    from goodhart_jax import io

    target = tmp_path / "scores.json"

    def refuse(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", refuse)  # the temporary file's bytes reach the disk here, or not
    assert cli.run(Toy, lambda cfg: io.atomic_write(target, "x"), [], prog="toy.py") == 2
    assert capsys.readouterr().err == f"toy.py: error: cannot write {target}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []  # no temporary file

    def other(cfg):  # any other OSError is not hidden
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        cli.run(Toy, other, [], prog="toy.py")


def test_earlier_run_is_refused_or_replaced_with_overwrite(tmp_path, capsys):
    """A second run into a directory that holds an earlier run is refused in one line before any work, and the
    earlier run's files (config.json included) are left as they were; with --overwrite they are removed first,
    so the directory never mixes two runs' files. Hidden files and subdirectories are left alone."""
    out = tmp_path / "out"
    assert cli.run(Toy, _study(), ["--out", str(out), "--vocab", "3"], prog="toy.py") == 0
    (out / "sub").mkdir()
    (out / ".keep").write_text("mine")
    (out / ".fig.png.abc123.tmp").write_text("left by a killed write")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    calls = []
    study = lambda cfg: calls.append(cfg)  # noqa: E731
    assert cli.run(Toy, study, ["--out", str(out), "--vocab", "5"], prog="toy.py") == 2
    assert capsys.readouterr().err == (f"toy.py: error: output directory {str(out)!r} holds an earlier run "
                                       "(config.json, fig.png, results.csv, results.jsonl): give --overwrite to "
                                       "replace it, or choose another --out\n")
    assert calls == [] and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(cli.InputError, match="holds an earlier run"):  # the Run itself refuses too (in code)
        cli.Run("toy", Toy(out=str(out)))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    assert cli.run(Toy, _study(figure=False), ["--out", str(out), "--vocab", "5", "--overwrite"],
                   prog="toy.py") == 0
    assert f"--overwrite: removed the earlier run's 4 file(s) from {out}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".keep", "config.json", "results.csv", "results.jsonl", "sub"]
    assert json.loads((out / "config.json").read_text())["vocab"] == 5

    other = tmp_path / "notes"  # files that are not a run's: the run writes beside them
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert cli.run(Toy, _study(figure=False), ["--out", str(other)], prog="toy.py") == 0
    assert (other / "notes.txt").read_text() == "x" and (other / "config.json").is_file()


def test_a_directory_in_use_is_refused_at_once(tmp_path, capsys):
    """While a run holds its directory, a second run there (another process, or this one) is refused in one
    line, before any work, and changes nothing; once the first ends, the directory is free again."""
    out = tmp_path / "out"
    calls = []
    with cli.Run("toy", Toy(out=str(out))) as first:
        first.emit([dict(k=1)])
        for argv in (["--out", str(out)], ["--out", str(out), "--overwrite"]):
            assert cli.run(Toy, calls.append, argv, prog="toy.py") == 2
            assert capsys.readouterr().err == (f"toy.py: error: output directory {str(out)!r} is in use: another "
                                               "run holds it (wait for that run to end, or choose another --out)\n")
        with pytest.raises(cli.InputError, match="is in use"):
            cli.Run("toy", Toy(out=str(out), overwrite=True))
        child = subprocess.run([sys.executable, "-c", "import sys; from goodhart_jax import cli; "
                                "sys.exit(cli.run(cli.RunConfig, lambda cfg: cli.Run('toy', cfg), sys.argv[1:], "
                                "prog='toy.py'))", "--out", str(out), "--overwrite"],
                               capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert child.returncode == 2 and "is in use: another run holds it" in child.stderr, child.stderr
        first.emit([dict(k=2)])
    assert calls == [] and (out / "results.jsonl").read_text().count("\n") == 2
    with cli.Run("toy", Toy(out=str(out), overwrite=True)):
        pass


def test_default_directories_never_collide(tmp_path, monkeypatch):
    """Two runs without --out started in the same second get two directories (the second with a -2 suffix)."""
    from goodhart_jax import io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(io, "default_out_dir", lambda name: Path("runs") / name / "20260101-000000")
    with cli.Run("toy", Toy()) as a, cli.Run("toy", Toy()) as b:
        assert (a.dir.name, b.dir.name) == ("20260101-000000", "20260101-000000-2")
    with cli.Run("toy", Toy()) as c:
        assert c.dir.name == "20260101-000000-3"


# ---------------------------------------------------------------- a Config holding a library config

@dataclasses.dataclass(frozen=True)
class Inner:
    """A library's config: plain, frozen, its own checks (ValueError naming its parameters)."""
    num_steps: int = 10
    rate: float = 0.5
    tags: tuple[str, ...] = ()
    secret: int = 7

    def __post_init__(self):
        if self.num_steps * self.rate > 100:
            raise ValueError(f"num_steps * rate must be <= 100, got num_steps={self.num_steps}, rate={self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer(cli.RunConfig):
    inner: Inner = cli.nest(Inner, hide=("secret",), num_steps=cli.arg(20, "steps", flag="--steps", metavar="N",
                                                                       check=cli.at_least("value", 1)))
    other: Inner = cli.nest(Inner, "the other one", prefix="other-")
    seed: int = cli.arg(0, "seed", check=cli.seed)


def test_nested_config_fields_are_flags():
    assert cli.parse_config(Outer, []) == Outer() == Outer(inner=Inner(num_steps=20), other=Inner())
    cfg = cli.parse_config(Outer, ["--steps", "3", "--rate", "2", "--tags", "a", "b", "--other-num-steps", "4",
                                   "--other-secret", "1"])
    assert cfg.inner == Inner(num_steps=3, rate=2.0, tags=("a", "b")) and cfg.other == Inner(4, secret=1)
    assert cli.flag_values(cfg) == dict(out="", overwrite=False, json=False, plots=True, steps=3, rate=2.0,
                                        tags=("a", "b"), other_num_steps=4, other_rate=0.5, other_tags=(),
                                        other_secret=1, seed=0)
    assert [f.flag for f in cli.flags_of(Outer)][4:] == ["--steps", "--rate", "--tags", "--other-num-steps",
                                                          "--other-rate", "--other-tags", "--other-secret", "--seed"]
    text = cli.build_parser(Outer, "outer").format_help()
    assert "--steps N" in text and "steps (default: 20)" in text and "--secret" not in text
    assert "the other one:" in text and "--other-rate OTHER_RATE" in text and "Inner.rate (default: 0.5)" in text


@pytest.mark.parametrize("argv,line", [
    (["--steps", "0"], "toy.py: error: --steps: value must be an integer >= 1, got 0"),  # the field's check
    (["--steps", str(2**64)], f"toy.py: error: --steps: {2**64} does not fit in 64 bits"),
    (["--steps", "300"], "toy.py: error: --steps * --rate must be <= 100, got --steps=300, --rate=0.5"),  # the class's
    (["--other-rate", "1e3"], "toy.py: error: --other-num-steps * --other-rate must be <= 100, got "
                              "--other-num-steps=10, --other-rate=1000.0"),
    (["--secret", "1"], "toy.py: error: unrecognized arguments: --secret 1"),
])
def test_nested_config_errors_name_flags(argv, line, capsys):
    assert cli.run(Outer, lambda cfg: None, argv, prog="toy.py") == 2
    assert capsys.readouterr().err == line + "\n"


def test_nested_config_checked_in_code_and_written_flat(tmp_path):
    with pytest.raises(cli.InputError, match="--steps: value must be an integer >= 1, got 0"):
        Outer(inner=Inner(num_steps=0))
    with cli.Run("toy", Outer(out=str(tmp_path))):
        pass
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 20


def test_run_that_writes_nothing_keeps_rows(tmp_path, capsys):
    """A process other than 0 of a multi-process run: rows kept; no directory, file, log or stdout line."""
    with cli.Run("toy", Toy(out=str(tmp_path / "o"), json=True), writes=False) as run:
        run.emit([dict(a=1)])
        assert run.save_json("x.json", {}) is None and run.write("y", "z") is None
        run.log("not printed")
        assert run.table(run.rows, [("a", "a", "d")]).split() == ["a", "1"]
        assert list(run.progress([1, 2], "p")) == [1, 2]
    assert run.rows == [dict(a=1)] and run.files == [] and run.dir is None
    assert not (tmp_path / "o").exists() and capsys.readouterr() == ("", "")
    assert isinstance(cli.open_run("toy", Toy(out=str(tmp_path / "w"))), cli.Run)  # one process: process 0 writes
