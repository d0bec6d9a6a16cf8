"""Every metric Veil reports, in one place."""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _ssim


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (data_range=1, 11x11 Gaussian window); differentiable."""
    win = 11 if min(x.shape[-2:]) > 11 else 7  # pytorch-msssim needs the window to fit the image
    return _ssim(x, y, data_range=1.0, size_average=False, win_size=win)


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
