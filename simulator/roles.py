"""Who takes part in a run, and in what role."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from simulator.schema import Scenario


class Role(StrEnum):
    ENTITY = "entity"  # holds a partition of D_p, trains a private DPM, shares poisoned features
    DATA_OWNER = "data owner"  # publishes ambiguated codes, issues keys
    AUTHORISED_USER = "authorised user"  # holds keys for some of the owner's images
    ADVERSARY = "adversary"  # attacks what is shared, knowing what its threat model allows


PLURAL = {
    Role.ENTITY: "entities",
    Role.DATA_OWNER: "data owner",
    Role.AUTHORISED_USER: "authorised users",
    Role.ADVERSARY: "adversaries",
}


@dataclass(frozen=True)
class Party:
    name: str
    role: Role


def parties(scenario: Scenario) -> list[Party]:
    """Every party of the run, in a fixed order (an engine may number its nodes by it): the entities,
    then the data owner, then its authorised users, then the adversaries."""
    out = [Party(e.name, Role.ENTITY) for e in scenario.entities]
    if scenario.data_owner is not None:
        out.append(Party(scenario.data_owner.name, Role.DATA_OWNER))
        out += [Party(u.name, Role.AUTHORISED_USER) for u in scenario.data_owner.users]
    out += [Party(a.name, Role.ADVERSARY) for a in scenario.adversaries]
    return out


def party(scenario: Scenario, name: str) -> Party:
    for p in parties(scenario):
        if p.name == name:
            return p
    raise ValueError(f"{name!r} is not a party of scenario {scenario.name!r}")
