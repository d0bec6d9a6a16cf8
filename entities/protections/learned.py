"""Defences built for the adaptive attacker (issue 17, item 3), each a private DPM-shaped protector the
entity trains on its own images with the `dpm:` recipe's schedule and task term:

- `adaptive-dpm`: the DPM's loss against the shared R and against an ensemble of decoders of several
  shapes retrained on its output as it trains, restarted every `restart_every` steps (min-max, after
  ResSFL, CVPR 2022); the attacker it anticipates is the one who trains a decoder on protected features.
- `nopeek`: the task term plus `alpha` times the distance correlation between each batch's images and
  its protected features (NoPeek, arXiv 2008.09161), with no reconstructor in the loss at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from entities.protections.base import Holdings, ProtectionKind, ProtectionSection
from entities.registry import PROTECTIONS

if TYPE_CHECKING:
    from torch import nn

# The ensemble's shapes, cycled: the paper's R shape, a residual one, one block per upscale.
ENSEMBLE = (
    {"width": 32, "blocks_per_upscale": 2},
    {"width": 32, "blocks_per_upscale": 2, "residual": True},
    {"width": 32, "blocks_per_upscale": 1},
)


class AdaptiveDPMSection(ProtectionSection):
    kind: Literal["adaptive-dpm"]
    lam: float = Field(1.0, alias="lambda", gt=0, description="weight of the SSIM terms (R and the decoders)")
    decoders: int = Field(
        2, ge=1, le=len(ENSEMBLE), description="decoders of different shapes it trains against"
    )
    restart_every: int = Field(
        50, ge=0, description="re-initialise the decoders every this many steps (0: never)"
    )

    def label(self) -> str:
        return f"adaptive DPM ({self.decoders} decoders)"

    def uses_dpm(self) -> bool:
        return True


class NoPeekSection(ProtectionSection):
    kind: Literal["nopeek"]
    alpha: float = Field(1.0, gt=0, description="weight of the distance correlation between x and P(F(x))")

    def label(self) -> str:
        return f"NoPeek (alpha={self.alpha:g})"

    def uses_dpm(self) -> bool:
        return True


class _Learned(ProtectionKind[ProtectionSection]):
    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        from entities.nets import DPM

        shape = holdings.shape()
        return DPM(channels, blocks=shape.blocks, width=shape.width)


@PROTECTIONS.register("adaptive-dpm")
class AdaptiveDPM(_Learned):
    section = AdaptiveDPMSection

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from entities.attacks.decoders import Shape
        from entities.protections.adversarial import train_protector

        spec = self.spec
        assert isinstance(spec, AdaptiveDPMSection)
        shapes = [Shape(output="sigmoid", **ENSEMBLE[i]) for i in range(spec.decoders)]  # type: ignore[arg-type]
        return train_protector(
            holdings,
            seed=seed,
            net="adaptive dpm",
            lam=spec.lam,
            decoders=shapes,
            restart_every=spec.restart_every,
        )


@PROTECTIONS.register("nopeek")
class NoPeek(_Learned):
    section = NoPeekSection

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from entities.protections.adversarial import distance_correlation, train_protector

        spec = self.spec
        assert isinstance(spec, NoPeekSection)
        alpha = spec.alpha
        return train_protector(
            holdings,
            seed=seed,
            net="nopeek",
            lam=1.0,
            against_r=False,
            extra=lambda x, z: alpha * distance_correlation(x, z),
        )
