"""Attacks on the pool: reconstruct a victim's images from its shared (poisoned) features.

Each attack returns reconstructions in the order of the victim's pooled features. Decoders that depend
on the attacker's knowledge but not on the victim (reconstructor-family, surrogate-dpm) are cached on the
attack instance, keyed on the knowledge objects they were trained from, so that one instance run against
several victims trains them once; feature-alignment, which fits each victim's pool, trains every run.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from entities.attacks.base import Attack, AttackResult, Knowledge, register_attack
from entities.attacks.decoders import (
    Decoder,
    Shape,
    as_float,
    as_uint8,
    decode,
    factor_of,
    heldout_l1,
    recipe,
    train_decoder,
)
from entities.entity import SharedNets, featurize
from entities.nets import ResidualBlock
from entities.progress import tracker
from entities.protections import DPMSection, Holdings, ProtectionKind, make_protection
from entities.rows import Rows
from entities.training import apply, batches, device, seed_everything, to_device


def _victim(knowledge: Knowledge, victim: str) -> Rows:
    """The victim's pooled features, as rows to read a batch at a time (never all at once)."""
    assert knowledge.pool is not None
    return knowledge.pool[victim].features


def _nets(knowledge: Knowledge) -> tuple[nn.Module, nn.Module, nn.Module]:
    assert knowledge.featurizer is not None and knowledge.decider is not None
    assert knowledge.reconstructor is not None
    return knowledge.featurizer, knowledge.decider, knowledge.reconstructor


def _key(knowledge: Knowledge, *names: str) -> tuple[int, ...]:
    """Identifies the knowledge a cached decoder was trained from (the objects, while they live)."""
    return tuple(id(getattr(knowledge, name)) for name in names)


def _split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of n indices into (train, held out); at least one held out when holdout > 0."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(n * holdout)) if holdout > 0 and n > 2 else 0
    return order[cut:], order[:cut]


def _recipe_shape(rec: Any, output: str | None = None) -> Shape:
    """The published reconstructor's shape (the recipe's width, blocks per upscale and output)."""
    return Shape(width=rec.width, blocks_per_upscale=rec.blocks_per_upscale, output=output or rec.output)


def _training(rec: Any, epochs: int | None, min_steps: int | None = None) -> Any:
    """The published reconstructor training recipe, with epochs and min_steps overridden when given."""
    t = rec.training
    if epochs is None and min_steps is None:
        return t
    return SimpleNamespace(
        epochs=t.epochs if epochs is None else epochs,
        lr=t.lr,
        batch_size=t.batch_size,
        weight_decay=t.weight_decay,
        optimizer=t.optimizer,
        min_steps=getattr(t, "min_steps", 0) if min_steps is None else min_steps,
    )


# ---------------------------------------------------------------- the paper's own test


@register_attack("shared-reconstructor")
class SharedReconstructor(Attack):
    """The paper's test: the shared R, trained on unpoisoned public features, applied to the pool."""

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        _, _, recon = _nets(knowledge)
        return AttackResult(images=decode(recon, _victim(knowledge, victim)))


# ---------------------------------------------------------------- section 4.2.2's reconstructors


def paper_variants(width: int, output: str) -> dict[str, Shape]:
    """The paper's R and five other shapes (section 4.2.2), all trained on original public features."""
    base = Shape(width=width, output=output)
    other = "clamp" if output != "clamp" else "minmax"
    return {
        "paper R": base,
        "residual": Shape(width=width, residual=True, output=output),
        "1 block per upscale": Shape(width=width, blocks_per_upscale=1, output=output),
        "3 blocks per upscale": Shape(width=width, blocks_per_upscale=3, output=output),
        "x4 upscale": Shape(width=width, upscale=4, output=output),
        other: Shape(width=width, output=other),
    }


