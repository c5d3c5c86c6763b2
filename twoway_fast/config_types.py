"""Type checks of configuration values against the annotations of what they configure (the TrainConfig
and DataConfig fields, the TwoWayNet and TwoWayLoss parameters), so a value of the wrong type is
refused where it is parsed, with its key and the expected type named, rather than misread later (the
string "False" is truthy).

Values come from TOML and JSON: an int is accepted where a float is expected, a list where a sequence
or tuple is; a bool is never an int or a float. An annotation this module does not understand accepts
anything (the consumer's own checks still apply)."""
from __future__ import annotations

import collections.abc as abc
import dataclasses
import math
import types
import typing
from typing import Any


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` (TOML/JSON data) is of the annotated type `hint`."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple, abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(conforms(v, item) for v in value)
    if origin in (dict, abc.Mapping):
        if not isinstance(value, dict):
            return False
        key, item = args if args else (Any, Any)
        # JSON and TOML keys are strings: an int key arrives as its digits.
        return all((conforms(k, key) or (conforms(0, key) and isinstance(k, str) and k.lstrip("-").isdigit()))
                   and conforms(v, item) for k, v in value.items())
    return True


def describe(hint: Any) -> str:
    """The expected type in words, as TOML spells it."""
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string",
             type(None): "nothing (null)"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            "" if type(None) not in args else " (or left out)")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, abc.Sequence):
        return f"a list of {_plural(describe(args[0]))}" if args and args[0] is not Any else "a list"
    if origin in (dict, abc.Mapping):
        return "a table"
    return getattr(hint, "__name__", str(hint))


def _plural(words: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings",
            "a boolean (true or false)": "booleans"}.get(words, words)


def check_value(key: str, value: Any, hint: Any, source: str) -> None:
    """Raises ValueError naming `source`, `key`, the expected type and what came instead."""
    if not conforms(value, hint):
        got = f"the string {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        raise ValueError(f"{source}: {key} must be {describe(hint)}, got {got}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: {key} must be finite, got {value}")


def hints_of(fn) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields, a class's __init__ or a function."""
    target = fn.__init__ if isinstance(fn, type) and not dataclasses.is_dataclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that does not resolve: nothing to check against
        return {}
