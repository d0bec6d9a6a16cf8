"""Noise calibrated to a stated privacy figure: each released feature vector is clipped to L2 norm
`clip_norm` and the Gaussian mechanism adds N(0, sigma^2) to every value, with sigma the smallest that
gives (epsilon, delta) per released vector (the analytic Gaussian mechanism of Balle and Wang, ICML
2018, which holds for any epsilon > 0; the classic sqrt(2 ln(1.25/delta)) / epsilon bound needs epsilon
< 1). Neighbouring inputs are any two images, so the sensitivity of a clipped vector is 2 * clip_norm.

What the figure does not cover, stated: with `clip_norm` left out it is set to the median norm of the
entity's own features (a data-dependent choice the figure does not account for); an image whose mirror
image is pooled too (`dpm.share_mirrored`) is released twice, so its figure composes (about 2 epsilon).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from entities.protections.base import Holdings, ProtectionKind, ProtectionSection
from entities.registry import PROTECTIONS

if TYPE_CHECKING:
    from torch import nn


class GaussianMechanismSection(ProtectionSection):
    kind: Literal["gaussian-mechanism"]
    epsilon: float = Field(gt=0, description="the privacy figure epsilon per released feature vector")
    delta: float = Field(1e-5, gt=0, lt=1, description="the privacy figure delta per released vector")
    clip_norm: float | None = Field(
        None,
        gt=0,
        description="the L2 norm each feature vector is clipped to (default: the median of the entity's own)",
    )

    def label(self) -> str:
        return f"GM (epsilon={self.epsilon:g}, delta={self.delta:g})"


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def analytic_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest sigma for which N(0, sigma^2) noise on a query of L2 `sensitivity` is (epsilon,
    delta)-DP (Balle and Wang 2018, Theorem 8: the privacy profile is exact), by bisection."""

    def delta_of(sigma: float) -> float:
        a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
        return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)

    lo, hi = 1e-6 * sensitivity, sensitivity
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if delta_of(mid) <= delta else (mid, hi)
    return hi


def _module() -> Any:
    import torch
    from torch import nn

    class ClippedGaussian(nn.Module):
        """Clip each vector (one image's features, flattened) to `clip`, add N(0, sigma^2) per value."""

        clip: torch.Tensor
        sigma: torch.Tensor
        seed: torch.Tensor

        def __init__(self, seed: int):
            super().__init__()
            self.register_buffer("clip", torch.ones(()))
            self.register_buffer("sigma", torch.zeros(()))
            self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
            self._generator: torch.Generator | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(int(self.seed))
            flat = x.flatten(1)
            norms = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
            clipped = flat * (self.clip / norms).clamp(max=1.0)
            noise = torch.randn(flat.shape, generator=self._generator, dtype=x.dtype).to(x.device)
            return (clipped + self.sigma * noise).view_as(x)

        def __deepcopy__(self, memo: dict[int, Any]) -> ClippedGaussian:
            copy = ClippedGaussian(int(self.seed))
            copy.load_state_dict(self.state_dict())
            return copy

    return ClippedGaussian


@PROTECTIONS.register("gaussian-mechanism")
class GaussianMechanism(ProtectionKind[GaussianMechanismSection]):
    section = GaussianMechanismSection

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        module: nn.Module = _module()(0)
        return module

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from entities.entity import featurize

        module = _module()(seed)
        clip = self.spec.clip_norm
        if clip is None:
            feats = featurize(holdings.nets.featurizer, holdings.images)
            clip = float(feats.flatten(1).norm(dim=1).median())
        module.clip.fill_(clip)
        module.sigma.fill_(analytic_sigma(self.spec.epsilon, self.spec.delta, 2 * clip))
        return module.eval()  # type: ignore[no-any-return]
