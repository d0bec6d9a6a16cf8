"""Flower's deployment engine, one SuperNode per party (simulator.deploy, engines.flower.courier): what
`veil supernode` refuses, the courier's pieces on real files, and (slow) a SuperLink and a SuperNode per
party on loopback running the smoke scenario to the records of the simulation."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE, kill_session

from simulator import roles
from simulator.schema import load_scenario

FLWR_BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1800.0


def veil(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )


def free_port() -> int:
    from simulator.deploy import free_port

    return free_port()


# --- veil supernode's refusals ---------------------------------------------------------------------


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 and one line on stderr (no traceback) holding `words`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_supernode_refuses_bad_input_in_seconds_writing_nothing(tmp_path: Path) -> None:
    with __import__("socket").socket() as sock:  # a port that answers: the SuperLink checks pass
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        link = f"127.0.0.1:{sock.getsockname()[1]}"
        t0 = time.monotonic()
        refused(veil("supernode", "--party", "E9", "--dir", str(tmp_path / "a"), "--superlink", link,
                     "--scenario", str(SMOKE)), "--party", "'E9'", "E1, E2")  # fmt: skip
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        (theirs / ".veil-party").write_text("E2\n")
        refused(veil("supernode", "--party", "E1", "--dir", str(theirs), "--superlink", link,
                     "--scenario", str(SMOKE)), "--dir", "E2's directory")  # fmt: skip
        refused(veil("supernode", "--party", "E1", "--dir", str(tmp_path / "a"), "--superlink", "nohost",
                     "--scenario", str(SMOKE)), "--superlink", "HOST:PORT")  # fmt: skip
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    refused(veil("supernode", "--party", "E1", "--dir", str(tmp_path / "a"), "--superlink", closed,
                 "--scenario", str(SMOKE)), "--superlink", "cannot reach", closed)  # fmt: skip
    assert time.monotonic() - t0 < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]  # nothing written
    assert [p.name for p in theirs.iterdir()] == [".veil-party"]


# --- the courier's node side, on real files --------------------------------------------------------


def test_courier_pieces_install_whole_files_only_in_shared_places(tmp_path: Path) -> None:
    from flwr.app import ConfigRecord, RecordDict

    from simulator.engines.flower import courier

    server, node = tmp_path / "server", tmp_path / "node"
    (server / "pool").mkdir(parents=True)
    data = os.urandom(courier.CHUNK + 1000)  # two pieces
    (server / "pool" / "E1--poisoned.f16.npy").write_bytes(data)
    (server / "pool" / "manifest.json").write_text("{}")
    files = courier.listing(server, courier.SHARED_PLACES)
    assert [f.path for f in files] == ["pool/E1--poisoned.f16.npy", "pool/manifest.json"]  # manifest last
    groups = courier._pieces(files)
    assert len(groups) == 2 and all(sum(n for _, _, n in g) <= courier.CHUNK for g in groups)
    for group in reversed(groups):  # in any order: a file is installed once it is whole
        records = {f"piece-{i}": courier._piece_record(f, o, courier._read(server / f.path, o, n))
                   for i, (f, o, n) in enumerate(group)}  # fmt: skip
        courier.receive(node, RecordDict(records))  # type: ignore[arg-type]
    assert (node / "pool" / "E1--poisoned.f16.npy").read_bytes() == data
    assert not any((node / courier.STAGING).iterdir())
    # a damaged piece, or one aimed at a party's directory, is refused and installs nothing
    good = courier.FileInfo("pool/x.npy", 3, hashlib.sha256(b"abc").hexdigest())
    bad = courier._piece_record(good, 0, b"abc")
    bad["data"] = b"abd"
    with pytest.raises(ValueError, match="does not match"):
        courier.receive(node, RecordDict({"piece-0": bad}))
    for path in ("parties/E2/private/dpm.pt", "pool/../parties/E2", "figures/a.png"):
        record = courier._piece_record(courier.FileInfo(path, 3, good.sha256), 0, b"abc")
        with pytest.raises(ValueError, match="is not a file of"):
            courier.receive(node, RecordDict({"piece-0": record}))
    assert not (node / "pool" / "x.npy").exists() and not (node / "parties").exists()
    # what a node serves: only the places a task leaves files in
    (node / "figures").mkdir()
    (node / "figures" / "t.png").write_bytes(b"png")
    ask = [["figures/t.png", 3, hashlib.sha256(b"png").hexdigest(), 0, 3]]
    reply = courier.serve(node, RecordDict({"get": ConfigRecord({"pieces": json.dumps(ask)})}))
    assert reply.config_records["piece-0"]["data"] == b"png"
    for path in ("parties/E1/private/partition.json", "scenario.yaml"):
        with pytest.raises(ValueError, match="is not a file of"):
            courier.serve(
                node, RecordDict({"get": ConfigRecord({"pieces": json.dumps([[path, 1, "0", 0, 1]])})})
            )


def test_pool_adopts_only_a_shard_that_matches_its_entry(tmp_path: Path) -> None:
    import numpy as np

    from simulator.pool import Pool, PoolError

    node, server = Pool(tmp_path / "node"), Pool(tmp_path / "server")
    info = node.publish(
        owner="E1", name="poisoned", features=np.ones((4, 3), np.float32), labels=np.arange(4)
    )
    copy = tmp_path / "received.npy"
    copy.write_bytes((node.root / info.file).read_bytes())
    server.adopt(info, copy)
    assert server.shards() == [info] and not copy.exists()
    features, labels = server.read("E1", "poisoned")
    assert features.shape == (4, 3) and list(labels) == [0, 1, 2, 3]
    damaged = tmp_path / "damaged.npy"
    damaged.write_bytes((node.root / info.file).read_bytes()[:-2] + b"\0\0")
    other = Pool(tmp_path / "other")
    with pytest.raises(PoolError):
        other.adopt(info, damaged)
    assert other.shards() == []


# --- a federation on loopback -----------------------------------------------------------------------


def can_hide() -> bool:
    """Whether this machine lets a process get a mount namespace of its own (`unshare -m`, as root)."""
    with suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
        return probe.returncode == 0
    return False


def hiding(paths: list[Path], command: list[str]) -> list[str]:
    """`command` in a mount namespace where each of `paths` is an empty tmpfs: the process cannot read
    what lies there (on one machine as one user, the nearest thing to another machine's disk)."""
    mounts = " && ".join(f"mount -t tmpfs veil-hidden {shlex.quote(str(p))}" for p in paths)
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"{mounts} && exec {shlex.join(command)}",
    ]


