"""The paper's protection: a private DPM P trained on the entity's own images against the shared R
(entities.entity.train_dpm), and "none", the same entity with no protection (Table 3's first row)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from entities.protections.base import Holdings, ProtectionKind, ProtectionSection
from entities.registry import PROTECTIONS

if TYPE_CHECKING:
    from torch import nn


class DPMSection(ProtectionSection):
    """The paper's DPM: the entity's `dpm:` shape, trained with the scenario's `dpm:` recipe."""

    kind: Literal["dpm"] = "dpm"

    def label(self) -> str:
        return "DPM"

    def uses_dpm(self) -> bool:
        return True


@PROTECTIONS.register("dpm")
class DeepPoisoning(ProtectionKind[DPMSection]):
    section = DPMSection

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        from entities.nets import DPM

        shape = holdings.shape()
        return DPM(channels, blocks=shape.blocks, width=shape.width)

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from entities.entity import train_dpm

        h = holdings
        return train_dpm(h.recipe(), h.shape(), h.nets, h.images, h.labels, seed=seed)


class NoneSection(ProtectionSection):
    """No protection: the entity pools F(x) as it is."""

    kind: Literal["none"]

    def label(self) -> str:
        return "none"


@PROTECTIONS.register("none")
class NoProtection(ProtectionKind[NoneSection]):
    section = NoneSection

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        from torch import nn

        return nn.Identity()

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        return self.build(0, holdings)
