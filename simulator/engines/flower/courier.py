"""Files between the server and a deployed party's node, as Flower messages: chunked, checksummed, audited.

In Flower's deployment engine (one SuperNode per organisation, `veil supernode`) no disk is shared: the
server keeps the pool and the public material in its run directory, and each node keeps a copy of what
it may read under its own `--dir`. Before a stage, the server sends each node that has a task the shared
files it lacks (`query.put`); after a task, it fetches what the task left for everyone (its pool shards,
the data owner's public files, figures: `query.get`). Each message carries at most CHUNK bytes of file
data, in pieces with a sha256 each; a file is installed only once the whole matches its sha256. Only
the shared places travel (SHARED_PLACES, OUTBOX_PLACES): a path under `parties/` is refused both ways.
Every transfer is one audit line (who, what, bytes, digest, messages) beside the grid's line per message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from simulator import roles
from simulator.engines import RunFailed
from simulator.engines.flower.codec import TASK
from simulator.engines.flower.grid import AuditedGrid
from simulator.pool import MANIFEST, Pool, PoolError, ShardInfo
from simulator.roles import Role
from simulator.rundir import RunDir

CHUNK = 4 << 20  # bytes of file data per message (Flower's own wire chunks are 5 MB)
PUT, GET = "query.put", "query.get"
SHARED_PLACES = ("pool", "public")  # what every party may read: the server sends it to each node
OUTBOX_PLACES = ("pool", "public", "figures")  # what a task may leave for the server to fetch
OUTBOX, POOL_ENTRIES = "outbox", "pool_entries"  # a deployed node's reply config: what to fetch
STAGING = ".courier"  # where a node assembles the pieces of a file
_PATH = re.compile(r"^(pool|public|figures)/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SKIP = (".tmp-", ".")  # temporary files and locks are nobody's to send


class CourierError(RunFailed):
    """A transfer failed: a node refused a piece, a digest did not match, a reply never came."""


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative to a run root: PLACE/NAME
    size: int
    sha256: str

    def entry(self) -> str:
        return f"{self.path}={self.sha256}:{self.size}"

    @classmethod
    def parse(cls, text: str) -> FileInfo:
        path, _, rest = text.partition("=")
        sha, _, size = rest.partition(":")
        check_path(path, OUTBOX_PLACES)
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not size.isdigit():
            raise ValueError(f"malformed outbox entry {text!r}")
        return cls(path, int(size), sha)


def check_path(path: str, places: tuple[str, ...]) -> None:
    """`path` is PLACE/NAME with PLACE one of `places` and NAME a plain file name; ValueError if not."""
    if not _PATH.fullmatch(path) or path.partition("/")[0] not in places:
        raise ValueError(f"{path!r} is not a file of {', '.join(f'{p}/' for p in places)}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def stats(root: Path, places: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Every file of `places` under `root`: path -> (size, mtime_ns), cheap enough to take per task."""
    out = {}
    for place in places:
        folder = Path(root) / place
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(_SKIP):
                st = path.stat()
                out[f"{place}/{path.name}"] = (st.st_size, st.st_mtime_ns)
    return out


def listing(root: Path, places: tuple[str, ...]) -> list[FileInfo]:
    """The files of `places` under `root` with their digests; a pool's manifest last (it names the
    shard files, so a node installs it after them)."""
    files = [FileInfo(p, size, sha256_file(Path(root) / p)) for p, (size, _) in stats(root, places).items()]
    return sorted(files, key=lambda f: (f.path.endswith(MANIFEST), f.path))


def _pieces(files: list[FileInfo]) -> list[list[tuple[FileInfo, int, int]]]:
    """(file, offset, length) pieces packed into messages of at most CHUNK bytes."""
    messages: list[list[tuple[FileInfo, int, int]]] = [[]]
    used = 0
    for f in files:
        offset = 0
        while True:
            length = min(CHUNK, f.size - offset)
            if used + length > CHUNK and messages[-1]:
                messages.append([])
                used = 0
            messages[-1].append((f, offset, length))
            used += length
            offset += length
            if offset >= f.size:
                break
    return [m for m in messages if m]


def _piece_record(f: FileInfo, offset: int, data: bytes) -> ConfigRecord:
    return ConfigRecord(
        {
            "path": f.path,
            "size": f.size,
            "sha256": f.sha256,
            "offset": offset,
            "data": data,
            "data_sha256": hashlib.sha256(data).hexdigest(),
        }
    )


def _field(record: ConfigRecord, key: str, kind: type) -> Any:
    """A piece's field, of the type it must have (a node's reply is not trusted to be well-formed)."""
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"a piece's {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise ValueError(f"{path}: {len(data)} bytes at offset {offset}, expected {length}")
    return data