@register_attack("reconstructor-family")
class ReconstructorFamily(Attack):
    """Reconstructors of several shapes trained on F(D_q); the result is the variant with the lowest
    held-out public L1 (what the attacker can judge), and every variant is reported."""

    def __init__(
        self,
        variants: list[str] | None = None,
        epochs: int | None = None,
        min_steps: int | None = None,
        holdout: float = 0.1,
        seed: int = 0,
    ):
        self.variants, self.epochs, self.holdout, self.seed = variants, epochs, holdout, seed
        self.min_steps = min_steps
        self._decoders: dict[str, tuple[Decoder, float, float]] = {}
        self._trained_on: tuple[int, ...] = ()

    def _train(self, knowledge: Knowledge) -> dict[str, tuple[Decoder, float, float]]:
        featurizer, _, _ = _nets(knowledge)
        rec = knowledge.reconstructor_recipe
        assert knowledge.public_images is not None
        x = as_float(knowledge.public_images)
        feats = featurize(featurizer, as_uint8(knowledge.public_images))
        shapes = paper_variants(rec.width, rec.output)
        chosen = self.variants or list(shapes)
        unknown = sorted(set(chosen) - set(shapes))
        if unknown:
            raise ValueError(f"unknown reconstructor variants {unknown}; known: {', '.join(shapes)}")
        train, held = _split(len(x), self.holdout, self.seed)
        out = {}
        for i, name in enumerate(chosen):
            decoder, history = train_decoder(
                feats[train],
                x[train],
                shapes[name],
                _training(rec, self.epochs, self.min_steps),
                seed=self.seed + i,
                net=f"decoder ({name})",
            )
            val = heldout_l1(decoder, feats[held], x[held]) if len(held) else history[-1]
            out[name] = (decoder, history[-1], val)
        return out

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        key = _key(knowledge, "featurizer", "public_images", "reconstructor_recipe")
        if self._trained_on != key:
            self._decoders, self._trained_on = self._train(knowledge), key
        pooled = _victim(knowledge, victim)
        variants = {
            name: AttackResult(
                images=decode(decoder, pooled), records={"train_l1": train_l1, "public_heldout_l1": val}
            )
            for name, (decoder, train_l1, val) in self._decoders.items()
        }
        best = min(self._decoders, key=lambda n: self._decoders[n][2])
        records = {f"public_heldout_l1[{n}]": v.records["public_heldout_l1"] for n, v in variants.items()}
        records["chosen_variant"] = float(list(variants).index(best))
        return AttackResult(images=variants[best].images, records=records, variants=variants)


# ---------------------------------------------------------------- adaptive: surrogate DPMs


def _pseudo_labels(featurizer: nn.Module, decider: nn.Module, images: np.ndarray) -> np.ndarray:
    """C's own predictions on F(x): labels in the task's classes for images from other classes."""
    dev = device()
    feats = featurize(featurizer, images)
    decider = decider.to(dev).eval()
    logits = apply(lambda b: decider(b.to(dev)), feats)
    decider.cpu()
    return logits.argmax(1).numpy().astype(np.int64)


def victim_protection(knowledge: Knowledge, victim: str) -> ProtectionKind[Any]:
    """The protection the victim declared (public, like the recipe), or the paper's DPM when the
    knowledge names none."""
    if knowledge.protections is not None and victim in knowledge.protections:
        kind: ProtectionKind[Any] = knowledge.protections[victim]
        return kind
    return make_protection(DPMSection())


def surrogate_protector(kind: ProtectionKind[Any], holdings: Holdings, *, seed: int) -> nn.Module:
    """A protector of the victim's kind trained by the attacker on what it holds; a shared protection's
    part, which an outsider was not handed, it trains itself with the same recipe."""
    if kind.shared and holdings.shared is None:
        return kind.train_shared(holdings, seed=seed)
    return kind.train(holdings, seed=seed)


