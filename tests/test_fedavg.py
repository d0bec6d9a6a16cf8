"""FedAvg (simulator.stages.fedavg) and label-skewed partitions (entities.data.partition).

The smoke run (the Flower engine, conftest's `smoke_run`) holds FedAvg's rounds; the inline engine reruns
only that stage on a copy of it and must give the same records. The partitions are drawn by the real
`prepare` stage, in this process, and judged from the histograms it records.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMOKE, result_records

from entities.data import partition
from entities.federated import weighted_average
from simulator.cli import main
from simulator.engines.inline import run_inline
from simulator.rundir import RunDir
from simulator.schema import ScenarioError, load_scenario
from simulator.stages import RUN_ORDER

FEDAVG_TABLES = ("fedavg", "fedavg_rounds", "bytes", "bytes_total")


def fedavg_records(run_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (r for r in result_records(run_dir) if r["table"] in FEDAVG_TABLES),
        key=lambda r: (r["table"], -1 if r["row"] is None else r["row"], r["label"], r["metric"]),
    )


def test_fedavg_in_the_smoke_run_through_flower(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = run.scenario()
    assert scenario.fedavg is not None
    entities = [e.name for e in scenario.entities]
    records = fedavg_records(smoke_run)
    assert records and all(math.isfinite(r["value"]) for r in records)
    final = {r["metric"]: r["value"] for r in records if r["table"] == "fedavg" and r["row"] == 0}
    assert 0 <= final["top1"] <= final["top5"] <= 100
    assert final["rounds"] == scenario.fedavg.rounds
    n_train = {r["entity"]: r["value"] for r in result_records(smoke_run) if r["table"] == "partitions"}
    assert final["n_train"] == sum(n_train.values())
    local = {r["entity"] for r in records if r["table"] == "fedavg" and r["row"] and r["metric"] == "top1"}
    assert local == set(entities)
    rounds = sorted({r["row"] for r in records if r["table"] == "fedavg_rounds"})
    assert rounds == list(range(1, scenario.fedavg.rounds + 1))

    # The weights travel: each round the global model to every entity and its update back ("train"),
    # the average to the leader ("evaluate"), and to no other party; each as big as F + C.
    events = [e for e in run.audit_events() if e["type"] in ("train", "evaluate")]
    sent = [e for e in events if e["type"] == "train" and e["sender"] == "server"]
    back = [e for e in events if e["type"] == "train" and e["receiver"] == "server"]
    evaluated = [e for e in events if e["type"] == "evaluate" and e["sender"] == "server"]
    assert sorted(e["receiver"] for e in sent) == sorted(entities * scenario.fedavg.rounds)
    assert sorted(e["sender"] for e in back) == sorted(entities * scenario.fedavg.rounds)
    assert [e["receiver"] for e in evaluated] == [scenario.leading_entity] * scenario.fedavg.rounds
    nets = run.load_nets()
    model_bytes = sum(
        v.numel() * v.element_size() for n in ("featurizer", "decider") for v in nets[n].values()
    )
    for e in sent + back + evaluated:
        arrays = e["records"]["arrays"]["arrays"]
        assert len(arrays) == len(nets["featurizer"]) + len(nets["decider"]), e["type"]
        assert e["bytes"] >= model_bytes * 0.99, (e["bytes"], model_bytes)
    # the bytes record counts the arrays the messages carried (the audit adds their config and records)
    assert final["bytes"] <= sum(e["bytes"] for e in events) and final["bytes"] >= model_bytes * len(
        sent + back
    )
    pooled = {r["label"]: r["value"] for r in records if r["table"] == "bytes_total"}
    assert 0 < pooled["pool (every shard)"] < pooled["FedAvg"] == final["bytes"]


def test_inline_engine_gives_the_flower_records(smoke_run: Path, tmp_path: Path) -> None:
    """FedAvg again on a copy of the smoke run, inline: Flower's strategy and Veil's rounds agree exactly."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy, ignore=shutil.ignore_patterns("report"))
    for path in copy.glob("results/*fedavg*.jsonl"):
        path.unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"]["fedavg"]["status"] = "pending"
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    before = len(RunDir(copy).audit_events())
    assert main(["run", "--resume", str(copy), "--engine", "inline"]) == 0
    assert fedavg_records(copy) == fedavg_records(smoke_run)
    events = RunDir(copy).audit_events()[before:]
    assert {e["type"] for e in events if "records" in e} >= {"train", "evaluate"}


