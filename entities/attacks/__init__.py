"""Adversaries: attacks on the pool (Deep Poisoning) and on the ambiguated codes, by registered name.

    from entities.attacks import make_attack, Knowledge
    result = make_attack("surrogate-dpm", surrogates=2).run(knowledge, victim="E2")

`entities.attacks.scoring` is the referee that scores a result against the truth.
"""

from entities.attacks import codes, pool  # noqa: F401  (registers the attacks)
from entities.attacks.base import (
    ATTACKS,
    KNOWLEDGE,
    Attack,
    AttackResult,
    Knowledge,
    KnownPairs,
    MissingKnowledge,
    OwnKeys,
    Pooled,
    UnknownAttack,
    attack_names,
    describe,
    get_attack,
    make_attack,
    register_attack,
    require,
)

__all__ = [
    "ATTACKS",
    "KNOWLEDGE",
    "Attack",
    "AttackResult",
    "Knowledge",
    "KnownPairs",
    "MissingKnowledge",
    "OwnKeys",
    "Pooled",
    "UnknownAttack",
    "attack_names",
    "describe",
    "get_attack",
    "make_attack",
    "register_attack",
    "require",
]
