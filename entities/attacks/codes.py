"""Attacks on the ambiguated codes: guess each map's support (k of its k' non-zeros) and decode with it.

Every attack here returns a support (N, L, m) bool with k entries per map, over all published codes, and
the images the public network decodes from the codes restricted to it.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
from torch import nn

from entities import sparse
from entities.attacks.base import Attack, AttackResult, Knowledge, register_attack
from entities.attacks.decoders import as_float
from entities.progress import tracker
from entities.training import apply, device, seed_everything


def _published(knowledge: Knowledge) -> tuple[torch.Tensor, Any, int, int]:
    assert knowledge.codes is not None and knowledge.public_network is not None
    assert knowledge.k is not None and knowledge.k_prime is not None
    return knowledge.codes.float().cpu(), knowledge.public_network, knowledge.k, knowledge.k_prime


def _decode(model: Any, codes: torch.Tensor) -> torch.Tensor:
    dev = device()
    model = model.to(dev).eval()
    out = apply(lambda c: model.decode(c.to(dev)), codes, batch_size=128).clamp(0, 1)
    model.cpu()
    return out


def _encode(model: Any, images: torch.Tensor, k: int) -> torch.Tensor:
    dev = device()
    model = model.to(dev).eval()
    out = apply(lambda x: model.encode(x.to(dev), k), images, batch_size=128)
    model.cpu()
    return out


def top_k_support(codes: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Each map's k non-zeros of highest score, as a bool support."""
    score = score.masked_fill(codes == 0, -math.inf)
    index = score.topk(k, dim=-1).indices
    return torch.zeros_like(codes, dtype=torch.bool).scatter(-1, index, True)


def _result(knowledge: Knowledge, support: torch.Tensor, **records: float) -> AttackResult:
    codes, model, _, _ = _published(knowledge)
    return AttackResult(images=_decode(model, codes * support), support=support, records=dict(records))


@register_attack("decode-as-published")
class DecodeAsPublished(Attack):
    """Decode the ambiguated codes as they are, fakes included (the paper's 'ambiguated' row)."""

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        codes, _, _, _ = _published(knowledge)
        return _result(knowledge, codes != 0)


