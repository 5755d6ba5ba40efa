"""Flags from a study's frozen `Config` dataclass, and the checks its fields make.

Flags from fields (`typing` annotations of the dataclass):
  bool -> `--x/--no-x`; tuple[T, ...] -> `nargs="+"` (`"*"` when the default is empty or None);
  int/float/str -> `type=`; help, metavar, choices and `required` from `arg(...)` metadata. `foo_bar` becomes
  `--foo-bar`.

Every int field (and every int in a tuple field) must fit in 64 bits; `seed` checks a PRNG seed (an integer in
[0, 2^32 - 1]). A field's `check` runs when the Config is made, from flags or in code; a ValueError it raises is
an `InputError` naming the flag.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import types
import typing
from typing import Any, Callable, Sequence

from goodhart_jax import io
from goodhart_jax.errors import InputError

__all__ = ["Checked", "RunConfig", "arg", "nest", "flag_values", "flags_of", "Flag", "each", "positive", "finite", "within", "at_least", "seed", "SEED_MAX",
           "INT64_MAX", "inputs", "check_memory", "build_parser", "parse_config"]


def arg(default: Any = dataclasses.MISSING, help: str = "", *, metavar: str | None = None,
        choices: Sequence[Any] | None = None, required: bool = False, flag: str | None = None,
        nargs: str | None = None, show_default: bool = True, check: Callable[[Any], Any] | None = None) -> Any:
    """A Config field with its command-line help: `x: int = cli.arg(3, "what x is", metavar="N")`.

    Args:
      default: the field's default (tuples for sequences; None for "not given").
      help: one line for `--help`; "(default: ...)" is appended unless show_default is False.
      metavar, choices: as in argparse.
      required: the flag must be given (the default is then only for `main(Config())` in code).
      flag: the flag's name when it is not `--field-name`.
      nargs: override the derived nargs (e.g. "*" for a sequence that may be given empty).
      check: called with the value when the Config is made (from flags or in code); a ValueError it raises
        becomes an `InputError` naming the flag. See `positive`, `at_least`, `finite`.
    """
    meta = dict(help=help, metavar=metavar, choices=choices, required=required, flag=flag, nargs=nargs,
                show_default=show_default, check=check)
    return dataclasses.field(default=default, metadata=meta)


def nest(cls: type, help: str = "", *, prefix: str = "", hide: Sequence[str] = (), **args: Any) -> Any:
    """A Config field holding another config dataclass (a library's, such as `search.SearchConfig`).

    Its fields become flags of their own (those given in `args` first, in that order), flat by default (`--length`), or `--<prefix>length` with a prefix
    (`prefix="search-"`). Each may be given as `name=cli.arg(default, help, ...)` (a flag name, help, a
    check, a default other than the class's); the others take the class's defaults and no help. A ValueError
    the class raises when it is made (its own checks) becomes an `InputError` whose field names read as flags.
    config.json (`flag_values`) records the flags, not the nesting.

        search: SearchConfig = cli.nest(SearchConfig, hide=("banned_ids",),
                                        num_iters=cli.arg(100, "steps", flag="--iters", check=...))

    Args:
      cls: the dataclass; its default here is `cls(**{name: default given in args})`.
      help: what the group is (shown above its flags in `--help`).
      prefix: put before each flag name derived from a field name (not before a `flag=` given in args).
      hide: fields that get no flag (their value is the default's; code may set them).
      args: `cli.arg(...)` for some of the fields, by field name.
    """
    unknown = set(args) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    default = cls(**{k: a.default for k, a in args.items() if a.default is not dataclasses.MISSING})
    meta = dict(nested=cls, help=help, prefix=prefix, hide=frozenset(hide), args=args)
    return dataclasses.field(default_factory=lambda: default, metadata=meta)


INT64_MAX = 2**63 - 1


class Flag(typing.NamedTuple):
    """One flag of a Config (see `flags_of`): its name, where its value goes and what it is."""
    flag: str  # "--iters"
    dest: str  # argparse's name: "iters"; "search.num_iters" for a nested field
    name: str  # the field's name in its own class: "num_iters"
    key: str  # its key in config.json: the field's name; a nested field's flag name ("iters")
    tp: Any  # the annotation
    default: Any
    meta: typing.Mapping[str, Any]  # `arg`'s metadata


def _nested(f: dataclasses.Field, tp: Any) -> dict | None:
    """The `nest` metadata of a field holding a config dataclass (also one declared without `nest`), or None."""
    if "nested" in f.metadata:
        return dict(f.metadata)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # (not `X | None`: None is not a config)
        return dict(nested=tp, help="", prefix="", hide=frozenset(), args={})
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _leaves(f: dataclasses.Field, tp: Any) -> list[Flag]:
    """The flags of the field `f` (annotation `tp`): one, or one for each shown field of a nested config."""
    nested = _nested(f, tp)
    if nested is None:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        return [Flag(flag, f.name, f.name, f.name, tp, _default(f), f.metadata)]
    cls, hints, base = nested["nested"], typing.get_type_hints(nested["nested"]), _default(f)
    order = list(nested["args"])  # the fields given in `nest` first, in that order, then the others
    out = []
    for sub in sorted(dataclasses.fields(cls), key=lambda sub: order.index(sub.name) if sub.name in order
                      else len(order)):
        if not sub.init or sub.name in nested["hide"]:
            continue
        given = nested["args"].get(sub.name)
        meta = given.metadata if given is not None else dict(sub.metadata, help=f"{cls.__name__}.{sub.name}")
        flag = meta.get("flag") or "--" + nested["prefix"] + sub.name.replace("_", "-")
        if meta.get("choices") is None:  # argparse's own would be the dest, "FIELD.NAME"
            meta = dict(meta, metavar=meta.get("metavar") or flag[2:].replace("-", "_").upper())
        value = getattr(base, sub.name) if base is not None else _default(sub)
        if base is None and sub.default is sub.default_factory is dataclasses.MISSING:
            meta = dict(meta, required=True)  # a field the class needs: its flag must be given
        out.append(Flag(flag, f"{f.name}.{sub.name}", sub.name, flag[2:].replace("-", "_"), hints[sub.name],
                         value, meta))
    return out


def _check(leaf: Flag, value: Any) -> None:
    """The 64-bit bound and the leaf's `check` on `value`; InputError naming the flag (a ValueError that names
    the field's parameter, e.g. "eos_bias must be ...", names the flag in its place: "--eos-bias must be ...")."""
    tp, _ = _strip_optional(leaf.tp)
    if typing.get_origin(tp) is tuple:
        tp = (typing.get_args(tp) or (None,))[0]
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if tp is int and isinstance(v, int) and not -INT64_MAX <= v <= INT64_MAX:
            raise InputError(f"{leaf.flag}: {v} does not fit in 64 bits")
    chk = leaf.meta.get("check")
    if chk is None:
        return
    try:
        chk(value)
    except InputError:
        raise
    except ValueError as e:
        msg, param = str(e), leaf.flag.lstrip("-").replace("-", "_")
        if msg.startswith(param + " "):  # a core check names its parameter ("sharpness must be ..."): name the flag
            msg = leaf.flag + msg[len(param):]
        raise InputError(msg if msg.startswith(leaf.flag) else f"{leaf.flag}: {msg}") from None


def _fields(obj_or_cls: Any) -> list[tuple[dataclasses.Field, list[Flag]]]:
    hints = typing.get_type_hints(obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls))
    return [(f, _leaves(f, hints[f.name])) for f in dataclasses.fields(obj_or_cls)]


@dataclasses.dataclass(frozen=True)
class Checked:
    """A frozen Config whose fields check themselves when it is made (from flags or in code).

    Runs each field's `check` (see `arg`; a nested config's fields' too, see `nest`), and refuses an int field
    (or an int in a tuple field) that does not fit in 64 bits: such a value would overflow in NumPy/JAX long
    after the flags were read.
    """

    def __post_init__(self):
        for f, leaves in _fields(self):
            value = getattr(self, f.name)
            for leaf in leaves:
                _check(leaf, getattr(value, leaf.name) if leaf.dest != f.name else value)


@dataclasses.dataclass(frozen=True)
class RunConfig(Checked):
    """The fields the runner owns; a study's Config subclasses this."""
    out: str = arg("", "output directory (default: runs/<script>/<timestamp>)", metavar="DIR", show_default=False)
    overwrite: bool = arg(False, "replace the files of an earlier run in --out (default: refuse, so a directory "
                                 "never mixes two runs' files)")
    json: bool = arg(False, "stdout carries only the result rows, as JSON lines (logs go to stderr)")
    plots: bool = arg(True, "write the PNG figures")


def flags_of(config_cls: type) -> list[Flag]:
    """Every flag of the Config class `config_cls`, in `--help`'s order (a nested config's fields each)."""
    return [leaf for f, leaves in _fields(config_cls) if f.init for leaf in leaves]


def flag_values(cfg: Any) -> dict[str, Any]:
    """The Config `cfg` as config.json records it: {field: value}, a nested config's fields by their flags'
    names ({"iters": 100} for `--iters`), not nested; hidden fields of a nested config are left out."""
    out: dict[str, Any] = {}
    for f, leaves in _fields(cfg):
        value = getattr(cfg, f.name)
        if len(leaves) == 1 and leaves[0].dest == f.name:
            out[f.name] = value
        else:
            out.update({leaf.key: getattr(value, leaf.name) for leaf in leaves})
    return out


# ------------------------------------------------------------------ checks for `arg(check=...)`

def each(what: str, ok: Callable[[Any], bool], must: str) -> Callable[[Any], None]:
    """Check: every value (one, or a non-empty tuple) satisfies `ok`; else `"<what> must be <must>, got x"`."""
    def check(v):
        """Raise ValueError unless `v` (one value, or a non-empty tuple of them) satisfies the check."""
        vals = list(v) if isinstance(v, (tuple, list)) else [v]
        if not vals:
            raise ValueError(f"give at least one {what}")
        for x in vals:
            if not ok(x):
                raise ValueError(f"{what} must be {must}, got {x if isinstance(x, int) else format(x, 'g')}")
    return check


def positive(what: str) -> Callable[[Any], None]:
    """Check: every value is a finite number > 0.

    Args:
      what: what the values are, as the error message names them (e.g. "threshold t").
    """
    return each(what, lambda x: math.isfinite(x) and x > 0, "finite and > 0")


INT32_MAX = 2**31 - 1  # counts (steps, pairs) enter jitted programs as int32 (lax.scan lengths, randint bounds)


def count(what: str, hi: int = INT32_MAX, why: str = "2^31 - 1: it enters the jitted programs as int32"
          ) -> Callable[[Any], None]:
    """Check: every value is an integer in [1, hi]; the error names `what` and says `why` hi is the limit.

    Args:
      what: the flag (e.g. "--bt-steps").
      hi: the largest value accepted.
      why: the reason for `hi`, shown in the error.
    """
    return each(what, lambda x: math.isfinite(x) and int(x) == x and 1 <= x <= hi, f"an integer in [1, {hi}] ({why})")


def finite(what: str) -> Callable[[Any], None]:
    """Check: every value is a finite number.

    Args:
      what: what the values are, as the error message names them (e.g. "threshold t").
    """
    return each(what, math.isfinite, "finite")


def within(what: str, lo: float, hi: float) -> Callable[[Any], None]:
    """Check: every value lies in the open interval (lo, hi).

    Args:
      what: what the values are, as the error message names them (e.g. "threshold t").
    """
    return each(what, lambda x: lo < x < hi, f"in ({lo:g}, {hi:g})")


def at_least(what: str, lo: int) -> Callable[[Any], None]:
    """Check: every value is an integer >= lo.

    Args:
      what: what the values are, as the error message names them (e.g. "threshold t").
    """
    return each(what, lambda x: math.isfinite(x) and int(x) == x and x >= lo, f"an integer >= {lo}")


SEED_MAX = 2**32 - 1
seed = each("seed", lambda x: 0 <= x <= SEED_MAX and int(x) == x, f"an integer in [0, 2^32 - 1 = {SEED_MAX}]")
"""Check for a PRNG seed. JAX keeps only the low 32 bits of a larger seed without x64 (2^32 would run as 0)
and overflows past 2^63, so a seed is an integer in [0, 2^32 - 1], which means the same in either mode."""


@contextlib.contextmanager
def inputs(params: dict[str, str] | None = None):
    """Inside this block a ValueError is the user's bad input: it becomes an `InputError` (exit 2).

    params: {library parameter name: flag} read as flags in the message (a library names its parameters,
    the CLI its flags): `with cli.inputs({"tokens": "--tokens"})` turns "tokens must be .." into "--tokens must be ..".
    """
    try:
        yield
    except InputError:
        raise
    except ValueError as e:
        msg = str(e)
        if params:
            msg = re.sub(r"(?<![-\w])(" + "|".join(map(re.escape, sorted(params, key=len, reverse=True))) + r")\b",
                         lambda m: params[m[1]], msg)
        raise InputError(msg) from None


def check_memory(need: float, what: str) -> None:
    """Raise InputError, in one line, if an estimate of `need` bytes exceeds `io.available_memory()`.

    Args:
      what: what needs the memory, as the message names it (e.g. "a tree of 16^7 leaves").
    """
    have = io.available_memory()
    if have is not None and need > have:
        raise InputError(f"{what} needs about {need / 2**30:.1f} GiB (estimated), but {have / 2**30:.1f} GiB "
                         "is available")


# ------------------------------------------------------------------ flags from a dataclass

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _strip_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag_kwargs(leaf: Flag) -> dict:
    meta, default = leaf.meta, leaf.default
    help_ = meta.get("help", "")
    kw: dict[str, Any] = {"dest": leaf.dest}
    tp, _ = _strip_optional(leaf.tp)
    if tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
        kw["default"] = default
        if help_ and meta.get("show_default", True):
            help_ += " (default: on)" if default else " (default: off)"
    else:
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0] if typing.get_args(tp) else str
            kw["type"] = elem
            kw["nargs"] = meta.get("nargs") or ("*" if not default else "+")
        else:
            kw["type"] = tp
            if meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
        kw["default"] = list(default) if isinstance(default, tuple) else default
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("choices") is not None:
            kw["choices"] = list(meta["choices"])
        if help_ and meta.get("show_default", True) and default not in (None, "", ()):
            shown = " ".join(format(v, "g") if isinstance(v, float) else str(v) for v in default) \
                if isinstance(default, tuple) else default
            help_ += f" (default: {shown})".replace("%", "%%")
    if meta.get("required"):
        kw["required"] = True
    kw["help"] = help_
    return kw


def build_parser(config_cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser whose flags are the fields of the frozen dataclass `config_cls` (see `nest` for a
    field that holds a config).

    Args:
      prog: the program name in messages (default: argparse's, from sys.argv).
      description: the text `--help` prints above the flags.
    """
    p = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, leaves in _fields(config_cls):
        if not f.init:
            continue
        group = p
        if leaves[0].dest != f.name and f.metadata.get("help"):
            group = p.add_argument_group(f.metadata["help"])
        for leaf in leaves:
            group.add_argument(leaf.flag, **_flag_kwargs(leaf))
    return p


def _as_flags(message: str, leaves: list[Flag]) -> str:
    """`message` with each of the leaves' field names (a nested config's parameters) read as its flag."""
    names = {leaf.name: leaf.flag for leaf in leaves}
    return re.sub(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b",
                  lambda m: names[m[1]], message)


def parse_config(config_cls: type, argv: Sequence[str] | None = None, prog: str | None = None,
                 description: str | None = None):
    """Parse `argv` into a `config_cls` instance (sequences as tuples). argparse errors exit 2 in one line.

    Args:
      prog: as in `build_parser`.
      description: as in `build_parser`.
    """
    ns = vars(build_parser(config_cls, prog, description).parse_args(argv))

    def value(leaf):
        v = ns[leaf.dest]
        return tuple(v) if isinstance(v, list) and typing.get_origin(_strip_optional(leaf.tp)[0]) is tuple else v

    kwargs, hints = {}, typing.get_type_hints(config_cls)
    for f, leaves in _fields(config_cls):
        if not f.init:
            continue
        if leaves[0].dest == f.name:
            kwargs[f.name] = value(leaves[0])
            continue
        nested, values = _nested(f, hints[f.name])["nested"], {leaf.name: value(leaf) for leaf in leaves}
        for leaf in leaves:  # before the class's own checks, so that the message names the flag
            _check(leaf, values[leaf.name])
        try:
            base = _default(f)
            kwargs[f.name] = nested(**values) if base is None else dataclasses.replace(base, **values)
        except InputError:
            raise
        except ValueError as e:
            raise InputError(_as_flags(str(e), leaves)) from None
    return config_cls(**kwargs)
