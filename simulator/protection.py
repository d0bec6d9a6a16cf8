"""Each entity's declared protection, as the stages use it (entities.protections): what it holds when
it trains it, the part the leader trains for everyone (a shared protection), and rebuilding a protector
from its saved weights (the insider's knowledge)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from entities import entity as E
from entities.protections import Holdings, ProtectionKind, channels_of, make_protection
from simulator import sealing
from simulator.protocol import Sealed
from simulator.schema import Entity, Scenario

SHARED = "shared_protection"  # what the leader's shared part is called where it is sealed and relayed


def protection_of(scenario: Scenario, name: str) -> ProtectionKind[Any]:
    """The protection entity `name` declared."""
    return make_protection(scenario.entity(name).protection)


def holdings(
    scenario: Scenario,
    entity: Entity,
    nets: E.SharedNets,
    images: np.ndarray,
    labels: np.ndarray,
    shared: nn.Module | None = None,
) -> Holdings:
    return Holdings(nets, images, labels, scenario.dpm, entity.dpm, shared)


def compares_protections(scenario: Scenario) -> bool:
    """Whether some entity protects otherwise than with the paper's DPM (then Table 3 is written)."""
    return any(e.protection.kind != "dpm" for e in scenario.entities)


def shared_declaration(scenario: Scenario) -> Entity | None:
    """The first entity that declares a shared protection (the leader trains that one for all), if any."""
    return next((e for e in scenario.entities if make_protection(e.protection).shared), None)


def train_shared(scenario: Scenario, nets: E.SharedNets, images: np.ndarray, labels: np.ndarray) -> nn.Module:
    """The leader's shared part, trained on its own images with the declaring entity's section and the
    leader's DPM shape."""
    declared = shared_declaration(scenario)
    assert declared is not None
    leader = scenario.entity(scenario.leading_entity)
    seed = E.derive_seed(scenario.seed + leader.seed_offset, "shared-protection", leader.name)
    kind = make_protection(declared.protection)
    return kind.train_shared(holdings(scenario, leader, nets, images, labels), seed=seed)


def holders(scenario: Scenario) -> list[str]:
    """The entities that declared a shared protection: the leader seals its shared part to each of them."""
    return [e.name for e in scenario.entities if make_protection(e.protection).shared]


def shared_context(leader: str, holder: str) -> bytes:
    """What a sealed shared part is bound to: who trained it, for whom."""
    return f"{SHARED}|{leader}|{holder}".encode()


def seal_shared(shared: nn.Module, leader: str, public_keys: dict[str, bytes]) -> list[Sealed]:
    """The shared part's weights sealed to each holder: the server relays them and cannot use them (the
    outsider, which gets F, C and R from the same server, never sees the obfuscator)."""
    buffer = io.BytesIO()
    torch.save(shared.state_dict(), buffer)
    plain = buffer.getvalue()
    digest = hashlib.sha256(plain).hexdigest()
    return [
        Sealed(holder, SHARED, sealing.seal(key, plain, shared_context(leader, holder)), digest)
        for holder, key in public_keys.items()
    ]


def open_shared(identity: bytes, item: Sealed, leader: str, holder: str) -> dict[str, torch.Tensor]:
    """The shared part's weights, opened by the holder it was sealed to."""
    plain = sealing.open_sealed(identity, item.ciphertext, shared_context(leader, holder))
    state: dict[str, torch.Tensor] = torch.load(io.BytesIO(plain), weights_only=True)
    return state


def rebuild(scenario: Scenario, name: str, nets: E.SharedNets, data: bytes) -> nn.Module:
    """Entity `name`'s protector from its saved weights (a state dict), in eval mode."""
    entity = scenario.entity(name)
    kind = make_protection(entity.protection)
    empty = np.zeros((0, 3, scenario.dataset.side, scenario.dataset.side), np.uint8)
    module = kind.build(
        channels_of(nets, scenario.dataset.side), holdings(scenario, entity, nets, empty, empty[:, 0, 0, 0])
    )
    module.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return module.eval()
