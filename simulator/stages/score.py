"""`score`: the referee. Whoever holds the truth scores each attack on it: a victim entity scores the
reconstructions of its own pooled images (its partition never leaves it), the data owner scores guesses
of its supports and images. Scores become records as each (attack, victim) finishes, a PNG grid of truth
above reconstructions goes to `figures/`, and an attack that breaks a protection is said out loud.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from entities.attacks.scoring import score_images, score_support
from entities.data import to_float
from entities.data_owner import owner_images
from entities.grids import grid_png
from entities.keys import KEY_FILE, unpack_key_file
from simulator import cache
from simulator.protocol import ConfigValue, Payload, Record, StateDict, Task
from simulator.roles import Role
from simulator.schema import Scenario
from simulator.stages.attack import CODES, KINDS, MAIN, unit
from simulator.stages.base import Server, Stage, register
from simulator.stages.leak import pooled_truth
from simulator.stages.poison import mirrored
from simulator.stages.prepare import own_set
from simulator.views import PartyView


def result_unit(adversary: str, attack: str, victim: str) -> str:
    return f"attack-{adversary}-{attack}-{victim}"


def label(adversary: str, attack: str, kind: str, variant: str) -> str:
    """How a row of the attack table reads: who, which attack (and variant), on what."""
    name = attack if variant == MAIN else f"{attack} ({variant})"
    return f"{adversary}: {name} on {KINDS.get(kind, 'ambiguated codes')}"


@dataclass
class Truth:
    """What the referee holds: the true images (and labels, supports, people where known) and a gallery
    of other images to re-identify against (with their people, on faces)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    supports: torch.Tensor | None
    gallery: torch.Tensor
    people: torch.Tensor | None = None
    gallery_people: torch.Tensor | None = None


def _people(ids: np.ndarray | None, repeat: int = 1) -> torch.Tensor | None:
    return None if ids is None else torch.from_numpy(np.concatenate([ids] * repeat))


def _truth(view: PartyView) -> Truth:
    """The truth as the referee holds it."""
    s = view.scenario
    if view.party.role is Role.ENTITY:
        images, labels = pooled_truth(view)
        test = cache.dataset(view).task_test
        people = _people(own_set(view).identities, 2 if mirrored(s) else 1)
        return Truth(
            to_float(np.ascontiguousarray(images)),
            torch.as_tensor(labels),
            None,
            to_float(test.images),
            people,
            _people(test.identities),
        )
    owner = s.data_owner
    assert owner is not None
    test = owner_images(owner, s.dataset, seed=s.task_seed).task_test
    publication = view.publication()
    m = publication.manifest
    keys = unpack_key_file(
        view.read_private(KEY_FILE), user=view.name, maps=m["maps"], code_length=m["code_length"]
    )
    supports = torch.from_numpy(np.stack([keys[i] for i in range(len(keys))]))
    truth = to_float(test.images)
    return Truth(truth, None, supports, truth)


