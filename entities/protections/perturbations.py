"""The paper's Table 3 baselines: perturbations of the features F(x), each alone or followed by a DPM
trained on the perturbed features (GN+DPM, GF+DPM, MF+DPM).

The paper gives none of their parameters (REFERENCE.md): the noise's scale and the filters' sizes here
are inferred, and a scenario should sweep a few. Gaussian noise is scaled by the standard deviation of
the entity's own features (measured when it is trained), so that `sigma` means the same for every
backbone and split; the filters smooth each feature map alone (depthwise), edges replicated.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from entities.protections.base import Holdings, ProtectionKind, ProtectionSection, channels_of
from entities.registry import PROTECTIONS

if TYPE_CHECKING:
    import torch
    from torch import nn


class PerturbationSection(ProtectionSection):
    then_dpm: bool = Field(
        False, description="follow the perturbation with a DPM trained on the perturbed features"
    )

    short: ClassVar[str] = ""  # the paper's abbreviation (set by each kind)

    def parameters(self) -> str:
        """Its parameters as Table 3 shows them beside its name (inferred: the paper lost them)."""
        return ""

    def label(self) -> str:
        name = f"{self.short}+DPM" if self.then_dpm else self.short
        return f"{name} ({self.parameters()})"

    def uses_dpm(self) -> bool:
        return self.then_dpm


def _odd_size(value: int) -> int:
    if value < 1 or value % 2 == 0:
        raise ValueError(f"got {value}; a filter size must be odd and at least 1 (3, 5, ...)")
    return value


class GaussianNoiseSection(PerturbationSection):
    """F(x) + N(0, (sigma * std of the entity's features)^2), drawn afresh for every feature vector."""

    kind: Literal["gaussian-noise"]
    sigma: float = Field(gt=0, description="noise std, in units of the std of the entity's own features")
    short: ClassVar[str] = "GN"

    def parameters(self) -> str:
        return f"sigma={self.sigma:g}"


class GaussianFilterSection(PerturbationSection):
    """Each feature map blurred by a size x size Gaussian kernel of std `sigma` (in cells)."""

    kind: Literal["gaussian-filter"]
    size: int = Field(3, description="kernel side, odd (3, 5, ...)")
    sigma: float = Field(1.0, gt=0, description="the kernel's std, in feature-map cells")
    short: ClassVar[str] = "GF"

    def parameters(self) -> str:
        return f"size={self.size}, sigma={self.sigma:g}"

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        return _odd_size(value)


class MeanFilterSection(PerturbationSection):
    """Each feature map averaged over size x size windows."""

    kind: Literal["mean-filter"]
    size: int = Field(3, description="window side, odd (3, 5, ...)")
    short: ClassVar[str] = "MF"

    def parameters(self) -> str:
        return f"size={self.size}"

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        return _odd_size(value)


def _modules() -> Any:
    """The perturbation modules, defined when torch is first needed (this module loads without it)."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    import torch
    from torch import nn

    class FeatureNoise(nn.Module):
        """x + sigma * scale * N(0, 1), from its own seeded generator (the same draws every run)."""

        scale: torch.Tensor
        seed: torch.Tensor

        def __init__(self, sigma: float, seed: int):
            super().__init__()
            self.sigma = sigma
            self.register_buffer("scale", torch.ones(()))
            self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
            self._generator: torch.Generator | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(int(self.seed))
            noise = torch.randn(x.shape, generator=self._generator, dtype=x.dtype)
            return x + self.sigma * self.scale * noise.to(x.device)

        def __deepcopy__(self, memo: dict[int, Any]) -> FeatureNoise:
            copy = FeatureNoise(self.sigma, int(self.seed))
            copy.load_state_dict(self.state_dict())
            return copy

    class MapFilter(nn.Module):
        """A fixed k x k kernel applied to each channel alone, edges replicated."""

        kernel: torch.Tensor

        def __init__(self, kernel: torch.Tensor):
            super().__init__()
            self.register_buffer("kernel", kernel)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            k = self.kernel.shape[-1]
            padded = nn.functional.pad(x, (k // 2,) * 4, mode="replicate")
            weight = self.kernel.to(x.dtype).expand(x.shape[1], 1, k, k)
            return nn.functional.conv2d(padded, weight, groups=x.shape[1])

    _MODULES = (FeatureNoise, MapFilter)
    return _MODULES


_MODULES: Any = None


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    import torch

    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class Perturbation(ProtectionKind[Any]):
    """A fixed perturbation of the features, then (with `then_dpm`) a DPM trained on its output."""

    @abstractmethod
    def perturbation(self, seed: int) -> nn.Module:
        """The fixed perturbation, its random parts drawn from `seed`."""

    def calibrate(self, perturbation: nn.Module, holdings: Holdings) -> None:
        """Fit what the perturbation measures on the entity's own features (the noise's scale)."""

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        from torch import nn

        from entities.nets import DPM

        first = self.perturbation(0)
        if not self.spec.then_dpm:
            return first
        shape = holdings.shape()
        return nn.Sequential(first, DPM(channels, blocks=shape.blocks, width=shape.width))

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        from torch import nn

        from entities.entity import train_dpm

        first = self.perturbation(seed)
        self.calibrate(first, holdings)
        if not self.spec.then_dpm:
            return first.eval()
        h = holdings
        dpm = train_dpm(h.recipe(), h.shape(), h.nets, h.images, h.labels, seed=seed, before=first)
        # the published features draw their own noise: a generator of their own, not the training's
        published = self.perturbation(seed + 1)
        published.load_state_dict({**first.state_dict(), **_seed_state(published)})
        return nn.Sequential(published, dpm).eval()


def _seed_state(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in module.state_dict().items() if k == "seed"}


@PROTECTIONS.register("gaussian-noise")
class GaussianNoise(Perturbation):
    section = GaussianNoiseSection

    def perturbation(self, seed: int) -> nn.Module:
        noise, _ = _modules()
        return noise(self.spec.sigma, seed)

    def calibrate(self, perturbation: nn.Module, holdings: Holdings) -> None:
        from entities.entity import featurize

        feats = featurize(holdings.nets.featurizer, holdings.images)
        perturbation.scale.fill_(float(feats.float().std()))  # type: ignore[operator]


@PROTECTIONS.register("gaussian-filter")
class GaussianFilter(Perturbation):
    section = GaussianFilterSection

    def perturbation(self, seed: int) -> nn.Module:
        _, map_filter = _modules()
        return map_filter(gaussian_kernel(self.spec.size, self.spec.sigma))


@PROTECTIONS.register("mean-filter")
class MeanFilter(Perturbation):
    section = MeanFilterSection

    def perturbation(self, seed: int) -> nn.Module:
        import torch

        _, map_filter = _modules()
        size = self.spec.size
        return map_filter(torch.full((size, size), 1.0 / size**2))


__all__ = ["GaussianFilterSection", "GaussianNoiseSection", "MeanFilterSection", "channels_of"]
