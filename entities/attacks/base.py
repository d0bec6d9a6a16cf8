"""The attack registry, the attacker's knowledge and an attack's result.

Every attack is a class registered by name (CompressAI style: `@register_attack("surrogate-dpm")`). It
declares what it attacks (`target`: "pool" or "codes") and what it must know (`needs`: words of the fixed
vocabulary `KNOWLEDGE`). `Attack.run(knowledge, victim)` checks that the knowledge holds every needed field
(`require`), then hands the attack a copy of the knowledge with every other field blanked, so that an
attack cannot use what its threat model excludes even by mistake.

Truth (the victim's images and labels, the true supports) is never part of `Knowledge`; the referee
(`entities.attacks.scoring`) holds it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from entities import attack_options, threats
from entities.rows import Rows

Target = Literal["pool", "codes"]
TARGETS: tuple[str, ...] = ("pool", "codes")

# What an attacker may know, and the Knowledge fields each word stands for (all of them required).
KNOWLEDGE: dict[str, tuple[str, ...]] = {
    "pool": ("pool",),  # pooled (poisoned) features and labels, per victim
    "shared_nets": ("featurizer", "decider", "reconstructor"),  # F, C, R as shared
    "public_images": ("public_images",),  # D_q (public_labels comes with it when known)
    "recipe": ("dpm_recipe", "dpm_shape", "reconstructor_recipe"),  # the published training recipes
    "own_images": ("own_images",),  # an insider's own images (own_labels comes with it)
    "own_dpm": ("own_dpm",),  # an insider's own DPM
    "known_pairs": ("known_pairs",),  # (image, poisoned feature) pairs of the victim
    "codes": ("codes", "k", "k_prime", "sampler"),  # the published ambiguated codes and their manifest
    "public_network": ("public_network",),  # the published sparsifying autoencoder
    "own_keys": ("own_keys",),  # a curious user's keys: indices into the codes and their true supports
}
# Optional companions: blanked with their word, but not required by it.
COMPANIONS: dict[str, tuple[str, ...]] = {
    "public_images": ("public_labels",),
    "own_images": ("own_labels",),
    "recipe": ("protections",),  # each entity's declared protection, where the scenario says
}


class MissingKnowledge(ValueError):
    """An attack was run without a piece of knowledge it needs."""


class UnknownAttack(ValueError):
    """No attack is registered under this name; the message lists the known ones."""


@dataclass
class Pooled:
    """What the pool holds of one victim: its shared features (N, C, H, W) and their labels (N,). The
    features are Rows (memory-mapped in a run), read a batch at a time: the pool may exceed memory."""

    features: Rows
    labels: torch.Tensor


@dataclass
class KnownPairs:
    """(image, shared feature) pairs of one victim: images (N, 3, H, W) in [0, 1], features (N, C, h, w)."""

    images: torch.Tensor
    features: torch.Tensor
    indices: torch.Tensor | None = None  # their positions in the victim's pool, when they are pooled ones


@dataclass
class OwnKeys:
    """A curious user's keys: `indices` into the published codes and their true supports (n, L, m) bool."""

    indices: torch.Tensor
    supports: torch.Tensor


@dataclass
class Knowledge:
    """Everything an attacker might know; each field is optional. Images are uint8 (N, 3, H, W) arrays, as
    entities keep them, or float tensors in [0, 1]."""

    pool: Mapping[str, Pooled] | None = None
    featurizer: nn.Module | None = None
    decider: nn.Module | None = None
    reconstructor: nn.Module | None = None
    public_images: np.ndarray | torch.Tensor | None = None
    public_labels: np.ndarray | torch.Tensor | None = None
    # the published recipes: DPMTraining-like (epochs, lr, ..., lam, objective, temperature), DPMShape-like
    # (blocks, width) and Reconstructor-like (width, blocks_per_upscale, output, training)
    dpm_recipe: Any = None
    dpm_shape: Any = None
    reconstructor_recipe: Any = None
    own_images: np.ndarray | torch.Tensor | None = None
    own_labels: np.ndarray | torch.Tensor | None = None
    own_dpm: nn.Module | None = None  # an insider's own protector: its DPM, or the shared obfuscator
    # each entity's declared protection (entities.protections.ProtectionKind), by name: what the
    # recipe-modelling attacks train; without it, the published DPM recipe
    protections: Mapping[str, Any] | None = None
    known_pairs: Mapping[str, KnownPairs] | None = None
    codes: torch.Tensor | None = None  # (N, L, m) ambiguated codes, k' non-zeros per map
    k: int | None = None
    k_prime: int | None = None
    sampler: str | None = None
    public_network: Any = None  # an entities.sparse.SparsifyingAutoencoder
    own_keys: OwnKeys | None = None

    def restricted(self, needs: frozenset[str]) -> Knowledge:
        """A copy holding only the fields of `needs` (and their companions); every other field is None."""
        keep = {f for word in needs for f in KNOWLEDGE[word] + COMPANIONS.get(word, ())}
        blank = {f.name: None for f in dataclasses.fields(self) if f.name not in keep}
        return dataclasses.replace(self, **blank)


