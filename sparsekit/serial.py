"""One rule for turning a dataclass record into JSON and back: ``to_json``, ``dumps``, ``from_json``.

Every config and record sparsekit writes (cache entries, run-store entries, downloads, study specs)
goes through these three functions, so they all read the same way:

- **Unknown field: refused** (``ValueError`` naming it and the known fields). A record's fields are
  fixed by its version: code that adds a field bumps the version of the record that carries it. An
  unknown field therefore means a record from a newer sparsekit, or a mistyped hand-written spec.
  Dropping it would silently run another experiment than the one asked for, or compute a result
  that the content-keyed disk cache then files under the key of the config that was written; a
  refusal makes the reader treat the entry as unreadable (a cache miss, or a damaged run the store
  names) and a user sees which field is wrong.
- **Missing field: its default**, when the dataclass declares one (older records written before a
  field existed keep loading); otherwise a ``ValueError`` naming the field.
- **Version**: a record that carries a version (``version=`` on both sides; the number sits under
  ``"version"``) is read only at the version this code writes. A newer version is refused; an older
  one is brought up to date by the ``migrations`` the caller registers (one step per version, each
  a function from the dict of version v to the dict of version v + 1), or refused with a message
  naming both versions when a step is missing. ``check_version`` applies the same rule where the
  version sits in a header of its own (the run store's safetensors entries).

Nested dataclasses, tuples, lists, dicts and ``X | None`` fields are rebuilt from the field types,
so ``from_json(cls, to_json(obj)) == obj``. Scalars are kept as written (a ``float`` field written as
``1`` reads back as ``1``), so ``dumps(from_json(cls, text)) == text`` for canonical text: a config read
back from a cache key's JSON hashes to the same key.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Self, TypeVar, Union, cast

__all__ = ["VERSION_KEY", "JsonConfig", "Migration", "check_keys", "check_version", "dumps", "from_json", "to_json"]

T = TypeVar("T")
Migration = Callable[[dict[str, Any]], dict[str, Any]]
"""One migration step: the dict of a record at version v -> the dict at version v + 1."""
VERSION_KEY = "version"
"""Where ``to_json``/``from_json`` keep a record's version."""


def to_json(obj: Any, *, version: int | None = None) -> Any:
    """A dataclass (or anything holding dataclasses) as JSON-able data.

    Args:
        obj: a dataclass instance; lists, tuples and dicts of them; or plain JSON values.
        version: the record's version, written under ``"version"`` (None: no version).

    Returns:
        Dataclasses as dicts (fields in declaration order), tuples as lists, the rest as it is.
    """
    out = _plain(obj)
    if version is not None:
        if not isinstance(out, dict):
            raise TypeError(f"only a dataclass record carries a version, not {type(obj).__name__}")
        out[VERSION_KEY] = version
    return out


def dumps(obj: Any, *, version: int | None = None) -> str:
    """``to_json`` as canonical JSON text (sorted keys): the form cache keys are built from.

    Args:
        obj: as for ``to_json``.
        version: as for ``to_json``.

    Returns:
        The JSON text.
    """
    return json.dumps(to_json(obj, version=version), sort_keys=True)


def from_json(cls: type[T], data: str | Mapping[str, Any], *, version: int | None = None,
              migrations: Mapping[int, Migration] | None = None, what: str | None = None) -> T:
    """Rebuild a dataclass from ``to_json``'s dict (or its JSON text), under the module's one rule.

    Args:
        cls: the dataclass.
        data: the dict, or JSON text of one.
        version: the version this code writes; the data must then carry one under ``"version"``.
        migrations: version -> the step that brings a dict of that version to the next.
        what: the record's name in messages (default: the class name).

    Returns:
        The instance.

    Raises:
        ValueError: text that is not a JSON object, an unknown field, a missing field without a
            default, or a version that is newer, or older without migration steps.
    """
    what = what or cls.__name__
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"the {what} is not valid JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"the {what} must be a JSON object, got {type(data).__name__}")
    values = dict(data)
    if version is not None:
        if VERSION_KEY not in values:
            raise ValueError(f"the {what} carries no version (this sparsekit reads version {version})")
        values = check_version(values.pop(VERSION_KEY), version, what, migrations=migrations, data=values)
    return _build(cls, values, what)


def check_keys(data: Mapping[str, Any], known: Iterable[str], required: Iterable[str] = (), *,
               what: str) -> None:
    """The rule on its own, for records that are not a dataclass's fields one to one.

    Args:
        data: the record.
        known: the keys it may have.
        required: the keys it must have.
        what: its name in messages.

    Raises:
        ValueError: an unknown key, or a required key missing.
    """
    known = list(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known fields: {', '.join(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"the {what} lacks field(s) {missing}")


def check_version(found: Any, version: int, what: str, *, migrations: Mapping[int, Migration] | None = None,
                  data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The version rule: the current version passes, an older one migrates step by step, anything
    else is refused.

    Args:
        found: the version the record carries (an int, or its text as in a safetensors header).
        version: the version this code writes.
        what: the record's name in messages.
        migrations: version v -> the step from v to v + 1.
        data: the record, passed through the steps (None: only the check).

    Returns:
        The record at ``version`` (an empty dict when ``data`` is None).

    Raises:
        ValueError: not a whole number, newer than ``version``, or older with a step missing.
    """
    try:
        number = int(found)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} has version {found!r}, not a whole number") from None
    if number > version:
        raise ValueError(f"the {what} has version {number}, newer than this sparsekit reads ({version})")
    out = dict(data or {})
    for step in range(number, version):
        migrate = (migrations or {}).get(step)
        if migrate is None:
            raise ValueError(f"the {what} has version {number}; this sparsekit reads version {version} "
                             f"and has no migration from version {step}")
        out = migrate(out)
    return out


class JsonConfig:
    """``to_json``/``from_json`` methods for a dataclass config (no version), under this module's rule.

    A config dataclass inherits them (``class TrainConfig(JsonConfig)``) instead of writing the same
    two methods again.
    """

    def to_json(self) -> str:
        """The config as sorted JSON (``sparsekit.serial.dumps``)."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Self:
        """Inverse of ``to_json`` (also takes the parsed dict), under ``sparsekit.serial``'s rule."""
        return from_json(cls, text)


# ---------------------------------------------------------------------------------------------
# Internals


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type[T], values: dict[str, Any], what: str) -> T:
    fields = dataclasses.fields(cast(Any, cls))
    required = [f.name for f in fields if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    check_keys(values, [f.name for f in fields if f.init], required, what=what)
    types_ = _field_types(cast(Any, cls))
    return cls(**{k: _convert(types_.get(k, Any), v, f"{what}.{k}") for k, v in values.items()})


def _convert(tp: Any, value: Any, what: str) -> Any:
    """``value`` read as type ``tp``: dataclasses rebuilt, sequences as the declared container."""
    if value is None or tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        return _convert(arms[0], value, what) if len(arms) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_json(cast(Any, tp), value, what=what) if isinstance(value, Mapping) else value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, what) for v in value)
        if args and len(args) == len(value):
            return tuple(_convert(a, v, what) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return [_convert(args[0] if args else Any, v, what) for v in value]
    if origin is dict and isinstance(value, Mapping):
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, what) for k, v in value.items()}
    return value
