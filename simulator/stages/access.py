"""`access`: each authorised user receives its sealed key file, opens and keeps it, reconstructs the
images it was granted, and is refused the others."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from entities import data_owner as D
from simulator import sealing
from simulator.protocol import Payload, Record, Sealed, Task
from simulator.roles import Role
from simulator.stages.base import Server, Stage, register
from simulator.stages.codes import KEYS, seal_context
from simulator.views import PartyView


@register
class Access(Stage):
    name = "access"
    roles = frozenset({Role.AUTHORISED_USER})

    def plan(self, server: Server) -> list[Task]:
        tasks = []
        for user in server.of_role(Role.AUTHORISED_USER):
            ciphertext = server.run.sealed(user, KEYS)
            tasks.append(Task(self.name, user, Payload(sealed=[Sealed(user, KEYS, ciphertext, "")])))
        return tasks

    def work(self, view: PartyView, task: Task) -> Payload:
        owner = view.scenario.data_owner
        assert owner is not None
        (sealed,) = task.payload.sealed
        try:
            key_file = sealing.open_sealed(
                view.identity(), sealed.ciphertext, seal_context(owner.name, view.name)
            )
        except InvalidTag:
            raise ValueError(
                f"the key file relayed to {view.name} does not open: altered, or sealed to another"
            ) from None
        view.write_keys(key_file)
        user = D.AuthorisedUser.load(
            view.name, key_file=view.read_keys(), publication=view.publication(), source=str(view.keys_file())
        )
        reconstructions, measured = D.reconstruct_granted(user)
        view.write_private(D.RECONSTRUCTIONS_FILE, reconstructions)
        return Payload(metrics=measured)

    def collect(self, server: Server, task: Task, reply: Payload) -> None:
        for metric, value in reply.metrics.items():
            server.records.append(Record("access", None, task.party, task.party, metric, float(value)))