def test_weighted_average_is_flowers_aggregation() -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(0)
    states = [
        {"w": rng.standard_normal((5, 3)).astype(np.float32), "n": np.array(7 + i, dtype=np.int64)}
        for i in range(3)
    ]
    weights = [72.0, 48.0, 12.0]
    replies = [
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in s.items()}),
                "m": MetricRecord({"num-examples": w}),
            }
        )
        for s, w in zip(states, weights, strict=True)
    ]
    theirs = {k: a.numpy() for k, a in aggregate_arrayrecords(replies, "num-examples").items()}
    ours = weighted_average(states, weights)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k]), k
    assert not np.array_equal(weighted_average(states[::-1], weights[::-1])["w"], ours["w"] * 2)


def histograms(tmp_path: Path, name: str, overrides: list[str]) -> np.ndarray:
    """The class histograms the `prepare` stage records (entities x classes), run inline here."""
    run = RunDir.create(load_scenario(SMOKE, overrides), tmp_path / name)
    for stage in RUN_ORDER:
        if stage != "prepare":
            run.mark_stage(stage, status="done", wall_s=0.0)
    run_inline(run, lambda _: None)
    scenario = run.scenario()
    rows = [r for r in result_records(run.root) if r["table"] == "class_histogram"]
    n_classes = 1 + max(r["row"] for r in rows)
    out = np.zeros((len(scenario.entities), n_classes))
    for r in rows:
        out[[e.name for e in scenario.entities].index(r["entity"]), r["row"]] = r["value"]
    n_train = {r["entity"]: r["value"] for r in result_records(run.root) if r["table"] == "partitions"}
    assert out.sum(axis=1).tolist() == [n_train[e.name] for e in scenario.entities]
    return out


def test_dirichlet_skew_from_the_recorded_histograms(tmp_path: Path) -> None:
    data = ["dataset.train_per_class=100"]
    strong = histograms(tmp_path, "strong", [*data, "partition={kind: dirichlet, concentration: 0.05}"])
    mild = histograms(tmp_path, "mild", [*data, "partition={kind: dirichlet, concentration: 1000}"])
    flat = histograms(tmp_path, "flat", data)
    again = histograms(tmp_path, "again", [*data, "partition={kind: dirichlet, concentration: 0.05}"])
    other = histograms(
        tmp_path, "other", [*data, "dataset.seed=1", "partition={kind: dirichlet, concentration: 0.05}"]
    )
    share = lambda h: h / h.sum(axis=1, keepdims=True)  # noqa: E731
    n_classes = strong.shape[1]
    # strong skew: each entity's largest class holds most of its images; mild: every class near 1/C
    assert share(strong).max(axis=1).mean() > 0.6, strong
    assert np.abs(share(mild) - 1 / n_classes).max() < 0.06, mild
    assert np.abs(share(flat) - 1 / n_classes).max() < 0.02, flat  # stratified, as before
    assert (strong.sum(axis=1) == flat.sum(axis=1)).all()  # the sizes stay the fractions
    assert np.array_equal(strong, again) and not np.array_equal(strong, other)  # dataset.seed decides


def test_classes_per_entity_and_same_seed_same_partition() -> None:
    labels = np.repeat(np.arange(6), 40)
    fractions = [0.3, 0.3, 0.2, 0.05]
    parts = partition(labels, fractions, seed=3, classes_per_entity=2)
    assert [len(np.unique(labels[p])) for p in parts] == [2, 2, 2, 2]
    assert [len(p) for p in parts] == [len(p) for p in partition(labels, fractions, seed=3)]
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)  # disjoint
    again = partition(labels, fractions, seed=3, classes_per_entity=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    dirichlet = [partition(labels, fractions, seed=s, concentration=0.3) for s in (3, 3, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(dirichlet[0], dirichlet[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(dirichlet[0], dirichlet[2], strict=True))


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("partition={kind: dirichlet, concentration: 0}", "partition.concentration"),
        ("partition={kind: dirichlet, concentration: -0.5}", "partition.concentration"),
        ("fedavg.rounds=0", "fedavg.rounds"),
        ("fedavg.local_epochs=0", "fedavg.local_epochs"),
        ("partition={kind: classes, per_entity: 7}", "partition.per_entity"),  # smoke has 6 classes
    ],
)
def test_bad_input_refused_naming_the_field(override: str, path: str) -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario(SMOKE, [override])
    assert [p.path for p in err.value.problems] == [path], err.value.problems
