"""A shared obfuscator in the style of DeepObfuscator (the paper's Table 4): one DPM-shaped module the
leader trains adversarially (the DPM recipe's task term + lambda * SSIM against the shared R and against
an adversarial decoder retrained as it trains, on the leader's own images), and hands to every entity that
declares it. Each of them publishes O(F(x)); each holds O, so any of them can invert it: the attack
`protection-holder` trains a decoder on its own images through the protection it holds.

The paper's point to measure: the holders reverse a shared obfuscator (SSIM 0.82 there), while a
private DPM, held by its owner alone, is not reversed by another entity's holder attack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from entities.protections.base import Holdings, ProtectionKind, ProtectionSection
from entities.registry import PROTECTIONS

if TYPE_CHECKING:
    from torch import nn


class SharedObfuscatorSection(ProtectionSection):
    """Trained by the leader with the scenario's `dpm:` recipe (its epochs, lr, batch) and the leader's
    `dpm:` shape; `lambda` weighs the two SSIM terms."""

    kind: Literal["shared-obfuscator"]
    lam: float = Field(1.0, alias="lambda", gt=0, description="weight of the SSIM terms")
    adversary_width: int = Field(32, ge=4, description="width of the adversarial decoder it trains against")

    def label(self) -> str:
        return "shared obfuscator"

    def uses_dpm(self) -> bool:
        return True


@PROTECTIONS.register("shared-obfuscator")
class SharedObfuscator(ProtectionKind[SharedObfuscatorSection]):
    section = SharedObfuscatorSection
    shared = True

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        from entities.nets import DPM

        shape = holdings.shape()
        return DPM(channels, blocks=shape.blocks, width=shape.width)

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        """Nothing to train: the entity uses the obfuscator it was handed."""
        if holdings.shared is None:
            raise ValueError("a shared-obfuscator entity was not handed the leader's obfuscator")
        return holdings.shared.eval()

    def train_shared(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from entities.attacks.decoders import Shape
        from entities.protections.adversarial import train_protector

        adversary = Shape(width=self.spec.adversary_width, output="sigmoid")
        return train_protector(holdings, seed=seed, net="obfuscator", lam=self.spec.lam, decoders=[adversary])
