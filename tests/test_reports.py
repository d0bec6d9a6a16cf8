"""veil report: report/ of a real smoke run and of a synthetic 3-seed sweep, parsed back from the HTML.

Every table has all its rows, every image it names exists and is a valid PNG (with an SVG beside it), and
the paper's columns hold the numbers of ../shared/REFERENCE.md.
"""

from __future__ import annotations

import ast
import html
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_compare import COLLABORATION, make_sweep  # tests/ is on sys.path (rootdir conftest)

from reports.runs import load_run
from simulator.cli import main
from simulator.schema import load_scenario

ROOT = Path(__file__).resolve().parents[1]


class Report(HTMLParser):
    """The tables (by id: header and body rows of cell texts), images and links of index.html."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self.warnings: list[str] = []
        self._table: str | None = None
        self._part = "body"
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_warnings = False
        self._li: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = {"head": [], "body": []}
        elif tag in ("thead", "tbody"):
            self._part = "head" if tag == "thead" else "body"
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"] or "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "div" and a.get("class") == "warnings":
            self._in_warnings = True
        elif tag == "li" and self._in_warnings:
            self._li = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table][self._part].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._li is not None:
            self.warnings.append("".join(self._li))
            self._li = None
        elif tag == "div":
            self._in_warnings = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._li is not None:
            self._li.append(data)

    def column(self, table: str, name: str) -> list[str]:
        head = self.tables[table]["head"][0]
        return [row[head.index(name)] for row in self.tables[table]["body"]]

    def value(self, table: str, key_column: str, key: str, column: str) -> str:
        head = self.tables[table]["head"][0]
        for row in self.tables[table]["body"]:
            if row[head.index(key_column)] == key:
                return row[head.index(column)]
        raise KeyError(f"{table}: no row {key_column}={key}")


def render(directory: Path, capsys: pytest.CaptureFixture[str]) -> Report:
    assert main(["report", str(directory), "--quiet"]) == 0
    out = capsys.readouterr().out
    index = directory / "report" / "index.html"
    assert f"report: {index}" in out
    report = Report(index.read_text())
    check_files(report, directory / "report")
    return report


def check_files(report: Report, out: Path) -> None:
    """Every image exists and is a valid PNG, a plot with an SVG beside it (the runs' image grids, copied
    into figures/, have none); every table has its CSV; no scripts."""
    assert report.images
    for src in report.images:
        path = out / src
        assert path.is_file() and path.suffix == ".png", src
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.verify()
        if not src.startswith("figures/"):
            assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    for link in report.links:
        if not link.startswith("#"):
            assert (out / link).is_file(), link
    for table in report.tables:
        assert (out / f"{table}.csv").is_file(), table
    assert "<script" not in (out / "index.html").read_text()
    assert (out / "report.md").read_text().startswith("# Veil report")


def test_report_of_a_synthetic_three_seed_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "sweep")
    report = render(root, capsys)
    t = report.tables

    # Table 5: every row, ours as mean ± SD with the interval, beside the paper's row it matches
    assert report.column("table5", "row") == ["1", "2", "3", "4", "5"]
    assert report.column("table5", "label") == [row["label"] for row in COLLABORATION]
    assert report.column("table5", "paper row") == ["1", "2", "7", "8", "6"]
    assert [float(v) for v in report.column("table5", "paper top1")] == [52.9, 52.7, 59.4, 59.8, 61.2]
    assert [float(v) for v in report.column("table5", "paper top5")] == [77.7, 77.8, 82.6, 83.0, 83.8]
    assert report.value("table5", "row", "1", "top1") == "53 ± 3.6"  # 50, 52, 57
    assert report.value("table5", "row", "1", "95% interval top1") == "[44, 62]"  # 53 -/+ 8.957
    assert report.column("table5", "inferred") == ["", "", "", "", "inferred"]

    # Tables 1 and 2: one row per entity, then the paper's
    assert [row[0] for row in t["table1"]["body"]] == ["E1", "paper"]
    assert float(report.value("table1", "entity", "paper", "original top1")) == 79.39
    assert float(report.value("table1", "entity", "paper", "poisoned top1")) == 78.88
    assert [row[0] for row in t["table2"]["body"]] == ["E1", "E2", "paper"]
    assert float(report.value("table2", "entity", "paper", "original ssim")) == 0.6730
    assert float(report.value("table2", "entity", "paper", "poisoned ssim")) == 0.0070
    assert float(report.value("table2", "entity", "paper", "poisoned l1")) == 0.2928

    # the paired differences: 3 claims x top-1/top-5, verdicts on the intervals, the paper's differences
    claims = report.column("differences", "claim (paper rows)")
    assert claims == ["row 7 - row 1", "row 8 - row 2", "row 6 - row 7"] * 2
    assert report.column("differences", "verdict")[:3] == ["undecided", "holds", "does not hold"]
    assert [float(v) for v in report.column("differences", "paper")[:3]] == [6.5, 7.1, 1.8]
    assert report.column("differences", "95% interval")[0] == "[4.52, 9.48]"

    # ambiguation: the paper's Table 1 rows, key size and guessing cost
    assert report.column("ambiguation", "label") == [
        "authorised k=16",
        "random guess",
        "jpeg at paper rate, whole file",
    ]
    assert float(report.value("ambiguation", "label", "authorised k=16", "paper PSNR")) == 30.75
    assert float(report.value("ambiguation", "label", "authorised k=16", "paper rate")) == 0.169
    assert float(report.value("ambiguation", "label", "random guess", "paper SSIM")) == 0.25
    assert float(report.value("ambiguation", "label", "jpeg at paper rate, whole file", "paper PSNR")) == 22.4
    assert len(t["sizes"]["body"]) == 2
    assert float(t["sizes"]["body"][1][t["sizes"]["head"][0].index("key_kb_h2")]) == 1.01
    assert float(t["sizes"]["body"][1][t["sizes"]["head"][0].index("guessing_bits")]) == 20 * 252
    assert report.column("rd_curve", "label") == ["codes k=8", "codes k=16", "jpeg q=10", "jpeg q=50"]

    # attacks: every score of every (attack, victim), and the bars
    attack_rows = [(r[0], r[1]) for r in t["attack"]["body"]]
    assert attack_rows == [  # by attack and victim, protected and unprotected together
        ("eve: random-guess on ambiguated codes", "codes"),
        ("eve: shared-reconstructor on protected", "E1"),
        ("eve: shared-reconstructor on unprotected", "E1"),
        ("eve: shared-reconstructor on protected", "E2"),
        ("eve: shared-reconstructor on unprotected", "E2"),
        ("eve: usage-prior on ambiguated codes", "codes"),
        ("mallory: known-pairs on protected", "E1"),
        ("mallory: known-pairs on unprotected", "E1"),
    ]
    assert t["attack"]["head"][0][:2] == ["label", "victim"]
    assert report.value("attack", "label", "mallory: known-pairs on protected", "ssim") == "0.35 ± 0.05"
    usage = "eve: usage-prior on ambiguated codes"
    assert report.value("attack", "label", usage, "support_recovery") == "0.85 ± 0.05"

    # privacy against utility: per seed the best attack (known-pairs 0.7, shared 0.62, known-pairs 0.66 on
    # the original features), then the mean; E2 has no Table 1 row, so no point
    assert report.column("privacy-utility", "victim") == ["E1", "E1"]
    assert report.column("privacy-utility", "features") == [
        "original (unprotected)",
        "DPM-poisoned (protected)",
    ]
    ssim = report.column("privacy-utility", "best attack's SSIM")
    assert ssim[0].startswith("0.66 [0.561, 0.759]") and ssim[1].startswith("0.35 [0.226, 0.474]")
    assert report.column("privacy-utility", "best attack") == [
        "mallory: known-pairs (2/3), eve: shared-reconstructor (1/3)",
        "mallory: known-pairs",
    ]
    assert report.column("privacy-utility", "top-1 of C (%)") == ["62 [57, 67]", "62 [53, 71]"]

    assert sorted(report.images) == ["attacks.png", "privacy-utility.png", "rd_curve.png", "table5.png"]
    assert not any(table.startswith("grids-") for table in t)  # the synthetic runs have no figures/
    warnings = "\n".join(report.warnings)
    assert "E2's DPM did not poison in 2 of 3 runs" in warnings
    assert "E1's DPM" not in warnings
    assert "jpeg at paper rate, whole file: no JPEG quality reached the target rate" in warnings
    assert "Table 5 rows 5 (E1 + E2 original)" in warnings and "inferred" in warnings
    assert "Claim row 6 - row 7 > -1" in warnings and "does not hold" in warnings
    assert "Claim row 7 - row 1" not in warnings  # undecided is not a warning


def test_report_of_a_parameter_sweep_has_its_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    root = make_sweep(tmp_path / "sweep")
    for i, lam in enumerate((0.5, 1.0, 2.0)):
        path = root / f"seed-{i}" / "scenario.yaml"
        scenario = yaml.safe_load(path.read_text()) | {"seed": 0}
        scenario["dpm"]["lambda"] = lam
        path.write_text(yaml.safe_dump(scenario))
    spec = {
        "scenario": "synthetic",
        "runs": [f"seed-{i}" for i in range(3)],
        "varied": {"dpm.lambda": [0.5, 1, 2]},
    }
    (root / "sweep.json").write_text(json.dumps(spec))
    report = render(root, capsys)
    assert "against-dpm-lambda.png" in report.images
    assert report.tables["parameter"]["head"][0][-3:] == ["0.5", "1.0", "2.0"]


def test_report_refuses_a_sweep_of_different_scenarios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_sweep(tmp_path / "sweep")
    path = root / "seed-1" / "scenario.yaml"
    path.write_text(path.read_text().replace("kind: photos", "kind: folder"))
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert "dataset.kind" in err and "Traceback" not in err
    assert not (root / "report" / "index.html").exists()


def test_report_of_a_real_smoke_run(
    smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_run, run_dir, ignore=shutil.ignore_patterns("pool", "parties", "shared", "public"))
    run = load_run(run_dir)
    report = render(run_dir, capsys)
    # Tables 1 and 2 measure DPMs: the entities protected without one are in Table 3 only
    entities = [e.name for e in load_scenario(run_dir / "scenario.yaml").entities if e.protection.uses_dpm()]
    rows = run.scenario["collaboration"]

    assert sorted(r[0] for r in report.tables["table1"]["body"]) == sorted([*entities, "paper"])
    assert sorted(r[0] for r in report.tables["table2"]["body"]) == sorted([*entities, "paper"])
    assert report.column("table5", "label") == [row["label"] for row in rows]
    assert float(report.value("table1", "entity", "paper", "original top1")) == 79.39
    assert float(report.value("table2", "entity", "paper", "original ssim")) == 0.6730
    # smoke's row 1 is the paper's row 1 (E1 on its own raw images)
    assert rows[0]["entity"] == "E1" and rows[0]["data"] == ["own:raw"]
    assert report.value("table5", "row", "1", "paper row") == "1"
    assert float(report.value("table5", "row", "1", "paper top1")) == 52.9
    assert float(report.value("table5", "row", "1", "paper top5")) == 77.7

    records = run.records
    for table, section in (("rd_curve", "rd_curve"), ("partitions", "t-partitions"), ("access", "t-access")):
        labels = list(dict.fromkeys(records[records.table == table].label))
        assert report.column(section, "label") == labels, section
    assert {"table5.png", "rd_curve.png"} <= set(report.images)
    # a DPM that did not poison (the smoke scenario's train one epoch) is warned about, and only such a one
    t2 = records[(records.table == "table2") & (records.metric == "ssim")]
    ssim = t2.pivot_table(index="entity", columns="label", values="value")
    for entity, s in ssim.iterrows():
        warned = any(w.startswith(f"{entity}'s DPM did not poison") for w in report.warnings)
        assert warned == (s["poisoned"] >= 0.5 * s["original"]), entity
    assert not (run_dir / "plots").exists()  # veil report writes only report/

    # attacks: every (attack, victim) scored, its bars, and privacy against utility per victim
    attack = records[records.table == "attack"]
    assert {(r[0], r[1]) for r in report.tables["attack"]["body"]} == set(
        zip(attack.label, attack.entity, strict=True)
    )
    assert {"attacks.png", "privacy-utility.png"} <= set(report.images)
    victim = run.scenario["adversaries"][0]["victims"][0]
    assert report.column("privacy-utility", "victim") == [victim, victim]
    ssim = attack[(attack.entity == victim) & (attack.metric == "ssim")]
    for i, on in enumerate(("unprotected", "protected")):
        best = ssim[ssim.label.str.endswith(f" on {on}")].value.max()
        assert float(report.column("privacy-utility", "best attack's SSIM")[i]) == pytest.approx(
            best, abs=1e-3
        )
    # the referee's grids, copied beside index.html with a caption each; a file that is no PNG is left out
    grids = sorted(src for src in report.images if src.startswith("figures/"))
    assert grids == sorted(f"figures/{p.name}" for p in (run_dir / "figures").glob("*.png"))
    # every entity's Table 2 grid (by name), then each victim's under the shared reconstructor; the owner's
    # codes grid in the codes section
    named = sorted(e["name"] for e in run.scenario["entities"])
    victims = sorted(run.scenario["adversaries"][0]["victims"])
    assert report.column("grids-deep-poisoning", "party") == [*named, *(v for v in victims for _ in "po")]
    assert report.column("grids-deep-poisoning", "features") == [""] * len(named) + [
        "poisoned",
        "original",
    ] * len(victims)
    assert report.column("grids-ambiguated-codes", "figure")[0] == "codes-owner.png"
    assert "figures/attack-eve-decode-as-published-codes-codes.png" in grids
    assert {"figures/codes-owner.png", *(f"figures/table2-{e}.png" for e in entities)} <= set(grids)
    text = (run_dir / "report" / "index.html").read_text()
    # what the run shows comes first, one question a line, and one run gives no verdict
    questions = report.column("findings", "question")
    assert questions[0] == "Does R rebuild images from their features?"
    assert {f"Does {e}'s DPM stop R?" for e in entities} <= set(questions)
    assert text.index("What this run shows") < text.index("Table 1")
    assert "holds" not in text and "does not hold" not in text
    assert html.escape("E1: test images; R from original features; R from DPM-poisoned features") in text
    assert (
        html.escape(
            "owner: originals; authorised; ambiguated as published; random guess; JPEG at the matched rate"
        )
        in text
    )
    assert html.escape(f"eve: shared-reconstructor on {victim}'s DPM-poisoned features (protected)") in text
    assert html.escape("eve: magnitude (largest) on the published ambiguated codes") in text


def test_report_grids_come_from_a_sweeps_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without attack records, no attack sections; the grids of figures/ are the first run's, PNGs only."""
    root = make_sweep(tmp_path / "sweep")
    for i in range(3):
        run = root / f"seed-{i}"
        scenario = yaml.safe_load((run / "scenario.yaml").read_text())
        scenario["adversaries"] = [{"name": "eve", "knowledge": "outsider", "victims": ["E1"]}]
        (run / "scenario.yaml").write_text(yaml.safe_dump(scenario))
        for path in (run / "results").glob("*.jsonl"):  # no attack records
            lines = [line for line in path.read_text().splitlines() if '"table": "attack"' not in line]
            path.write_text("\n".join(lines) + "\n")
        (run / "figures").mkdir()
        Image.new("RGB", (34 * 8, 68), (i * 100, 0, 0)).save(
            run / "figures" / "attack-eve-magnitude-codes-codes.png"
        )
    (root / "seed-0" / "figures" / "attack-eve-shared-reconstructor-E1-poisoned.png").write_bytes(
        b"not a PNG"
    )
    report = render(root, capsys)
    assert "attack" not in report.tables and "privacy-utility" not in report.tables
    assert [src for src in report.images if src.startswith("figures/")] == [
        "figures/attack-eve-magnitude-codes-codes.png"
    ]
    with Image.open(root / "report" / "figures" / "attack-eve-magnitude-codes-codes.png") as img:
        assert img.getpixel((0, 0)) == (0, 0, 0)  # seed-0's
    text = (root / "report" / "index.html").read_text()
    assert "From the first run of 3, run seed-0 (seed 0)" in text


