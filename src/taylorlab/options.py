"""Typed options of a registered plug-in (a pruning method, an order estimator): a dataclass built
from a config mapping, an unknown key or a wrong type named in one sentence. Shared by the method
libraries; needs nothing but the standard library."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Mapping, Optional, Tuple, TypeVar

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


T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins by name (each with ``name``, ``options`` — a dataclass type — and ``rank``):
    the one table config validation, the stages and the report read."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, item: T) -> T:
        """Add ``item`` (its name must be new); returns it, so a module can keep a handle."""
        if item.name in self._items and self._items[item.name] is not item:
            raise ValueError(f"a {self.kind} named {item.name!r} is already registered")
        if not dataclasses.is_dataclass(item.options):
            raise TypeError(f"{item.name}: options must be a dataclass type")
        self._items[item.name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove one (tests that register a toy clean up with this)."""
        self._items.pop(name, None)

    def get(self, name: str, key: str) -> T:
        if name not in self._items:
            raise ConfigError(f"{key}={name!r} is not one of {', '.join(self.names())}.")
        return self._items[name]

    def names(self, where: Optional[Callable[[T], bool]] = None) -> Tuple[str, ...]:
        """The registered names in display order (``rank``, then name)."""
        sel = [n for n, item in self._items.items() if where is None or where(item)]
        return tuple(sorted(sel, key=lambda n: (self._items[n].rank, n)))
