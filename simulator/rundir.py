"""The run directory: everything a run writes, and the only thing `veil report` reads.

runs/<scenario>-<timestamp>/
    scenario.yaml          the resolved scenario
    manifest.json          seed, what made the run (version, commit, dirty tree), library versions,
                           hardware, each node's torch threads, per-stage status and wall times, the
                           sha256 of every file a resume depends on ("digests"), and the pool's size
                           once it is complete ("pool": shards, rows, bytes)
    progress/<party>.json  each party's current work, written by its node; progress.log the driver's
                           plain lines of it (simulator.progress)
    .lock                  flock'd by the one `veil run` writing here: pid, host, start time
    results/<unit>.jsonl   flat records (table, row, label, entity, metric, value), one file per
                           finished unit of work (a stage, or one row of the collaboration table)
    audit.jsonl            every message: type, sender, receiver, record names, bytes
    shared/nets.pt         F, C, R as the server handed them out (public to every party)
    relay/                 what the server relays between stages: sealed bytes it cannot open
    pool/                  poisoned features + manifest (see simulator.pool)
    public/                the data owner's publication (see entities.publication)
    parties/<name>/private/  what only that party may read (0700, files 0600)
    parties/<user>/keys/   the keys issued to an authorised user (0700, files 0600)

Only the server process writes here outside `pool/`, `public/`, `parties/` and `progress/`; those are
written by the parties through their views (simulator.views), and `progress/` by their nodes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from entities.files import write_atomic
from simulator.protocol import RESULT_FIELDS, Record
from simulator.schema import Scenario, load_scenario

NETS_FILE = "nets.pt"
LOCK_FILE = ".lock"
NOT_A_CHECKOUT = "not a git checkout"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the tree `simulator` was imported from
SCENARIO_DIGEST = "scenario.yaml"  # the manifest's digest key of the resolved scenario
NETS_DIGEST = f"shared/{NETS_FILE}"


# The stages of a run, in order (simulator.stages registers one module of each name; a plugin's stage runs
# after these). Here, torch-free, so that a manifest naming a stage that does not exist is refused before
# anything loads.
RUN_ORDER = (
    "prepare",
    "pretrain",
    "poison",
    "refine",
    "codes",
    "access",
    "leak",
    "attack",
    "score",
    "fedavg",
)


class RunDamaged(RuntimeError):
    """A file a finished stage left behind is missing or differs from the digest the manifest recorded."""


def verify_stored(root: Path, *, copy_ok: bool = False) -> None:
    """Raise RunDamaged naming the first file of a run that differs from the digest its manifest holds:
    the resolved scenario, the shared nets and every pool shard (its file against the pool's manifest, and
    its features and labels together against the digest the run's manifest recorded when its owner
    published it). `veil report` and `--resume` call it before they compute anything; the parties' private
    files are verified by their owners when they read them (simulator.views). `copy_ok` (the report, which
    reads records only): a run copied without its whole shared/ or pool/ folder passes; a folder that is
    there but lacks a file does not."""
    from simulator.pool import Pool, PoolError  # numpy, not torch

    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_bytes())
    except (OSError, ValueError) as err:
        raise RunDamaged(
            f"{root / 'manifest.json'}: unreadable ({err}); expected the run's manifest"
        ) from None
    digests = manifest.get("digests") if isinstance(manifest, dict) else None
    if not isinstance(digests, dict):
        return  # a run from before digests were recorded, or one whose manifest was refused already
    for where in (SCENARIO_DIGEST, NETS_DIGEST):
        expected, path = digests.get(where), root / where
        if expected is None or (copy_ok and not path.parent.exists()):
            continue
        try:
            actual = sha256_of(path.read_bytes())
        except OSError as err:
            raise RunDamaged(
                f"{path}: {err.strerror}; the run's manifest records its sha256 {expected}"
            ) from None
        if actual != expected:
            stage = "the run started" if where == SCENARIO_DIGEST else "stage 'pretrain' saved it"
            raise RunDamaged(
                f"{path}: altered since {stage} (sha256 {actual}, the manifest recorded {expected})"
            )
    recorded = {k.removeprefix("pool/"): v for k, v in digests.items() if k.startswith("pool/")}
    if not recorded or (copy_ok and not (root / "pool").exists()):
        return
    if not (root / "pool" / "manifest.json").is_file():
        missing = ", ".join(sorted(recorded))
        raise RunDamaged(
            f"{root / 'pool' / 'manifest.json'}: missing; the run's manifest records shards {missing}"
        )
    pool = Pool(root / "pool")
    try:
        shards = {f"{e.owner}/{e.name}": e for e in pool.verify()}  # every shard file against its digest
    except (PoolError, ValueError, OSError) as err:
        raise RunDamaged(str(err)) from None
    for name, expected in sorted(recorded.items()):
        entry = shards.get(name)
        if entry is None:
            raise RunDamaged(
                f"{pool.manifest_path}: lists no shard {name!r}, which the run's manifest recorded "
                f"(sha256 {expected}); the pool lost it"
            )
        if entry.content_sha256 != expected:
            raise RunDamaged(
                f"shard {pool.root / entry.file} (owner {entry.owner!r}, name {entry.name!r}) is not what "
                f"{entry.owner} published: its features and labels hash to {entry.content_sha256}, the run's "
                f"manifest recorded {expected}"
            )


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunLock:
    """The one writer of a run directory: an exclusive flock on `<run>/.lock`, released on close (or
    when the process ends, however it ends). The file says who holds it: pid, host, start time."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "(unknown)"
            os.close(fd)
            raise RunLocked(
                f"{root}: in use by another `veil run` ({who}); one writer per run directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "veil",
        "flwr",
        "ray",
        "torch",
        "torchvision",
        "numpy",
        "pandas",
        "pydantic",
        "scikit-image",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def project_version(root: Path = SOURCE_ROOT) -> str:
    """Veil's version: the source tree's pyproject.toml when it has one (an editable install's metadata
    keeps the version it was installed with), else the installed distribution's."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
        if project.get("name") == "veil" and project.get("version"):
            return str(project["version"])
    except (OSError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version("veil")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(git: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [git, "-C", str(root), *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def source_tree(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """What made a run: the version, the git commit of the source tree (or NOT_A_CHECKOUT), and whether
    the work tree had changes not committed (`git status --porcelain`, untracked files included; None
    when there is no checkout to ask)."""
    out: dict[str, Any] = {"version": project_version(root), "path": str(root), "commit": NOT_A_CHECKOUT}
    out["dirty"] = None
    git = shutil.which("git")
    if git is None:
        out["commit"] = "unknown: git is not installed"
        return out
    try:
        inside = _git(git, root, "rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0:
            reason = (inside.stderr.strip().splitlines() or [""])[0]
            if "not a git repository" not in reason:  # e.g. git's "dubious ownership": say so
                out["commit"] = f"unknown: {reason}"
            return out
        # a copy inside some other repository (a venv's site-packages in a checkout) is not its checkout
        if _git(git, root, "ls-files", "--error-unmatch", "--", "simulator/__init__.py").returncode != 0:
            return out
        head = _git(git, root, "rev-parse", "HEAD")
        status = _git(git, root, "status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired) as err:
        out["commit"] = f"unknown: {err}"
        return out
    out["commit"] = head.stdout.strip() if head.returncode == 0 else "unknown: no commit yet"
    out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["cuda"] = None
        return info
    # what decides whether two machines give the same numbers for one seed
    info["torch"] = torch.__version__
    # the driver's own threads; each node's, which train, are the manifest's "nodes" (node.handle sets them)
    info["driver_torch_threads"] = torch.get_num_threads()
    info["driver_torch_interop_threads"] = torch.get_num_interop_threads()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the SIMD kernels used: AVX2, AVX512...
    info["cuda_version"] = torch.version.cuda  # the CUDA torch was built for; None on a CPU build
    info["cudnn_version"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    info["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
    info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return info


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    # --- layout ---
    @property
    def scenario_path(self) -> Path:
        return self.root / "scenario.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    @property
    def shared_dir(self) -> Path:
        return self.root / "shared"

    def private_dir(self, party: str) -> Path:
        return self.root / "parties" / party / "private"

    # --- life cycle ---
    @classmethod
    def create(cls, scenario: Scenario, out: Path) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(out) / f"{scenario.name}-{stamp}"
        n = 1
        while root.exists():  # two runs in the same second get distinct directories
            n += 1
            root = Path(out) / f"{scenario.name}-{stamp}-{n}"
        root.mkdir(parents=True)
        run = cls(root)
        resolved = scenario.resolved_yaml().encode()
        write_atomic(run.scenario_path, resolved)
        run._write_manifest(
            {
                "scenario": scenario.name,
                "seed": scenario.seed,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "source": source_tree(),
                "versions": library_versions(),
                "hardware": hardware(),
                "stages": {},
                "digests": {SCENARIO_DIGEST: sha256_of(resolved)},
            }
        )
        return run

    @classmethod
    def open(cls, root: Path) -> RunDir:
        run = cls(Path(root))
        for path in (run.scenario_path, run.manifest_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; {root} is not a Veil run directory")
        return run

    def scenario(self) -> Scenario:
        return load_scenario(self.scenario_path)

    # --- manifest and stages ---
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path.read_text())
        return data

    def _write_manifest(self, data: dict[str, Any]) -> None:
        write_atomic(self.manifest_path, json.dumps(data, indent=2) + "\n")

    def stage_done(self, stage: str) -> bool:
        return bool(self.manifest()["stages"].get(stage, {}).get("status") == "done")

    def mark_stage(
        self,
        stage: str,
        *,
        status: str,
        wall_s: float,
        digests: dict[str, str] | None = None,
        nodes: dict[str, dict[str, int]] | None = None,
        **extra: Any,
    ) -> None:
        """Record a stage's status, the digests of the files it left, and what each party's node reported
        of itself (torch threads, pid; the latest report wins), in the same atomic write. `extra` holds
        the rest, such as `tasks` (each task's party, key, and start and end on its node: drive)."""
        data = self.manifest()
        entry = data["stages"].setdefault(stage, {})
        entry.update(status=status, wall_s=round(wall_s, 3), at=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
        if digests:
            data.setdefault("digests", {}).update(digests)
        for party, facts in (nodes or {}).items():
            data.setdefault("nodes", {}).setdefault(party, {}).update(facts)
        self._write_manifest(data)

    def record_pool(self, size: dict[str, int]) -> None:
        """The pool's size (shards, feature rows, bytes of shard files), once the pool is complete."""
        data = self.manifest()
        data["pool"] = dict(size)
        self._write_manifest(data)

    def record_resume(self) -> None:
        """A resumed attempt may run other code than the first: its source tree, beside the first's."""
        data = self.manifest()
        attempt = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": source_tree()}
        data.setdefault("resumed", []).append(attempt)
        self._write_manifest(data)

    def digests(self) -> dict[str, str]:
        """sha256 of what a resume depends on, by path in the run directory (a pool shard: pool/OWNER/NAME,
        its file and labels together)."""
        return dict(self.manifest().get("digests") or {})

    def record_facts(self, key: str, facts: dict[str, Any]) -> None:
        """A fact of the run as its parties reported it (the dataset's sizes), under `key` in the manifest."""
        data = self.manifest()
        data[key] = facts
        self._write_manifest(data)

    def record_digests(self, digests: dict[str, str]) -> None:
        data = self.manifest()
        data.setdefault("digests", {}).update(digests)
        self._write_manifest(data)

    # --- results ---
    def write_results(self, unit: str, records: list[Record]) -> None:
        """All records of one finished unit of work, in one atomic file."""
        lines = [json.dumps({f: getattr(rec, f) for f in RESULT_FIELDS}) for rec in records]
        write_atomic(self.results_dir / f"{unit}.jsonl", "\n".join(lines) + "\n")

    def has_results(self, unit: str) -> bool:
        return (self.results_dir / f"{unit}.jsonl").is_file()

    def results(self, unit: str) -> list[Record]:
        """The records of a finished unit (write_results)."""
        text = (self.results_dir / f"{unit}.jsonl").read_text()
        return [
            Record(**{f: json.loads(line)[f] for f in RESULT_FIELDS}) for line in text.splitlines() if line
        ]

    def save_nets(self, states: dict[str, Any]) -> None:
        """F, C, R (torch state dicts) as the leader shared them."""
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(states, buffer)
        data = buffer.getvalue()
        write_atomic(self.shared_dir / NETS_FILE, data)  # fsynced before its digest is recorded
        self.record_digests({NETS_DIGEST: sha256_of(data)})

    def load_nets(self) -> dict[str, Any]:
        """F, C, R as saved, verified against the digest the manifest recorded when they were saved."""
        import io

        import torch

        path = self.shared_dir / NETS_FILE
        if not path.is_file():
            raise RunDamaged(f"{path}: missing; stage 'pretrain' has not finished, or the file was removed")
        data = path.read_bytes()
        expected = self.digests().get(NETS_DIGEST)
        if expected is not None and sha256_of(data) != expected:
            raise RunDamaged(
                f"{path}: altered since stage 'pretrain' saved it (sha256 {sha256_of(data)}, "
                f"the manifest recorded {expected})"
            )
        states: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
        return states

    def keep(self, unit: str, arrays: dict[str, dict[str, Any]]) -> None:
        """Arrays the server keeps between stages (an attacker's reconstructions, for the referee)."""
        import io

        import numpy as np

        flat = {f"{name}::{key}": value for name, state in arrays.items() for key, value in state.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        write_atomic(self.root / "attacks" / f"{unit}.npz", buffer.getvalue())

    def kept(self, unit: str) -> dict[str, dict[str, Any]] | None:
        """What `keep` kept under `unit`, or None."""
        import numpy as np

        path = self.root / "attacks" / f"{unit}.npz"
        if not path.is_file():
            return None
        out: dict[str, dict[str, Any]] = {}
        with np.load(path) as data:
            for flat in data.files:
                name, key = flat.rsplit("::", 1)
                out.setdefault(name, {})[key] = data[flat]
        return out

    def keep_sealed(self, recipient: str, what: str, ciphertext: bytes) -> None:
        write_atomic(self.root / "relay" / f"{recipient}.{what}.sealed", ciphertext, private=True)

    def sealed(self, recipient: str, what: str) -> bytes:
        path = self.root / "relay" / f"{recipient}.{what}.sealed"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; nothing was sealed to {recipient}")
        return path.read_bytes()

    # --- audit ---
    def audit(self, event: dict[str, Any], *, sync: bool = False) -> None:
        """Append one event; only the server process writes the audit log. sync: fsync it now."""
        with open(self.audit_path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
            if sync:
                fh.flush()
                os.fsync(fh.fileno())

    def sync_audit(self) -> None:
        """fsync the audit log (at each stage's end, before the stage is marked done)."""
        if self.audit_path.exists():
            fd = os.open(self.audit_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def drop_torn_audit_line(self) -> None:
        """A run killed mid-write can leave half an audit line; drop it so that resumed events parse.

        Only for resuming: while a run is live, its server may be writing that line.
        """
        if not self.audit_path.exists():
            return
        data = self.audit_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.audit_path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]