def test_report_of_a_run_without_adversaries_has_its_table2_grids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Deep Poisoning run without adversaries (collab-style) shows each entity's Table 2 grid."""
    root = make_sweep(tmp_path / "sweep")
    figures = root / "seed-0" / "figures"
    figures.mkdir()
    for entity in ("E2", "E1"):
        Image.new("RGB", (400, 102), "white").save(figures / f"table2-{entity}.png")
    (figures / "table2-E9.png").write_bytes((figures / "table2-E1.png").read_bytes())  # no such entity
    report = render(root, capsys)
    assert report.column("grids-deep-poisoning", "figure") == ["table2-E1.png", "table2-E2.png"]
    assert sorted(src for src in report.images if src.startswith("figures/")) == [
        "figures/table2-E1.png",
        "figures/table2-E2.png",
    ]
    text = (root / "report" / "index.html").read_text()
    assert html.escape("E2: test images; R from original features; R from DPM-poisoned features") in text


def test_reports_import_no_torch_flwr_or_simulator() -> None:
    """reports/ reads files: its modules import neither torch, flwr, ray nor the simulation."""
    banned = {"torch", "flwr", "ray", "simulator", "entities", "torchvision"}
    for path in (ROOT / "reports").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"
    modules = [f"reports.{p.stem}" for p in (ROOT / "reports").glob("*.py") if p.stem != "__init__"]
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(banned)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_veil_report_loads_no_torch(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep")
    code = (
        "import sys\nfrom simulator.cli import main\n"
        f"assert main(['report', {str(root)!r}, '--quiet']) == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'ray', 'torchvision'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
