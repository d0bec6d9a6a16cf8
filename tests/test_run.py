"""Whole runs of scenarios/smoke.yaml on real Flower + Ray with real files: no mocks.

The runs are made once per session, in the background, by tests/conftest.py; these tests
only read what they left behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import BROKEN_PARTY, CORRUPT_SHARD, EARLIER_STAGES, BrokenResume, KilledRun, result_records
from PIL import Image

from simulator.pool import CorruptShard, Pool
from simulator.roles import parties as all_parties
from simulator.rundir import RunDir
from simulator.schema import PhotosDataset, Scenario, load_scenario
from simulator.stages import RUN_ORDER as STAGES
from simulator.stages import Stage, stage_order

Key = tuple[str, Any, str, str, str]
SHARED_NETS = {"featurizer", "decider", "reconstructor"}
PRIVATE_FILES = {"partition.npz", "dpm.pt", "identity.key"}  # identity.key: the party's X25519 key
T12 = ("table1", "table2")
# Audit events that record what a party read, published or sealed, not a message.
FILE_EVENTS = {"pool.publish", "public.publish", "sealed", "read"}


def metrics(run_dir: Path) -> dict[Key, float]:
    """Every result record but wall times (metrics named *_s), by (table, row, label, entity, metric)."""
    records = [r for r in result_records(run_dir) if not r["metric"].endswith("_s")]
    out = {(r["table"], r["row"], r["label"], r["entity"], r["metric"]): r["value"] for r in records}
    assert len(out) == len(records), "two records share one (table, row, label, entity, metric)"
    return out


def scenario_of(run_dir: Path) -> Scenario:
    return RunDir(run_dir).scenario()


def row_file(index: int) -> str:
    return f"refine-row{index + 1:02d}.jsonl"


def failure(output: str) -> str:
    """What `veil run` said on failing: from 'veil run failed:' to the end."""
    assert "veil run failed:" in output, output[-5000:]
    return output[output.index("veil run failed:") :]


def is_image_batch(shape: list[int], patch: int) -> bool:
    return len(shape) == 4 and shape[1] == 3 and tuple(shape[2:]) == (patch, patch)


def message_events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in RunDir(run_dir).audit_events() if e["type"] not in FILE_EVENTS]


def test_smoke_end_to_end(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = load_scenario(run.scenario_path)
    parties = [e.name for e in scenario.entities]
    assert scenario.name == "smoke"
    for name in ("scenario.yaml", "manifest.json", "audit.jsonl", "pool/manifest.json", "shared/nets.pt"):
        assert (smoke_run / name).is_file(), name
    assert run.audit_path.is_file() and run.audit_events()

    stages = run.manifest()["stages"]
    for stage in STAGES:
        assert stages[stage]["status"] == "done", stage
        assert isinstance(stages[stage]["wall_s"], float) and stages[stage]["wall_s"] >= 0, stage

    records = result_records(smoke_run)
    assert {r["table"] for r in records} >= {"partitions", "pretrain", "table1", "table2", "table5"}
    n_train = {r["entity"]: r["value"] for r in records if r["table"] == "partitions"}
    assert set(n_train) == set(parties) and all(n > 0 for n in n_train.values())
    pretrain = {r["metric"]: r["value"] for r in records if r["table"] == "pretrain"}
    assert 0 <= pretrain["top1"] <= pretrain["top5"] <= 100

    table5 = [r for r in records if r["table"] == "table5"]
    assert sorted({r["row"] for r in table5}) == list(range(1, len(scenario.collaboration) + 1))
    for i, row in enumerate(scenario.collaboration):
        got = {r["metric"]: r["value"] for r in table5 if r["row"] == i + 1}
        assert {r["label"] for r in table5 if r["row"] == i + 1} == {row.label}
        assert 0 <= got["top1"] <= 100 and 0 <= got["top5"] <= 100, row.label
        assert got["top1"] <= got["top5"], row.label
        # A row trains on exactly the data it names: own images or features, the others' shards.
        # (features of mirror images come along when the scenario shares them)
        copies = 1 if row.trains_from_raw or not scenario.dpm.share_mirrored else 2
        assert got["n_train"] == copies * sum(n_train[s.of] for s in row.sources()), row.label
        if row.data == ["own:raw"] and row.entity == scenario.leading_entity:
            # the leader's own-raw row is the classifier it pre-trained and shared, retrained bit for bit
            assert (got["top1"], got["top5"]) == (pretrain["top1"], pretrain["top5"]), row.label
    # Tables 1 and 2: every DPM measured on original and poisoned features.
    with_dpm = [e.name for e in scenario.entities if e.protection.uses_dpm()]
    measured = {(r["table"], r["label"], r["entity"], r["metric"]) for r in records if r["table"] in T12}
    assert measured == {
        (table, kind, party, metric)
        for table, metric in (("table1", "top1"), ("table1", "top5"), ("table2", "l1"), ("table2", "ssim"))
        for kind in ("original", "poisoned")
        for party in with_dpm
    }

    pool_manifest = json.loads((run.pool_dir / "manifest.json").read_text())
    poisoned = {s["owner"]: s for s in pool_manifest["shards"] if s["name"] == "poisoned"}
    assert set(poisoned) == set(parties)
    for party in parties:
        assert poisoned[party]["shape"][0] == n_train[party] * (2 if scenario.dpm.share_mirrored else 1)
        for name in PRIVATE_FILES:
            assert (run.private_dir(party) / name).is_file(), (party, name)
    assert [info.owner for info in Pool(run.pool_dir).verify()]  # every shard matches its digest
    shards = pool_manifest["shards"]  # and the run's manifest says how big the pool grew
    assert run.manifest()["pool"] == {
        "shards": len(shards),
        "rows": sum(s["shape"][0] for s in shards),
        "bytes": sum((run.pool_dir / s["file"]).stat().st_size for s in shards),
    }

    # The grids to look at: each entity's Table 2 (test images, R from original and from poisoned features)
    # and the owner's codes (originals, authorised, as published, random guess, JPEG), 8 images a row
    assert isinstance(scenario.dataset, PhotosDataset) and scenario.data_owner is not None
    grids = {f"table2-{e}.png": (3, scenario.dataset.patch) for e in parties}
    grids[f"codes-{scenario.data_owner.name}.png"] = (5, scenario.data_owner.image_size)
    for name, (rows, side) in grids.items():
        with Image.open(smoke_run / "figures" / name) as image:
            assert image.format == "PNG", name
            width, height = image.size
        assert height == rows * (side + 2), (name, image.size)
        assert width > 8 * (side + 2), (name, image.size)  # eight images, and a label left of each row


@pytest.mark.slow  # a third smoke run; the inline run gives the Flower run's records (test_structure)
def test_same_seed_same_metrics(smoke_run: Path, repeat_run: Path) -> None:
    assert repeat_run != smoke_run
    first, second = metrics(smoke_run), metrics(repeat_run)
    assert set(first) == set(second)
    differ = {k: (first[k], second[k]) for k in first if first[k] != second[k]}
    assert not differ, differ


def test_killed_during_refine_then_resumed(killed_run: KilledRun, smoke_run: Path) -> None:
    # At the kill: refine was under way, some rows written, not all.
    assert killed_run.manifest_at_kill["stages"].get("refine", {}).get("status") != "done"
    for stage in EARLIER_STAGES:
        assert killed_run.manifest_at_kill["stages"][stage]["status"] == "done", stage
    assert 1 <= len(killed_run.rows_at_kill) < killed_run.rows_total, sorted(killed_run.rows_at_kill)

    # The resume finished every stage and the run equals an uninterrupted one.
    resumed = killed_run.resumed
    assert resumed.rc == 0, resumed.output[-5000:]
    run = RunDir(killed_run.run_dir)
    assert all(run.stage_done(stage) for stage in STAGES)
    assert len(list(run.results_dir.glob("refine-row*.jsonl"))) == killed_run.rows_total
    assert metrics(killed_run.run_dir) == metrics(smoke_run)

    # Rows finished before the kill were kept, not recomputed: same file, no new message.
    scenario = scenario_of(killed_run.run_dir)
    later = run.audit_events()[killed_run.audit_lines_at_kill :]
    assert any(e["type"] == "train.refine" for e in later)
    for i, row in enumerate(scenario.collaboration):
        if row_file(i) in killed_run.rows_at_kill:
            path = run.results_dir / row_file(i)
            assert (path.read_bytes(), path.stat().st_mtime_ns) == killed_run.rows_at_kill[row_file(i)]
            assert not [e for e in later if e.get("key") == f"row {row.label}"], row.label
    # Stages done before the kill were skipped on resume.
    assert not [e for e in later if e["type"] in {f"train.{s}" for s in EARLIER_STAGES}]


def test_audit_shows_nothing_private_crossed(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = run.scenario()
    entities = {e.name for e in scenario.entities}
    parties = {p.name for p in all_parties(scenario)}  # the data owner, its users, the adversaries too
    adversaries = {a.name for a in scenario.adversaries}
    assert isinstance(scenario.dataset, PhotosDataset)
    patch = scenario.dataset.patch
    dpm = torch.load(run.private_dir("E1") / "dpm.pt", weights_only=True)
    forbidden = {(key, tuple(t.shape)) for key, t in dpm.items()}
    assert forbidden

    messages = message_events(smoke_run)
    # a stage that federates (fedavg) sends Flower's FedAvg messages, plain "train" and "evaluate"
    tasks = [s for s in stage_order() if type(s).federation is Stage.federation]
    ran = {f"train.{s.name}" for s in tasks if not s.absent(scenario)}
    assert {e["type"] for e in messages} >= ran
    for event in messages:
        assert {"type", "sender", "receiver", "records", "bytes"} <= set(event), event
        assert isinstance(event["bytes"], int) and event["bytes"] >= 0, event
        # Every message goes between the server and one node: parties never talk to each other.
        ends = {event["sender"], event["receiver"]}
        assert "server" in ends and len(ends) == 2, event
        (other,) = ends - {"server"}
        assert other in parties or re.fullmatch(r"node:\d+", other), event
        if event["type"].startswith("train."):
            assert other in parties, event
        for name, record in event["records"].items():
            assert "dpm" not in name.lower(), event
            if record["kind"] != "arrays":
                continue
            if name not in SHARED_NETS and event["type"] in ("train.attack", "train.score"):
                # an attacker's reconstructions: from the adversary to the server, then to the referee that
                # holds the truth (the victim itself, or the data owner for the codes); never another party
                victim = name.split("/")[0]
                if event["type"] == "train.attack":
                    assert event["sender"] in adversaries and event["receiver"] == "server", event
                else:
                    referee = scenario.data_owner.name if victim == "codes" else victim
                    assert (event["sender"], event["receiver"]) == ("server", referee), event
                continue
            if event["type"] in ("train", "evaluate"):
                # FedAvg's global model (F + C) and each entity's update: between the server and an entity
                assert name == "arrays" and other in entities, event
                assert event["type"] == "train" or event["sender"] == "server", event
                assert not any(is_image_batch(a["shape"], patch) for a in record["arrays"].values()), event
                continue
            # Arrays are otherwise only the shared nets F, C, R (and only the leader sends them back).
            assert name in SHARED_NETS, event
            if event["sender"] != "server":
                assert (event["type"], event["sender"]) == ("train.pretrain", scenario.leading_entity)
            for key, arr in record["arrays"].items():
                assert "dpm" not in key.lower(), (event["type"], name, key)
                assert (key, tuple(arr["shape"])) not in forbidden, (event["type"], name, key)
                assert not is_image_batch(arr["shape"], patch), (event["type"], name, key, arr["shape"])

    # The pool holds features only, exactly as published.
    shards = {f"{s.owner}/{s.name}": s for s in Pool(run.pool_dir).shards()}
    published = {e["name"]: e for e in run.audit_events() if e["type"] == "pool.publish"}
    assert set(published) == set(shards)
    for ident, event in published.items():
        shard = shards[ident]
        assert (event["sender"], event["receiver"]) == (shard.owner, "pool")
        assert tuple(event["shape"]) == shard.shape and event["sha256"] == shard.sha256
        assert event["dtype"] == shard.dtype == "float16"
        assert not is_image_batch(event["shape"], patch), ident
        assert len(shard.shape) == 4 and shard.shape[1] != 3, ident  # (N, C, H, W) features

    # Private things lie only under parties/<name>/private; shared/ holds F, C, R and no DPM.
    for path in run.root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(run.root).parts
        if rel[0] == "parties":
            assert rel[1] in parties, rel
            if rel[1] not in entities:
                continue  # the data owner's and its users' files: tests/test_ambiguation.py
            assert len(rel) == 4 and rel[2] == "private", rel
            assert rel[3] in PRIVATE_FILES, rel
        else:
            assert rel[-1] not in PRIVATE_FILES, rel
    nets = torch.load(run.shared_dir / "nets.pt", weights_only=True)
    assert set(nets) == SHARED_NETS
    for name, state in nets.items():
        assert not forbidden & {(key, tuple(t.shape)) for key, t in state.items()}, name


def test_corrupted_shard_refused(corrupt_resume: BrokenResume) -> None:
    resumed = corrupt_resume.resumed
    assert resumed.rc == 1, resumed.output[-5000:]
    said = failure(resumed.output)
    shard_path = corrupt_resume.run_dir / "pool" / CORRUPT_SHARD
    assert str(shard_path) in said and "corrupt" in said and "expected sha256" in said, said[:3000]
    assert not list(corrupt_resume.run_dir.glob("results/refine-row*.jsonl"))  # refused before refine ran

    run = RunDir(corrupt_resume.run_dir)
    assert not run.stage_done("refine")
    for stage in EARLIER_STAGES:
        assert run.stage_done(stage), stage
        assert (run.results_dir / f"{stage}.jsonl").read_bytes() == corrupt_resume.before[stage], stage
    # No result was computed from the spoilt shard.
    owner, name = CORRUPT_SHARD.removesuffix(".f16.npy").split("--")
    for i, row in enumerate(run.scenario().collaboration):
        if any((s.of, s.kind) == (owner, name) for s in row.sources()):
            assert not (run.results_dir / row_file(i)).exists(), row.label
    try:
        Pool(run.pool_dir).read(owner, name)
    except CorruptShard:
        pass
    else:
        raise AssertionError("the spoilt shard reads back as sound")


def test_node_failure_is_loud(node_failure_resume: BrokenResume) -> None:
    resumed = node_failure_resume.resumed
    assert resumed.rc == 1, resumed.output[-5000:]
    said = failure(resumed.output)
    assert f"stage 'refine': node of {BROKEN_PARTY}" in said, said[:3000]
    assert "partition.npz: missing" in said, said[:3000]
    assert "\x1b[" not in said  # plain text, though Ray's remote traceback comes coloured

    run = RunDir(node_failure_resume.run_dir)
    assert not run.stage_done("refine")
    for stage in EARLIER_STAGES:
        assert run.stage_done(stage), stage
        assert (run.results_dir / f"{stage}.jsonl").read_bytes() == node_failure_resume.before[stage], stage
    for i, row in enumerate(run.scenario().collaboration):
        if row.entity == BROKEN_PARTY:
            assert not (run.results_dir / row_file(i)).exists(), row.label
