"""Plug-ins by name: one mechanism for passes (``adl.passes``) and cost models (``adl.hwmodels``).

As xarray's backend plugins: adl's built-ins are loaded first, then every entry point of the
group. A plug-in that fails to load, or is not a subclass of the kind's base class, warns and is
skipped; it does not break the compiler. A plug-in is registered under its class's `name`
(the entry point's name when the class has none).

The shadowing rule, the same for every kind: a name belongs to whoever registered it first --
adl's own (its `builtins` and its distribution's entry points), then the plug-ins in the order
of (distribution, entry-point name) -- and a later
class under a taken name is refused with a warning naming both classes and both distributions.
A plug-in that wants to replace a built-in registers under a new name and the spec names it.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T", bound=type)

BUILTIN_DISTRIBUTION = "adl"


def load_object(value: str) -> Any:
    """The object an entry-point value (``module:attr.attr``) names."""
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def distribution_of(entry_point: Any) -> str:
    """``name version`` of the distribution declaring `entry_point` ("unknown distribution" if none)."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def _load_order(entry_point: Any) -> tuple[bool, str, str]:
    """adl's own entry points first, then by distribution and name: who registers a name first."""
    dist = getattr(entry_point, "dist", None)
    name = dist.metadata["Name"] if dist is not None else ""
    return name != BUILTIN_DISTRIBUTION, name, entry_point.name


class Registry(Generic[T]):
    """Classes of one kind (subclasses of `base`) by name, each with the distribution it came from."""

    kind = "plug-in"  # "pass", "cost model": how messages name the kind
    group = ""  # the entry-point group
    builtins: Mapping[str, str] = {}  # name -> entry-point value of adl's own classes
    base: ClassVar[type]  # what every class of this kind subclasses
    _default: ClassVar[Registry | None] = None

    def __init__(self, classes: Mapping[str, T] | None = None) -> None:
        self._classes: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        for name, cls in (classes or {}).items():
            self.register(cls, name)

    @classmethod
    def default(cls) -> Registry[T]:
        """The process-wide registry of this kind, loaded from the entry points on first use."""
        if cls.__dict__.get("_default") is None:  # each kind its own: not inherited from a base class
            cls._default = cls.from_entry_points()
        return cls._default

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[Any] | None = None, builtins: bool = True) -> Registry[T]:
        """The built-ins plus every loadable entry point of the group (the installed ones by default)."""
        registry = cls()
        if builtins:
            for name, value in cls.builtins.items():
                registry.register(load_object(value), name, origin=f"{BUILTIN_DISTRIBUTION} (built-in)")
        if entry_points is None:
            entry_points = metadata.entry_points(group=cls.group)
        for ep in sorted(entry_points, key=_load_order):
            registry._add_entry_point(ep)
        return registry

    def _add_entry_point(self, ep: Any) -> None:
        try:
            plugin = ep.load()
        except Exception as err:  # noqa: BLE001 -- any error importing a third party's module: skip it, warn
            self._warn(f"skipping {self.kind} plug-in '{ep.name}' ({ep.value}): {type(err).__name__}: {err}")
            return
        if not (isinstance(plugin, type) and issubclass(plugin, self.base)):
            self._warn(f"skipping {self.kind} plug-in '{ep.name}': {ep.value} is not a {self.base.__name__} subclass")
            return
        name = getattr(plugin, "name", None) or ep.name
        known = self._classes.get(name)
        if known is plugin:
            return  # adl's own entry point for a built-in
        if known is not None:
            self._warn(
                f"skipping {self.kind} plug-in '{ep.name}' ({ep.value}, from {distribution_of(ep)}): the name "
                f"'{name}' is taken by {_qualname(known)} (from {self._origins[name]})"
            )
            return
        self.register(plugin, name, origin=distribution_of(ep))

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(f"adl: {message}", stacklevel=4)

    def register(self, cls: T, name: str | None = None, origin: str = "registered in code") -> T:
        """Register `cls` under `name` (default: its `name` attribute); usable as a decorator.
        Registering in code replaces what the name held (a test or an embedding program decides)."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{cls!r} is not a {self.base.__name__} subclass")
        name = name or getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__qualname__} has no `name`")
        self._classes[name] = cls
        self._origins[name] = origin
        return cls

    def get(self, name: str) -> T | None:
        return self._classes.get(name)

    def origin(self, name: str) -> str | None:
        """The distribution a name's class came from."""
        return self._origins.get(name)

    def name_of(self, cls: type) -> str | None:
        """The name a class is registered under, or None."""
        return next((name for name, known in self._classes.items() if known is cls), None)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._classes[name]) for name in self.names()]

    def __iter__(self) -> Iterator[T]:
        return iter(self._classes[name] for name in self.names())

    def __contains__(self, key: object) -> bool:
        if isinstance(key, type):
            return key in self._classes.values()
        return key in self._classes

    def __len__(self) -> int:
        return len(self._classes)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
