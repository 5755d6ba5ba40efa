"""The "name" / "name:key=value,..." spec form that names a choice with parameters on the command line.

`tails.parse` ("student_t:df=2") and `lab.error_maps.parse` ("token:id=3+5") read it here: one parser, so that a
spec is refused the same way wherever it is given - an unknown name or parameter names the valid choices, a
parameter given twice, an item without "=" and "name:" with nothing after it are errors - while each caller keeps
its own value conversion and its own checks across parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["parse_spec"]


def parse_spec(spec: str, choices: Mapping[str, Mapping[str, Any]], what: str, plural: str,
               convert: Callable[[str, str, str], Any], prefix: str = "") -> tuple[str, dict]:
    """Split a spec into its name and its parameters, defaults filled in.

    Args:
      spec: "name" or "name:key=value,..." (spaces around names, keys and values are ignored).
      choices: each valid name's parameters and their defaults.
      what: the kind of thing named, for messages ("family", "error map").
      plural: its plural, for messages ("families", "error maps").
      convert: `convert(name, key, value)` turns one given value (a string) into the parameter, raising
        ValueError with its own message for a bad one.
      prefix: put before the name in messages about its parameters ("error map " gives "error map token: ...").
    Returns:
      (name, params): params is the defaults with the given values converted in their place.
    Raises:
      ValueError: an empty spec, an unknown name or parameter (naming the valid ones), an item that is not
        key=value, a parameter given twice, or whatever `convert` raises.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty {what} spec; valid {plural}: {', '.join(choices)}")
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in choices:
        raise ValueError(f"unknown {what} {name!r}; valid {plural}: {', '.join(choices)}")
    defaults = choices[name]
    valid = ", ".join(defaults) or "none"
    params, given = dict(defaults), set()
    for item in (s.strip() for s in rest.split(",")) if colon else ():  # "name:" and "a=1,,b=2" are refused
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq:
            raise ValueError(f"{prefix}{name}: expected param=value, got {item!r}; parameters: {valid}")
        if key not in defaults:
            raise ValueError(f"{prefix}{name}: unknown parameter {key!r}; valid parameters: {valid}")
        if key in given:
            raise ValueError(f"{prefix}{name}: parameter {key!r} is given twice")
        given.add(key)
        params[key] = convert(name, key, value)
    return name, params
