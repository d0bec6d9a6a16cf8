"""The one reader of run results: run directories and sweeps, as plain data (files only, no torch).

A run directory (simulator/rundir.py) holds:
    scenario.yaml       the resolved scenario
    manifest.json       seed, versions, hardware, stages {name: {status, wall_s, tasks}}
    results/*.jsonl     flat records, one JSON object a line: table, row, label, entity, metric, value

A sweep directory holds one run directory per run, and optionally sweep.json:
    {"scenario": name, "runs": ["seed-0", "seed-1", ...], "varied": {"seed": [0, 1, ...]}}
("varied" may name any dotted scenario field, e.g. {"dpm.lambda": [0.5, 1, 2]}, in the order of "runs").
Without sweep.json, every immediate subdirectory that is a run directory is a run of the sweep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from reports.formats import is_plausible, manifest_problems, record_problem, sweep_problems

RECORD_FIELDS = ("table", "row", "label", "entity", "metric", "value")
CELL = ["table", "row", "label", "entity", "metric"]  # what identifies a cell of a table
RUN_FILES = "scenario.yaml, manifest.json and results/*.jsonl"


class RunFormatError(ValueError):
    """A run or sweep file exists but does not hold what it should."""


@dataclass(frozen=True)
class Run:
    """One run directory, read."""

    path: Path
    scenario: dict[str, Any]
    manifest: dict[str, Any]
    records: pd.DataFrame  # columns RECORD_FIELDS (row: nullable Int64; value: float)
    suspect: tuple[str, ...] = ()  # records whose value is not finite or not of a measure's size

    @property
    def name(self) -> str:
        return str(self.scenario.get("name", self.manifest.get("scenario", self.path.name)))

    @property
    def seed(self) -> Any:
        return self.manifest.get("seed", self.scenario.get("seed"))


@dataclass(frozen=True)
class Sweep:
    """Runs read together: a sweep directory, or the runs given one by one."""

    path: Path | None
    runs: list[Run]
    varied: dict[str, list[Any]] = field(default_factory=dict)


def is_run_dir(path: Path) -> bool:
    return (path / "scenario.yaml").is_file() or (path / "manifest.json").is_file()


MAX_FILE_BYTES = 1 << 26  # a manifest, a sweep.json or a scenario is a few KB; one results file a few MB


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; expected {what}")
    return path


def _text(path: Path, what: str) -> str:
    """A stored file's text: a regular file (a FIFO is refused on its stat, never opened), of a bounded
    size, UTF-8; RunFormatError naming it otherwise."""
    _need(path, what)
    if not path.is_file():
        raise RunFormatError(f"{path}: not a regular file; expected {what}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RunFormatError(f"{path}: {size} bytes; expected {what} of at most {MAX_FILE_BYTES}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunFormatError(f"{path}: byte {err.start} is not UTF-8; expected {what}") from None
    except OSError as err:
        raise RunFormatError(f"{path}: cannot read ({err.strerror}); expected {what}") from None


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(_text(path, what))
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{path}: not JSON ({err}); expected {what}") from None
    except RecursionError:
        raise RunFormatError(f"{path}: nested too deep; expected {what}") from None


def read_records(run_dir: Path) -> pd.DataFrame:
    """Every result record of a run as one flat frame with columns RECORD_FIELDS."""
    results = Path(run_dir) / "results"
    _need(results, "a results/ directory of *.jsonl record files (the run has not started?)")
    rows: list[dict[str, Any]] = []
    for path in sorted(results.glob("*.jsonl")):
        text = _text(path, "result records, one JSON object a line")
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                raise RunFormatError(f"{path}:{n}: not JSON ({err})") from None
            problem = record_problem(rec)
            if problem is not None:
                raise RunFormatError(f"{path}:{n}: {problem}")
            if "entity" not in rec and "party" in rec:  # the records' newer name for it
                rec["entity"] = rec.pop("party")
            missing = [f for f in RECORD_FIELDS if f not in rec]
            if missing:
                raise RunFormatError(
                    f"{path}:{n}: a record needs the fields {', '.join(RECORD_FIELDS)}; missing {missing}"
                )
            rows.append(rec)
    if not rows:
        raise FileNotFoundError(f"{results}/*.jsonl: no result records yet (no stage has finished)")
    df = pd.DataFrame(rows)
    df["row"] = pd.array([None if pd.isna(r) else int(r) for r in df["row"]], dtype="Int64")
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    for column in ("table", "label", "entity", "metric"):
        df[column] = df[column].astype(str)
    return df


def load_run(path: str | Path) -> Run:
    """Read one run directory: its resolved scenario, manifest and result records."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory; expected a run directory ({RUN_FILES})")
    scenario_path = path / "scenario.yaml"
    text = _text(scenario_path, "the resolved scenario of a run directory")
    try:
        scenario = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RunFormatError(f"{scenario_path}: not YAML ({err})") from None
    if not isinstance(scenario, dict):
        raise RunFormatError(f"{scenario_path}: expected a mapping (the resolved scenario)")
    manifest_path = path / "manifest.json"
    manifest = _json(manifest_path, "the run's manifest (seed, versions, hardware, stages)")
    problems = manifest_problems(manifest)
    if problems:
        raise RunFormatError(
            f"{manifest_path}: {'; '.join(problems[:3])}; expected the manifest `veil run` writes"
        )
    records = read_records(path)
    return Run(path=path, scenario=scenario, manifest=manifest, records=records, suspect=_suspect(records))


