"""Threat models: what an adversary may know, and what each attack needs. Imports no torch, so that the
scenario schema can refuse an unknown attack, or an attack its adversary cannot mount, at validation.

The attacks themselves are in entities.attacks; each registers under a name declared here and takes its
target and needs from here (one place).
"""

from __future__ import annotations

from dataclasses import dataclass

from entities import attack_options as opt
from entities.strict import Strict

# What an attacker may know (the words attacks name in `needs`).
KNOWLEDGE_WORDS = (
    "pool",  # pooled (poisoned) features and labels, per victim
    "shared_nets",  # F, C, R as shared
    "public_images",  # D_q
    "recipe",  # the published training recipes (DPM, R)
    "own_images",  # an insider's own images
    "own_dpm",  # an insider's own protector: its DPM, or the shared obfuscator it was handed
    "known_pairs",  # (image, poisoned feature) pairs of the victim
    "codes",  # the published ambiguated codes and their manifest
    "public_network",  # the published sparsifying autoencoder
    "own_keys",  # a curious user's keys and the images they open
)

OUTSIDER = frozenset({"pool", "shared_nets", "public_images", "recipe", "codes", "public_network"})
# The threat models a scenario declares (`adversaries[i].knowledge`), and what each knows.
THREAT_MODELS: dict[str, frozenset[str]] = {
    "outsider": OUTSIDER,
    "insider": OUTSIDER | {"own_images", "own_dpm"},  # also one of the entities
    "curious-user": OUTSIDER | {"own_keys"},  # also an authorised user of the data owner
}


def knowledge_of(threat_model: str, known_pairs: int = 0) -> frozenset[str]:
    """The words an adversary of `threat_model` knows; `known_pairs` > 0 adds the known-plaintext case."""
    words = THREAT_MODELS[threat_model]
    return words | {"known_pairs"} if known_pairs > 0 else words


@dataclass(frozen=True)
class AttackEntry:
    target: str  # "pool" (Deep Poisoning's shared features) or "codes" (the ambiguated codes)
    needs: frozenset[str]
    summary: str
    options: type[Strict] = opt.NoOptions  # its options, typed with their ranges (entities.attack_options)


_CODES = frozenset({"codes", "public_network"})
ATTACKS: dict[str, AttackEntry] = {
    "shared-reconstructor": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets"}),
        "the shared reconstructor R applied to the victim's pooled features (the paper's test)",
    ),
    "reconstructor-family": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets", "public_images", "recipe"}),
        "section 4.2.2's reconstructor shapes trained on original public features",
        opt.ReconstructorFamilyOptions,
    ),
    "surrogate-dpm": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets", "public_images", "recipe"}),
        "train surrogate DPMs with the published recipe on D_q, invert their poisoned features",
        opt.SurrogateOptions,
    ),
    "surrogate-dpm-insider": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets", "own_images", "own_dpm", "recipe"}),
        "an insider inverts its own DPM (plus K-1 surrogates) trained on its own images",
        opt.SurrogateOptions,
    ),
    "protection-holder": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets", "own_images", "own_dpm", "recipe"}),
        "a holder of a protector (an insider: its own DPM, or the shared obfuscator) inverts it with a "
        "decoder trained on its own images through it",
        opt.InsiderOptions,
    ),
    "feature-alignment": AttackEntry(
        "pool",
        frozenset({"pool", "shared_nets", "public_images"}),
        "FORA-style: map F(D_q) onto the pool's distribution (MMD + C's labels), invert through it",
        opt.FeatureAlignmentOptions,
    ),
    "known-pairs": AttackEntry(
        "pool",
        frozenset({"pool", "known_pairs"}),
        "a decoder trained on N known (image, pooled feature) pairs of the victim",
        opt.KnownPairsOptions,
    ),
    "decode-as-published": AttackEntry(
        "codes", _CODES, "decode the published codes with all k' non-zeros, fakes included"
    ),
    "random-guess": AttackEntry(
        "codes", _CODES, "k of each map's k' non-zeros chosen at random", opt.SeedOnly
    ),
    "magnitude": AttackEntry(
        "codes",
        _CODES,
        "the k smallest (and, as a variant, the k largest) magnitudes of each map",
        opt.MagnitudeOptions,
    ),
    "usage-prior": AttackEntry(
        "codes",
        _CODES | {"public_images"},
        "the k non-zeros at positions the public network uses most on D_q",
    ),
    "support-detector": AttackEntry(
        "codes",
        _CODES | {"public_images"},
        "an MLP of true vs fake non-zeros, trained on D_q codes the attacker ambiguates itself",
        opt.SupportDetectorOptions,
    ),
    "support-detector-curious": AttackEntry(
        "codes",
        _CODES | {"public_images", "own_keys"},
        "support-detector also trained on the curious user's own keys",
        opt.CuriousSupportDetectorOptions,
    ),
}
