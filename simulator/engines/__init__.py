"""Engines carry tasks to parties and replies back; the server's loop over stages is the same for all.

- `flower` (default): a Flower simulation on Ray, one SuperNode per party (simulator.engines.flower).
- `inline`: every party in this process, one task after another; no Flower, no Ray. For debugging,
  profiling and tests.

An engine opens a `Session` for a run and calls `drive(run, session, log)`.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from entities.registry import Registry
from simulator import roles
from simulator.federation import Federation, FederationResult
from simulator.node import EXPECTED, NODE_FACTS, NODE_TIMES, RESUMED, WROTE
from simulator.pool import Pool, PoolError
from simulator.protocol import Payload, Record, Task
from simulator.rundir import RunDir
from simulator.stages import Server, stage_order

Log = Callable[[str], None]
OnReply = Callable[[Task, Payload], None]


class RunFailed(RuntimeError):
    """A stage could not finish: a party failed, timed out, or never registered."""


class TaskFailed(RunFailed):
    """A party's node answered a task with an error (`kind` "error") or not in time ("timeout")."""

    def __init__(self, message: str, *, stage: str, party: str, key: str, kind: str = "error"):
        super().__init__(message)
        self.stage, self.party, self.key, self.kind = stage, party, key, kind


class Stopped(RunFailed):
    """The run was asked to stop (SIGINT, SIGTERM): what finished is kept, the rest waits for --resume."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


_stop = threading.Event()
_stop_signal: list[int] = []


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the server's loop to stop at its next check (between replies; the inline engine between tasks)."""
    _stop_signal.append(signum)
    _stop.set()


def clear_stop() -> None:
    _stop.clear()
    _stop_signal.clear()


def check_stop() -> None:
    """Raise Stopped if a stop was requested."""
    if _stop.is_set():
        raise Stopped(_stop_signal[0] if _stop_signal else signal.SIGINT)


# What a reply says its party wrote (config "wrote") and what a task says the party should find
# (config "expected"): "WHERE=SHA256" strings, WHERE one of these.
_PARTY_FILE = re.compile(r"^(private|keys)/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Session(Protocol):
    """How the server reaches the parties of one run."""

    def discover(self, parties: list[roles.Party]) -> dict[str, bytes]:
        """Wait for every party's node; return each party's public key."""
        ...

    def dispatch(self, stage: str, tasks: list[Task], on_reply: OnReply) -> None:
        """Run the tasks, at most one in flight per party, in order per party; call on_reply as each
        reply arrives. An error reply or a timeout raises RunFailed naming the party and the task."""
        ...

    def federate(self, federation: Federation) -> FederationResult:
        """Run rounds of FedAvg over the federation's parties (simulator.federation); every message
        audited. A party's error or a missing reply raises RunFailed."""
        ...


Engine = Callable[[RunDir, Log, str | None], None]  # (run, log, ray address)
ENGINES: Registry[Engine] = Registry("engine")


def drive(run: RunDir, session: Session, log: Log) -> None:
    """The server's side of a run: every stage not done yet, in run order."""
    scenario = run.scenario()
    parties = roles.parties(scenario)
    server = Server(run, scenario, parties, log)
    check_stop()
    server.public_keys = session.discover(parties)
    log(f"{len(parties)} parties registered: {', '.join(p.name for p in parties)}")
    for stage in stage_order():
        check_stop()
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
        for task in tasks:
            expect_digests(run, task)
        order = {id(task): i for i, task in enumerate(tasks)}
        collected: dict[int, list[Record]] = {}
        digests: dict[str, str] = {}
        nodes: dict[str, dict[str, int]] = {}
        timings: list[dict[str, object]] = []

        def on_reply(task: Task, reply: Payload) -> None:
            digests.update(audit_reply(server, task, reply))  # noqa: B023 - within this iteration
            if facts := node_facts(reply):
                nodes[task.party] = facts  # noqa: B023 - within this iteration
            if timing := task_timing(task, reply):
                timings.append(timing)  # noqa: B023 - within this iteration
            server.records = []
            stage.collect(server, task, reply)  # noqa: B023 - called within this iteration only
            collected[order[id(task)]] = server.records  # noqa: B023
            log(f"  {task.stage} {task.key}: {task.party} done at {time.monotonic() - t0:.1f} s")  # noqa: B023

        try:
            session.dispatch(stage.name, tasks, on_reply)
        except TaskFailed as err:
            audit_now(run, err.kind, stage=err.stage, party=err.party, key=err.key, reason=str(err))
            raise
        server.records = [r for i in sorted(collected) for r in collected[i]]  # plan order, not reply order
        if (federation := stage.federation(server)) is not None:
            check_stop()
            log(f"  {stage.name}: {federation.rounds} rounds of FedAvg over {', '.join(federation.parties)}")
            result = session.federate(federation)
            for done in result.rounds:
                for party, reply in [*done.train, (federation.evaluator, done.evaluate)]:
                    task = Task(stage.name, party, key=f"round {done.number}")
                    digests.update(audit_reply(server, task, reply))
                    # the evaluator may train in the same round: its evaluation is a task of its own
                    evaluated = reply is done.evaluate
                    timed = Task(stage.name, party, key=f"{task.key} evaluate") if evaluated else task
                    if timing := task_timing(timed, reply):
                        timings.append(timing)
            stage.federated(server, result)
        stage.finish(server)
        wall = time.monotonic() - t0
        run.sync_audit()  # the stage's audit lines are on disk before the stage is marked done
        run.mark_stage(stage.name, status="done", wall_s=wall, digests=digests, nodes=nodes, tasks=timings)
        log(f"[bold]{stage.name}[/]: finished in {wall:.1f} s")


def node_facts(reply: Payload) -> dict[str, int]:
    """What a reply says of the node that ran it (simulator.node.NODE_FACTS): torch's threads, its pid."""
    out = {}
    for key in NODE_FACTS:
        value = reply.config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key.removeprefix("node_")] = value
    return out


