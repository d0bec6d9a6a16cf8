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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from entities.registry import Registry
from simulator import roles
from simulator.federation import Federation, FederationResult
from simulator.node import EXPECTED, NODE_FACTS, NODE_TIMES, RESUMED, WROTE
from simulator.pool import Pool, PoolError
from simulator.protocol import Payload, Record, Task
from simulator.rundir import RunDir
from simulator.stages import Server, Stage, stage_order

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

    def submit(self, tasks: list[Task], on_reply: OnReply, *, early: bool = False) -> None:
        """Hand tasks over to run, at most one in flight per party; `on_reply` is called as each reply
        arrives, while the server waits (`wait`). `early` tasks (a later stage's, before its turn) go
        out only where they keep no task of the current stage waiting."""
        ...

    def wait(self, stage: str | None = None) -> None:
        """Until every task of `stage` handed over so far has replied (None: every task), handling the
        replies of any stage as they come. An error reply or a timeout raises RunFailed naming the
        party and the task."""
        ...

    def federate(self, federation: Federation) -> FederationResult:
        """Run rounds of FedAvg over the federation's parties (simulator.federation); every message
        audited. A party's error or a missing reply raises RunFailed."""
        ...


Engine = Callable[[RunDir, Log, str | None], None]  # (run, log, ray address)
ENGINES: Registry[Engine] = Registry("engine")


class _StageRun:
    """One stage's side of the server's loop: its tasks as handed over (early and at its turn), and what
    their replies left for the manifest."""

    def __init__(self, stage: Stage, server: Server, session: Session):
        self.stage, self.server, self.session = stage, server, session
        self.t0 = time.monotonic()
        self.order: dict[int, int] = {}  # id(task) -> position among the stage's tasks
        self.collected: dict[int, list[Record]] = {}
        self.digests: dict[str, str] = {}
        self.nodes: dict[str, dict[str, int]] = {}
        self.timings: list[dict[str, object]] = []

    def submit(self, tasks: list[Task], *, early: bool = False) -> None:
        for task in tasks:
            expect_digests(self.server.run, task)
            self.order[id(task)] = len(self.order)
        with self.audited():  # the inline engine runs them here and now
            self.session.submit(tasks, self.on_reply, early=early)

    def on_reply(self, task: Task, reply: Payload) -> None:
        server = self.server
        self.digests.update(audit_reply(server, task, reply))
        if facts := node_facts(reply):
            self.nodes[task.party] = facts
        if timing := task_timing(task, reply):
            self.timings.append(timing)
        server.records = []
        self.stage.collect(server, task, reply)
        self.collected[self.order[id(task)]] = server.records
        server.log(f"  {task.stage} {task.key}: {task.party} done at {time.monotonic() - self.t0:.1f} s")

    def wait(self) -> None:
        with self.audited():
            self.session.wait(self.stage.name)

    @contextmanager
    def audited(self) -> Iterator[None]:
        """A task that failed or timed out (this stage's or another's), in the audit log at once."""
        try:
            yield
        except TaskFailed as err:
            audit_now(
                self.server.run, err.kind, stage=err.stage, party=err.party, key=err.key, reason=str(err)
            )
            raise

    def federate(self) -> None:
        server, stage = self.server, self.stage
        if (federation := stage.federation(server)) is None:
            return
        check_stop()
        self.session.wait()  # nothing else in flight while the rounds run
        server.log(
            f"  {stage.name}: {federation.rounds} rounds of FedAvg over {', '.join(federation.parties)}"
        )
        result = self.session.federate(federation)
        for done in result.rounds:
            for party, reply in [*done.train, (federation.evaluator, done.evaluate)]:
                task = Task(stage.name, party, key=f"round {done.number}")
                self.digests.update(audit_reply(server, task, reply))
                # the evaluator may train in the same round: its evaluation is a task of its own
                evaluated = reply is done.evaluate
                timed = Task(stage.name, party, key=f"{task.key} evaluate") if evaluated else task
                if timing := task_timing(timed, reply):
                    self.timings.append(timing)
        stage.federated(server, result)

    def finish(self, started: float) -> None:
        server, stage, run = self.server, self.stage, self.server.run
        server.records = [r for i in sorted(self.collected) for r in self.collected[i]]  # plan order
        self.federate()
        stage.finish(server)
        wall = time.monotonic() - started
        run.sync_audit()  # the stage's audit lines are on disk before the stage is marked done
        run.mark_stage(
            stage.name, status="done", wall_s=wall, digests=self.digests, nodes=self.nodes, tasks=self.timings
        )
        server.log(f"[bold]{stage.name}[/]: finished in {wall:.1f} s")


def drive(run: RunDir, session: Session, log: Log) -> None:
    """The server's side of a run: every stage not done yet, in run order; a stage's early tasks go out
    as soon as the stage they need is done (Stage.early_after)."""
    scenario = run.scenario()
    parties = roles.parties(scenario)
    server = Server(run, scenario, parties, log)
    check_stop()
    server.public_keys = session.discover(parties)
    log(f"{len(parties)} parties registered: {', '.join(p.name for p in parties)}")
    order = stage_order()
    runs: dict[str, _StageRun] = {}  # the stages whose tasks have been handed over

    def send_early(after: int) -> None:
        """The early tasks of the stages after position `after` whose `early_after` is done."""
        done = {""} | {s.name for s in order if run.stage_done(s.name)}
        for stage in order[after + 1 :]:
            if stage.name in runs or stage.early_after not in done or stage.name in done:
                continue
            if stage.absent(scenario):
                continue
            runs[stage.name] = _StageRun(stage, server, session)
            if tasks := stage.early(server):
                log(f"  {stage.name}: {len(tasks)} of its tasks go out early")
                runs[stage.name].submit(tasks, early=True)

    for i, stage in enumerate(order):
        check_stop()
        tasks: list[Task] = []
        if stage.name not in runs:  # no early tasks went out (none, or none could: resumed)
            if run.stage_done(stage.name):
                log(f"[bold]{stage.name}[/]: done in an earlier attempt, skipped")
                continue
            if absent := stage.absent(scenario):
                run.mark_stage(stage.name, status="done", wall_s=0.0, skipped=absent)
                log(f"[bold]{stage.name}[/]: skipped ({absent})")
                continue
            runs[stage.name] = _StageRun(stage, server, session)
            tasks = stage.early(server)
        started = time.monotonic()
        log(f"[bold]{stage.name}[/]: started")
        current = runs[stage.name]
        current.submit(tasks + stage.plan(server))
        send_early(i)  # after this stage's own tasks, which go out first
        current.wait()
        current.finish(started)
    session.wait()


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