@register_attack("surrogate-dpm")
class SurrogateDPM(Attack):
    """The attacker trains K protectors of its own with the victim's declared protection and the
    published recipe (different seeds; a DPM by default) on the images it has, then one reconstructor
    on (its protected features, its images), applied to the victim's pool (SIMBA's rule)."""

    _knowledge_fields: tuple[str, ...] = (
        "featurizer",
        "public_images",
        "dpm_recipe",
        "dpm_shape",
        "reconstructor_recipe",
    )

    def __init__(
        self,
        surrogates: int = 1,
        epochs: int | None = None,
        min_steps: int | None = None,
        output: str | None = None,
        seed: int = 0,
    ):
        self.min_steps = min_steps
        if surrogates < 1:
            raise ValueError(f"surrogates must be at least 1, got {surrogates}")
        self.surrogates, self.epochs, self.output, self.seed = surrogates, epochs, output, seed
        self._decoder: Decoder | None = None
        self._records: dict[str, float] = {}
        self._trained_on: tuple[object, ...] = ()

    def _images(self, knowledge: Knowledge) -> tuple[np.ndarray, np.ndarray | None]:
        """The attacker's own images and, when it has them, their labels."""
        assert knowledge.public_images is not None
        return as_uint8(knowledge.public_images), None

    def _given_dpms(self, knowledge: Knowledge) -> list[nn.Module]:
        """DPMs the attacker already holds (an insider's own)."""
        return []

    def _train(self, knowledge: Knowledge, victim: str) -> None:
        featurizer, decider, recon = _nets(knowledge)
        images, labels = self._images(knowledge)
        recipe_ = knowledge.dpm_recipe
        if labels is None or (recipe_ is not None and recipe_.objective != "ce"):
            labels = _pseudo_labels(featurizer, decider, images)
        nets = SharedNets(*(copy.deepcopy(m) for m in (featurizer, decider, recon)))
        kind = victim_protection(knowledge, victim)
        holdings = Holdings(nets, images, labels, recipe_, knowledge.dpm_shape)
        dpms = self._given_dpms(knowledge)
        for i in range(self.surrogates - len(dpms)):
            seed = self.seed + 1000 * (i + 1)
            dpms.append(surrogate_protector(kind, holdings, seed=seed))
        x = as_float(images)
        feats = torch.cat([featurize(featurizer, images, dpm) for dpm in dpms])
        targets = x.repeat(len(dpms), 1, 1, 1)
        rec = knowledge.reconstructor_recipe
        self._decoder, history = train_decoder(
            feats,
            targets,
            _recipe_shape(rec, self.output),
            _training(rec, self.epochs, self.min_steps),
            seed=self.seed,
        )
        self._records = {
            "surrogates": float(len(dpms)),
            "train_l1": history[-1],
            "train_images": float(len(x)),
        }

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        key = (*_key(knowledge, *self._knowledge_fields), victim_protection(knowledge, victim).spec)
        if self._decoder is None or self._trained_on != key:
            self._train(knowledge, victim)
            self._trained_on = key
        assert self._decoder is not None
        return AttackResult(
            images=decode(self._decoder, _victim(knowledge, victim)), records=dict(self._records)
        )


@register_attack("surrogate-dpm-insider")
class SurrogateDPMInsider(SurrogateDPM):
    """An insider's surrogate-dpm: its own DPM is the first surrogate and its own images the training set."""

    _knowledge_fields = (
        "featurizer",
        "own_images",
        "own_dpm",
        "dpm_recipe",
        "dpm_shape",
        "reconstructor_recipe",
    )

    def _images(self, knowledge: Knowledge) -> tuple[np.ndarray, np.ndarray | None]:
        assert knowledge.own_images is not None
        labels = knowledge.own_labels
        return as_uint8(knowledge.own_images), None if labels is None else np.asarray(labels, dtype=np.int64)

    def _given_dpms(self, knowledge: Knowledge) -> list[nn.Module]:
        assert knowledge.own_dpm is not None
        return [knowledge.own_dpm]


@register_attack("protection-holder")
class ProtectionHolder(SurrogateDPMInsider):
    """A holder inverts the protector it holds: a decoder trained on (its protector(F(its images)), its
    images), applied to the victim's pool. Against a shared obfuscator the holder holds the victim's
    very protector (DeepObfuscator's weakness, the paper's Table 4); against a private DPM only its own."""

    def __init__(
        self,
        epochs: int | None = None,
        min_steps: int | None = None,
        output: str | None = None,
        seed: int = 0,
    ):
        super().__init__(surrogates=1, epochs=epochs, min_steps=min_steps, output=output, seed=seed)


# ---------------------------------------------------------------- adaptive: feature alignment (FORA-like)