@register
class Score(Stage):
    name = "score"
    roles = frozenset({Role.ENTITY, Role.DATA_OWNER})

    def absent(self, scenario: Scenario) -> str:
        return "" if scenario.adversaries else "the scenario has no adversaries"

    def plan(self, server: Server) -> list[Task]:
        s = server.scenario
        nets = server.run.load_nets() if s.entities else {}
        shared: dict[str, StateDict] = {
            n: cache.to_numpy(nets[n]) for n in ("featurizer", "decider") if n in nets
        }
        tasks = []
        for adversary in s.adversaries:
            for spec in adversary.attack_specs():
                made = server.run.kept(unit(adversary.name, spec.name)) or {}
                by_victim: dict[str, dict[str, dict[str, np.ndarray]]] = {}
                for name, arrays in made.items():
                    by_victim.setdefault(name.split("/", 1)[0], {})[name] = arrays
                for victim, arrays in sorted(by_victim.items()):
                    if server.run.has_results(result_unit(adversary.name, spec.name, victim)):
                        continue
                    referee = s.data_owner.name if victim == CODES and s.data_owner else victim
                    config: dict[str, ConfigValue] = {
                        "adversary": adversary.name,
                        "attack": spec.name,
                        "victim": victim,
                    }
                    payload = Payload(config=config, arrays={**arrays, **(shared if victim != CODES else {})})
                    tasks.append(
                        Task(self.name, referee, payload, key=f"{adversary.name} {spec.name} on {victim}")
                    )
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        adversary, attack = str(task.payload.config["adversary"]), str(task.payload.config["attack"])
        victim = str(task.payload.config["victim"])
        if victim != CODES and victim != view.name:
            raise ValueError(f"{view.name} referees attacks on its own data, not on {victim}'s")
        held = _truth(view)
        truth, labels, supports = held.images, held.labels, held.supports
        nets = None
        if "featurizer" in task.payload.arrays:
            nets = cache.shared_nets(view, {n: task.payload.arrays[n] for n in ("featurizer", "decider")})
        records = []
        for name, arrays in sorted(task.payload.arrays.items()):
            if "/" not in name:
                continue  # the shared nets
            _, kind, variant = name.split("/", 2)
            known = torch.from_numpy(arrays["known"]) if "known" in arrays else None
            keep = torch.ones(len(truth), dtype=torch.bool)
            if known is not None:
                keep[known] = False  # positions the attacker knew are not scored
            scores: dict[str, float] = {}
            if "images" in arrays:
                images = torch.from_numpy(arrays["images"]).float() / 255
                scores |= score_images(
                    images[keep],
                    truth[keep],
                    labels=None if labels is None else labels[keep],
                    featurizer=None if nets is None else nets.featurizer,
                    decider=None if nets is None else nets.decider,
                    gallery=held.gallery,
                    people=None if held.people is None else held.people[keep],
                    gallery_people=held.gallery_people,
                )
                suffix = "" if variant == MAIN else f"-{variant}"
                figure = f"attack-{adversary}-{attack}-{victim}-{kind}{suffix}.png"
                grid = grid_png(truth[keep], images[keep])
                view.write_figure(re.sub(r"[^A-Za-z0-9_.-]", "_", figure), grid)
            if "support" in arrays and supports is not None:
                scores |= score_support(torch.from_numpy(arrays["support"]).bool()[keep], supports[keep])
            scores["n"] = float(int(keep.sum()))
            line = label(adversary, attack, kind, variant)
            records += [
                Record("attack", None, line, view.name if victim != CODES else CODES, m, float(v))
                for m, v in scores.items()
            ]
        return Payload(records=records)

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        adversary, attack = str(task.payload.config["adversary"]), str(task.payload.config["attack"])
        victim = str(task.payload.config["victim"])
        verdicts = verdict(server.scenario, reply.records)
        for sentence in verdicts:
            server.log(f"[bold red]{sentence}[/]")
        records = reply.records + [
            Record("verdict", None, line, entity, "broken", 1.0) for line, entity, _ in verdicts.values()
        ]
        server.run.write_results(result_unit(adversary, attack, victim), records)

    def finish(self, server: Server) -> None:
        """Each (attack, victim) is written as it is scored (collect)."""


def verdict(scenario: Scenario, records: list[Record]) -> dict[str, tuple[str, str, str]]:
    """{sentence: (label, victim, metric)} for every protected result an attack recovered: SSIM above the
    scenario's threshold (pool attacks), or rank-1 re-identification far above chance."""
    out = {}
    by_label: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        by_label.setdefault((r.label, r.entity), {})[r.metric] = r.value
    for (line, entity), m in by_label.items():
        if "unprotected" in line:
            continue
        chance = m.get("reid_chance", 1.0)
        whose = "the data owner's" if entity == CODES else f"{entity}'s"
        # On the codes, SSIM alone misleads: the public decoder's prior draws a plausible image from any
        # support (attacks.yaml: the k smallest magnitudes recover 5% of the support, below chance, yet
        # score SSIM 0.43); re-identification says whether the image was recovered.
        if entity != CODES and m.get("ssim", -1.0) > scenario.verdict.ssim:
            out[
                f"BROKEN: {line} recovers {whose} images at SSIM {m['ssim']:.2f} "
                f"(threshold {scenario.verdict.ssim:g})"
            ] = (line, entity, "ssim")
        elif m.get("reid_rank1", 0.0) > scenario.verdict.reidentification * chance:
            out[
                f"BROKEN: {line} re-identifies {whose} images at rank-1 {m['reid_rank1']:.2f} "
                f"({m['reid_rank1'] / chance:.0f}x chance)"
            ] = (line, entity, "reid_rank1")
    return out
