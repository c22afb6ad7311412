"""Typed, strict configuration files.

A config file is TOML. Its tables map onto frozen dataclasses: every key must be a
field, every value must have the field's type, and lists must not be empty. Errors name
the file, the dotted key, what is allowed and what was found, before anything runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "load_toml", "convert", "type_name", "from_table", "to_table"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file that does not fit its schema."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Reads a TOML file, turning syntax errors into a `ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def type_name(kind) -> str:
    """What a value of the annotation `kind` looks like in TOML, for messages."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        return f"a list of {type_name(item)}"
    if origin is dict:
        return "a table"
    if origin in (typing.Union, types.UnionType):
        # None is only ever a default: TOML has no null.
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return " or ".join(type_name(k) for k in options)
    if dataclasses.is_dataclass(kind):
        return "a table"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "a boolean",
    }.get(kind, getattr(kind, "__name__", str(kind)))


def convert(kind, value, where: str):
    """Checks `value` against the annotation `kind` and converts it.

    Args:
        kind: an annotation: int, float, str, bool, Any, `tuple[T, ...]`,
            `dict[str, Any]`, a union of those, or a dataclass (a table).
        value: the parsed TOML value.
        where: the dotted key, for messages.

    Raises:
        ConfigError: naming `where`, what is allowed and what was found.
    """
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            if option is type(None) and value is None:
                return None
            try:
                return convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {type_name(kind)} (got {value!r})")
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {type_name(kind)} (got {value!r})")
        if not value:
            raise ConfigError(f"{where} must not be empty")
        return tuple(convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table (got {value!r})")
        return dict(value)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table (got {value!r})")
        return _build(kind, value, where)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    if kind is Any:
        return value
    raise ConfigError(f"{where} must be {type_name(kind)} (got {value!r})")


def _build(cls: type[T], table: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]} is not a known key; allowed here: {', '.join(names)}"
        )
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in table:
            values[field.name] = convert(
                hints[field.name], table[field.name], f"{prefix}{field.name}"
            )
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{prefix}{field.name} is required")
    try:
        return cls(**values)
    except ValueError as error:
        raise ConfigError(f"{where or 'config'}: {error}") from None


def from_table(cls: type[T], table: dict[str, Any], source: str = "config") -> T:
    """Builds the dataclass `cls` from a parsed TOML table.

    Args:
        cls: a frozen dataclass whose fields are ints, floats, strings, booleans, tuples
            of those, or nested dataclasses.
        table: the parsed TOML.
        source: the file name, for error messages.

    Raises:
        ConfigError: naming `source`, the key, what is allowed and what was found.
    """
    try:
        return _build(cls, table, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def to_table(instance) -> dict[str, Any]:
    """The inverse of `from_table`: a TOML-ready dict (tuples become lists)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(instance)