# --- the node's side ------------------------------------------------------------------------------


def receive(root: Path, content: RecordDict) -> RecordDict:
    """A `query.put` on the node: write each piece, verified; install each file once it is whole."""
    installed = []
    for name, record in content.config_records.items():
        if not name.startswith("piece-"):
            continue
        path, size, sha = (
            _field(record, "path", str),
            _field(record, "size", int),
            _field(record, "sha256", str),
        )
        check_path(path, SHARED_PLACES)  # never a party's directory
        data, offset = _field(record, "data", bytes), _field(record, "offset", int)
        if hashlib.sha256(data).hexdigest() != record["data_sha256"] or offset + len(data) > size:
            raise ValueError(f"piece of {path} at offset {offset} does not match its sha256 or size")
        if _store_piece(Path(root), path, size, sha, offset, data):
            installed.append(path)
    return RecordDict({"config": ConfigRecord({"installed": installed})})


def _store_piece(root: Path, path: str, size: int, sha: str, offset: int, data: bytes) -> bool:
    """Write one piece into the staging file; True when the file became whole and was installed."""
    staging = root / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    part, got = staging / f"{sha}.part", staging / f"{sha}.got"
    with open(staging / f"{sha}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # two pieces of one file handled at once
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(got, "a") as fh:
            fh.write(f"{offset} {len(data)}\n")
        spans = {tuple(map(int, line.split())) for line in got.read_text().splitlines()}
        if sum(length for _, length in spans) < size or (size == 0 and not spans):
            return False
        if sha256_file(part) != sha:
            part.unlink()
            got.unlink()
            raise ValueError(f"{path}: the assembled file does not match sha256 {sha}")
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        got.unlink()
    (staging / f"{sha}.lock").unlink(missing_ok=True)
    return True


def serve(root: Path, content: RecordDict) -> RecordDict:
    """A `query.get` on the node: the pieces asked for, of files a task left in the outbox places."""
    wanted = json.loads(str(content.config_records["get"]["pieces"]))
    out: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {}
    for i, (path, size, sha, offset, length) in enumerate(wanted):
        check_path(path, OUTBOX_PLACES)
        data = _read(Path(root) / path, int(offset), int(length))
        out[f"piece-{i}"] = _piece_record(FileInfo(path, int(size), sha), int(offset), data)
    return RecordDict(out)


def outbox(root: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """What a task left for the server: the files of OUTBOX_PLACES that are new or changed since
    `before` (stats), but the pool's manifest, whose entries travel in the reply itself."""
    after = stats(root, OUTBOX_PLACES)
    changed = [p for p, st in after.items() if before.get(p) != st and p != f"pool/{MANIFEST}"]
    return [FileInfo(p, after[p][0], sha256_file(Path(root) / p)).entry() for p in sorted(changed)]


def pool_entries(root: Path, owner: str, files: list[str]) -> list[str]:
    """The local pool manifest's entries (JSON) of `owner`'s shards among `files` (outbox entries)."""
    names = {FileInfo.parse(e).path.removeprefix("pool/") for e in files if e.startswith("pool/")}
    if not names:
        return []
    return [json.dumps(s.to_json()) for s in Pool(Path(root) / "pool").shards(owner) if s.file in names]


# --- the server's side ----------------------------------------------------------------------------


class Courier:
    """The server's end: what each node holds, sending what it lacks, fetching what a task left."""

    def __init__(self, grid: AuditedGrid, run: RunDir, nodes: dict[str, int], timeout: float):
        self.grid, self.run, self.nodes, self.timeout = grid, run, nodes, timeout
        self.held: dict[str, dict[str, str]] = {party: {} for party in nodes}  # party -> path -> sha256
        self.roles = {p.name: p.role for p in roles.parties(run.scenario())}
        self._header = ConfigRecord(
            {"run_dir": str(run.root)}
        )  # a node finds its copy of the run by its name

    def _exchange(self, party: str, messages: list[Message], what: str) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        for reply in replies:
            if reply.has_error():
                raise CourierError(f"{what}: the node of {party} refused: {reply.error.reason}")
        if len(replies) != len(messages):
            raise CourierError(
                f"{what}: {len(messages) - len(replies)} of {len(messages)} message(s) to {party}"
                f" got no reply within {self.timeout:g} s"
            )
        return replies

    def _audit(self, kind: str, sender: str, receiver: str, f: FileInfo, messages: int) -> None:
        self.run.audit(
            {
                "t": round(time.time(), 3),
                "type": kind,
                "sender": sender,
                "receiver": receiver,
                "path": f.path,
                "bytes": f.size,
                "sha256": f.sha256,
                "messages": messages,
            }
        )

    def send_shared(self, parties: list[str]) -> None:
        """Each party's node gets the shared files (pool, public) it does not hold yet; one batch for all."""
        files = listing(self.run.root, SHARED_PLACES)
        batch: list[Message] = []
        plan: list[tuple[str, list[FileInfo], int]] = []
        for party in parties:
            missing = [f for f in files if self.held[party].get(f.path) != f.sha256]
            if not missing:
                continue
            groups = _pieces(missing)
            for group in groups:
                records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
                    f"piece-{i}": _piece_record(f, offset, _read(self.run.root / f.path, offset, length))
                    for i, (f, offset, length) in enumerate(group)
                }
                records[TASK] = self._header
                batch.append(Message(RecordDict(records), dst_node_id=self.nodes[party], message_type=PUT))
            plan.append((party, missing, len(groups)))
        if not batch:
            return
        replies = self._exchange(", ".join(p for p, _, _ in plan), batch, "sending the shared files")
        installed: dict[int, set[str]] = {}
        for reply in replies:
            got = reply.content.config_records["config"]["installed"]
            installed.setdefault(reply.metadata.src_node_id, set()).update(map(str, got))  # type: ignore[arg-type]
        for party, missing, count in plan:
            lacking = [f.path for f in missing if f.path not in installed.get(self.nodes[party], set())]
            if lacking:
                raise CourierError(f"the node of {party} did not install {', '.join(lacking)}")
            for f in missing:
                self.held[party][f.path] = f.sha256
                self._audit("courier.put", "server", party, f, count)

    def fetch(self, party: str, entries: list[str], shard_entries: list[str]) -> None:
        """What a task of `party` left (its reply's outbox), into the run directory: its pool shards
        (adopted into the pool's manifest, under its own name only), the data owner's public files,
        figures. Each is verified against its digest before it is installed."""
        files = [FileInfo.parse(e) for e in entries]
        if not files:
            return
        shards = {}
        for text in shard_entries:
            info = ShardInfo.from_json(json.loads(text))
            if info.owner != party:
                raise CourierError(f"{party} sent a pool entry under another party's name ({info.owner!r})")
            shards[f"pool/{info.file}"] = info
        messages, groups = [], _pieces(files)
        for group in groups:
            wanted = [[f.path, f.size, f.sha256, offset, length] for f, offset, length in group]
            content = RecordDict({"get": ConfigRecord({"pieces": json.dumps(wanted)}), TASK: self._header})
            messages.append(Message(content, dst_node_id=self.nodes[party], message_type=GET))
        staging = self.run.root / STAGING
        staging.mkdir(exist_ok=True)
        parts = {f.path: staging / f"{i}-{f.sha256[:16]}.part" for i, f in enumerate(files)}
        for path in parts.values():
            path.write_bytes(b"")
        for reply in self._exchange(party, messages, f"fetching what {party} left"):
            for record in reply.content.config_records.values():
                data, offset = _field(record, "data", bytes), _field(record, "offset", int)
                where = _field(record, "path", str)
                if where not in parts or hashlib.sha256(data).hexdigest() != record["data_sha256"]:
                    raise CourierError(
                        f"{party} sent a piece of {where!r} that was not asked for or is damaged"
                    )
                with open(parts[where], "r+b") as fh:
                    fh.seek(offset)
                    fh.write(data)
        for f in files:
            if sha256_file(parts[f.path]) != f.sha256:
                raise CourierError(f"{f.path} from {party} does not match its sha256 {f.sha256}")
        try:
            for f in sorted(files, key=lambda f: f.path.endswith(MANIFEST)):  # public manifest last
                self._install(party, f, parts[f.path], shards)
                self.held[party][f.path] = f.sha256
                self._audit("courier.get", party, "server", f, len(groups))
        finally:
            for path in parts.values():
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                staging.rmdir()

    def _install(self, party: str, f: FileInfo, part: Path, shards: dict[str, ShardInfo]) -> None:
        place = f.path.partition("/")[0]
        if place == "pool":
            if f.path not in shards:
                raise CourierError(f"{party} left {f.path} without its pool entry")
            try:
                Pool(self.run.pool_dir).adopt(shards[f.path], part)
            except (PoolError, ValueError) as err:
                raise CourierError(f"{party}'s shard {f.path}: {err}") from err
            return
        if place == "public" and self.roles[party] is not Role.DATA_OWNER:
            raise CourierError(
                f"{party} ({self.roles[party]}) may not publish {f.path}: only the data owner does"
            )
        target = self.run.root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
