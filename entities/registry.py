"""One registry per family of interchangeable parts, filled by a decorator (CompressAI's pattern).

    @OPTIMIZERS.register("adam")
    def adam(params, recipe): ...

Each family declares its names here, in a module that imports no torch, because the scenario schema
builds its choices from them and must validate without loading torch. Registering a name the family
does not declare is refused, and so is an undeclared lookup (with the list of known names); a test
checks that every declared name has an implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from entities.datasets.base import DatasetKind

T = TypeVar("T")


class UnknownName(ValueError):
    """A name no implementation is registered under; the message lists the known ones."""


class Registry(Generic[T]):
    """Named implementations of one family (optimizers, samplers, stages...)."""

    def __init__(self, family: str, names: tuple[str, ...] | None = None):
        self.family = family
        self.declared = names  # None: open family (stages, attacks): any name may register
        self._items: dict[str, T] = {}
        self._listeners: list[Callable[[str, T], None]] = []

    @property
    def names(self) -> tuple[str, ...]:
        """The declared names (the schema's choices), or the registered ones for an open family."""
        return self.declared if self.declared is not None else tuple(self._items)

    def register(self, name: str) -> Callable[[T], T]:
        if self.declared is not None and name not in self.declared:
            raise ValueError(f"{self.family} {name!r} is not declared; declared: {', '.join(self.declared)}")

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._items[name] = item
            for listener in self._listeners:
                listener(name, item)
            return item

        return add

    def on_register(self, listener: Callable[[str, T], None]) -> None:
        """Call `listener(name, item)` for every later registration (the schema rebuilds its dataset union
        when a kind registers after it was built, e.g. in a test module)."""
        self._listeners.append(listener)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names) or "(none registered)"
            raise UnknownName(f"unknown {self.family} {name!r}; known: {known}") from None

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def missing(self) -> list[str]:
        """Declared names with no implementation (a test keeps this empty)."""
        return [n for n in self.names if n not in self._items]


Factory = Callable[..., Any]

# The declared families: every scenario choice among implementations comes from one of these.
# Open: a dataset kind is one module under entities/datasets/ (its section and loader), and registering
# it is all it takes.
DATASETS: Registry[type[DatasetKind[Any]]] = Registry("dataset kind")
OPTIMIZERS: Registry[Factory] = Registry("optimizer", ("sgd", "adam"))
OBJECTIVES: Registry[Factory] = Registry("DPM objective", ("ce", "distill"))
SAMPLERS: Registry[Factory] = Registry("fake-value sampler", ("ctg", "empirical"))
SOURCES: Registry[Factory] = Registry("feature source", ("raw", "original", "poisoned"))
CODECS: Registry[Factory] = Registry("codec", ("jpeg",))
