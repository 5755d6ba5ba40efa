"""specs.parse_spec: the one "name:key=value,..." parser behind tails.parse and lab.error_maps.parse."""
import pytest

from goodhart_jax.specs import parse_spec

CHOICES = {"a": {"x": 1, "y": 2}, "b": {}}


def _int(name, key, value):
    return int(value)


def test_defaults_and_values():
    assert parse_spec("a", CHOICES, "thing", "things", _int) == ("a", {"x": 1, "y": 2})
    assert parse_spec(" a : y = 5 ", CHOICES, "thing", "things", _int) == ("a", {"x": 1, "y": 5})
    assert parse_spec("b", CHOICES, "thing", "things", _int) == ("b", {})
    seen = []
    parse_spec("a:x=3,y=4", CHOICES, "thing", "things", lambda n, k, v: seen.append((n, k, v)) or 0)
    assert seen == [("a", "x", "3"), ("a", "y", "4")]  # convert sees the stripped strings, in order


@pytest.mark.parametrize("spec, message", [
    ("", "empty thing spec; valid things: a, b"),
    ("c", "unknown thing 'c'; valid things: a, b"),
    ("a:", "my a: expected param=value, got ''; parameters: x, y"),
    ("a:x=1,,y=2", "my a: expected param=value, got ''; parameters: x, y"),
    ("a:z=1", "my a: unknown parameter 'z'; valid parameters: x, y"),
    ("b:z=1", "my b: unknown parameter 'z'; valid parameters: none"),
    ("a:x=1,x=2", "my a: parameter 'x' is given twice"),
])
def test_refused(spec, message):
    with pytest.raises(ValueError) as e:
        parse_spec(spec, CHOICES, "thing", "things", _int, prefix="my ")
    assert str(e.value) == message


def test_convert_errors_pass_through():
    with pytest.raises(ValueError, match="invalid literal"):
        parse_spec("a:x=one", CHOICES, "thing", "things", _int)
