"""A shared obfuscator in the style of DeepObfuscator (the paper's Table 4): one DPM-shaped module the
leader trains adversarially (CE(C(O(F(x))), y) + lambda * SSIM against the shared R and against an
adversarial decoder retrained as it trains, on the leader's own images), and hands to every entity that
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
        import math

        import torch
        from torch import nn

        from entities.attacks.decoders import Decoder, Shape, factor_of
        from entities.entity import featurize, freeze, to_float
        from entities.metrics import l1, ssim
        from entities.progress import tracker
        from entities.training import device, seed_everything

        dev = device()
        recipe, nets = holdings.recipe(), holdings.nets
        generator = seed_everything(seed)
        freeze(nets.featurizer, nets.decider, nets.reconstructor)
        feats = featurize(nets.featurizer, holdings.images)
        x, y = to_float(holdings.images), torch.as_tensor(holdings.labels)
        obfuscator = self.build(feats.shape[1], holdings).to(dev).train()
        adversary = Decoder(
            feats.shape[1], factor_of(x, feats), Shape(width=self.spec.adversary_width, output="sigmoid")
        ).to(dev)
        decider, recon = nets.decider.to(dev), nets.reconstructor.to(dev)
        opt_o = torch.optim.Adam(obfuscator.parameters(), lr=recipe.lr)
        opt_a = torch.optim.Adam(adversary.parameters(), lr=1e-3)
        b = min(recipe.batch_size, len(x))
        steps = max(recipe.min_steps, recipe.epochs * math.ceil(len(x) / b))
        progress = tracker("obfuscator", steps)
        for _ in range(steps):
            index = torch.randint(len(x), (b,), generator=generator)
            f, target = feats[index].to(dev), x[index].to(dev)
            with torch.no_grad():  # the adversary's step: invert the obfuscator as it is now
                z = obfuscator(f)
            adversary.train()
            loss_a = l1(adversary(z), target).mean()
            opt_a.zero_grad(set_to_none=True)
            loss_a.backward()
            opt_a.step()
            adversary.eval()
            z = obfuscator(f)  # the obfuscator's step: stay useful to C, defeat R and the adversary
            similarity = ssim(recon(z), target).mean() + ssim(adversary(z), target).mean()
            loss_o = nn.functional.cross_entropy(decider(z), y[index].to(dev)) + self.spec.lam * similarity
            opt_o.zero_grad(set_to_none=True)
            loss_o.backward()
            opt_o.step()
            progress.step(b)
        progress.finish()
        for m in (decider, recon):
            m.cpu()
        return obfuscator.eval().cpu()
