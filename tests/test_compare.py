"""veil compare on synthetic run directories whose values are chosen here, checked against numbers computed
by hand: means, SDs, 95% Student-t intervals (t(0.975, 2) = 4.302653) and paired Table 5 differences."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from reports.compare import NotComparable, cells, check_comparable, paired_differences
from reports.runs import load_many, load_run, load_sweep
from simulator.cli import EXIT_INVALID, main

T975_2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom
SQRT3 = 3**0.5

# Our Table 5 rows and the paper's rows they match (by entity and data mix).
COLLABORATION = [
    {"label": "E1 own raw", "entity": "E1", "data": ["own:raw"], "inferred": False},  # paper 1
    {"label": "E2 own raw", "entity": "E2", "data": ["own:raw"], "inferred": False},  # paper 2
    {
        "label": "E1 + E2 poisoned",
        "entity": "E1",
        "data": ["own:features", "poisoned:E2"],
        "inferred": False,
    },  # 7
    {
        "label": "E2 + E1 poisoned",
        "entity": "E2",
        "data": ["own:features", "poisoned:E1"],
        "inferred": False,
    },  # 8
    {
        "label": "E1 + E2 original",
        "entity": "E1",
        "data": ["own:features", "original:E2"],
        "inferred": True,
    },  # 6
]
SCENARIO: dict[str, Any] = {
    "schema_version": 1,
    "name": "synthetic",
    "description": "values chosen by hand",
    "seed": 0,
    "dataset": {"kind": "photos", "patch": 32},
    "backbone": {"name": "resnet18", "split": "conv2_x"},
    "entities": [{"name": "E1", "fraction": 0.3}, {"name": "E2", "fraction": 0.3}],
    "dpm": {"lambda": 1.0, "epochs": 1},
    "collaboration": COLLABORATION,
}
# top-1 per seed (0, 1, 2) and our row
TOP1 = {1: (50, 52, 57), 2: (50, 51, 52), 3: (58, 59, 63), 4: (58, 60, 62), 5: (50, 51, 52)}
TOP5 = {r: tuple(v + 20 for v in vs) for r, vs in TOP1.items()}


def rec(table: str, label: str, entity: str, metric: str, value: float, row: int | None = None) -> dict:
    return {"table": table, "row": row, "label": label, "entity": entity, "metric": metric, "value": value}


def seed_records(i: int) -> list[dict]:
    """The records of seed i (0, 1, 2)."""
    out = []
    for r, row in enumerate(COLLABORATION, start=1):
        out += [
            rec("table5", row["label"], row["entity"], "top1", TOP1[r][i], r),
            rec("table5", row["label"], row["entity"], "top5", TOP5[r][i], r),
        ]
    out += [
        rec("table1", "original", "E1", "top1", (60, 62, 64)[i]),
        rec("table1", "poisoned", "E1", "top1", (59, 61, 66)[i]),
        rec("table2", "original", "E1", "ssim", 0.6),
        rec("table2", "poisoned", "E1", "ssim", 0.02),
        rec("table2", "original", "E2", "ssim", 0.6),
        rec("table2", "poisoned", "E2", "ssim", (0.5, 0.55, 0.01)[i]),  # E2's DPM did not train in 2 runs
        rec("ambiguation", "authorised k=16", "owner", "psnr_mean", 20.0 + i),
        rec("ambiguation", "authorised k=16", "owner", "ssim_mean", 0.5),
        rec("ambiguation", "authorised k=16", "owner", "rate_bpv", 0.07),
        rec("ambiguation", "random guess", "owner", "psnr_mean", 12.0),
        rec("ambiguation", "jpeg at paper rate, whole file", "owner", "met", 0.0),
        rec("ambiguation", "jpeg at paper rate, whole file", "owner", "psnr_mean", 26.0),
        rec("sizes", "this run (L=4, m=64, k=16, k'=32)", "owner", "key_kb_h2", 0.025),
        rec("sizes", "this run (L=4, m=64, k=16, k'=32)", "owner", "guessing_bits", 116.7),
        # attacks as score.py labels them: "<adversary>: <attack> on <features>", the victim as entity
        rec("attack", "eve: shared-reconstructor on protected", "E1", "ssim", (0.02, 0.03, 0.04)[i]),
        rec("attack", "eve: shared-reconstructor on unprotected", "E1", "ssim", (0.6, 0.62, 0.64)[i]),
        rec("attack", "mallory: known-pairs on protected", "E1", "ssim", (0.3, 0.35, 0.4)[i]),
        rec("attack", "mallory: known-pairs on unprotected", "E1", "ssim", (0.7, 0.5, 0.66)[i]),
        rec("attack", "eve: shared-reconstructor on protected", "E2", "ssim", (0.5, 0.55, 0.01)[i]),
        rec("attack", "eve: shared-reconstructor on unprotected", "E2", "ssim", 0.6),
        rec("attack", "eve: random-guess on ambiguated codes", "codes", "support_recovery", 0.5),
        rec("attack", "eve: random-guess on ambiguated codes", "codes", "ssim", 0.3),
        rec(
            "attack", "eve: usage-prior on ambiguated codes", "codes", "support_recovery", (0.8, 0.85, 0.9)[i]
        ),
    ]
    for k, rate, psnr, ssim in ((8, 0.045, 15.5, 0.46), (16, 0.068, 16.4, 0.45)):
        label = f"codes k={k}"
        out += [
            rec("rd_curve", label, "owner", "k", k),
            rec("rd_curve", label, "owner", "rate_bpv", rate),
            rec("rd_curve", label, "owner", "rate_bpv_q8", rate * 3),
            rec("rd_curve", label, "owner", "psnr_mean", psnr + i),
            rec("rd_curve", label, "owner", "ssim_mean", ssim),
        ]
    for q, rate, psnr, ssim in ((10, 1.6, 26.0, 0.65), (50, 2.4, 30.0, 0.8)):
        label = f"jpeg q={q}"
        out += [
            rec("rd_curve", label, "owner", "quality", q),
            rec("rd_curve", label, "owner", "rate_bpv", rate),
            rec("rd_curve", label, "owner", "payload_bpv", rate / 2),
            rec("rd_curve", label, "owner", "psnr_mean", psnr),
            rec("rd_curve", label, "owner", "ssim_mean", ssim),
        ]
    return out


def write_run(path: Path, scenario: dict, records: list[dict], torch: str = "2.14.1") -> Path:
    """A run directory with real files: scenario.yaml, manifest.json, results/*.jsonl (two files)."""
    (path / "results").mkdir(parents=True)
    (path / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    manifest = {
        "scenario": scenario["name"],
        "seed": scenario["seed"],
        "versions": {"python": "3.11.7", "torch": torch},
        "hardware": {"machine": "x86_64", "cpus": 2, "cuda": None},
        "stages": {"poison": {"status": "done", "wall_s": 3.0}, "refine": {"status": "done", "wall_s": 5.0}},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    half = len(records) // 2
    for name, part in (("poison", records[:half]), ("refine", records[half:])):
        (path / "results" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return path


def make_sweep(root: Path, with_spec: bool = True, torch: tuple[str, ...] = ("2.14.1",) * 3) -> Path:
    """A 3-seed sweep directory of the synthetic scenario (sweep.json optional)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        write_run(root / f"seed-{i}", SCENARIO | {"seed": i}, seed_records(i), torch[i])
    if with_spec:
        spec = {
            "scenario": "synthetic",
            "runs": [f"seed-{i}" for i in range(3)],
            "varied": {"seed": [0, 1, 2]},
        }
        (root / "sweep.json").write_text(json.dumps(spec))
    return root


def cell(frame: Any, table: str, metric: str, row: int | None = None, entity: str | None = None) -> Any:
    sub = frame[(frame.table == table) & (frame.metric == metric)]
    if row is not None:
        sub = sub[sub.row == row]
    if entity is not None:
        sub = sub[sub.entity == entity]
    assert len(sub) == 1, sub
    return sub.iloc[0]


def test_means_sds_and_t_intervals_by_hand(tmp_path: Path) -> None:
    sweep = load_sweep(make_sweep(tmp_path / "sweep"))
    assert [r.seed for r in sweep.runs] == [0, 1, 2]
    frame = cells(sweep.runs)
    # row 1 top-1: 50, 52, 57 -> mean 53, deviations -3, -1, 4, SD sqrt(26/2) = 3.605551
    c = cell(frame, "table5", "top1", row=1)
    assert c["n"] == 3
    assert c["mean"] == pytest.approx(53.0)
    assert c["sd"] == pytest.approx(3.605551, abs=1e-6)
    half = T975_2 * 3.605551 / SQRT3  # 8.956676
    assert half == pytest.approx(8.956676, abs=1e-5)
    assert c["ci_low"] == pytest.approx(44.043324, abs=1e-5)
    assert c["ci_high"] == pytest.approx(61.956676, abs=1e-5)
    # Table 1, E1 original top-1: 60, 62, 64 -> 62, SD 2, interval 62 -/+ 4.968275
    c = frame[(frame.table == "table1") & (frame.label == "original")].iloc[0]
    assert (c["mean"], c["sd"]) == pytest.approx((62.0, 2.0))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((57.031725, 66.968275), abs=1e-5)
    # a constant cell: SD 0, the interval collapses
    c = frame[(frame.table == "table2") & (frame.label == "original") & (frame.entity == "E1")].iloc[0]
    assert (c["mean"], c["sd"], c["ci_low"], c["ci_high"]) == pytest.approx((0.6, 0.0, 0.6, 0.6))
    # each run's own value is kept beside the summary
    c = cell(frame, "table5", "top1", row=3)
    assert [c["run:seed-0"], c["run:seed-1"], c["run:seed-2"]] == [58, 59, 63]


def test_paired_differences_by_hand(tmp_path: Path) -> None:
    runs = load_sweep(make_sweep(tmp_path / "sweep")).runs
    diffs = {d.claim.name: d for d in paired_differences(runs, "top1")}
    # only the claims whose paper rows (1, 2, 6, 7, 8) are all in the scenario
    assert set(diffs) == {"row 7 - row 1", "row 8 - row 2", "row 6 - row 7"}

    d = diffs["row 7 - row 1"]  # our rows 3 - 1: 8, 7, 6 -> mean 7, SD 1
    assert d.ours_rows == ((3,), (1,))
    assert d.per_run == [8, 7, 6]
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(7.0), pytest.approx(1.0))
    assert (d.ci_low, d.ci_high) == pytest.approx((7 - 2.484138, 7 + 2.484138), abs=1e-5)
    assert d.paper == pytest.approx(59.4 - 52.9)  # 6.5
    assert d.verdict == "undecided"  # 4.52 < 5 < 9.48

    d = diffs["row 8 - row 2"]  # our rows 4 - 2: 8, 9, 10 -> mean 9, SD 1: [6.52, 11.48] above 5
    assert (d.mean, d.sd) == pytest.approx((9.0, 1.0))
    assert (d.ci_low, d.ci_high) == pytest.approx((6.515862, 11.484138), abs=1e-5)
    assert d.paper == pytest.approx(59.8 - 52.7)  # 7.1
    assert d.verdict == "holds"

    d = diffs["row 6 - row 7"]  # our rows 5 - 3: -8, -8, -11 -> mean -9, SD sqrt(3): [-13.30, -4.70] below -1
    assert (d.mean, d.sd) == pytest.approx((-9.0, 1.732051), abs=1e-6)
    assert (d.ci_low, d.ci_high) == pytest.approx((-13.302653, -4.697347), abs=1e-5)
    assert d.paper == pytest.approx(61.2 - 59.4)  # 1.8
    assert d.verdict == "does not hold"


def test_veil_compare_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "sweep", with_spec=False)  # a directory of runs, no sweep.json
    assert main(["compare", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 runs (seeds 0, 1, 2)" in out
    assert "row 7 - row 1" in out and "undecided" in out and "does not hold" in out and "holds" in out
    # the same runs given one by one
    assert main(["compare", *(str(root / f"seed-{i}") for i in range(3))]) == 0
    assert "3 runs (seeds 0, 1, 2)" in capsys.readouterr().out


def test_compare_refuses_runs_that_differ_in_more_than_the_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_run(tmp_path / "a", SCENARIO, seed_records(0))
    other = copy.deepcopy(SCENARIO) | {"seed": 1}
    other["dpm"]["lambda"] = 2.0
    other["entities"][1]["fraction"] = 0.2
    b = write_run(tmp_path / "b", other, seed_records(1))
    assert main(["compare", str(a), str(b)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "dpm.lambda" in err and "entities[1].fraction" in err
    assert "Traceback" not in err
    with pytest.raises(NotComparable) as caught:
        check_comparable(load_many([a, b]))
    assert caught.value.fields == ["dpm.lambda", "entities[1].fraction"]  # not the seed
    # told that the runs vary in dpm.lambda, only the fraction is left
    with pytest.raises(NotComparable) as caught:
        check_comparable(load_many([a, b]), vary=["dpm.lambda"])
    assert caught.value.fields == ["entities[1].fraction"]


def test_environment_differences_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "sweep", torch=("2.14.1", "2.14.1", "2.15.0"))
    assert main(["compare", str(root)]) == 0
    out = capsys.readouterr().out
    assert "warning: versions.torch differs" in out and "2.15.0" in out and "seed-2" in out


def test_runs_mixing_threads_cpu_kernels_cudnn_or_determinism_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_sweep(tmp_path / "sweep")
    runs = sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
    settings = [
        {
            "cpu_capability": "AVX2",
            "cudnn_version": None,
            "deterministic_algorithms": False,
        },
        {
            "cpu_capability": "AVX512",
            "cudnn_version": 90100,
            "deterministic_algorithms": True,
        },
    ]
    threads = [1, 2] + [1] * (len(runs) - 2)  # what each run's nodes used, as they reported it
    for run, extra, n in zip(runs, settings + [settings[0]] * (len(runs) - 2), threads, strict=True):
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["hardware"].update(extra)
        manifest["nodes"] = {"E1": {"torch_threads": n}, "E2": {"torch_threads": 1}}
        (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["compare", str(root)]) == 0
    out = capsys.readouterr().out
    for field in ("cpu_capability", "cudnn_version", "deterministic_algorithms"):
        assert f"warning: hardware.{field} differs" in out, field
    assert "warning: nodes.torch_threads differs" in out
    assert "AVX512" in out and runs[1].name in out


def test_a_parameter_sweep_gives_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "lambda"
    lambdas = [0.5, 1.0, 2.0]
    for i, lam in enumerate(lambdas):
        scenario = copy.deepcopy(SCENARIO)
        scenario["dpm"]["lambda"] = lam
        write_run(root / f"lambda-{lam}", scenario, seed_records(i))
    spec = {
        "scenario": "synthetic",
        "runs": [f"lambda-{v}" for v in lambdas],
        "varied": {"dpm.lambda": lambdas},
    }
    (root / "sweep.json").write_text(json.dumps(spec))
    assert main(["compare", str(root)]) == 0
    out = capsys.readouterr().out
    assert "against dpm.lambda" in out
    assert (root / "report" / "against-dpm-lambda.png").is_file()
    assert (root / "report" / "against-dpm-lambda.svg").is_file()
    curves = (root / "report" / "against-dpm-lambda.csv").read_text()
    assert "dpm.lambda" in curves.splitlines()[0]


def test_bad_paths_exit_2_naming_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "nowhere")]) == EXIT_INVALID
    assert "nowhere: no such directory" in capsys.readouterr().err
    run = write_run(tmp_path / "run", SCENARIO, seed_records(0))
    (run / "manifest.json").unlink()
    assert main(["compare", str(run)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "manifest.json: missing" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_run(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == EXIT_INVALID
    assert "neither a run directory" in capsys.readouterr().err


def test_a_broken_record_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", SCENARIO, seed_records(0))
    with open(run / "results" / "refine.jsonl", "a") as fh:
        fh.write('{"table": "table5", "row": 1}\n')
    with pytest.raises(
        ValueError, match=r"refine.jsonl:\d+: .*missing \['label', 'entity', 'metric', 'value'\]"
    ):
        load_run(run)


def test_paper_shape_judges_a_sweep_on_the_intervals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import paper_shape

    root = make_sweep(tmp_path / "sweep")
    table12, claims = paper_shape.sweep_checks(load_sweep(root))
    verdicts = {what.split(" (")[0]: verdict for what, verdict, _ in claims}
    assert verdicts == {
        "Table 5: row 7 - row 1 > 5": "undecided",
        "Table 5: row 8 - row 2 > 5": "holds",
        "Table 5: row 6 - row 7 > -1": "does not hold",
    }
    assert ("Table 2 E2: SSIM from poisoned <= 0.1", False) in [(w, ok) for w, ok, _ in table12]  # mean 0.353
    assert paper_shape.main(["--run", str(root)]) == 1
    assert "paper 6.5" in capsys.readouterr().out


def test_one_run_gives_no_verdict_on_a_claim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One draw neither confirms nor refutes a claim: the difference, no interval, and how to get one."""
    run = write_run(tmp_path / "one", SCENARIO, seed_records(0))  # row 7 - 1 = 8 > 5: would "hold"
    assert main(["compare", str(run)]) == 0
    out = capsys.readouterr().out
    assert "row 7 - row 1" in out and "one run: no interval" in out and "--seeds" in out
    assert main(["report", str(run), "--quiet"]) == 0
    capsys.readouterr()
    for page in ("index.html", "report.md"):
        text = (run / "report" / page).read_text()
        assert "one run: no interval" in text, page
        assert "holds" not in text and "does not hold" not in text, page
    # three seeds do judge
    sweep = make_sweep(tmp_path / "sweep", with_spec=False)
    assert main(["report", str(sweep), "--quiet"]) == 0
    assert "holds" in (sweep / "report" / "report.md").read_text()


def test_findings_pair_each_measure_with_its_reference_by_seed(tmp_path: Path) -> None:
    from reports.findings import findings, summary

    scenario = copy.deepcopy(SCENARIO) | {"data_owner": {"name": "owner", "k": 16}}
    root = tmp_path / "sweep"
    guess = [rec("ambiguation", "random guess", "owner", "ssim_mean", 0.3)]
    paths = [write_run(root / f"seed-{i}", scenario | {"seed": i}, seed_records(i) + guess) for i in range(3)]
    runs = load_many(paths).runs
    got = {(f.what, f.measure): summary(f) for f in findings(runs)}

    r = got[("Does R rebuild images from their features?", "SSIM of R(F(x)), test images")]
    assert r["ours"] == pytest.approx(0.6) and r["against"] == ""
    e2 = got[("Does E2's DPM stop R?", "SSIM of R(P(F(x))), E2's DPM")]
    assert e2["ours"] == pytest.approx((0.5 + 0.55 + 0.01) / 3) and e2["reference"] == pytest.approx(0.6)
    # the adaptive attack is the best one that is not the paper's shared R, paired with its unprotected run
    (adaptive,) = [v for (what, _), v in got.items() if what.startswith("Does an attacker")]
    assert adaptive["measure"] == "SSIM, mallory: known-pairs, poisoned pool"
    assert "E1" in str(adaptive["question"])
    diffs = [-0.4, -0.15, -0.26]
    half = T975_2 * float(np.std(diffs, ddof=1)) / SQRT3
    assert adaptive["difference"] == pytest.approx(np.mean(diffs))
    assert adaptive["difference_lo"] == pytest.approx(np.mean(diffs) - half)
    codes = got[("Do the keys decode better than a guess?", "SSIM decoded with the keys (k=16)")]
    assert codes["difference"] == pytest.approx(0.2)
    lift = got[("Does the pool lift E1?", "top-1 %, row 3 (E1 + E2 poisoned)")]
    assert lift["difference"] == pytest.approx(7.0)  # rows 3 - 1: 8, 7, 6
    cost = got[("What does poisoning cost E1?", "top-1 %, row 3 (E1 + E2 poisoned)")]
    assert cost["difference"] == pytest.approx(9.0)  # rows 3 - 5: 8, 8, 11
    assert got[("Does the pool lift E2?", "top-1 %, row 4 (E2 + E1 poisoned)")]["difference"] == 9.0
    # one run: the measure, no interval
    (one,) = load_many([root / "seed-0"]).runs
    single = {f.what: summary(f) for f in findings([one])}
    assert math.isnan(single["Does the pool lift E1?"]["difference_lo"])
