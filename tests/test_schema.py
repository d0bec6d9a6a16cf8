"""The scenario schema and `veil validate`: a valid scenario resolves, a malformed one is
refused with exit status 2 and every problem named by its YAML path. Fast, and no torch."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.cli import EXIT_INVALID, main
from simulator.schema import Scenario, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "schema_version": 1,
    "name": "base",
    "seed": 7,
    "pretrain": {"epochs": 2, "lr": 0.1},
    "reconstructor": {"width": 32, "training": {"epochs": 2, "lr": 0.01, "optimizer": "adam"}},
    "entities": [
        {"name": "E1", "fraction": 0.1},
        {"name": "E2", "fraction": 0.1},
        {"name": "E3", "fraction": 0.1},
        {"name": "E4", "fraction": 0.01},
    ],
    "dpm": {"lambda": 0.5, "epochs": 2, "lr": 0.01},
    "refine": {"epochs": 1, "lr": 0.01},
    "collaboration": [
        {"label": "E1 alone", "entity": "E1", "data": ["own:raw"]},
        {"label": "centralised", "entity": "E1", "data": ["raw:all"], "inferred": True},
        {"label": "E1 + poisoned E2", "entity": "E1", "data": ["own:features", "poisoned:E2"]},
        {"label": "E1 + original E2", "entity": "E1", "data": ["own:features", "original:E2"]},
    ],
}

DELETE = object()


def _keys(path: str) -> list[str | int]:
    """'entities[1].fraction' -> ['entities', 1, 'fraction']."""
    return [int(index) if index else key for index, key in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path)]


def mutated(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of BASE with the value at `path` set (or removed, for DELETE)."""
    data = copy.deepcopy(BASE)
    *parents, last = _keys(path)
    node: Any = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def write(tmp_path: Path, data: Any, name: str = "scenario.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  ")]


# --- a valid scenario -----------------------------------------------------------------------


