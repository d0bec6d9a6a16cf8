"""`veil run --ray-address` (simulator.cluster) and `--parallel` sweeps (simulator.sweep.run_parallel).

Fast tests: the flags' refusals (exit 2, nothing written) and the node check on a fake node list. Slow
ones (-m slow): a Ray head and a worker started here on loopback, the smoke scenario across them; a
parallel sweep against a sequential one; a parallel sweep stopped by SIGINT, then resumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from simulator import cluster
from simulator.cli import main, parse_parallel
from simulator.cluster import ClusterError, Node, check_nodes_see, parse_address
from simulator.schema import ScenarioError
from tests.conftest import Veil, session_members
from tests.test_structure import records_without_timings

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"
RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fast: refusals before anything is written ----------------------------------------------------


@pytest.mark.parametrize("sweep", [[], ["--seeds", "0-1"]])
def test_an_unreachable_address_exits_2_fast_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: list[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "runs"
    t0 = time.monotonic()
    assert main(["run", str(SMOKE), *sweep, "--ray-address", address, "--out", str(out)]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "--ray-address" in err and address in err and "Traceback" not in err
    assert not out.exists()


def test_an_unreachable_address_on_resume_writes_nothing(
    smoke_like_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in smoke_like_run.rglob("*"))
    assert main(["run", "--resume", str(smoke_like_run), "--ray-address", f"127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the Ray head" in capsys.readouterr().err
    assert sorted(p.name for p in smoke_like_run.rglob("*")) == before


@pytest.fixture
def smoke_like_run(tmp_path: Path) -> Path:
    """A run directory as `veil run` creates it, before any stage ran."""
    from simulator.rundir import RunDir
    from simulator.schema import load_scenario

    return RunDir.create(load_scenario(SMOKE), tmp_path).root


@pytest.mark.parametrize("address", ["nohost", "host:", "host:99999", "ray://127.0.0.1:10001", "a b:1"])
def test_a_malformed_address_is_named(address: str) -> None:
    with pytest.raises(ScenarioError, match="--ray-address"):
        parse_address(address)
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)


def test_the_inline_engine_with_a_ray_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    argv = ["run", str(SMOKE), "--engine", "inline", "--ray-address", "127.0.0.1:6379", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ray-address" in err and "flower engine" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", "two"])
def test_a_bad_parallel_value_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "runs"
    assert main(["run", str(SMOKE), "--seeds", "0-1", f"--parallel={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--parallel" in err and repr(value) in err and "Traceback" not in err
    assert not out.exists()


def test_parallel_values() -> None:
    assert parse_parallel(None) is None
    assert parse_parallel("auto") == 0  # the flag without N: simulator.sweep.default_parallel
    assert parse_parallel("3") == 3


def test_parallel_on_one_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["run", str(SMOKE), "--parallel", "2", "--out", str(out)]) == 2
    assert "--parallel" in capsys.readouterr().err
    assert not out.exists()


# --- fast: the node check --------------------------------------------------------------------------

NODES = [Node("a" * 56, "10.0.0.1", "head"), Node("b" * 56, "10.0.0.2", "worker-2")]


def test_every_node_that_reads_the_probe_passes(tmp_path: Path) -> None:
    def read(nodes: list[Node], path: str, timeout: float) -> dict[str, str]:
        return {n.node_id: Path(path).read_text() for n in nodes}

    assert check_nodes_see(tmp_path, NODES, read) == 2
    assert list(tmp_path.iterdir()) == []  # the probe is removed


def test_a_node_that_cannot_see_the_directory_is_named(tmp_path: Path) -> None:
    def read(nodes: list[Node], path: str, timeout: float) -> dict[str, str]:
        # the head mounts the run directory; worker-2 has another disk there, with no such file
        return {NODES[0].node_id: Path(path).read_text(), NODES[1].node_id: "!No such file or directory"}

    with pytest.raises(ClusterError) as caught:
        check_nodes_see(tmp_path, NODES, read)
    text = str(caught.value)
    assert "1 of 2" in text and NODES[1].node_id in text and "10.0.0.2" in text and "worker-2" in text
    assert str(tmp_path.resolve() / cluster.PROBE_PREFIX) in text and "No such file" in text
    assert NODES[0].node_id not in text
    assert list(tmp_path.iterdir()) == []


def test_a_node_reading_another_file_or_silent_is_named(tmp_path: Path) -> None:
    def read(nodes: list[Node], path: str, timeout: float) -> dict[str, str]:
        return {NODES[0].node_id: "an older probe"}  # and worker-2 never answered

    with pytest.raises(ClusterError, match="2 of 2") as caught:
        check_nodes_see(tmp_path, NODES, read)
    assert "other content" in str(caught.value) and "no answer" in str(caught.value)


def test_veil_run_exits_2_naming_the_blind_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole `veil run` path with a listening head and two nodes, one of which cannot read."""
    monkeypatch.setattr(cluster, "connect", lambda address: None)
    monkeypatch.setattr(cluster, "alive_nodes", lambda: NODES)
    monkeypatch.setattr(
        cluster,
        "ray_reader",
        lambda nodes, path, timeout: {NODES[0].node_id: Path(path).read_text(), NODES[1].node_id: "!EACCES"},
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        assert main(["run", str(SMOKE), "--ray-address", address, "--out", "runs-rel"]) == 2  # relative
        err = capsys.readouterr().err
        assert NODES[1].node_id in err and "10.0.0.2" in err and "Traceback" not in err
        assert str(Path("runs-rel").absolute()) in err  # the run directory made absolute
        Path("runs-rel").rmdir()
        assert main(["run", str(SMOKE), "--ray-address", address, "--out", str(out)]) == 2
    assert list(out.iterdir()) == []  # no run directory


# --- slow: a real cluster on loopback ------------------------------------------------------------


class RayNode:
    """`ray start --block` in a session of its own; stopped by killing that session (never `ray stop`,
    which stops every Ray on the machine)."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [str(RAY), "start", "--block", "--num-cpus", "1", *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
            )

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while session_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in session_members(self.proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def wait_for_nodes(address: str, count: int, timeout: float = 90) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes")


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head and one worker on 127.0.0.1, one CPU each; their address."""
    tmp = tmp_path_factory.mktemp("ray-cluster")
    short = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))  # Ray's socket paths must fit 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = RayNode(
        ["--head", "--port", str(port), "--temp-dir", str(short), "--include-dashboard", "false"],
        tmp / "head.log",
    )
    nodes = [head]
    try:
        wait_for_nodes(address, 1)
        nodes.append(RayNode(["--address", address], tmp / "worker.log"))
        wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.slow
