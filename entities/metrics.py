"""Every metric Veil reports, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_msssim import ssim as _ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter


def _win_size(x: torch.Tensor) -> int:
    return 11 if min(x.shape[-2:]) > 11 else 7  # pytorch-msssim needs the window to fit the image


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (data_range=1, 11x11 Gaussian window); differentiable."""
    return _ssim(x, y, data_range=1.0, size_average=False, win_size=_win_size(x))


K1, K2 = 0.01, 0.03  # pytorch-msssim's constants, which `ssim` uses


@dataclass(frozen=True)
class Filtered:
    """Images with their Gaussian-filtered mean and second moment: what SSIM filters of each image alone.
    Filtered once, they serve every comparison of a gallery (re-identification) with one image at a time:
    `ssim_with` then filters only the cross term, a fifth of the work."""

    images: torch.Tensor
    mu: torch.Tensor
    second: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor) -> Filtered:
        images = images.float()
        win = _window(images)
        return cls(images, gaussian_filter(images, win), gaussian_filter(images * images, win))

    def __getitem__(self, index: torch.Tensor | slice) -> Filtered:
        return Filtered(self.images[index], self.mu[index], self.second[index])

    @staticmethod
    def cat(parts: list[Filtered]) -> Filtered:
        return Filtered(*(torch.cat([getattr(p, f) for p in parts]) for f in ("images", "mu", "second")))


def _window(x: torch.Tensor) -> torch.Tensor:
    win = _fspecial_gauss_1d(_win_size(x), 1.5).repeat([x.shape[1], 1, 1, 1])
    return win.to(x.device, dtype=x.dtype)


def ssim_with(x: torch.Tensor, candidates: Filtered) -> torch.Tensor:
    """SSIM of one image x (1, C, H, W) with each candidate: `ssim(x.expand_as(y), y)`, the same
    operations on the same values (so bit for bit, tests/test_attacks.py), with x's own statistics and the
    candidates' filtered once instead of per pair."""
    x = x.float()
    y = candidates.images
    win = _window(x)
    mu1 = gaussian_filter(x, win).expand_as(candidates.mu)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), candidates.mu.pow(2), mu1 * candidates.mu
    sigma1_sq = gaussian_filter(x * x, win).expand_as(mu1) - mu1_sq
    sigma2_sq = candidates.second - mu2_sq
    sigma12 = gaussian_filter(x.expand_as(y) * y, win) - mu1_mu2
    c1, c2 = K1**2, K2**2  # data_range 1
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return torch.flatten(ssim_map, 2).mean(-1).mean(1)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error."""
    return (x - y).abs().flatten(1).mean(1)


def distillation(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(target / T) || softmax(logits / T)) * T^2, the batch mean (Hinton et al., 2015).

    The T^2 keeps the gradient's scale as T changes. At T = 1 a confident target is nearly one-hot and
    asks only for its top class; a higher T also weighs how the other classes rank.
    """
    log_p = torch.log_softmax(logits / temperature, dim=1)
    target = torch.softmax(target_logits / temperature, dim=1)
    return torch.nn.functional.kl_div(log_p, target, reduction="batchmean") * temperature**2


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample 1.0 where the label is among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent."""
    return {
        "top1": 100.0 * topk_correct(logits, labels, 1).mean().item(),
        "top5": 100.0 * topk_correct(logits, labels, 5).mean().item(),
    }
