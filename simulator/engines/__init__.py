"""Engines carry tasks to parties and replies back; the server's loop over stages is the same for all.

- `flower` (default): a Flower simulation on Ray, one SuperNode per party (simulator.engines.flower).
- `inline`: every party in this process, one task after another; no Flower, no Ray. For debugging,
  profiling and tests.

An engine opens a `Session` for a run and calls `drive(run, session, log)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from entities.registry import Registry
from simulator import roles
from simulator.protocol import Payload, Record, Task
from simulator.rundir import RunDir
from simulator.stages import Server, stage_order

Log = Callable[[str], None]
OnReply = Callable[[Task, Payload], None]


class RunFailed(RuntimeError):
    """A stage could not finish: a party failed, timed out, or never registered."""


class Session(Protocol):
    """How the server reaches the parties of one run."""

    def discover(self, parties: list[roles.Party]) -> dict[str, bytes]:
        """Wait for every party's node; return each party's public key."""
        ...

    def dispatch(self, stage: str, tasks: list[Task], on_reply: OnReply) -> None:
        """Run the tasks, at most one in flight per party, in order per party; call on_reply as each
        reply arrives. An error reply or a timeout raises RunFailed naming the party and the task."""
        ...


Engine = Callable[[RunDir, Log, str | None], None]  # (run, log, ray address)
ENGINES: Registry[Engine] = Registry("engine")


def drive(run: RunDir, session: Session, log: Log) -> None:
    """The server's side of a run: every stage not done yet, in run order."""
    scenario = run.scenario()
    parties = roles.parties(scenario)
    server = Server(run, scenario, parties, log)
    server.public_keys = session.discover(parties)
    log(f"{len(parties)} parties registered: {', '.join(p.name for p in parties)}")
    for stage in stage_order():
        if run.stage_done(stage.name):
            log(f"[bold]{stage.name}[/]: done in an earlier attempt, skipped")
            continue
        absent = stage.absent(scenario)
        if absent:
            run.mark_stage(stage.name, status="done", wall_s=0.0, skipped=absent)
            log(f"[bold]{stage.name}[/]: skipped ({absent})")
            continue
        t0 = time.monotonic()
        log(f"[bold]{stage.name}[/]: started")
        tasks = stage.plan(server)
        order = {id(task): i for i, task in enumerate(tasks)}
        collected: dict[int, list[Record]] = {}

        def on_reply(task: Task, reply: Payload) -> None:
            audit_reply(server, task, reply)
            server.records = []
            stage.collect(server, task, reply)  # noqa: B023 - called within this iteration only
            collected[order[id(task)]] = server.records  # noqa: B023
            log(f"  {task.stage} {task.key}: {task.party} done at {time.monotonic() - t0:.1f} s")  # noqa: B023

        session.dispatch(stage.name, tasks, on_reply)
        server.records = [r for i in sorted(collected) for r in collected[i]]  # plan order, not reply order
        stage.finish(server)
        wall = time.monotonic() - t0
        run.mark_stage(stage.name, status="done", wall_s=wall)
        log(f"[bold]{stage.name}[/]: finished in {wall:.1f} s")


def audit_reply(server: Server, task: Task, reply: Payload) -> None:
    """What a reply says the party read, published and sealed: one audit line each."""
    for read in reply.reads:
        server.audit("read", party=task.party, what=read.what, sha256=read.sha256, stage=task.stage)
    for pub in reply.publications:
        if pub.place == "pool" and not pub.name.startswith(f"{task.party}/"):
            raise RunFailed(f"stage {task.stage!r}: {task.party} published {pub.name!r} under another name")
        server.audit(
            f"{pub.place}.publish",
            sender=task.party,
            receiver=pub.place,
            name=pub.name,
            shape=list(pub.shape),
            dtype=pub.dtype,
            sha256=pub.sha256,
        )
    for item in reply.sealed:
        # What was sealed to whom, and the plaintext's digest: never its content.
        server.audit(
            "sealed", sender=task.party, receiver=item.recipient, what=item.what, sha256=item.plaintext_sha256
        )


def get_engine(name: str) -> Engine:
    from simulator.engines import flower, inline  # noqa: F401 - they register themselves

    return ENGINES.get(name)