def test_the_smoke_scenario_across_a_loopback_cluster(loopback_cluster: str, tmp_path: Path) -> None:
    veil = Veil(
        [str(SMOKE), "--ray-address", loopback_cluster, "--out", str(tmp_path / "c")], tmp_path / "c.log"
    )
    assert veil.wait() == 0, veil.output[-5000:]
    (run,) = (tmp_path / "c").iterdir()
    assert "2 node(s), each reads" in veil.output
    assert "pid=" not in veil.output and "\x1b[36m(" not in veil.output  # Ray's actor lines: in ray.log
    assert (run / cluster.RAY_LOG).is_file()
    assert main(["run", str(SMOKE), "--engine", "inline", "--out", str(tmp_path / "local")]) == 0
    (local,) = (tmp_path / "local").iterdir()
    assert records_without_timings(run) == records_without_timings(local)


def sweep_of(out: Path) -> Path:
    (root,) = out.iterdir()
    return root


@pytest.mark.slow
def test_a_parallel_sweep_gives_a_sequential_sweeps_records(tmp_path: Path) -> None:
    common = [str(SMOKE), "--seeds", "0-1", "--engine", "inline"]
    assert main(["run", *common, "--out", str(tmp_path / "seq")]) == 0
    veil = Veil([*common, "--parallel", "2", "--out", str(tmp_path / "par")], tmp_path / "par.log")
    assert veil.wait() == 0, veil.output[-5000:]
    seq, par = sweep_of(tmp_path / "seq"), sweep_of(tmp_path / "par")
    assert json.loads((seq / "sweep.json").read_text()) == json.loads((par / "sweep.json").read_text())
    for name in ("seed-0", "seed-1"):
        assert records_without_timings(seq / name) == records_without_timings(par / name)
        assert (par / "logs" / f"{name}.log").is_file()
    assert re.search(r"seed-0: started .*\n.*seed-1: started", veil.output)  # both out before either ended


@pytest.mark.slow
def test_a_parallel_sweep_stopped_by_sigint_resumes_to_the_end(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = [str(SMOKE), "--seeds", "0-2", "--engine", "inline", "--parallel", "2", "--out", str(out)]
    veil = Veil(args, tmp_path / "first.log")
    deadline = time.monotonic() + 300
    while not list(out.glob("*/seed-*/results/pretrain.jsonl")):
        assert veil.proc.poll() is None, veil.output[-5000:]
        assert time.monotonic() < deadline, veil.output[-5000:]
        time.sleep(0.2)
    children = [int(pid) for pid in re.findall(r"started \(pid (\d+)", veil.output)]
    os.kill(veil.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the sweep (not its children)
    assert veil.wait(timeout=120) == 130, veil.output[-5000:]
    assert "completes the sweep" in veil.output and "Traceback" not in veil.output
    assert children and not [pid for pid in children if session_members(pid)]  # nothing left running
    root = sweep_of(out)
    assert not (root / "seed-2" / "results").exists()  # never started: no new run after the stop
    again = Veil(["--resume", str(root), "--parallel", "2"], tmp_path / "again.log")
    assert again.wait() == 0, again.output[-5000:]
    for name in ("seed-0", "seed-1", "seed-2"):
        manifest = json.loads((root / name / "manifest.json").read_text())
        assert all(s["status"] == "done" for s in manifest["stages"].values()), name
        assert (root / "logs" / f"{name}.log").is_file()
    attempts = [(root / "logs" / f"seed-{i}.log").read_text().count("\n--- ") for i in range(3)]
    assert max(attempts) >= 1  # a stopped run's log holds both attempts
