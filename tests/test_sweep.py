"""`veil run --seeds` and list-valued `--set`: sweep directories that reports/ reads; training curves.

The runs use the inline engine (every party in this process, no Ray) on a tiny scenario cut from
scenarios/smoke.yaml (no data owner, three table rows), so the sweeps take seconds per run.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.cli import main
from simulator.schema import ScenarioError, load_scenario
from simulator.sweep import is_list_value, parse_seeds, split_overrides

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def tiny_scenario(path: Path) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = "tiny"
    for section in ("data_owner", "adversaries", "fedavg"):
        data.pop(section)
    data["entities"] = [e for e in data["entities"] if "protection" not in e]  # the four DPM entities
    data["collaboration"] = [data["collaboration"][i] for i in (3, 4)]  # pooled rows (no raw training)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def only_child(out: Path) -> Path:
    (child,) = out.iterdir()
    return child


def records(run: Path, table: str | None = None) -> list[dict]:
    out = []
    for path in sorted((run / "results").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if table is None or r["table"] == table]


def partition_images(run: Path, party: str) -> tuple[np.ndarray, str]:
    """Which images a party holds: its indices into the dataset, and the dataset's digest."""
    with np.load(io.BytesIO((run / "parties" / party / "private" / "partition.npz").read_bytes())) as z:
        return np.asarray(z["index"]), str(z["digest"])


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("seed-sweep")
    scenario = tiny_scenario(tmp / "tiny.yaml")
    out = tmp / "runs"
    assert main(["run", str(scenario), "--seeds", "0-2", "--engine", "inline", "--out", str(out)]) == 0
    return only_child(out)


# --- parsing, no runs ----------------------------------------------------------------------------------


def test_seeds_ranges_and_lists() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("3-1", "a", "1,,2", "-1", "0-5000"):
        with pytest.raises(ScenarioError):
            parse_seeds(bad)


def test_list_values_and_single_values() -> None:
    assert is_list_value("0.5,1,2")
    assert not is_list_value("[0.5, 1]") and not is_list_value('"a, b"') and not is_list_value("0.5")
    fixed, listed = split_overrides(["dpm.lambda=0.5,1,2", "refine.lr=0.01", "x=[1, 2]"])
    assert fixed == ["refine.lr=0.01", "x=[1, 2]"]
    assert listed == ("dpm.lambda", ["0.5", "1", "2"])