@register_attack("random-guess")
class RandomGuess(Attack):
    """Keep k of each map's k' non-zeros at random (the public code's only attack)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        codes, _, k, _ = _published(knowledge)
        # salted: a guess drawn from the same seeded stream as the publication's fake positions would pick
        # exactly the fakes (torch.rand of the same shape and seed ranks the same positions first)
        generator = torch.Generator().manual_seed(zlib.crc32(b"random-guess") + self.seed)
        return _result(knowledge, sparse.random_guess(codes, k, generator))


@register_attack("magnitude")
class Magnitude(Attack):
    """Keep the k smallest magnitudes (breaks a sampler whose fakes are too large, as the public code's)
    and, as a variant, the k largest (breaks one whose fakes are too small). `end` picks the main result."""

    def __init__(self, end: str = "smallest"):
        if end not in ("smallest", "largest"):
            raise ValueError(f"end must be 'smallest' or 'largest', got {end!r}")
        self.end = end

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        codes, _, k, _ = _published(knowledge)
        magnitude = codes.abs()
        variants = {
            "smallest": _result(knowledge, top_k_support(codes, -magnitude, k)),
            "largest": _result(knowledge, top_k_support(codes, magnitude, k)),
        }
        main = variants[self.end]
        return AttackResult(images=main.images, support=main.support, variants=variants)


def position_usage(model: Any, images: torch.Tensor, k: int) -> torch.Tensor:
    """(L, m): how often each position is in the support when the public network encodes `images`."""
    return sparse.supports(_encode(model, images, k)).float().mean(0)


@register_attack("usage-prior")
class UsagePrior(Attack):
    """Keep each map's k non-zeros at the positions the public network uses most on the attacker's images:
    fakes go to uniformly random zero positions, a trained network's true supports do not."""

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        codes, model, k, _ = _published(knowledge)
        assert knowledge.public_images is not None
        usage = position_usage(model, as_float(knowledge.public_images), k)
        return _result(knowledge, top_k_support(codes, usage[None].expand_as(codes), k))


# ---------------------------------------------------------------- a learned support detector


class Priors:
    """What the attacker learns from true codes of its own: per map lambda, per position usage, mean
    magnitude when used, and mean sign when used."""

    def __init__(self, codes: torch.Tensor, k: int):
        self.lam, self.sigma = sparse.ambiguation_stats(codes, k)
        used = codes != 0
        count = used.float().sum(0)
        self.usage = count / len(codes)
        mean_mag = codes.abs().sum(0) / count.clamp_min(1)
        self.magnitude = torch.where(count > 0, mean_mag, self.lam[:, None].expand_as(mean_mag))
        self.sign = codes.sign().sum(0) / count.clamp_min(1)


def entry_features(codes: torch.Tensor, model: Any, priors: Priors) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every non-zero entry of ambiguated codes (N, L, m); returns (features (E, F), the
    boolean mask (N, L, m) of the entries, in the order of `codes[mask]`).

    Per entry: log(|v| / lambda_l); the rank of |v| among its map's non-zeros; the position's usage; log of
    |v| over the position's mean true magnitude; sign agreement with the position's mean sign; what
    re-encoding the decoded codes puts at that position (its value relative to lambda, its sign agreement,
    its rank within the map's non-zeros); the map index, one-hot.
    """
    n, maps, m = codes.shape
    mask = codes != 0
    lam = priors.lam.float()[None, :, None]
    magnitude = codes.abs()
    # rank among the map's non-zeros, 0 = largest, scaled to [0, 1]
    order = magnitude.masked_fill(~mask, -1.0).argsort(-1, descending=True).argsort(-1).float()
    k_prime = mask.sum(-1, keepdim=True).clamp_min(2).float()
    rank = order / (k_prime - 1)
    dev = device()
    model = model.to(dev).eval()
    z = apply(lambda c: model.code_maps(model.decode(c.to(dev))), codes, batch_size=128)
    model.cpu()
    z_rank = (z.abs().masked_fill(~mask, -1.0).argsort(-1, descending=True).argsort(-1).float()) / (
        k_prime - 1
    )
    sign = codes.sign()
    columns = [
        torch.log(magnitude / lam + 1e-6),
        rank,
        priors.usage[None].expand_as(codes),
        torch.log(magnitude / priors.magnitude[None] + 1e-6),
        sign * priors.sign[None],
        z * sign / lam,
        z.abs() / lam,
        z_rank,
    ]
    dense = torch.stack([c.float() for c in columns], -1)[mask]  # (E, 8)
    maps_onehot = nn.functional.one_hot(mask.nonzero()[:, 1], maps).float()
    return torch.cat([dense, maps_onehot], 1), mask


@register_attack("support-detector")
class SupportDetector(Attack):
    """A classifier of true vs fake non-zeros, trained on codes the attacker makes itself: it encodes its
    images (D_q) with the public network, ambiguates them with the published sampler (lambda and sigma
    estimated from its own codes), and learns from each entry's value and its code map. Applied to the
    published codes, it keeps each map's k highest-scoring non-zeros."""

    def __init__(
        self,
        repeats: int = 4,
        steps: int = 400,
        hidden: int = 64,
        batch_size: int = 1024,
        seed: int = 0,
        images: int | None = None,
    ):
        """images: how many of its public images the attacker encodes (all when None); each entry of their
        ambiguated codes is a training example, so memory grows with images x repeats x L x k'."""
        self.repeats, self.steps, self.hidden, self.batch_size, self.seed = (
            repeats,
            steps,
            hidden,
            batch_size,
            seed,
        )
        self.images = images

    def _training_codes(
        self, knowledge: Knowledge, priors: Priors, own: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(ambiguated codes, their true supports) the attacker makes from its own codes."""
        _, _, _, k_prime = _published(knowledge)
        generator = torch.Generator().manual_seed(zlib.crc32(b"support-detector") + self.seed)
        sampler = knowledge.sampler
        if sampler not in ("ctg", "empirical"):
            raise ValueError(f"unknown published sampler {sampler!r}")
        made = [
            sparse.ambiguate(
                own, k_prime, sampler=sampler, lam=priors.lam, sigma=priors.sigma, generator=generator
            )
            for _ in range(self.repeats)
        ]
        return torch.cat(made), own.ne(0).repeat(self.repeats, 1, 1)

    def _extra(self, knowledge: Knowledge) -> tuple[torch.Tensor, torch.Tensor] | None:
        """More (ambiguated codes, true supports) pairs: a curious user's own keys."""
        return None

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        codes, model, k, _ = _published(knowledge)
        assert knowledge.public_images is not None
        public = as_float(knowledge.public_images)
        if self.images is not None and self.images < len(public):
            pick = torch.randperm(len(public), generator=torch.Generator().manual_seed(self.seed))
            public = public[pick[: self.images]]
        own = _encode(model, public, k)
        priors = Priors(own, k)
        amb, truth = self._training_codes(knowledge, priors, own)
        extra = self._extra(knowledge)
        if extra is not None:
            amb, truth = torch.cat([amb, extra[0]]), torch.cat([truth, extra[1]])
        feats, mask = entry_features(amb, model, priors)
        labels = truth[mask].float()
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
        generator = seed_everything(self.seed)
        dev = device()
        net = nn.Sequential(
            nn.Linear(feats.shape[1], self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, 1),
        ).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        normed = (feats - mean) / std
        losses = []
        progress = tracker("support detector", self.steps)
        for _ in range(self.steps):
            i = torch.randint(len(normed), (min(self.batch_size, len(normed)),), generator=generator)
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(normed[i].to(dev)).squeeze(1), labels[i].to(dev)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            progress.step(len(i))
        progress.finish()
        net.eval()
        with torch.no_grad():
            train_logits = apply(lambda f: net(f.to(dev)).squeeze(1), normed, batch_size=8192)
            train_acc = float(((train_logits > 0).float() == labels).float().mean())
            # the published codes
            pub_feats, pub_mask = entry_features(codes, model, priors)
            logits = apply(lambda f: net(f.to(dev)).squeeze(1), (pub_feats - mean) / std, batch_size=8192)
        score = torch.full(codes.shape, -math.inf)
        score[pub_mask] = logits
        support = top_k_support(codes, score, k)
        # the attacker's own estimate: the recovery its detector gets on its own ambiguated codes
        own_score = torch.full(amb.shape, -math.inf)
        own_score[mask] = train_logits
        own_recovery = sparse.support_recovery(top_k_support(amb, own_score, k), truth)
        return _result(
            knowledge,
            support,
            train_loss=sum(losses[-20:]) / max(len(losses[-20:]), 1),
            train_accuracy=train_acc,
            own_codes_recovery=own_recovery,
            training_entries=float(len(labels)),
        )


@register_attack("support-detector-curious")
class CuriousSupportDetector(SupportDetector):
    """The curious user's support detector: also trained on its own keys (published codes with their true
    supports), which come from the published sampler itself."""

    def __init__(self, key_repeats: int = 4, **options: Any):
        super().__init__(**options)
        self.key_repeats = key_repeats

    def _extra(self, knowledge: Knowledge) -> tuple[torch.Tensor, torch.Tensor] | None:
        assert knowledge.own_keys is not None and knowledge.codes is not None
        keys = knowledge.own_keys
        codes = knowledge.codes.float().cpu()[keys.indices]
        return codes.repeat(self.key_repeats, 1, 1), keys.supports.bool().repeat(self.key_repeats, 1, 1)