def _suspect(records: pd.DataFrame) -> tuple[str, ...]:
    """Each record whose value is not finite (NaN, inf, null), or too large to be a measure
    (formats.MAX_MAGNITUDE): what the report warns about, naming the record and its value as stored."""
    out = []
    for r in records.itertuples():
        if not is_plausible(r.value):
            row = "" if r.row is pd.NA else f" row {r.row}"
            out.append(f"{r.table}{row} {r.label!r} {r.entity} {r.metric} = {r.value!r}")
    return tuple(out)


def load_sweep(path: str | Path) -> Sweep:
    """A sweep directory (with or without sweep.json), or a single run as a sweep of one."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such directory; expected a run directory ({RUN_FILES}) or a sweep of them"
        )
    if is_run_dir(path):
        return Sweep(path=path, runs=[load_run(path)])
    spec_path = path / "sweep.json"
    if spec_path.exists():
        spec = _json(spec_path, 'a sweep: {"scenario", "runs", "varied"}')
        problems = sweep_problems(spec)
        if problems:
            raise RunFormatError(
                f"{spec_path}: {'; '.join(problems[:3])}; expected "
                '{"scenario": NAME, "runs": [run directory names], "varied": {field: [one value per run]}}'
            )
        names, varied = spec["runs"], spec.get("varied") or {}
        for name in names:
            if not is_run_dir(path / name):
                raise RunFormatError(
                    f"{spec_path}: lists run {name!r}, but {path / name} is not a run directory ({RUN_FILES})"
                )
        return Sweep(path=path, runs=[load_run(path / str(n)) for n in names], varied=dict(varied))
    children = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
    if not children:
        raise FileNotFoundError(
            f"{path}: neither a run directory ({RUN_FILES}) nor a sweep (sweep.json, or run "
            "directories in it)"
        )
    runs = [load_run(p) for p in children]
    return Sweep(path=path, runs=sorted(runs, key=lambda r: (str(type(r.seed)), r.seed, str(r.path))))


def load_runs(path_or_sweep: str | Path) -> list[Run]:
    """The runs of a run directory (one) or of a sweep directory (all of them)."""
    return load_sweep(path_or_sweep).runs


def load_many(paths: list[str | Path]) -> Sweep:
    """Runs and sweeps given together, as one sweep (the varied fields of the sweeps given, merged)."""
    sweeps = [load_sweep(p) for p in paths]
    if len(sweeps) == 1:
        return sweeps[0]
    varied: dict[str, list[Any]] = {}
    for s in sweeps:
        for key, values in s.varied.items():
            varied.setdefault(key, []).extend(values)
    return Sweep(path=None, runs=[r for s in sweeps for r in s.runs], varied=varied)


def dotted(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested scenario flattened to {dotted path: value}, lists as `key[i]` (the --set syntax)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            out[prefix] = {}
        for key, value in data.items():
            out.update(dotted(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list):
        if not data:
            out[prefix] = []
        for i, value in enumerate(data):
            out.update(dotted(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = data
    return out


def field_value(scenario: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a scenario (None where absent)."""
    flat = dotted(scenario)
    if path in flat:
        return flat[path]
    sub = {
        k[len(path) :]: v
        for k, v in flat.items()
        if k.startswith(path) and k[len(path) : len(path) + 1] in ".["
    }
    return sub or None
