"""`attack`: each adversary runs its attacks with only what its threat model allows (entities.threats),
on every victim's pooled features, protected (poisoned) and unprotected (original, the counterfactual
of the same entity without a DPM), and on the published codes. The attacker never sees the truth: its
reconstructions and guessed supports go back to the server, which keeps them for the referee (`score`).
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from entities import attacks as A
from entities import progress, threats
from entities.attacks.decoders import as_float
from entities.keys import unpack_key_file
from entities.rows import Rows
from simulator import cache, sealing
from simulator import protection as P
from simulator.protocol import Payload, Read, Record, Sealed, Task
from simulator.roles import Role
from simulator.schema import Adversary, Scenario
from simulator.stages.base import Server, Stage, register
from simulator.stages.leak import PAIRS, leak_context
from simulator.stages.poison import DPM_FILE, victims_of
from simulator.stages.prepare import PARTITION_FILE, partition_set
from simulator.views import PartyView

# Which pool shard an attack on a victim reads: its DPM's output, or its original features.
KINDS = {"poisoned": "protected", "original": "unprotected"}
CODES = "codes"  # the victim name of an attack on the published codes
MAIN = "-"  # the variant name of an attack's main result
# What an adversary may know once `poison` is done (the rest comes later: codes, keys, leaked pairs).
AFTER_POISON = frozenset({"pool", "shared_nets", "public_images", "recipe", "own_images", "own_dpm"})


def adversary_spec(scenario: Scenario, name: str) -> Adversary:
    return next(a for a in scenario.adversaries if a.name == name)


def unit(adversary: str, attack: str) -> str:
    return f"{adversary}-{attack}"


def _pooled(view: PartyView, victim: str, kind: str) -> A.Pooled:
    features, labels = view.pool.read(victim, kind)
    return A.Pooled(Rows([features]), torch.as_tensor(np.asarray(labels)))  # the map, read per batch


def knowledge(view: PartyView, spec: Adversary, task: Task, needs: frozenset[str]) -> A.Knowledge:
    """What this adversary knows and the attack needs, built from its view and nothing else; each piece
    is audited (nothing else is loaded: the public codes are not read for an attack on the pool)."""
    s = view.scenario
    words = threats.knowledge_of(spec.knowledge, spec.known_pairs) & needs
    out = A.Knowledge()
    if "shared_nets" in words and task.payload.arrays:
        nets = cache.shared_nets(view, task.payload.arrays)
        out.featurizer, out.decider, out.reconstructor = nets.featurizer, nets.decider, nets.reconstructor
    if "public_images" in words:
        public = cache.dataset(view).public_train
        out.public_images, out.public_labels = public.images, public.labels
    if "recipe" in words and s.dpm is not None:
        out.dpm_recipe, out.reconstructor_recipe = s.dpm, s.reconstructor
        out.dpm_shape = s.entities[0].dpm  # the published DPM shape
        out.protections = {e.name: P.protection_of(s, e.name) for e in s.entities}  # declared publicly
    if "codes" in words and s.data_owner is not None:
        publication = view.publication()
        out.codes, out.public_network = publication.codes, publication.model
        manifest = publication.manifest
        out.k, out.k_prime, out.sampler = manifest["k"], manifest["k_prime"], manifest["sampler"]
    if "own_images" in words:
        own = partition_set(view, view.insider_file(PARTITION_FILE), str(spec.of))
        out.own_images, out.own_labels = own.images, own.labels
        saved = view.insider_file(DPM_FILE)
        if task.payload.arrays:  # its own protector, rebuilt through the protection it declared
            nets = cache.shared_nets(view, task.payload.arrays)
            out.own_dpm = P.rebuild(s, str(spec.of), nets, saved)
    if "own_keys" in words and s.data_owner is not None:
        user, data = view.curious_keys()
        publication = view.publication()
        m = publication.manifest
        keys = unpack_key_file(data, user=user, maps=m["maps"], code_length=m["code_length"])
        index = sorted(keys)
        out.own_keys = A.OwnKeys(torch.tensor(index), torch.from_numpy(np.stack([keys[i] for i in index])))
    view.reads += [Read(f"knowledge: {word}", "") for word in sorted(words)]
    return out


def _entries(result: A.AttackResult) -> dict[str, A.AttackResult]:
    """The main result and its variants, leaving out a variant that is the main result itself."""
    same = [
        n for n, r in result.variants.items() if r.images is result.images and r.support is result.support
    ]
    return {MAIN: result, **{n: r for n, r in result.variants.items() if n not in same}}


@register
class Attack(Stage):
    name = "attack"
    roles = frozenset({Role.ADVERSARY})

    early_after = "poison"  # attacks on the pool that need nothing later run beside refine

    def early(self, server: Server) -> list[Task]:
        """The attacks whose knowledge is all there once the pool is: none that needs the codes, a
        user's keys or leaked pairs."""
        return self._tasks(server, early=True)

    def plan(self, server: Server) -> list[Task]:
        return self._tasks(server, early=False)

    def _tasks(self, server: Server, *, early: bool) -> list[Task]:
        s = server.scenario
        nets = server.run.load_nets() if s.entities else {}
        tasks = []
        for adversary in s.adversaries:
            for spec in adversary.attack_specs():
                entry = threats.ATTACKS[spec.name]
                used = threats.knowledge_of(adversary.knowledge, adversary.known_pairs) & entry.needs
                if (entry.target == "pool" and used <= AFTER_POISON) != early:
                    continue
                if server.run.kept(unit(adversary.name, spec.name)):
                    server.log(f"  attack {adversary.name} {spec.name}: done in an earlier attempt, skipped")
                    continue
                arrays = {}
                if entry.target == "pool":
                    arrays = {n: cache.to_numpy(nets[n]) for n in ("featurizer", "decider", "reconstructor")}
                victims = victims_of(s, adversary) if entry.target == "pool" else [CODES]
                sealed = []
                if "known_pairs" in entry.needs:
                    for victim in victims:
                        what = f"{PAIRS}-{victim}"
                        sealed.append(
                            Sealed(adversary.name, what, server.run.sealed(adversary.name, what), "")
                        )
                config = {"attack": spec.name, "options": json.dumps(spec.options), "victims": victims}
                payload = Payload(config=config, arrays=arrays, sealed=sealed)  # type: ignore[arg-type]
                tasks.append(Task(self.name, adversary.name, payload, key=f"{spec.name}"))
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        spec = adversary_spec(view.scenario, view.name)
        name = str(task.payload.config["attack"])
        options = json.loads(str(task.payload.config["options"]))
        victims = [str(v) for v in task.payload.config["victims"]]  # type: ignore[union-attr]
        base = knowledge(view, spec, task, threats.ATTACKS[name].needs)
        attack = A.make_attack(name, **options)
        arrays: dict[str, dict[str, np.ndarray]] = {}
        records: list[Record] = []
        pairs = {}
        for item in task.payload.sealed:  # the known pairs leaked to this adversary
            victim = item.what.removeprefix(f"{PAIRS}-")
            plain = sealing.open_sealed(view.identity(), item.ciphertext, leak_context(victim, view.name))
            with np.load(io.BytesIO(plain)) as data:
                pairs[victim] = (torch.from_numpy(data["indices"]), torch.from_numpy(data["images"]))
        for victim in victims:
            kinds = list(KINDS) if victim != CODES else [CODES]
            for kind in kinds:
                k = base
                if victim != CODES:
                    pooled = _pooled(view, victim, kind)
                    k = A.Knowledge(**{**vars(base), "pool": {victim: pooled}})
                    if victim in pairs:
                        index, images = pairs[victim]
                        known = A.KnownPairs(as_float(images), pooled.features[index].float(), index)
                        k.known_pairs = {victim: known}
                with progress.unit(f"{name} on {victim} ({KINDS.get(kind, kind)})"):
                    result = attack.run(k, victim)
                for variant, r in _entries(result).items():
                    entry: dict[str, np.ndarray] = {}
                    if r.images is not None:
                        entry["images"] = np.rint(r.images.detach().cpu().numpy() * 255).astype(np.uint8)
                    if r.support is not None:
                        entry["support"] = r.support.cpu().numpy().astype(np.uint8)
                    if r.known is not None:
                        entry["known"] = r.known.cpu().numpy().astype(np.int64)
                    arrays[f"{victim}/{kind}/{variant}"] = entry
                for metric, value in result.records.items():
                    label = f"{view.name} {name} ({KINDS.get(kind, kind)})"
                    records.append(Record("attack_fit", None, label, victim, metric, float(value)))
        return Payload(arrays=arrays, records=records)

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        """Keep what the attacker made for the referee (it holds no truth: safe to keep), and the attack's
        own records (its training losses), as each attack finishes."""
        name = unit(task.party, str(task.payload.config["attack"]))
        server.run.write_results(f"attack-fit-{name}", reply.records)
        server.run.keep(name, reply.arrays)

    def finish(self, server: Server) -> None:
        """Each attack's output is kept as it finishes (collect)."""
