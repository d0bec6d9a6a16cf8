"""One registry per family of interchangeable parts, filled by a decorator (CompressAI's pattern).

    @OPTIMIZERS.register("adam")
    def adam(params, recipe): ...

Each family declares its names here, in a module that imports no torch, because the scenario schema
builds its choices from them and must validate without loading torch. Registering a name the family
does not declare is refused, and so is an undeclared lookup (with the list of known names); a test
checks that every declared name has an implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # for the families' types only: this module must load without torch
    from torch import nn

    from entities.datasets.base import DatasetKind
    from entities.protections.base import ProtectionKind

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
# Open: a protection (what an entity applies to its features before it pools them) is one module under
# entities/protections/ (its section and its training), and registering it is all it takes.
PROTECTIONS: Registry[type[ProtectionKind[Any]]] = Registry("protection")
OPTIMIZERS: Registry[Factory] = Registry("optimizer", ("sgd", "adam"))
OBJECTIVES: Registry[Factory] = Registry("DPM objective", ("ce", "distill"))
SAMPLERS: Registry[Factory] = Registry("fake-value sampler", ("ctg", "empirical"))
SOURCES: Registry[Factory] = Registry("feature source", ("raw", "original", "poisoned"))
CODECS: Registry[Factory] = Registry("codec", ("jpeg",))


class Splitter(Protocol):
    """A backbone builder: a fresh (untrained) net cut into featurizer F (its first `depth` split points'
    worth of layers, counted in BACKBONE_SPLITS order) and decider C (the rest, ending in `num_classes`)."""

    def __call__(self, *, depth: int, num_classes: int) -> tuple[nn.Sequential, nn.Sequential]: ...


# Where each backbone may be cut into F and C, in order from the input, with the stride there: the
# downsampling of the input at that point, so R upsamples x2 log2(stride) times. Declared here, once, for
# the schema's checks without torch; entities.nets registers the builders, and a test checks every stride
# against a real F.
_RESNET_SPLITS: Final = {"conv2_x": 4, "conv3_x": 8, "conv4_x": 16}  # the ResNet paper's stage names
BACKBONE_SPLITS: Final[Mapping[str, Mapping[str, int]]] = {
    "resnet18": _RESNET_SPLITS,
    "resnet34": _RESNET_SPLITS,
    "resnet50": _RESNET_SPLITS,
    "resnet101": _RESNET_SPLITS,
    # the VGG paper's five conv blocks each end in a 2x2 max-pool; blockN ends F after the N-th pool
    "vgg16_bn": {"block1": 2, "block2": 4, "block3": 8, "block4": 16, "block5": 32},
}
BACKBONES: Registry[Splitter] = Registry("backbone", tuple(BACKBONE_SPLITS))