def test_base_scenario_validates_and_round_trips(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert main(["validate", path]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    resolved = yaml.safe_load(out)
    assert resolved["backbone"] == {"name": "resnet18", "split": "conv2_x"}  # defaults filled in
    assert resolved["dpm"]["lambda"] == 0.5  # written under its YAML name, not `lam`
    original = parse_scenario(copy.deepcopy(BASE))
    assert Scenario.model_validate(resolved) == original
    assert load_scenario(path) == original

    # the resolved YAML is itself a valid scenario that resolves to the same text
    again = tmp_path / "resolved.yaml"
    again.write_text(out)
    assert main(["validate", str(again)]) == 0
    assert capsys.readouterr().out == out


def test_base_scenario_reads_as_the_paper_means():
    s = parse_scenario(copy.deepcopy(BASE))
    assert s.leading_entity == "E1"
    assert [e.name for e in s.entities] == ["E1", "E2", "E3", "E4"]
    assert [r.trains_from_raw for r in s.collaboration] == [True, True, False, False]
    pairs = [[(src.kind, src.of) for src in row.sources()] for row in s.collaboration]
    assert pairs[1] == [("raw", "all")]
    assert pairs[2] == [("original", "E1"), ("poisoned", "E2")]


def test_name_defaults_to_the_file_stem(tmp_path):
    data = mutated("name", DELETE)
    assert load_scenario(write(tmp_path, data, "collab-10-1.yaml")).name == "collab-10-1"


# --- malformed scenarios ----------------------------------------------------------------------


def case(name: str, path: str, value: Any, *words: str, where: str | None = None) -> Any:
    """Set `path` to `value` in BASE; the report must name `where` (default: `path`) and say `words`."""
    return pytest.param(path, value, where or path, words, id=name)


MALFORMED = [
    case("unknown-top-level-key", "descripton", "typo", "did you mean 'description'"),
    case("unknown-nested-key", "reconstructor.widht", 32, "did you mean 'width'"),
    case("unknown-key-in-list-item", "entities[0].fracton", 0.1, "did you mean 'fraction'"),
    case(
        "unknown-key-in-dataset",
        "dataset",
        {"kind": "photos", "patchh": 64},
        "did you mean 'patch'",
        where="dataset.patchh",
    ),
    case("unknown-key-deep", "reconstructor.training.lrr", 0.1, "did you mean 'lr'"),
    case("wrong-type-number", "entities[1].fraction", "lots", "valid number"),
    case("wrong-type-int", "pretrain.epochs", "many", "valid integer"),
    case("wrong-type-section", "refine", [1, 2], "valid dictionary"),
    case("out-of-range-fraction", "entities[1].fraction", 1.5, "less than or equal to 1"),
    case("out-of-range-patch", "dataset", {"kind": "photos", "patch": 8}, "16", where="dataset.patch"),
    case(
        "too-few-task-classes",
        "dataset",
        {"task_classes": 3, "kind": "photos"},
        "top-5",
        where="dataset.task_classes",
    ),
    case(
        "bad-backbone-name", "backbone", {"name": "resnet9"}, "'resnet9'", "resnet50", where="backbone.name"
    ),
    case(
        "bad-backbone-split", "backbone", {"split": "conv9_x"}, "'conv9_x'", "conv3_x", where="backbone.split"
    ),
    case(
        "split-the-backbone-lacks",
        "backbone",
        {"name": "vgg16_bn", "split": "conv3_x"},
        "'conv3_x'",
        "vgg16_bn's splits",
        "'block1', 'block2', 'block3', 'block4', 'block5'",
        where="backbone.split",
    ),
    case(
        "vgg-with-the-default-split",
        "backbone",
        {"name": "vgg16_bn"},
        "(the default)",
        where="backbone.split",
    ),
    case("bad-optimizer", "refine.optimizer", "rmsprop", "'rmsprop'"),
    case("bad-dataset-kind", "dataset", {"kind": "mnist"}, "'mnist'", "'photos'", where="dataset.kind"),
    case("missing-dataset-kind", "dataset", {"patch": 64}, "missing", where="dataset.kind"),
    case("negative-lambda", "dpm.lambda", -1.0, "greater than 0"),
    case("bad-dpm-objective", "dpm.objective", "mse", "'mse'", "'distill'"),
    case("zero-temperature", "dpm.temperature", 0, "greater than 0"),
    case("fractions-above-one", "entities[3].fraction", 0.9, "fractions add up to 1.2", where="entities"),
    case("duplicate-entity-name", "entities[3].name", "E1", "duplicate entity name 'E1'"),
    case("reserved-entity-name", "entities[3].name", "all", "reserved"),
    case("bad-entity-name", "entities[3].name", "4th entity", "pattern"),
    case("unknown-leader", "leader", "E7", "'E7' is not an entity"),
    case("row-unknown-entity", "collaboration[2].entity", "E9", "'E9' is not an entity"),
    case("source-unknown-entity", "collaboration[2].data[1]", "poisoned:E9", "'E9' is not an entity"),
    case("malformed-source", "collaboration[0].data[0]", "stolen:E2", "not a data source"),
    case("source-without-entity", "collaboration[3].data[1]", "original:", "not a data source"),
    case(
        "row-mixes-raw-and-features", "collaboration[0].data", ["own:raw", "poisoned:E2"], "mixes raw images"
    ),
    case("row-without-data", "collaboration[1].data", [], "at least 1"),
    case("duplicate-row-label", "collaboration[3].label", "E1 alone", "duplicate row label"),
    case("row-missing-entity", "collaboration[1].entity", DELETE, "required"),
    case("bad-schema-version", "schema_version", 2, "got 2"),
    case("missing-dpm-section", "dpm", DELETE, "required"),
    case("empty-entities", "entities", [], "at least 1"),
    case("bad-scenario-name", "name", "my scenario!", "pattern"),
]


def assert_refused(path, capsys, where, words, args=()):
    """`veil validate` exits 2, prints nothing on stdout, and names `where` with each of `words`."""
    assert main(["validate", path, *args]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in problem_lines(err) if line.startswith(f"  {where}: ")]
    assert lines, f"no problem reported at {where!r}:\n{err}"
    for word in words:
        assert any(word in line for line in lines), f"{word!r} not said at {where!r}:\n{err}"


@pytest.mark.parametrize(("path", "value", "where", "words"), MALFORMED)
def test_malformed_scenario_is_refused_naming_the_field(tmp_path, capsys, path, value, where, words):
    assert_refused(write(tmp_path, mutated(path, value)), capsys, where, words)


def test_yaml_syntax_error_reports_its_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndpm:\n  lambda: 1\n   epochs: 2\n")
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert re.search(r"^  line 4, column \d+: not valid YAML", err, re.MULTILINE), err


def test_set_overrides_fields_without_touching_the_file(tmp_path, capsys):
    path = write(tmp_path, BASE)
    before = Path(path).read_bytes()
    args = ["--set", "dpm.objective=distill", "--set", "entities[1].fraction=0.2"]
    args += ["--set", "entities.2.name=E9"]
    assert main(["validate", path, *args]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["dpm"]["objective"] == "distill"
    assert resolved["entities"][1]["fraction"] == 0.2
    assert resolved["entities"][2]["name"] == "E9"
    assert Path(path).read_bytes() == before


BAD_OVERRIDES = [
    (["--set", "dpm.objectiv=distill"], "dpm.objectiv", ["did you mean 'objective'"]),
    (["--set", "dpm.objective=sgd"], "dpm.objective", ["'ce'", "'distill'"]),
    (["--set", "entities.9.fraction=0.1"], "--set entities.9.fraction", ["items 0-3"]),
    (["--set", "seed.offset=1"], "--set seed.offset", ["single value"]),
    (["--set", "dpm.epochs"], "--set dpm.epochs", ["KEY=VALUE"]),
    (["--set", "dpm.epochs=[1,"], "--set dpm.epochs", ["not valid YAML"]),
]


@pytest.mark.parametrize(("args", "where", "words"), BAD_OVERRIDES, ids=[a[1] for a, *_ in BAD_OVERRIDES])
def test_bad_override_is_refused_naming_it(tmp_path, capsys, args, where, words):
    assert_refused(write(tmp_path, BASE), capsys, where, words, args)


def test_missing_file_is_reported(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nowhere.yaml")]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "nowhere.yaml" in err
    assert "  (file): cannot read" in err


TOP_LEVEL = {"list": "- name: E1\n- name: E2\n", "scalar": "just a string\n", "empty": ""}


@pytest.mark.parametrize("text", TOP_LEVEL.values(), ids=TOP_LEVEL.keys())
def test_top_level_must_be_a_mapping(tmp_path, capsys, text):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == EXIT_INVALID
    assert "  (top level): expected a mapping" in capsys.readouterr().err


# --- every problem at once ------------------------------------------------------------------


def test_several_problems_are_reported_together(tmp_path, capsys):
    data = copy.deepcopy(BASE)
    data["descripton"] = "typo"  # structural ...
    data["entities"][1]["fraction"] = 0
    data["dpm"]["lambda"] = -1
    data["backbone"] = {"split": "conv9_x"}
    data["collaboration"][0]["entity"] = "E9"  # ... and cross-references, in the same run
    data["entities"][3]["name"] = "E1"
    assert main(["validate", write(tmp_path, data)]) == EXIT_INVALID
    err = capsys.readouterr().err
    lines = problem_lines(err)
    assert len(lines) == 6, err
    assert "6 problem(s)" in err.splitlines()[0]
    where = sorted(line.split(": ")[0].strip() for line in lines)
    assert where == sorted(
        [
            "descripton",
            "entities[1].fraction",
            "dpm.lambda",
            "backbone.split",
            "collaboration[0].entity",
            "entities[3].name",
        ]
    )


def test_cross_references_skip_parts_that_are_malformed():
    data = copy.deepcopy(BASE)
    data["collaboration"][2]["inferred"] = "perhaps"  # a malformed row is not cross-checked ...
    data["collaboration"][2]["entity"] = "E9"
    data["entities"][1]["fraction"] = "lots"  # ... an entity with a bad fraction still has a name
    data["collaboration"][3]["data"].append("poisoned:E8")
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    assert [p.path for p in caught.value.problems] == [
        "entities[1].fraction",
        "collaboration[2].inferred",
        "collaboration[3].data[2]",
    ]


def test_unnamed_entity_silences_checks_that_need_every_name():
    data = mutated("entities[2].name", DELETE)
    data["collaboration"][0]["entity"] = "E9"
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    assert [p.path for p in caught.value.problems] == ["entities[2].name"]


# --- no torch for validate --------------------------------------------------------------------


def test_schema_and_cli_import_no_torch():
    code = (
        "import sys, simulator.schema, simulator.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- the repository's own scenarios ----------------------------------------------------------

SCENARIOS = sorted(ROOT.glob("scenarios/**/*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[str(p.relative_to(ROOT)) for p in SCENARIOS])
def test_repository_scenario_validates(path, capsys):
    # the paper's scenarios name datasets this machine does not hold: their files are not checked
    extra = ["--schema-only"] if path.parent.name == "paper" else []
    assert main(["validate", str(path), *extra]) == 0, capsys.readouterr().err


# --- the data owner -------------------------------------------------------------------------

OWNER: dict[str, Any] = {
    "image_size": 32,
    "autoencoder": {"maps": 4, "code_length": 64, "k": 32, "widths": [8, 8], "strides": [2, 2]},
    "training": {"epochs": 1, "lr": 0.005, "optimizer": "adam"},
    "k": 16,
    "k_small": 8,
    "k_prime": 32,
    "sampler": "empirical",
    "sweep_k": [8, 16, 32],
    "jpeg_qualities": [10, 50],
    "users": [{"name": "alice", "grant": [0, 1]}, {"name": "bob", "grant": [5]}],
}
OWNER_ONLY: dict[str, Any] = {
    "name": "owner-only",
    "dataset": {"kind": "photos", "task_classes": 5, "test_per_class": 4},
    "data_owner": OWNER,
}


def with_owner(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE (or `base`) with the data owner, and the value at `path` set (or removed, for DELETE)."""
    data = copy.deepcopy(base or {**BASE, "data_owner": OWNER})
    *parents, last = _keys(path)
    node: Any = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def test_data_owner_scenarios_validate():
    both = parse_scenario(with_owner("seed", 7))
    assert both.data_owner is not None and both.data_owner.name == "owner"
    assert [u.name for u in both.data_owner.users] == ["alice", "bob"]
    alone = parse_scenario(copy.deepcopy(OWNER_ONLY))
    assert alone.entities == [] and alone.pretrain is None and alone.dpm is None
    assert alone.data_owner is not None and alone.data_owner.sampler == "empirical"
    assert parse_scenario(copy.deepcopy(BASE)).data_owner is None  # optional
    # the resolved YAML of an owner-only scenario validates to the same scenario
    assert Scenario.model_validate(yaml.safe_load(alone.resolved_yaml())) == alone


OWNER_CASES = [
    case("k-above-m", "data_owner.k", 65, "k=65 is more than", "m=64"),
    case("train-k-above-m", "data_owner.autoencoder.k", 100, "k=100 is more than code_length m=64"),
    case("k-prime-below-k", "data_owner.k_prime", 12, "k_prime=12 must be more than k=16"),
    case("k-prime-equal-k", "data_owner.k_prime", 16, "must be more than k=16"),
    case("k-prime-above-m", "data_owner.k_prime", 70, "k_prime=70 is more than code_length m=64"),
    case("k-small-above-k", "data_owner.k_small", 20, "k_small=20 is more than k=16"),
    case("sweep-k-outside", "data_owner.sweep_k", [8, 0, 65], "k=0", where="data_owner.sweep_k[1]"),
    case("sweep-k-above-m", "data_owner.sweep_k", [8, 65], "k=65 is outside", where="data_owner.sweep_k[1]"),
    case("bad-sampler", "data_owner.sampler", "uniform", "'uniform'", "'ctg'"),
    case("bad-jpeg-quality", "data_owner.jpeg_qualities", [0, 50], "[1, 100]"),
    case("strides-widths-differ", "data_owner.autoencoder.strides", [2], "1 strides for 2 widths"),
    case("image-size-indivisible", "data_owner.image_size", 30, "not divisible", "(4)"),
    case(
        "grant-out-of-range",
        "data_owner.users[1].grant",
        [5, 1200],
        "image 1200 does not exist",
        "1200 test",
        where="data_owner.users[1].grant[1]",
    ),
    case("grant-negative", "data_owner.users[0].grant", [-1], "non-negative"),
    case("grant-twice", "data_owner.users[0].grant", [1, 1], "granted twice"),
    case("grant-empty", "data_owner.users[0].grant", [], "at least 1"),
    case("user-is-entity", "data_owner.users[0].name", "E2", "'E2' is already an entity's name"),
    case("user-is-owner", "data_owner.users[1].name", "owner", "the data owner's name"),
    case("user-twice", "data_owner.users[1].name", "alice", "another user's name"),
    case("owner-is-entity", "data_owner.name", "E1", "already an entity's name"),
    case("unknown-owner-key", "data_owner.kprime", 3, "did you mean 'k_prime'"),
    case("missing-autoencoder", "data_owner.autoencoder", DELETE, "required"),
]


@pytest.mark.parametrize(("path", "value", "where", "words"), OWNER_CASES)
def test_malformed_data_owner_is_refused(tmp_path, capsys, path, value, where, words):
    assert_refused(write(tmp_path, with_owner(path, value)), capsys, where, words)


def test_entities_need_their_sections_and_some_party_is_needed():
    data = copy.deepcopy(BASE)
    for section in ("pretrain", "reconstructor", "dpm", "refine"):
        del data[section]
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    assert sorted(str(p) for p in caught.value.problems) == sorted(
        [
            *(
                f"{s}: field required when the scenario has entities"
                for s in ("pretrain", "reconstructor", "refine")
            ),
            "dpm: field required when an entity's protection trains a DPM",  # the default protection does
        ]
    )
    for entities in ([], DELETE):
        nobody = with_owner("data_owner", DELETE, base={**OWNER_ONLY, "entities": []})
        if entities is DELETE:
            del nobody["entities"]
        with pytest.raises(ScenarioError) as caught:
            parse_scenario(nobody)
        assert [p.path for p in caught.value.problems] == ["entities"]
        assert "at least 1 entity, or a data_owner" in caught.value.problems[0].message
    rows = with_owner("collaboration", BASE["collaboration"], base=OWNER_ONLY)
    with pytest.raises(ScenarioError, match="collaboration: a collaboration table needs entities"):
        parse_scenario(rows)


def test_owner_problems_are_reported_with_the_others(tmp_path, capsys):
    data = with_owner("data_owner.k", 65)
    data["data_owner"]["k_prime"] = 8
    data["entities"][1]["fraction"] = "lots"
    data["data_owner"]["users"][0]["name"] = "E1"
    assert main(["validate", write(tmp_path, data)]) == EXIT_INVALID
    where = sorted(line.split(": ")[0].strip() for line in problem_lines(capsys.readouterr().err))
    assert where == sorted(
        ["entities[1].fraction", "data_owner.k", "data_owner.k_prime", "data_owner.users[0].name"]
    )