def task_timing(task: Task, reply: Payload) -> dict[str, object] | None:
    """When the party's node began and ended a task, by its clock (simulator.node.NODE_TIMES), for the
    stage's `tasks` in the manifest: {party, key, started, finished, pid}. None if the reply lacks them."""
    started, finished = (reply.config.get(key) for key in NODE_TIMES)
    if not all(isinstance(t, float) for t in (started, finished)):
        return None
    pid = reply.config.get("node_pid")
    return {"party": task.party, "key": task.key, "started": started, "finished": finished, "pid": pid}


def audit_now(run: RunDir, event_type: str, **fields: object) -> None:
    """One audit line, fsynced at once: errors, timeouts, stops and resumes."""
    run.audit({"t": round(time.time(), 3), "type": event_type, **fields}, sync=True)


def expect_digests(run: RunDir, task: Task) -> None:
    """Tell the party what its private files and the pool's shards must hash to (recorded when the
    stages that wrote them finished), so that its node refuses a file altered or replaced since."""
    mine = f"parties/{task.party}/"
    expected = [
        f"{where.removeprefix(mine) if where.startswith(mine) else where}={sha}"
        for where, sha in sorted(run.digests().items())
        if where.startswith((mine, "pool/"))
    ]
    if expected:
        task.payload.config[EXPECTED] = expected


def audit_reply(server: Server, task: Task, reply: Payload) -> dict[str, str]:
    """What a reply says the party read, published, sealed and wrote: one audit line each.

    Returns the digests to record when the stage is done: the party's private files as it reports them
    (it never sends them), and each pool shard it published, checked against the pool's manifest.
    """
    digests: dict[str, str] = {}
    for read in reply.reads:
        server.audit("read", party=task.party, what=read.what, sha256=read.sha256, stage=task.stage)
    wrote = reply.config.get(WROTE, [])
    for entry in wrote if isinstance(wrote, list) else [wrote]:
        where, _, sha = str(entry).partition("=")
        if not _PARTY_FILE.fullmatch(where) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise RunFailed(f"stage {task.stage!r}: {task.party} reported a malformed write {entry!r}")
        digests[f"parties/{task.party}/{where}"] = sha
    for pub in reply.publications:
        if pub.place == "pool":
            digests[f"pool/{pub.name}"] = check_shard(server, task, pub.name, pub.sha256)
        server.audit(
            f"{pub.place}.publish",
            sender=task.party,
            receiver=pub.place,
            name=pub.name,
            shape=list(pub.shape),
            dtype=pub.dtype,
            sha256=pub.sha256,
        )
    resumed = reply.config.get(RESUMED, [])
    for entry in resumed if isinstance(resumed, list) else [resumed]:
        # a fit of this task went on from the checkpoint an earlier attempt left: which, and from when
        fit, _, rest = str(entry).partition(":")
        net, _, epoch = rest.rpartition(":")
        number = {k: int(v) if v.isdigit() else v for k, v in (("fit", fit), ("epoch", epoch))}
        server.audit("fit.resume", party=task.party, stage=task.stage, key=task.key, net=net, **number)
    for item in reply.sealed:
        # What was sealed to whom, and the plaintext's digest: never its content.
        server.audit(
            "sealed", sender=task.party, receiver=item.recipient, what=item.what, sha256=item.plaintext_sha256
        )
    return digests


def check_shard(server: Server, task: Task, name: str, sha256: str) -> str:
    """A shard a party says it published: under its own name, in the pool's manifest with the digest it
    reported. Returns the digest of the shard's file and labels together, for the run's manifest."""
    owner, _, shard = name.partition("/")
    if owner != task.party:
        raise RunFailed(
            f"stage {task.stage!r}: {task.party} published {name!r} under another party's name ({owner!r})"
        )
    try:
        entry = next((e for e in Pool(server.run.pool_dir).shards(owner) if e.name == shard), None)
    except (PoolError, ValueError) as err:
        raise RunFailed(f"stage {task.stage!r}: the pool's manifest is unreadable: {err}") from err
    if entry is None or entry.sha256 != sha256:
        found = "is not in the pool's manifest" if entry is None else f"has sha256 {entry.sha256} there"
        raise RunFailed(
            f"stage {task.stage!r}: {task.party} reported publishing {name!r} (sha256 {sha256}),"
            f" but it {found}"
        )
    return entry.content_sha256


def get_engine(name: str) -> Engine:
    from simulator.engines import flower, inline  # noqa: F401 - they register themselves

    return ENGINES.get(name)
