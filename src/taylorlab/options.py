"""Typed options of a registered plug-in (a pruning method, an order estimator): a dataclass built
from a config mapping, an unknown key or a wrong type named in one sentence. Shared by the method
libraries; needs nothing but the standard library."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from taylorlab.errors import ConfigError


@dataclass
class NoOptions:
    """A method without options of its own."""


def make_options(cls: type, values: Optional[Mapping[str, Any]], key: str, owner: str) -> Any:
    """``cls(**values)`` checked: unknown keys and wrong types are ConfigErrors naming the key."""
    if values is not None and dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        have = ", ".join(fields) or "none"
        raise ConfigError(f"{key}.{unknown[0]} does not apply to {owner} (its options: {have}).")
    for name, value in values.items():
        want = fields[name].type
        if not _type_ok(want, value):
            raise ConfigError(f"{key}.{name}={value!r} is not a {_type_name(want)} ({owner}).")
    opts = cls(**values)
    if hasattr(opts, "validate"):
        try:
            opts.validate()
        except ConfigError as exc:  # the dataclass names its field; the key says where it was set
            raise ConfigError(f"{key}.{exc}") from None
    return opts


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _type_ok(annotation: Any, value: Any) -> bool:
    """Plain scalar annotations (written as strings under ``from __future__ import annotations``)."""
    name = _type_name(annotation)
    optional = name.startswith("Optional[")
    if optional:
        if value is None:
            return True
        name = name[len("Optional["):-1]
    allowed = _TYPES.get(name)
    if allowed is None:
        return True  # richer annotations: the dataclass's validate() judges them
    if isinstance(value, bool) and name != "bool":
        return False
    return isinstance(value, allowed)
