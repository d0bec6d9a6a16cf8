"""`codes`: the data owner trains the sparsifying autoencoder, publishes ambiguated codes and the network,
and makes each authorised user's key file, sealed to that user: the server relays ciphertext only.
Its measurements of the codes become records. It needs nothing from the entities, so its task goes out
with the first stage's and runs beside theirs."""

from __future__ import annotations

from entities import data_owner as D
from entities import entity as E
from entities import progress
from entities.grids import grid_png
from entities.keys import KEY_FILE
from entities.owner_measures import measure_owner
from entities.publication import sha256
from entities.training import recording
from simulator import sealing
from simulator.protocol import ConfigValue, Payload, Publication, Record, Sealed, Task
from simulator.roles import Role
from simulator.stages.base import Server, Stage, curve_records, register, write_curves
from simulator.views import PartyView

KEYS = "keys"


def seal_context(owner: str, user: str) -> bytes:
    """What a sealed key file is bound to: who made it, for whom, and what it is."""
    return f"{KEYS}|{owner}|{user}".encode()


@register
class Codes(Stage):
    name = "codes"
    roles = frozenset({Role.DATA_OWNER})

    early_after = ""  # the data owner needs nothing from the entities: it trains beside them

    def plan(self, server: Server) -> list[Task]:
        return []  # every task went out early

    def early(self, server: Server) -> list[Task]:
        users = server.of_role(Role.AUTHORISED_USER)
        config: dict[str, ConfigValue] = {
            "users": users,
            "public_keys": [server.public_keys[u] for u in users],
        }
        return [Task(self.name, name, Payload(config=config)) for name in server.of_role(Role.DATA_OWNER)]

    def work(self, view: PartyView, task: Task) -> Payload:
        owner = view.scenario.data_owner
        assert owner is not None and owner.name == view.name
        seed = E.derive_seed(view.scenario.seed, "codes", view.name)
        with recording() as curves:
            outcome = D.run_owner(
                owner,
                view.scenario.dataset,
                task_seed=view.scenario.task_seed,
                public_dir=view.public_dir(),
                seed=seed,
            )
        view.write_private(KEY_FILE, outcome.own_key)
        users, public_keys = task.payload.config["users"], task.payload.config["public_keys"]
        assert isinstance(users, list) and isinstance(public_keys, list)
        recipients = {str(u): k for u, k in zip(users, public_keys, strict=True) if isinstance(k, bytes)}
        sealed = [
            Sealed(
                user, KEYS, sealing.seal(recipients[user], key, seal_context(view.name, user)), sha256(key)
            )
            for user, key in outcome.keys.items()
        ]
        with progress.unit("measuring the codes"):
            measured = measure_owner(owner, outcome.codes, seed=seed)
        records = [
            Record(r["table"], None, r["label"], view.name, r["metric"], float(r["value"]))
            for r in measured.records
        ]
        # the owner's own test images, which it may show the researcher
        grid = grid_png(*measured.shown.values(), labels=list(measured.shown))
        view.write_figure(f"codes-{view.name}.png", grid)
        records += curve_records("autoencoder", view.name, curves)
        files = outcome.codes.manifest["files"]
        publications = [
            Publication("public", name, tuple(info.get("shape", ())), info.get("dtype", ""), info["sha256"])
            for name, info in files.items()
        ]
        return Payload(records=records, publications=publications, sealed=sealed)

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        server.records += write_curves(server, f"{self.name}-{task.party}", reply.records)
        for item in reply.sealed:  # kept for the `access` stage, as the ciphertext it is
            server.run.keep_sealed(item.recipient, item.what, item.ciphertext)