# --- refusals: exit 2, nothing written ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "dpm.lambda=0.5,1", "--set", "refine.lr=0.01,0.02"],  # two lists
        ["--set", "dpm.lambda=0.5,-1"],  # an invalid value in the list
        ["--set", "refine.epochs=1,zero"],  # not a number
        ["--seeds", "0-1", "--set", "refine.lr=0.01,-5"],  # invalid with seeds too
        ["--seeds", "2-1"],
        ["--seeds", "0-1", "--set", "seed=3"],  # --seeds sets the seed
        ["--set", "seed=0,1"],  # that is --seeds
        ["--seeds", "0,99999999999"],  # out of the schema's seed range
    ],
)
def test_refused_sweeps_write_nothing(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    assert main(["run", str(SMOKE), "--engine", "inline", "--out", str(out), *args]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.strip()


def test_the_refusal_names_the_field_and_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["run", str(SMOKE), "--out", str(out), "--set", "dpm.lambda=0.5,-1,-2"]) == 2
    err = capsys.readouterr().err
    assert "dpm.lambda=-1" in err and "dpm.lambda=-2" in err and "nothing written" in err
    assert not out.exists()


# --- a seed sweep ----------------------------------------------------------------------------------------


def test_sweep_layout_and_sweep_json(seed_sweep: Path) -> None:
    assert seed_sweep.name.startswith("tiny-sweep-")
    spec = json.loads((seed_sweep / "sweep.json").read_text())
    assert spec == {"scenario": "tiny", "runs": ["seed-0", "seed-1", "seed-2"], "varied": {"seed": [0, 1, 2]}}
    assert sorted(p.name for p in seed_sweep.iterdir() if p.is_dir()) == ["seed-0", "seed-1", "seed-2"]
    for i in range(3):
        run = seed_sweep / f"seed-{i}"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["seed"] == i
        assert all(s["status"] == "done" for s in manifest["stages"].values())
        scenario = load_scenario(run / "scenario.yaml")
        assert (scenario.seed, scenario.dataset.seed) == (i, 0)  # the task pinned to the file's seed


def test_seeds_share_the_task_and_differ_in_training(seed_sweep: Path) -> None:
    runs = [seed_sweep / f"seed-{i}" for i in range(3)]
    prepared = [(r / "results" / "prepare.jsonl").read_bytes() for r in runs]
    assert prepared[0] == prepared[1] == prepared[2]
    for party in ("E1", "E4"):  # the very same images in every run's partition
        (index, digest) = partition_images(runs[0], party)
        for run in runs[1:]:
            other, other_digest = partition_images(run, party)
            assert np.array_equal(index, other) and digest == other_digest
    losses = [[r["value"] for r in records(run, "training") if r["label"] == "DPM"] for run in runs]
    assert losses[0] != losses[1] and losses[1] != losses[2]


def test_compare_and_report_read_the_sweep(seed_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(seed_sweep)]) == 0
    assert main(["report", str(seed_sweep), "--quiet"]) == 0
    out = capsys.readouterr().out
    index = seed_sweep / "report" / "index.html"
    assert f"report: {index}" in out
    page = index.read_text()
    assert "Training curves" in page and "training-dpm.png" in page
    assert (seed_sweep / "report" / "training-dpm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two more runs: the seed sweep covers runs and report; the parsing is tested above
def test_a_list_valued_set_sweeps_one_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tiny_scenario(tmp_path / "tiny.yaml")
    out = tmp_path / "runs"
    args = ["run", str(scenario), "--engine", "inline", "--out", str(out), "--report"]
    assert main([*args, "--set", "refine.lr=0.01,0.05"]) == 0
    root = only_child(out)
    spec = json.loads((root / "sweep.json").read_text())
    assert spec["runs"] == ["refine.lr-0.01", "refine.lr-0.05"]
    assert spec["varied"] == {"refine.lr": [0.01, 0.05]}
    for name, lr in zip(spec["runs"], (0.01, 0.05), strict=True):
        scenario_run = load_scenario(root / name / "scenario.yaml")
        assert scenario_run.refine is not None and scenario_run.refine.lr == lr
        assert scenario_run.dataset.seed is None  # no --seeds: the file's own seeds, untouched
    printed = capsys.readouterr().out
    assert f"report: {root / 'report' / 'index.html'}" in printed
    assert "Against refine.lr" in (root / "report" / "index.html").read_text()


# --- training curves ------------------------------------------------------------------------------------


def smoke_curves(run: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in records(run, "training"):
        assert r["metric"] == "loss"
        curves.setdefault((r["label"], r["entity"]), []).append((r["row"], r["value"]))
    return curves


def test_every_net_of_the_smoke_scenario_has_a_training_curve(inline_smoke_run: Path) -> None:
    scenario = load_scenario(SMOKE)
    curves = smoke_curves(inline_smoke_run)
    leader = scenario.leading_entity
    dpms = {("DPM", e.name) for e in scenario.entities if e.protection.uses_dpm()}
    expected = {("F+C", leader), ("R", leader)} | dpms
    for i, row in enumerate(scenario.collaboration, 1):
        expected.add((f"F+C row {i}" if row.trains_from_raw else f"C refined row {i}", row.entity))
    assert scenario.data_owner is not None
    expected.add(("autoencoder", scenario.data_owner.name))
    assert scenario.fedavg is not None  # each entity's local fit in each round
    expected |= {
        (f"F+C FedAvg round {r}", e.name)
        for r in range(1, scenario.fedavg.rounds + 1)
        for e in scenario.entities
    }
    assert set(curves) == expected
    for key, points in curves.items():
        epochs = [e for e, _ in points]
        assert epochs == list(range(1, len(points) + 1)), key
    # the curves are their own result units: the stages' own result files hold no training records
    for path in (inline_smoke_run / "results").glob("*.jsonl"):
        tables = {json.loads(line)["table"] for line in path.read_text().splitlines() if line.strip()}
        assert (tables == {"training"}) == path.name.startswith("training-"), path.name


def test_training_losses_are_finite_and_a_diverged_net_is_warned_about(
    inline_smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The curves found that smoke's refined deciders diverged (a NaN loss, top-1 at chance) while C had
    one epoch of pre-training: its BatchNorm statistics were still far from its features'. The smoke
    scenario now pre-trains at least 60 steps; a diverged net is still warned about."""
    curves = smoke_curves(inline_smoke_run)
    assert all(math.isfinite(v) for points in curves.values() for _, v in points)
    run = tmp_path / "run"
    shutil.copytree(inline_smoke_run, run)
    path = run / "results" / "training-refine-row05.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["value"] = float("nan")
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert main(["report", str(run), "--quiet"]) == 0
    page = (run / "report" / "index.html").read_text()
    assert f"{lines[0]['label']} of {lines[0]['entity']} diverged" in page
