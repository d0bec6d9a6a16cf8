"""The training loop the learned protections share (a shared obfuscator, an adaptive DPM, NoPeek): a
DPM-shaped protector P on frozen F, C, R, minimising the recipe's task term (`dpm.objective`, as a DPM)
plus privacy terms, optionally against decoders that are retrained on P's output as it trains (min-max,
as DeepObfuscator and ResSFL do) and restarted now and then, so that P cannot overfit one decoder's
state. Torch is imported inside: the protections' modules load without it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from entities.protections.base import Holdings

if TYPE_CHECKING:
    import torch
    from torch import nn

# (images x, protected features z) of a batch -> a privacy term to minimise
Term = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def train_protector(
    holdings: Holdings,
    *,
    seed: int,
    net: str,
    lam: float,
    against_r: bool = True,
    decoders: Sequence[Any] = (),
    restart_every: int = 0,
    extra: Term | None = None,
) -> nn.Module:
    """P trained on the holder's images: task(C(P(F(x)))) + lam * (SSIM of R, with `against_r`, and the
    mean SSIM of the adversarial decoders, one per entities.attacks.decoders.Shape in `decoders`) +
    `extra(x, z)`; each decoder takes one L1 step on P's current output per P step, and is re-initialised
    every `restart_every` steps (0: never). The schedule is the `dpm:` recipe's (epochs, lr, batch size,
    min_steps)."""
    import torch

    from entities.attacks.decoders import Decoder, factor_of
    from entities.entity import featurize, freeze, to_float
    from entities.metrics import l1, ssim
    from entities.nets import DPM
    from entities.progress import tracker
    from entities.registry import OBJECTIVES
    from entities.training import device, seed_everything, to_device

    dev = device()
    recipe, shape, nets = holdings.recipe(), holdings.shape(), holdings.nets
    generator = seed_everything(seed)
    freeze(nets.featurizer, nets.decider, nets.reconstructor)
    feats = featurize(nets.featurizer, holdings.images)
    x, y = to_float(holdings.images), torch.as_tensor(holdings.labels)
    protector = DPM(feats.shape[1], blocks=shape.blocks, width=shape.width).to(dev).train()
    decider, recon = nets.decider.to(dev), nets.reconstructor.to(dev)
    task_term = OBJECTIVES.get(recipe.objective)(recipe, decider, feats, y)
    factor = factor_of(x, feats)

    def fresh(i: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        d = Decoder(feats.shape[1], factor, decoders[i]).to(dev)
        return d, torch.optim.Adam(d.parameters(), lr=1e-3)

    adversaries = [fresh(i) for i in range(len(decoders))]
    opt = torch.optim.Adam(protector.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    b = min(recipe.batch_size, len(x))
    steps = max(recipe.min_steps, recipe.epochs * math.ceil(len(x) / b))
    progress = tracker(net, steps)
    for step in range(steps):
        if restart_every and step and step % restart_every == 0:
            adversaries = [fresh(i) for i in range(len(decoders))]
        index = torch.randint(len(x), (b,), generator=generator)
        f, target = to_device(feats[index]), to_device(x[index])
        if adversaries:
            with torch.no_grad():  # the adversaries' step: invert P as it is now
                z = protector(f)
            for d, d_opt in adversaries:
                d.train()
                loss_d = l1(d(z), target).mean()
                d_opt.zero_grad(set_to_none=True)
                loss_d.backward()
                d_opt.step()
                d.eval()
        z = protector(f)  # P's step: useful to C, useless to R and to the adversaries
        privacy = torch.zeros((), device=dev)
        if against_r:
            privacy = privacy + ssim(recon(z), target).mean()
        if adversaries:
            privacy = privacy + sum(ssim(d(z), target).mean() for d, _ in adversaries) / len(adversaries)
        loss = task_term(decider(z), index) + lam * privacy
        if extra is not None:
            loss = loss + extra(target, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.step(b)
    progress.finish()
    for m in (decider, recon):
        m.cpu()
    return protector.eval().cpu()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The sample distance correlation of two batches (rows flattened), in [0, 1] (Szekely et al.)."""
    import torch

    def centred(v: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(v.flatten(1), v.flatten(1))
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    ca, cb = centred(a), centred(b)
    dcov_ab, dcov_aa, dcov_bb = (ca * cb).mean(), (ca * ca).mean(), (cb * cb).mean()
    return torch.sqrt(dcov_ab.clamp_min(0) / torch.sqrt(dcov_aa * dcov_bb).clamp_min(1e-12) + 1e-12)
