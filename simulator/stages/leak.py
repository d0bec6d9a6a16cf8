"""`leak`: the known-plaintext case. Each victim of an adversary with `known_pairs: N` hands N of its
pooled positions with their images to that adversary, sealed to it: the scenario's declared leak, and
the only way a victim's images reach anyone. Skipped when no adversary knows pairs."""

from __future__ import annotations

import hashlib
import io

import numpy as np

from entities import entity as E
from simulator import sealing
from simulator.protocol import ConfigValue, Payload, Sealed, Task
from simulator.roles import Role
from simulator.schema import Scenario
from simulator.stages.base import Server, Stage, register
from simulator.stages.poison import mirrored, victims_of
from simulator.stages.prepare import own_partition
from simulator.views import PartyView

PAIRS = "pairs"


def pooled_truth(view: PartyView) -> tuple[np.ndarray, np.ndarray]:
    """An entity's images and labels in the order of its pooled features (mirror images after them)."""
    images, labels = own_partition(view)
    if mirrored(view.scenario):
        return np.concatenate([images, images[..., ::-1]]), np.concatenate([labels, labels])
    return images, labels


def leak_context(victim: str, adversary: str) -> bytes:
    return f"{PAIRS}|{victim}|{adversary}".encode()


@register
class Leak(Stage):
    name = "leak"
    roles = frozenset({Role.ENTITY})

    def absent(self, scenario: Scenario) -> str:
        if any(a.known_pairs for a in scenario.adversaries):
            return ""
        return "no adversary knows pairs"

    def plan(self, server: Server) -> list[Task]:
        tasks = []
        for adversary in server.scenario.adversaries:
            if not adversary.known_pairs:
                continue
            for victim in victims_of(server.scenario, adversary):
                config: dict[str, ConfigValue] = {
                    "adversary": adversary.name,
                    "n": adversary.known_pairs,
                    "public_key": server.public_keys[adversary.name],
                }
                tasks.append(
                    Task(self.name, victim, Payload(config=config), key=f"{adversary.name} knows {victim}")
                )
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        adversary, n = str(task.payload.config["adversary"]), int(task.payload.number("n"))
        images, _ = pooled_truth(view)
        rng = np.random.default_rng(E.derive_seed(view.scenario.seed, "leak", adversary, view.name))
        index = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
        buffer = io.BytesIO()
        np.savez(buffer, indices=index.astype(np.int64), images=images[index])
        public_key = task.payload.config["public_key"]
        assert isinstance(public_key, bytes)
        blob = sealing.seal(public_key, buffer.getvalue(), leak_context(view.name, adversary))
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()
        return Payload(sealed=[Sealed(adversary, f"{PAIRS}-{view.name}", blob, digest)])

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        for item in reply.sealed:
            server.run.keep_sealed(item.recipient, item.what, item.ciphertext)

    def finish(self, server: Server) -> None:
        """Nothing to record: the audit log holds what was sealed to whom."""
