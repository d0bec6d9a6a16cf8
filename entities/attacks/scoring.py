"""The referee: scores an attack's output against the truth, which only the referee holds.

Images: L1, PSNR and SSIM (data_range 1), identification (top-1 of the shared F+C on the
reconstructions against the true labels), re-identification rank-1 (is the true image the nearest,
by SSIM, of a gallery of up to 100 images: itself and others) and, where the data knows who is in each
image (faces), person re-identification rank-1 (is the nearest another image of the same person).
Supports: support recovery (the share of the true support the guess holds) and precision (the share of
the guess that is true). Every score is a plain float; `score_result` flattens a result and its
variants into one dict.
"""

from __future__ import annotations

import torch
from torch import nn

from entities import sparse
from entities.attacks.base import AttackResult
from entities.codecs import psnr
from entities.metrics import Filtered, l1, ssim, ssim_with, topk_correct
from entities.training import apply, device

GALLERY = 100


def reidentification(
    reconstructions: torch.Tensor,
    truth: torch.Tensor,
    gallery: torch.Tensor | None = None,
    *,
    size: int = GALLERY,
    seed: int = 0,
) -> float:
    """Share of reconstructions whose true image is the nearest (highest SSIM) of `size` candidates: the
    true image and size-1 others drawn from `gallery` (default: the other true images). Chance is 1/size
    (or 1 over the candidates there are)."""
    true = Filtered.of(truth)
    pool = true if gallery is None else Filtered.of(gallery)
    generator = torch.Generator().manual_seed(seed)
    hits = 0
    for i in range(len(reconstructions)):
        others = torch.arange(len(pool.images))
        if gallery is None:
            others = others[others != i]
        others = others[torch.randperm(len(others), generator=generator)[: size - 1]]
        # drop exact copies of the true image from the others (a gallery may contain it)
        same = (pool.images[others] - true.images[i : i + 1]).abs().flatten(1).amax(1) == 0
        candidates = Filtered.cat([true[i : i + 1], pool[others[~same]]])
        scores = ssim_with(reconstructions[i : i + 1], candidates)
        hits += int(int(scores.argmax()) == 0)
    return hits / max(len(reconstructions), 1)


def person_reidentification(
    reconstructions: torch.Tensor,
    people: torch.Tensor,
    gallery: torch.Tensor,
    gallery_people: torch.Tensor,
    *,
    size: int = GALLERY,
    seed: int = 0,
) -> tuple[float, int]:
    """(share, how many scored): of the reconstructions whose person has another image in `gallery`, the
    share whose nearest (highest SSIM) of `size` candidates is that other image, the rest being images of
    other people. It asks what a face attack is for: not the same pixels, the same person. The gallery
    must not hold the reconstructed images themselves (the referee passes the shared test set)."""
    generator = torch.Generator().manual_seed(seed)
    filtered = Filtered.of(gallery)
    hits = scored = 0
    for i in range(len(reconstructions)):
        twins = torch.nonzero(gallery_people == people[i]).flatten()
        others = torch.nonzero(gallery_people != people[i]).flatten()
        if len(twins) == 0 or len(others) == 0:
            continue
        twin = twins[torch.randint(len(twins), (1,), generator=generator)]
        others = others[torch.randperm(len(others), generator=generator)[: size - 1]]
        scores = ssim_with(reconstructions[i : i + 1], filtered[torch.cat([twin, others])])
        hits += int(int(scores.argmax()) == 0)
        scored += 1
    return hits / max(scored, 1), scored


def identification(
    reconstructions: torch.Tensor, labels: torch.Tensor, featurizer: nn.Module, decider: nn.Module
) -> float:
    """Top-1 (percent) of the shared F+C on the reconstructions against the true labels."""
    dev = device()
    net = nn.Sequential(featurizer, decider).to(dev).eval()
    logits = apply(lambda b: net(b.float().to(dev)), reconstructions)
    net.cpu()
    return 100.0 * float(topk_correct(logits, labels.long(), 1).mean())


def score_images(
    reconstructions: torch.Tensor,
    truth: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    featurizer: nn.Module | None = None,
    decider: nn.Module | None = None,
    gallery: torch.Tensor | None = None,
    gallery_size: int = GALLERY,
    people: torch.Tensor | None = None,
    gallery_people: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores of reconstructions (N, 3, H, W) against the true images, both in [0, 1]; `people` and
    `gallery_people` (who is in each image, on faces) add person re-identification."""
    if reconstructions.shape != truth.shape:
        raise ValueError(
            f"reconstructions {tuple(reconstructions.shape)} and truth {tuple(truth.shape)} differ"
        )
    x, y = reconstructions.float().clamp(0, 1), truth.float()
    out = {
        "l1": float(l1(x, y).mean()),
        "psnr": float(psnr(x, y).mean()),
        "ssim": float(ssim(x, y).mean()),
        "n": float(len(x)),
    }
    candidates = min(gallery_size, len(y) if gallery is None else len(gallery) + 1)
    out["reid_rank1"] = reidentification(x, y, gallery, size=gallery_size)
    out["reid_chance"] = 1.0 / max(candidates, 1)
    if people is not None and gallery is not None and gallery_people is not None:
        rate, scored = person_reidentification(x, people, gallery, gallery_people, size=gallery_size)
        out["reid_person_rank1"], out["reid_person_n"] = rate, float(scored)
    if labels is not None and featurizer is not None and decider is not None:
        out["identification_top1"] = identification(x, labels, featurizer, decider)
    return out


def score_support(guess: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Support recovery (share of the true support guessed), precision (share of the guess that is true)."""
    guess, truth = guess.bool().cpu(), truth.bool().cpu()
    hit = int((guess & truth).sum())
    return {
        "support_recovery": sparse.support_recovery(guess, truth),
        "support_precision": hit / max(int(guess.sum()), 1),
    }


def score_result(
    result: AttackResult,
    truth_images: torch.Tensor | None = None,
    *,
    truth_support: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    featurizer: nn.Module | None = None,
    decider: nn.Module | None = None,
    gallery: torch.Tensor | None = None,
    only: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores of a result and of each variant (keys "variant/metric"), on the positions `only` (all when
    None), leaving out positions the attacker already knew (`result.known`)."""

    def scored(r: AttackResult) -> dict[str, float]:
        n = len(r.images) if r.images is not None else len(r.support) if r.support is not None else 0
        keep = torch.zeros(n, dtype=torch.bool)
        keep[only if only is not None else slice(None)] = True
        if r.known is not None and bool(keep[~torch.isin(torch.arange(n), r.known)].any()):
            keep[r.known] = False
        out: dict[str, float] = {"known_left_out": float(0 if r.known is None else len(r.known))}
        if r.images is not None and truth_images is not None:
            out |= score_images(
                r.images[keep],
                truth_images[keep],
                labels=None if labels is None else labels[keep],
                featurizer=featurizer,
                decider=decider,
                gallery=gallery,
            )
        if r.support is not None and truth_support is not None:
            out |= score_support(r.support[keep], truth_support[keep])
        return out

    out = scored(result)
    for name, variant in result.variants.items():
        out |= {f"{name}/{metric}": value for metric, value in scored(variant).items()}
    return out
