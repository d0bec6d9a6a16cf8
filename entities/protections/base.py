"""The contract every protection meets: its scenario section, and one interface to train it on what the
entity holds, apply it to features and measure what it costs.

A protection is what an entity applies to its features F(x) before it pools them (the paper's DPM by
default). It is one module under entities/protections/ with a section (a `ProtectionSection`: its
fields and checks) and a `ProtectionKind` registered under the section's `kind`:

    class GaussianNoiseSection(ProtectionSection):
        kind: Literal["gaussian-noise"]
        sigma: float = Field(gt=0)

    @PROTECTIONS.register("gaussian-noise")
    class GaussianNoise(ProtectionKind[GaussianNoiseSection]):
        section = GaussianNoiseSection
        def build(self, channels, holdings): ...  # the untrained protector, to load saved weights into
        def train(self, holdings, *, seed): ...  # the trained protector: features -> protected features

A protector is a torch module from features to features (N, C, h, w) -> (N, C, h, w); the entity keeps
it privately and publishes protector(F(x)). Attacks that model a defender's recipe (the surrogate
attacks, the insider) train or rebuild the victim's declared protection through the same interface.

This module imports no torch (the schema builds its `protection:` union from the registered sections);
each protection imports torch inside the functions that train or apply it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from entities.strict import Strict

if TYPE_CHECKING:
    from torch import nn

    from entities import datasets
    from entities.entity import SharedNets
    from entities.recipes import DPMRecipe, DPMShape


class ProtectionSection(Strict):
    """A protection's scenario section (`entities[i].protection`); each kind adds its own fields."""

    kind: str

    def label(self) -> str:
        """How Tables 3 and 4 name this protection (the paper's names where it has one)."""
        return self.kind

    def uses_dpm(self) -> bool:
        """Whether it trains a DPM (then the scenario's `dpm:` recipe is required)."""
        return False


S = TypeVar("S", bound=ProtectionSection)


@dataclass
class Holdings:
    """What an entity holds when it trains its protection: the shared F, C, R, its own images (uint8
    (N, 3, H, W)) and labels, the published DPM recipe and shape (None where the scenario has no DPM),
    and, for a protection one party trains for all (`ProtectionKind.shared`), the shared part it was
    handed."""

    nets: SharedNets
    images: np.ndarray
    labels: np.ndarray
    dpm_recipe: DPMRecipe | None = None
    dpm_shape: DPMShape | None = None
    shared: nn.Module | None = None

    def recipe(self) -> DPMRecipe:
        if self.dpm_recipe is None:
            raise ValueError("this protection trains a DPM, but the scenario has no dpm section")
        return self.dpm_recipe

    def shape(self) -> DPMShape:
        if self.dpm_shape is None:
            raise ValueError("this protection trains a DPM, but no DPM shape was given")
        return self.dpm_shape


class ProtectionKind(ABC, Generic[S]):
    """One protection: its section model and how to build, train and measure its protector."""

    section: ClassVar[type[ProtectionSection]]
    shared: ClassVar[bool] = False  # trained once by the leader (`train_shared`) and handed to every user

    def __init__(self, spec: S):
        self.spec = spec

    @abstractmethod
    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        """An untrained protector for features of `channels` channels, to load saved weights into."""

    @abstractmethod
    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        """The protector, trained (where it learns anything) on the holder's own data; in eval mode, on
        the CPU."""

    def train_shared(self, holdings: Holdings, *, seed: int) -> nn.Module:
        """The part one party (the leader) trains for everyone, for a `shared` protection."""
        raise NotImplementedError(f"protection {self.spec.kind!r} has no shared part")

    def measure(self, nets: SharedNets, protector: nn.Module, test: datasets.ImageSet) -> dict[str, float]:
        """What it costs and what it hides on the test set: C's top-1/top-5 and R's L1/SSIM on the
        original and the protected features (keys `<metric>_original`, `<metric>_poisoned`)."""
        from entities.entity import measure_dpm

        return measure_dpm(nets, protector, test)


def make_protection(spec: ProtectionSection) -> ProtectionKind[Any]:
    """The protection a section declares."""
    from entities.registry import PROTECTIONS

    return PROTECTIONS.get(spec.kind)(spec)


def channels_of(nets: SharedNets, side: int) -> int:
    """The channels of F's features for side x side images."""
    from entities.nets import feature_shape

    return int(feature_shape(nets.featurizer, side)[0])


__all__ = ["Holdings", "ProtectionKind", "ProtectionSection", "channels_of", "make_protection"]