def _kernel(x: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """A sum of Gaussian kernels on the rows of x, bandwidths `scales` times the mean squared distance."""
    d2 = torch.cdist(x, x).pow(2)
    n = len(x)
    base = d2.detach().sum() / max(n * n - n, 1)
    return sum(torch.exp(-d2 / (base * s + 1e-8)) for s in scales)  # type: ignore[return-value]


def weighted_mmd(k: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """MMD^2 of two weighted samples with joint kernel matrix k (a first, then b); weights sum to 1."""
    n = len(wa)
    return wa @ k[:n, :n] @ wa + wb @ k[n:, n:] @ wb - 2 * wa @ k[:n, n:] @ wb


MMD_SCALES = (2.0**-3, 2.0**-2, 2.0**-1, 1.0, 2.0)  # FORA's kernels 2^-3..2^1


@register_attack("feature-alignment")
class FeatureAlignment(Attack):
    """After FORA: a DPM-shaped map G from F(D_q) into the victim's pooled-feature distribution (multi-
    kernel MMD, class-conditional MMD with C's predictions against the pooled labels, and C's predicted
    class mix matching the pool's), trained jointly with a decoder G(F(x)) -> x on public images that
    keeps G invertible; the decoder is then refined on the fixed G(F(x)) and applied to the pool."""

    def __init__(
        self,
        steps: int = 300,
        decoder_epochs: int = 20,
        batch_size: int = 32,
        blocks: int = 2,
        width: int = 32,
        mmd_weight: float = 1.0,
        class_weight: float = 1.0,
        label_weight: float = 0.1,
        rec_weight: float = 1.0,
        lr: float = 1e-3,
        seed: int = 0,
    ):
        self.steps, self.decoder_epochs, self.batch_size = steps, decoder_epochs, batch_size
        self.blocks, self.width, self.lr, self.seed = blocks, width, lr, seed
        self.mmd_weight, self.class_weight = mmd_weight, class_weight
        self.label_weight, self.rec_weight = label_weight, rec_weight

    def _train(self, knowledge: Knowledge, victim: str) -> tuple[Decoder, dict[str, float]]:
        dev = device()
        featurizer, decider, _ = _nets(knowledge)
        assert knowledge.pool is not None and knowledge.public_images is not None
        pooled = knowledge.pool[victim]
        target, target_labels = pooled.features, pooled.labels.long()  # target: rows, gathered per step
        x = as_float(knowledge.public_images)
        feats = featurize(featurizer, as_uint8(knowledge.public_images))
        generator = seed_everything(self.seed)
        aligner = nn.Sequential(*(ResidualBlock(feats.shape[1], self.width) for _ in range(self.blocks))).to(
            dev
        )
        decoder = Decoder(feats.shape[1], factor_of(x, feats), Shape(width=self.width, output="sigmoid")).to(
            dev
        )
        decider = copy.deepcopy(decider).to(dev).eval()
        for p in decider.parameters():
            p.requires_grad_(False)
        classes = int(max(int(target_labels.max()) + 1, decider(target[:2].float().to(dev)).shape[1]))
        prior = torch.bincount(target_labels, minlength=classes).float()
        prior = (prior / prior.sum()).to(dev)
        opt = torch.optim.Adam([*aligner.parameters(), *decoder.parameters()], lr=self.lr)
        b = min(self.batch_size, len(feats), len(target))
        last: dict[str, float] = {}
        aligner.train(), decoder.train()
        progress = tracker("aligner", self.steps)
        for _ in range(self.steps):
            i = torch.randint(len(feats), (b,), generator=generator)
            j = torch.randint(len(target), (b,), generator=generator)
            g = aligner(feats[i].to(dev))
            t = target[j].float().to(dev)
            k = _kernel(torch.cat([g.flatten(1), t.flatten(1)]), MMD_SCALES)
            uniform = torch.full((b,), 1.0 / b, device=dev)
            mmd = weighted_mmd(k, uniform, uniform)
            probs = torch.softmax(decider(g), 1)
            onehot = nn.functional.one_hot(target_labels[j], classes).float().to(dev)
            cond = torch.zeros((), device=dev)
            for c in onehot.sum(0).nonzero().flatten().tolist():
                wa, wb = probs[:, c], onehot[:, c]
                if float(wa.detach().sum()) > 1e-3:
                    cond = cond + prior[c] * weighted_mmd(k, wa / wa.sum(), wb / wb.sum())
            mix = probs.mean(0)
            label = (prior * (torch.log(prior + 1e-8) - torch.log(mix + 1e-8))).sum()
            rec = (decoder(g) - x[i].to(dev)).abs().mean()
            loss = self.mmd_weight * mmd + self.class_weight * cond + self.label_weight * label
            loss = loss + self.rec_weight * rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = {
                "mmd": float(mmd.detach()),
                "class_mmd": float(cond.detach()),
                "label_kl": float(label.detach()),
                "joint_l1": float(rec.detach()),
            }
            progress.step(b)
        progress.finish()
        aligner.eval()
        aligned = apply(lambda f: aligner(f.to(dev)), feats)
        # refine the decoder on the fixed aligned features
        decoder.train()
        dopt = torch.optim.Adam(decoder.parameters(), lr=self.lr)
        total = 0.0
        steps = self.decoder_epochs * -(-len(aligned) // self.batch_size)
        progress = tracker("decoder", steps, self.decoder_epochs)
        for epoch in range(self.decoder_epochs):
            total, count = 0.0, 0
            for index in batches(len(aligned), self.batch_size, generator):
                progress.step(len(index), epoch + 1)
                if len(index) < 2:
                    continue
                l1 = (decoder(to_device(aligned[index])) - to_device(x[index])).abs().mean()
                dopt.zero_grad(set_to_none=True)
                l1.backward()
                dopt.step()
                total, count = total + float(l1.detach()) * len(index), count + len(index)
            total /= max(count, 1)
        progress.finish()
        last["decoder_l1"] = total
        with torch.no_grad():
            k = _kernel(torch.cat([aligned[:256].flatten(1), target[:256].float().flatten(1)]), MMD_SCALES)
            na, nb = min(256, len(aligned)), min(256, len(target))
            last["final_mmd"] = float(weighted_mmd(k, torch.full((na,), 1 / na), torch.full((nb,), 1 / nb)))
        return decoder.eval().cpu(), last

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        decoder, records = self._train(knowledge, victim)  # aligned to this victim's pool: never reused
        return AttackResult(images=decode(decoder, _victim(knowledge, victim)), records=dict(records))


# ---------------------------------------------------------------- known plaintext


@register_attack("known-pairs")
class KnownPairsAttack(Attack):
    """A decoder trained on N known (image, shared feature) pairs of the victim, for each N of `ns`
    (capped at what is known); the result is the largest N, every N a variant."""

    def __init__(
        self,
        ns: tuple[int, ...] | list[int] = (10, 100, 1000),
        epochs: int = 30,
        min_steps: int = 300,
        width: int = 32,
        seed: int = 0,
    ):
        if not ns or min(ns) < 1:
            raise ValueError(f"ns must be positive, got {ns}")
        self.ns, self.epochs, self.min_steps, self.width, self.seed = (
            sorted(set(ns)),
            epochs,
            min_steps,
            width,
            seed,
        )

    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        assert knowledge.known_pairs is not None
        if victim not in knowledge.known_pairs:
            raise KeyError(f"no known pairs of victim {victim!r}")
        pairs = knowledge.known_pairs[victim]
        pooled = _victim(knowledge, victim)
        order = torch.randperm(len(pairs.images), generator=torch.Generator().manual_seed(self.seed))
        sizes = sorted({min(n, len(order)) for n in self.ns})
        variants = {}
        for n in sizes:
            index = order[:n]
            decoder, history = train_decoder(
                pairs.features[index].float(),
                pairs.images[index].float(),
                Shape(width=self.width, output="sigmoid"),
                recipe(self.epochs, batch_size=min(32, max(2, n)), min_steps=self.min_steps),
                seed=self.seed,
                net=f"decoder (N={n})",
            )
            variants[f"N={n}"] = AttackResult(
                images=decode(decoder, pooled),
                records={"n_pairs": float(n), "train_l1": history[-1]},
                known=None if pairs.indices is None else pairs.indices[index],
            )
        main = variants[f"N={sizes[-1]}"]
        return AttackResult(
            images=main.images, records=dict(main.records), variants=variants, known=main.known
        )
