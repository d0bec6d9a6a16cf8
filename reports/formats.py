"""The files of a run and a sweep directory that Veil reads back, typed: manifest.json, sweep.json and a
results line. Each reader parses through these models at its boundary, so that a stored file that is
damaged (garbage, a wrong type, a missing run) is named with the field and what was expected, never met
later as a traceback. pydantic only: no torch, no pandas, no simulator (`veil run --resume` reads these
before anything loads).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
# a run directory's name inside its sweep: one path component, not `.` or `..`
RUN_NAME = re.compile(r"^(?!\.\.?$)[^/\\\x00]{1,255}$")


class StageEntry(BaseModel):
    """One stage's entry in manifest.json: its status and wall time (and what the stage added)."""

    model_config = ConfigDict(extra="allow")
    status: StrictStr
    wall_s: StrictFloat | StrictInt | None = Field(None, ge=0)
    at: StrictStr | None = None


class Manifest(BaseModel):
    """manifest.json as simulator.rundir writes it; keys it does not know are kept (facts stages add)."""

    model_config = ConfigDict(extra="allow")
    scenario: StrictStr | None = None
    seed: StrictInt | None = None
    created: StrictStr | None = None
    stages: dict[str, StageEntry] = Field(default_factory=dict)
    digests: dict[str, Sha256] = Field(default_factory=dict)
    versions: dict[str, StrictStr | None] = Field(default_factory=dict)
    hardware: dict[str, Scalar] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Scalar]] = Field(default_factory=dict)
    pool: dict[str, StrictInt] | None = None
    source: dict[str, Scalar] | None = None
    resumed: list[dict[str, Any]] = Field(default_factory=list)


class SweepSpec(BaseModel):
    """sweep.json: {"scenario", "runs": [run directory names], "varied": {field: one value per run}}."""

    model_config = ConfigDict(extra="forbid")
    scenario: StrictStr | None = None
    runs: list[StrictStr] = Field(min_length=1)
    varied: dict[str, list[Any]] = Field(default_factory=dict)


def _where(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


def _problems(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        shown = repr(e.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        if e["type"] == "missing":
            out.append(f"{_where(e['loc'])}: missing")
        else:
            out.append(f"{_where(e['loc'])}: got {shown}; {e['msg'][:1].lower()}{e['msg'][1:]}")
    return out


def manifest_problems(data: object) -> list[str]:
    """What is wrong with a loaded manifest.json ([] when nothing is)."""
    if not isinstance(data, dict):
        return [f"(top level): got a JSON {type(data).__name__}; expected an object"]
    try:
        Manifest.model_validate(data)
    except ValidationError as err:
        return _problems(err)
    return []


def sweep_problems(data: object) -> list[str]:
    """What is wrong with a loaded sweep.json ([] when nothing is)."""
    if not isinstance(data, dict):
        return [f"(top level): got a JSON {type(data).__name__}; expected an object"]
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        return _problems(err)
    out = [
        f"runs[{i}]: {name!r:.60} is not a run directory's name (one path component)"
        for i, name in enumerate(spec.runs)
        if not RUN_NAME.fullmatch(name)
    ]
    if len(set(spec.runs)) != len(spec.runs):
        out.append("runs: a run is listed twice")
    for key, values in spec.varied.items():
        if len(values) != len(spec.runs):
            out.append(f"varied.{key}: {len(values)} values for {len(spec.runs)} runs; expected one per run")
    return out


RECORD_TEXT = ("table", "label", "entity", "metric")


def record_problem(rec: object) -> str | None:
    """What is wrong with one results line, loaded (None when nothing is): an object with text `table`,
    `label`, `entity` and `metric`, an integer or null `row`, and a number or null `value`."""
    if not isinstance(rec, dict):
        return f"got a JSON {type(rec).__name__}; expected an object (a record)"
    for key in RECORD_TEXT:
        if key in rec and not isinstance(rec[key], str):
            return f"{key}: got {rec[key]!r:.60}; expected text"
    row = rec.get("row")
    if row is not None and (isinstance(row, bool) or not isinstance(row, int)):
        return f"row: got {row!r:.60}; expected an integer or null"
    value = rec.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"value: got {value!r:.60}; expected a number or null"
    return None


# A value beyond this is no measure Veil takes (accuracies, SSIMs, bytes, seconds); sums and means of
# such values overflow to inf, so the report says so instead of showing an `inf` nobody measured.
MAX_MAGNITUDE = 1e100


def is_plausible(value: float) -> bool:
    """Whether a recorded value is a finite number of a size some measure could have."""
    return math.isfinite(value) and abs(value) <= MAX_MAGNITUDE