@contextmanager
def federation(
    tmp_path: Path, parties: list[str], server: Path
) -> Iterator[tuple[dict[str, str], dict[str, Path]]]:
    """A SuperLink and one `veil supernode` per party on loopback, each with its own directory; yields
    the environment for `flwr run` (a FLWR_HOME whose default connection is this SuperLink) and the
    parties' directories. Where the machine allows it, each SuperNode runs in a mount namespace that hides
    the server's directory, the SuperLink's and every other party's. Every process started is killed
    afterwards, by its session."""
    port = free_port()  # Flower 1.41's SuperLink serves every API (Fleet, Control, Runtime) on one HTTP port
    link_dir, home = tmp_path / "superlink", tmp_path / "flwr-home"
    link_dir.mkdir()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{FLWR_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
    }
    started: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, args: list[str], cwd: Path, extra: dict[str, str]) -> None:
        with open(logs / f"{name}.log", "wb") as fh:
            started.append(
                subprocess.Popen(
                    args,
                    cwd=cwd,
                    env={**env, **extra},
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )

    try:
        start(
            "superlink",
            [str(FLWR_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)],
            link_dir,
            {"FLWR_HOME": str(link_dir / ".flwr")},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            with suppress(OSError), __import__("socket").create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, (logs / "superlink.log").read_text()
            time.sleep(0.3)
        dirs = {p: tmp_path / "orgs" / p / "veil" for p in parties}  # separate roots, one per party
        for directory in dirs.values():
            directory.parent.mkdir(parents=True)
        server.mkdir(parents=True, exist_ok=True)
        for party, directory in dirs.items():
            link = f"127.0.0.1:{port}"
            command = [sys.executable, "-m", "simulator.cli", "supernode", "--party", party,
                       "--dir", str(directory), "--superlink", link, "--scenario", str(SMOKE)]  # fmt: skip
            if can_hide():
                others = [d.parent for p, d in dirs.items() if p != party]
                command = hiding([server, link_dir, home, *others], command)
            start(party, command, directory.parent, {})
        yield {**env, "FLWR_HOME": str(home)}, dirs
    finally:
        for proc in started:
            kill_session(proc.pid)


def audit(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "audit.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_supernode_per_party_gives_the_records_of_the_simulation(tmp_path: Path) -> None:
    from test_flower_app import records

    scenario = load_scenario(SMOKE)
    parties = [p.name for p in roles.parties(scenario)]
    server = tmp_path / "server"
    out = server / "runs"
    if can_hide():  # what a SuperNode sees of the server's directory and another party's: nothing
        (server / "secret").mkdir(parents=True)
        (server / "secret" / "f").write_text("x")
        seen = subprocess.run(hiding([server], ["ls", "-A", str(server)]), capture_output=True, text=True)
        assert seen.returncode == 0 and seen.stdout == "", seen
        (server / "secret" / "f").unlink()
        (server / "secret").rmdir()
    else:
        print("no mount namespaces here: the SuperNodes could read the server's directory (same user)")
    with federation(tmp_path, parties, server) as (env, dirs):
        t0 = time.monotonic()
        done = subprocess.run(
            [str(FLWR_BIN / "flwr"), "run", ".", "--stream", "--run-config",
             f"scenario='scenarios/smoke.yaml' out='{out}' seed=0"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        wall = time.monotonic() - t0
    stream = done.stdout + done.stderr
    print(f"flwr run of the smoke scenario on {len(parties)} SuperNodes: {wall:.0f} s")
    assert done.returncode == 0 and "all stages done" in stream, stream[-5000:]
    (run_dir,) = out.iterdir()
    events = audit(run_dir)

    # nothing private reached the server; each node holds its own party's directory only
    assert not (run_dir / "parties").exists() or not any((run_dir / "parties").rglob("*.*"))
    for party, directory in dirs.items():
        (node_run,) = [p for p in directory.iterdir() if p.name == run_dir.name]
        assert sorted(p.name for p in (node_run / "parties").iterdir()) == [party]
        assert (node_run / "scenario.yaml").read_bytes() == (run_dir / "scenario.yaml").read_bytes()
    # the pool travelled as messages: each entity's shards fetched from it, and sent to those who read it
    gets = {(e["sender"], e["path"]) for e in events if e["type"] == "courier.get"}
    puts = {(e["receiver"], e["path"]) for e in events if e["type"] == "courier.put"}
    for entity in scenario.entities:
        assert (entity.name, f"pool/{entity.name}--poisoned.f16.npy") in gets
        assert ("eve", f"pool/{entity.name}--poisoned.f16.npy") in puts
    assert ("owner", "public/codes.npy") in gets and ("eve", "public/codes.npy") in puts
    assert all(str(e["path"]).startswith(("pool/", "public/", "figures/")) for e in events if "path" in e)
    assert {e["type"] for e in events} >= {"query.put", "query.get", "query.whoami"}
    for f in (run_dir / "pool").glob("*.npy"):  # the server's pool is what the nodes published
        assert any(e.get("sha256") == hashlib.sha256(f.read_bytes()).hexdigest() for e in events)

    # the same records as the simulation (the inline engine runs the same stage code in one process)
    sim = veil("run", str(SMOKE), "--engine", "inline", "--out", str(tmp_path / "sim"), timeout=RUN_TIMEOUT_S)
    assert sim.returncode == 0, sim.stderr[-3000:]
    (sim_dir,) = (tmp_path / "sim").iterdir()
    assert records(run_dir) == records(sim_dir)


def test_a_node_takes_in_only_a_run_of_its_scenario_that_names_it(tmp_path: Path) -> None:
    from simulator.deploy import join_run

    resolved = load_scenario(SMOKE).resolved_yaml()
    config: dict[str, object] = {"party": "E1", "dir": str(tmp_path), "scenario": "other"}
    with pytest.raises(ValueError, match="node serves 'other'"):
        join_run(config, "/server/runs/smoke-1", resolved)
    with pytest.raises(ValueError, match="'E9' is not a party"):
        join_run({**config, "party": "E9", "scenario": "smoke"}, "/server/runs/smoke-1", resolved)
    assert list(tmp_path.iterdir()) == []  # refused: nothing taken in
    with pytest.raises(ValueError, match="plain directory name"):
        join_run({**config, "scenario": "smoke"}, "/server/runs/..", resolved)
    root, party = join_run({**config, "scenario": "smoke"}, "/server/runs/smoke-1", resolved)
    assert (root, party) == (tmp_path / "smoke-1", "E1")
    assert (root / "scenario.yaml").read_text() == resolved
    with pytest.raises(ValueError, match="another scenario"):
        join_run({**config, "scenario": "smoke"}, "/server/runs/smoke-1", resolved + "# changed\n")


def test_adversaries_that_read_another_partys_directory_are_refused_when_apart() -> None:
    from simulator.engines import RunFailed
    from simulator.engines.flower.session import check_apart

    check_apart(load_scenario(SMOKE))  # an outsider needs only what is shared
    insider = load_scenario(SMOKE, ["adversaries[0].knowledge=insider", "adversaries[0].of=E2"])
    with pytest.raises(RunFailed, match=r"eve \(insider of E2\) read another party's directory"):
        check_apart(insider)
