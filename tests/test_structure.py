"""The shape of the code: stages, engines, party views, registries, and what crosses a party's boundary.

The run-based tests read the session's smoke run (Flower engine, tests/conftest.py) or make their own.
"""

from __future__ import annotations

import ast
import json
import math
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from entities import registry
from entities.data import partition
from entities.datasets import load_dataset
from entities.files import write_atomic
from reports.runs import load_run
from simulator import sealing
from simulator.pool import Pool
from simulator.roles import Party, Role, parties
from simulator.rundir import RunDir
from simulator.schema import load_scenario
from simulator.stages import RUN_ORDER, STAGES
from simulator.views import Forbidden, PartyView

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def records_without_timings(run_dir: Path) -> list[tuple[object, ...]]:
    frame = load_run(run_dir).records
    frame = frame[~frame.metric.str.endswith("_s")]
    return sorted(  # a NaN (a diverged training loss) as a string: NaN == NaN is false
        (*r[:-1], "nan" if math.isnan(r[-1]) else r[-1])
        for r in frame[["table", "row", "label", "entity", "metric", "value"]].itertuples(index=False)
    )


# --- flwr stays behind the Flower engine -----------------------------------------------------


def test_flwr_is_imported_only_inside_the_flower_engine() -> None:
    engine = ROOT / "simulator" / "engines" / "flower"
    offenders = []
    for package in ("simulator", "entities", "reports"):
        for path in (ROOT / package).rglob("*.py"):
            if engine in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "flwr" or n.startswith("flwr.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
    # and at run time: the CLI, the launcher, the inline engine and a party's node load no flwr
    code = (
        "import sys, simulator.cli, simulator.launcher, simulator.engines.inline, simulator.node;"
        "from simulator.engines import get_engine; get_engine('inline');"
        "print('flwr' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --- party views ---------------------------------------------------------------------------


def test_a_view_refuses_what_its_role_or_identity_does_not_allow(tmp_path: Path) -> None:
    scenario = load_scenario(SMOKE)
    e1 = PartyView(tmp_path, Party("E1", Role.ENTITY), scenario)
    e2 = PartyView(tmp_path, Party("E2", Role.ENTITY), scenario)
    e2.write_private("dpm.pt", b"E2's private weights")
    for name in ("../../E2/private/dpm.pt", "../E2", "/etc/passwd", ".hidden", "a/b"):
        with pytest.raises(Forbidden, match="not a plain file name"):
            e1.private_file(name)
    with pytest.raises(FileNotFoundError):  # E1's own directory has no dpm.pt: it cannot reach E2's
        e1.read_private("dpm.pt")
    with pytest.raises(Forbidden, match="may not write the public directory"):
        e1.public_dir()
    with pytest.raises(Forbidden, match="holds no issued keys"):
        e1.keys_file()
    user = PartyView(tmp_path, Party("alice", Role.AUTHORISED_USER), scenario)
    with pytest.raises(Forbidden, match="may not publish to the pool"):
        user.pool.publish("poisoned", np.zeros((2, 4, 2, 2)), np.array([0, 1]))
    # a party publishes under its own name only
    shard = e1.pool.publish("poisoned", np.ones((2, 4, 2, 2)), np.array([0, 1]))
    assert shard.owner == "E1" and [s.owner for s in Pool(tmp_path / "pool").shards()] == ["E1"]
    e2.pool.read("E1", "poisoned")
    assert [(r.what, r.sha256) for r in e2.reads] == [("pool/E1/poisoned", shard.sha256)]


def test_private_files_are_0600_in_0700_directories_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        view = PartyView(tmp_path, Party("E1", Role.ENTITY), load_scenario(SMOKE))
        path = view.write_private("partition.npz", b"x")
        view.identity()
        write_atomic(tmp_path / "elsewhere" / "k", b"y", private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((path.parent / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o700
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file left behind


def test_smoke_run_private_directories_are_private(smoke_run: Path) -> None:
    for directory in (smoke_run / "parties").glob("*/*"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_sealed_bytes_open_only_for_their_recipient() -> None:
    alice, bob = sealing.new_private_key(), sealing.new_private_key()
    blob = sealing.seal(sealing.public_key(alice), b"the supports", b"keys|owner|alice")
    assert b"the supports" not in blob
    assert sealing.open_sealed(alice, blob, b"keys|owner|alice") == b"the supports"
    for key, context, data in (
        (bob, b"keys|owner|alice", blob),  # another party's key
        (alice, b"keys|owner|bob", blob),  # replayed as another user's
        (alice, b"keys|owner|alice", blob[:-1] + bytes([blob[-1] ^ 1])),  # altered
    ):
        with pytest.raises(InvalidTag):
            sealing.open_sealed(key, data, context)


# --- the audit log -------------------------------------------------------------------------


def test_audit_lists_every_shared_file_each_party_read(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = run.scenario()
    events = run.audit_events()
    reads = {(e["party"], e["what"]): e["sha256"] for e in events if e["type"] == "read"}
    shards = {f"{s.owner}/{s.name}": s.sha256 for s in Pool(run.pool_dir).shards()}
    expected = set()
    for row in scenario.collaboration:
        for src in row.sources():
            if src.kind == "poisoned" or (src.kind == "original" and src.of != row.entity):
                expected.add((row.entity, f"pool/{src.of}/{src.kind}"))
    assert expected, "the smoke table reads the pool"
    for party, what in expected:
        assert reads.get((party, what)) == shards[what.removeprefix("pool/")], (party, what)
    entities = {e.name for e in scenario.entities}
    pooled = {key for key in reads if key[1].startswith("pool/") and key[0] in entities}
    assert pooled == expected  # no entity read a shard its rows do not name (adversaries: test_adversaries)
    manifest = json.loads((run.root / "public" / "manifest.json").read_text())
    assert scenario.data_owner is not None
    for user in scenario.data_owner.users:
        for name, info in manifest["files"].items():
            assert reads[(user.name, f"public/{name}")] == info["sha256"]
        assert (user.name, f"parties/{user.name}/keys/keys.vkey") in reads


def test_each_process_builds_the_dataset_once(smoke_run: Path) -> None:
    builds = [
        e["what"]
        for e in RunDir(smoke_run).audit_events()
        if e["what" if "what" in e else "type"]
        and e["type"] == "read"
        and e["what"].startswith("dataset built")
    ]
    assert builds, "a dataset build leaves an audit line"
    per_process: dict[str, int] = {}
    for what in builds:
        per_process[what] = per_process.get(what, 0) + 1
    assert set(per_process.values()) == {1}, per_process  # built once per node process, never again
    n_parties = len(parties(RunDir(smoke_run).scenario()))
    assert len(per_process) < n_parties  # processes serve several parties and keep what they built


# --- engines and stages --------------------------------------------------------------------


def test_the_inline_engine_gives_the_flower_engines_results(smoke_run: Path, inline_smoke_run: Path) -> None:
    inline = inline_smoke_run
    assert records_without_timings(inline) == records_without_timings(smoke_run)
    for unit in ("prepare", "poison", "table", "refine-row01"):  # the same bytes, file by file
        for path in (smoke_run / "results").glob(f"{unit}*.jsonl"):
            if not any(json.loads(line)["metric"].endswith("_s") for line in path.read_text().splitlines()):
                assert (inline / "results" / path.name).read_bytes() == path.read_bytes(), path.name


NOOP_STAGE = """
from simulator.protocol import Payload, Record, Task
from simulator.roles import Role
from simulator.stages import Stage, register


@register
class Noop(Stage):
    name = "noop"
    roles = frozenset({Role.ENTITY})

    def plan(self, server):
        return [Task(self.name, p) for p in server.of_role(Role.ENTITY)]

    def work(self, view, task):
        return Payload(metrics={"did_nothing": 1.0})

    def collect(self, server, task, reply):
        value = reply.metrics["did_nothing"]
        server.records.append(Record("noop", None, task.party, task.party, "did_nothing", value))
"""


@pytest.mark.parametrize("engine", ["inline", "flower"])
def test_a_new_stage_runs_in_both_engines_without_touching_another_module(
    engine: str, tmp_path: Path
) -> None:
    """A stage defined outside the package, loaded through VEIL_PLUGINS, after the built-in stages (marked
    done beforehand, so that only the new one runs)."""
    (tmp_path / "noop_stage.py").write_text(textwrap.dedent(NOOP_STAGE))
    run = RunDir.create(load_scenario(SMOKE), tmp_path / "runs")
    for name in RUN_ORDER:
        run.mark_stage(name, status="done", wall_s=0.0)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "VEIL_PLUGINS": "noop_stage"}
    out = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", "--resume", str(run.root), "--engine", engine],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert run.stage_done("noop")
    assert "noop" not in STAGES  # this process never loaded it
    lines = [json.loads(x) for x in (run.results_dir / "noop.jsonl").read_text().splitlines()]
    assert [(r["entity"], r["value"]) for r in lines] == [(e.name, 1.0) for e in run.scenario().entities]
    sent = [e for e in run.audit_events() if e["type"] == "train.noop"]
    assert len(sent) == 2 * len(run.scenario().entities)  # each task and its reply


# --- registries and seeds ------------------------------------------------------------------


def test_every_declared_name_has_an_implementation() -> None:
    import entities.codecs
    import entities.entity
    import entities.nets  # noqa: F401 - the backbones
    import entities.sparse  # noqa: F401 - registers the samplers
    import simulator.stages.refine  # noqa: F401 - the feature sources

    for family in (
        registry.BACKBONES,
        registry.DATASETS,
        registry.OPTIMIZERS,
        registry.OBJECTIVES,
        registry.SAMPLERS,
        registry.SOURCES,
        registry.CODECS,
    ):
        assert family.missing() == [], family.family
    with pytest.raises(registry.UnknownName, match="unknown optimizer 'lbfgs'; known: sgd, adam"):
        registry.OPTIMIZERS.get("lbfgs")
    assert tuple(STAGES.names[: len(RUN_ORDER)]) == RUN_ORDER


def test_dataset_seed_chooses_the_task_and_seed_the_training(tmp_path: Path) -> None:
    base = load_scenario(SMOKE)
    fixed = [load_scenario(SMOKE, [f"seed={s}", "dataset.seed=7"]) for s in (0, 1)]
    assert [s.task_seed for s in fixed] == [7, 7] and base.task_seed == base.seed == 0  # default: as before
    a, b = (load_dataset(s.dataset, seed=s.task_seed) for s in fixed)
    assert np.array_equal(a.task_train.images, b.task_train.images)
    assert a.task_train.classes == b.task_train.classes
    fractions = [e.fraction for e in base.entities]
    parts = [partition(a.task_train.labels, fractions, seed=s.task_seed) for s in fixed]
    assert all(np.array_equal(x, y) for x, y in zip(*parts, strict=True))
    other = load_dataset(base.dataset, seed=1)
    assert not np.array_equal(other.task_train.images, load_dataset(base.dataset, seed=0).task_train.images)