def check_needs(needs: frozenset[str]) -> None:
    unknown = sorted(set(needs) - set(KNOWLEDGE))
    if unknown:
        raise ValueError(f"unknown knowledge {unknown}; the vocabulary is {', '.join(KNOWLEDGE)}")


def require(knowledge: Knowledge, needs: frozenset[str] | set[str]) -> None:
    """Raise MissingKnowledge naming the first missing field of any word in `needs`."""
    check_needs(frozenset(needs))
    for word in sorted(needs):
        for name in KNOWLEDGE[word]:
            if getattr(knowledge, name) is None:
                raise MissingKnowledge(
                    f"this attack needs {word!r} knowledge, but Knowledge.{name} is missing"
                )


@dataclass
class AttackResult:
    """Reconstructions (images in [0, 1], in the victim's order) and/or a recovered support (N, L, m) bool,
    the attack's own records (training losses, chosen options: the attacker's view, no truth), and named
    variants (e.g. one per reconstructor shape or per N), each a result of its own."""

    attack: str = ""
    victim: str = ""
    images: torch.Tensor | None = None
    support: torch.Tensor | None = None
    records: dict[str, float] = field(default_factory=dict)
    variants: dict[str, AttackResult] = field(default_factory=dict)
    known: torch.Tensor | None = None  # positions the attacker already knew (score without them)

    def check(self) -> None:
        """Reject a result with nothing in it, or images outside [0, 1] or not finite."""
        if self.images is None and self.support is None:
            raise ValueError(f"attack {self.attack!r} returned neither images nor a support")
        if self.images is not None:
            x = self.images
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"attack {self.attack!r}: images must be (N, 3, H, W), got {tuple(x.shape)}")
            if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
                raise ValueError(f"attack {self.attack!r}: images must be finite and in [0, 1]")
        if self.support is not None and self.support.dtype != torch.bool:
            raise ValueError(f"attack {self.attack!r}: a support must be a bool tensor")
        for variant in self.variants.values():
            variant.check()


class Attack(ABC):
    """One attack. Registered by name (its target, needs and summary come from entities.threats), it takes
    its options in the constructor and implements `attack(knowledge, victim)`, which sees only the
    knowledge it needs."""

    name: ClassVar[str] = ""
    target: ClassVar[Target]
    needs: ClassVar[frozenset[str]]
    summary: ClassVar[str] = ""

    def run(self, knowledge: Knowledge, victim: str) -> AttackResult:
        require(knowledge, self.needs)
        view = knowledge.restricted(self.needs)
        if self.target == "pool":
            assert view.pool is not None
            if victim not in view.pool:
                raise KeyError(
                    f"victim {victim!r} has nothing in the pool; the pool holds {sorted(view.pool)}"
                )
        result = self.attack(view, victim)
        result.attack, result.victim = self.name, victim
        for variant in result.variants.values():
            variant.attack, variant.victim = self.name, victim
        result.check()
        return result

    @abstractmethod
    def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
        """The attack itself, on a knowledge view restricted to `needs`."""


ATTACKS: dict[str, type[Attack]] = {}
A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator: register an Attack subclass under `name`; its target, needs and summary come from
    the torch-free catalogue entities.threats.ATTACKS (so that the schema can check them at validation)."""

    def decorator(cls: A) -> A:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        entry = threats.ATTACKS.get(name)
        if entry is None:
            raise ValueError(f"attack {name!r} is not in entities.threats.ATTACKS, which says what it needs")
        check_needs(entry.needs)
        cls.name, cls.target, cls.needs, cls.summary = name, entry.target, entry.needs, entry.summary  # type: ignore[assignment]
        ATTACKS[name] = cls
        return cls

    return decorator


def attack_names(target: str | None = None) -> list[str]:
    """Registered attack names, sorted; only those on `target` when given."""
    return sorted(n for n, c in ATTACKS.items() if target is None or c.target == target)


def get_attack(name: str) -> type[Attack]:
    """The attack class registered as `name`; UnknownAttack listing the known names otherwise."""
    if name not in ATTACKS:
        raise UnknownAttack(f"unknown attack {name!r}; known attacks: {', '.join(attack_names())}")
    return ATTACKS[name]


def make_attack(name: str, **options: Any) -> Attack:
    """An instance of attack `name` with its options, validated against the attack's declared options
    (entities.attack_options; ValueError names each bad one)."""
    cls = get_attack(name)
    return cls(**attack_options.validated(name, threats.ATTACKS[name].options, options))


def describe() -> list[dict[str, str]]:
    """One entry per attack: name, target, its one-line summary, and what it needs."""
    return [
        {
            "name": n,
            "target": ATTACKS[n].target,
            "summary": ATTACKS[n].summary,
            "needs": ", ".join(sorted(ATTACKS[n].needs)),
        }
        for n in attack_names()
    ]
