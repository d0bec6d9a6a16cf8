"""Hostile input: every malformed scenario file (alias bombs, bad encodings, duplicate keys, non-finite
numbers, geometry the nets cannot round-trip, names that cannot be directories, counts the data cannot
supply...) is refused by `veil validate` with exit 2 and the field or line named, within a second, never
with a traceback, and nothing is written. `veil run` refuses the same files before creating anything, and
`veil run --resume` refuses a directory that is not a run. Also: the manifest records what decides
cross-machine results."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import EXIT_INVALID, main
from simulator.schema import (
    NAME_MAX,
    ScenarioError,
    load_scenario,
)

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
schema_version: 1
name: hostile
description: a valid scenario that each case below breaks in one place
seed: 7
dataset: {kind: photos, patch: 32, task_classes: 6, public_classes: 3, train_per_class: 20, test_per_class: 5}
backbone: {name: resnet18, split: conv2_x}
pretrain: {epochs: 2, lr: 0.1}
reconstructor:
  width: 32
  training: {epochs: 2, lr: 0.01, optimizer: adam}
entities:
  - {name: E1, fraction: 0.3}
  - {name: E2, fraction: 0.3}
  - {name: E3, fraction: 0.1}
dpm: {lambda: 0.5, epochs: 2, lr: 0.01}
refine: {epochs: 1, lr: 0.01}
collaboration:
  - {label: E1 alone, entity: E1, data: [own:raw]}
  - {label: centralised, entity: E1, data: [raw:all]}
  - {label: E1 + poisoned E2, entity: E1, data: [own:features, poisoned:E2]}
data_owner:
  image_size: 32
  autoencoder: {maps: 4, code_length: 64, k: 16, widths: [8, 8], strides: [2, 2]}
  training: {epochs: 1, lr: 0.005, optimizer: adam}
  k: 16
  k_small: 8
  k_prime: 32
  users:
    - {name: alice, grant: [0, 1]}
    - {name: bob, grant: [2]}
"""


def edit(old: str, new: str) -> bytes:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new).encode()


def billion_laughs() -> str:
    """Nine levels of nine aliases each: 9^9 (387 million) strings from a few hundred bytes."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def one_line_bomb() -> str:
    """The same in one flow sequence, for a --set value."""
    parts = ["&a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "[" + ", ".join(parts) + "]"


def case(name: str, content: bytes, where: str, *words: str) -> Any:
    """A file with `content`; the report must have a problem line starting with `where` saying `words`."""
    return pytest.param(content, where, words, id=name)


BOMB = billion_laughs()
assert len(BOMB) < 2048

HOSTILE = [
    # --- the YAML itself ---
    case("alias-bomb", (BASE + BOMB).encode(), "line ", "expands to more than"),
    case(
        "alias-bomb-in-a-field",
        (BOMB + BASE.replace("description: a valid", "description: *l9\nx: a")).encode(),
        "line ",
        "expands to more than",
    ),
    case("alias-refers-to-itself", edit("entities:\n", "entities: &loop [*loop]\nx:\n"), "line 11", "finite"),
    case("alias-undefined", edit("seed: 7", "seed: *seed"), "line 4", "no anchor"),
    case(
        "deep-nesting",
        edit("description: a valid", "description: " + "[" * 200 + "]" * 200 + "\nx: a"),
        "line 3",
        "nested more than",
    ),
    case(
        "duplicate-top-level-key", (BASE + "seed: 8\n").encode(), "line 31", "duplicate key 'seed'", "line 4"
    ),
    case(
        "duplicate-nested-key",
        edit("{epochs: 2, lr: 0.1}", "{epochs: 2, lr: 0.1, epochs: 200}"),
        "line 7",
        "duplicate key 'epochs'",
    ),
    case(
        "duplicate-key-in-list-item",
        edit("{name: E2, fraction: 0.3}", "{name: E2, fraction: 0.3, name: E9}"),
        "line 13",
        "duplicate key 'name'",
    ),
    case(
        "non-utf8-latin1",
        edit("a valid scenario", "caf\xe9").replace("café".encode(), b"caf\xe9"),
        "byte ",
        "0xe9",
        "not UTF-8",
    ),
    case(
        "bom-then-latin1",
        b"\xef\xbb\xbf" + BASE.replace("a valid", "caf\xe9 valid").encode("latin-1"),
        "byte 51 (line 3)",
        "0xe9 is not UTF-8",
    ),
    case("utf16", BASE.encode("utf-16"), "byte 0", "UTF-16"),
    case("nul-byte", edit("seed: 7", "seed: 7\x00"), "character ", "control characters"),
    case(
        "python-object-tag",
        edit("seed: 7", "seed: !!python/object/apply:os.system [echo pwned]"),
        "line 4",
        "tag",
        "not allowed",
    ),
    case("binary-tag", edit("name: hostile", "name: !!binary aG9zdGlsZQ=="), "line 2", "not allowed"),
    case("set-tag", edit("data: [own:raw]", "data: !!set {own:raw}"), "line 18", "not allowed"),
    case("custom-tag", edit("seed: 7", "seed: !seed 7"), "line 4", "not allowed"),
    case("two-documents", (BASE + "---\nseed: 1\n").encode(), "line 31", "single document"),
    case("non-string-key", edit("seed: 7", "7: seed"), "line 4", "not a name"),
    case("unhashable-key", edit("seed: 7", "? [a, b]\n: 7"), "line 4", "not valid YAML"),
    case("huge-integer-literal", edit("seed: 7", "seed: " + "9" * 5000), "line 4", "5000 digits"),
    case("tab-indentation", edit("  width: 32", "\twidth: 32"), "line 9", "not valid YAML"),
    case("too-large", edit("a valid scenario", "x" * (1 << 21)), "(file)", "bytes"),
    # --- the top level ---
    case("empty-file", b"", "(top level)", "mapping"),
    case("only-a-comment", b"# nothing here\n", "(top level)", "mapping"),
    case("list-at-top-level", b"- name: E1\n- name: E2\n", "(top level)", "mapping"),
    case("null-document", b"~\n", "(top level)", "mapping"),
    # --- numbers ---
    case("lr-infinite", edit("lr: 0.1}", "lr: .inf}"), "pretrain.lr", "finite"),
    case(
        "lr-nan",
        edit("{lambda: 0.5, epochs: 2, lr: 0.01}", "{lambda: 0.5, epochs: 2, lr: .nan}"),
        "dpm.lr",
        "finite",
    ),
    case("lambda-infinite", edit("lambda: 0.5", "lambda: .Inf"), "dpm.lambda", "finite"),
    case(
        "fraction-minus-infinity",
        edit("fraction: 0.1}", "fraction: -.inf}"),
        "entities[2].fraction",
        "finite",
    ),
    case(
        "timeout-nan-string",
        (BASE + "timeouts: {stage_seconds: nan}\n").encode(),
        "timeouts.stage_seconds",
        "finite",
    ),
    case(
        "epochs-true",
        edit("{epochs: 2, lr: 0.1}", "{epochs: true, lr: 0.1}"),
        "pretrain.epochs",
        "true/false",
    ),
    case("lr-yes", edit("{epochs: 2, lr: 0.1}", "{epochs: 2, lr: yes}"), "pretrain.lr", "true/false"),
    case("seed-false", edit("seed: 7", "seed: false"), "seed", "true/false"),
    case(
        "grant-item-true",
        edit("grant: [0, 1]", "grant: [0, true]"),
        "data_owner.users[0].grant[1]",
        "true/false",
    ),
    case("schema-version-true", edit("schema_version: 1", "schema_version: true"), "schema_version", "true"),
    case("negative-seed", edit("seed: 7", "seed: -1"), "seed", "got -1", "[0, 2^32 - 1]"),
    case("huge-seed", edit("seed: 7", "seed: " + str(2**70)), "seed", "[0, 2^32 - 1]"),
    case("seed-a-date", edit("seed: 7", "seed: 2024-01-01"), "seed", "valid integer"),
    # --- shapes ---
    case(
        "string-for-a-list", edit("data: [own:raw]", "data: own:raw"), "collaboration[0].data", "valid list"
    ),
    case(
        "string-for-entities",
        edit(
            "entities:\n  - {name: E1, fraction: 0.3}\n  - {name: E2, fraction: 0.3}\n"
            "  - {name: E3, fraction: 0.1}\n",
            "entities: E1\n",
        ),
        "entities",
        "valid list",
    ),
    case(
        "number-for-entities",
        edit(
            "entities:\n  - {name: E1, fraction: 0.3}\n  - {name: E2, fraction: 0.3}\n"
            "  - {name: E3, fraction: 0.1}\n",
            "entities: 5\n",
        ),
        "entities",
        "valid list",
    ),
    case(
        "list-for-a-name",
        edit("{name: E2, fraction: 0.3}", "{name: [E2], fraction: 0.3}"),
        "entities[1].name",
        "valid string",
    ),
    case(
        "huge-string-in-a-choice",
        edit("lr: 0.01, optimizer: adam}", "lr: 0.01, optimizer: " + "x" * 50000 + "}"),
        "reconstructor.training.optimizer",
        "got",
    ),
    # --- data sources ---
    case(
        "poisoned-all",
        edit("[own:features, poisoned:E2]", "[own:features, poisoned:all]"),
        "collaboration[2].data[1]",
        "only raw:all",
    ),
    case(
        "original-all",
        edit("[own:features, poisoned:E2]", "[own:features, original:all]"),
        "collaboration[2].data[1]",
        "only raw:all",
    ),
    # --- geometry the nets cannot round-trip ---
    case(
        "patch-vs-conv3",
        edit("patch: 32", "patch: 36").replace(b"split: conv2_x", b"split: conv3_x"),
        "dataset.patch",
        "not a multiple of 8",
        "40 pixels",
    ),
    case(
        "patch-vs-conv4",
        edit("patch: 32", "patch: 40").replace(b"split: conv2_x", b"split: conv4_x"),
        "dataset.patch",
        "not a multiple of 16",
    ),
    case("patch-vs-conv2", edit("patch: 32", "patch: 18"), "dataset.patch", "not a multiple of 4"),
    case(
        "patch-vs-vgg-block5",
        edit("patch: 32", "patch: 48").replace(
            b"{name: resnet18, split: conv2_x}", b"{name: vgg16_bn, split: block5}"
        ),
        "dataset.patch",
        "not a multiple of 32",
        "64 pixels",
    ),
    case(
        "image-size-vs-split",
        edit(
            "{kind: photos, patch: 32, task_classes: 6, public_classes: 3, "
            "train_per_class: 20, test_per_class: 5}",
            "{kind: image_folder, root: /data/imagenet, image_size: 230}",
        ).replace(b"grant: [0, 1]", b"grant: [0]"),
        "dataset.image_size",
        "not a multiple of 4",
    ),
    case(
        "shift-beyond-the-features",
        edit("refine: {epochs: 1, lr: 0.01}", "refine: {epochs: 1, lr: 0.01, shift: 8}"),
        "refine.shift",
        "8 cells wide",
    ),
    # --- names that cannot be directory names ---
    case("scenario-name-too-long", edit("name: hostile", "name: " + "h" * 300), "name", "300 characters"),
    case(
        "entity-name-too-long",
        edit("name: E1,", f"name: E{'1' * NAME_MAX},").replace(
            b"entity: E1,", f"entity: E{'1' * NAME_MAX},".encode()
        ),
        "entities[0].name",
        "characters",
    ),
    case(
        "user-name-too-long",
        edit("name: alice", "name: a" + "l" * 100),
        "data_owner.users[0].name",
        "101 characters",
    ),
    case("entity-name-with-slash", edit("name: E2,", "name: E2/../../etc,"), "entities[1].name", "pattern"),
    case("entity-name-with-nul", edit("name: E2,", 'name: "E2\\0",'), "entities[1].name", "pattern"),
    case("scenario-name-traversal", edit("name: hostile", "name: ../../tmp/x"), "name", "pattern"),
    case("names-differ-in-case", edit("name: E3,", "name: e1,"), "entities[2].name", "only in case"),
    case(
        "user-differs-from-entity-in-case",
        edit("name: bob", "name: e2"),
        "data_owner.users[1].name",
        "only in case",
    ),
    case("user-case-collision", edit("name: bob", "name: ALICE"), "data_owner.users[1].name", "only in case"),
    # --- counts the data cannot supply ---
    case(
        "entity-with-one-image",
        edit("fraction: 0.1}", "fraction: 0.005}"),
        "entities[2].fraction",
        "is 1",
        "at least 2",
    ),
    case(
        "more-classes-than-photos",
        edit("task_classes: 6, public_classes: 3", "task_classes: 15, public_classes: 6"),
        "dataset.public_classes",
        "19 photos",
    ),
    case(
        "dataset-beyond-memory",
        edit("train_per_class: 20", "train_per_class: 1000000000000"),
        "dataset.train_per_class",
        "GiB",
    ),
    case(
        "grant-beyond-test-set",
        edit("grant: [2]", "grant: [2, 30]"),
        "data_owner.users[1].grant[1]",
        "does not exist",
    ),
]


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content (directories: 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("  ")]


def assert_named(err: str, where: str, words: tuple[str, ...]) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in problem_lines(err) if line.startswith(f"  {where}")]
    assert lines, f"no problem reported at {where!r}:\n{err[:3000]}"
    for word in words:
        assert any(word in line for line in lines), f"{word!r} not said at {where!r}:\n{err[:3000]}"
    assert len(err) < 8000, f"{len(err)} characters of errors: the input is echoed back"


@pytest.mark.parametrize(("content", "where", "words"), HOSTILE)
def test_hostile_scenario_is_refused_at_once_writing_nothing(tmp_path, capsys, content, where, words):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    before = tree(tmp_path)
    t0 = time.monotonic()
    status = main(["validate", str(path)])
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert status == EXIT_INVALID, err
    assert out == ""
    assert_named(err, where, words)
    assert elapsed < 1.0, f"validate took {elapsed:.2f} s"
    assert tree(tmp_path) == before


def test_there_are_thirty_hostile_cases_and_the_base_is_valid(tmp_path):
    assert len(HOSTILE) >= 30
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    assert load_scenario(path).name == "hostile"


SUBPROCESS = ["alias-bomb", "non-utf8-latin1", "duplicate-nested-key", "lr-infinite", "python-object-tag"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_hostile_scenario_is_refused_by_the_command(tmp_path, name):
    content, where, words = next(p.values for p in HOSTILE if p.id == name)
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_INVALID, result.stderr
    assert result.stdout == ""
    assert_named(result.stderr, where, words)
    assert tree(tmp_path) == before


RUN_REFUSED = ["alias-bomb", "bom-then-latin1", "negative-seed", "patch-vs-conv3", "entity-with-one-image"]


@pytest.mark.parametrize("name", RUN_REFUSED)
def test_run_refuses_before_creating_anything(tmp_path, capsys, name):
    content, where, words = next(p.values for p in HOSTILE if p.id == name)
    path = tmp_path / "scenario.yaml"
    path.write_bytes(content)
    out_dir = tmp_path / "runs"
    before = tree(tmp_path)
    t0 = time.monotonic()
    assert main(["run", str(path), "--out", str(out_dir)]) == EXIT_INVALID
    assert time.monotonic() - t0 < 1.0  # refused before torch and flwr load
    assert_named(capsys.readouterr().err, where, words)
    assert not out_dir.exists()
    assert tree(tmp_path) == before


def test_run_refuses_in_a_subprocess_without_loading_torch(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(next(p.values[0] for p in HOSTILE if p.id == "duplicate-top-level-key"))
    out_dir = tmp_path / "runs"
    code = (
        "import sys; from simulator.cli import main; status = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(path), "--out", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_INVALID, result.stderr
    assert_named(result.stderr, "line 31", ("duplicate key 'seed'",))
    assert not out_dir.exists()


def test_run_refuses_an_out_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "scenario.yaml"
    path.write_text(BASE)
    out = tmp_path / "runs"
    out.write_text("not a directory\n")
    before = tree(tmp_path)
    assert main(["run", str(path), "--out", str(out)]) == EXIT_INVALID
    assert_named(capsys.readouterr().err, "--out", ("is a file",))
    assert tree(tmp_path) == before


# --- overrides are read by the same reader --------------------------------------------------------

BAD_SETS = [
    (["--set", f"description={one_line_bomb()}"], "--set description", ("expands to more than",)),
    (["--set", "pretrain.lr=.inf"], "pretrain.lr", ("finite",)),
    (["--set", "pretrain.epochs=true"], "pretrain.epochs", ("true/false",)),
    (["--set", "seed=-3"], "seed", ("got -3",)),
    (["--set", "entities[0]={name: E1, fraction: 0.3, name: E7}"], "--set entities[0]", ("duplicate key",)),
    (["--set", "seed=!!python/name:os.system"], "--set seed", ("not allowed",)),
    (["--set", "collaboration[2].data[1]=poisoned:all"], "collaboration[2].data[1]", ("only raw:all",)),
]


@pytest.mark.parametrize(("args", "where", "words"), BAD_SETS, ids=[w for _, w, _ in BAD_SETS])
def test_hostile_override_is_refused(tmp_path, capsys, args, where, words):
    path = tmp_path / "scenario.yaml"
    path.write_text(BASE)
    before = tree(tmp_path)
    t0 = time.monotonic()
    assert main(["validate", str(path), *args]) == EXIT_INVALID
    assert time.monotonic() - t0 < 1.0
    assert_named(capsys.readouterr().err, where, words)
    assert tree(tmp_path) == before


# --- what validate is given is not a file ----------------------------------------------------------


@pytest.mark.parametrize("what", ["directory", "missing"])
def test_validate_names_what_is_not_a_scenario_file(tmp_path, capsys, what):
    target = tmp_path / "scenarios"
    if what == "directory":
        target.mkdir()
    before = tree(tmp_path)
    assert main(["validate", str(target)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert str(target) in err
    assert_named(err, "(file)", ("is a directory",) if what == "directory" else ("cannot read",))
    assert tree(tmp_path) == before


# --- --resume of a directory that is not a run -------------------------------------------------------


def _not_a_run(tmp_path: Path, what: str) -> Path:
    root = tmp_path / "run"
    if what == "missing":
        return root
    if what == "a-file":
        root.write_text("{}")
        return root
    root.mkdir()
    scenario = BASE.replace("name: hostile", "name: resumed")
    manifest = json.dumps({"scenario": "resumed", "seed": 7, "stages": {}})
    files = {
        "empty-directory": {},
        "no-manifest": {"scenario.yaml": scenario},
        "corrupt-manifest": {"scenario.yaml": scenario, "manifest.json": '{"stages": {"prepare": '},
        "manifest-not-json-text": {"scenario.yaml": scenario, "manifest.json": b"\xff\xfe{"},
        "manifest-a-list": {"scenario.yaml": scenario, "manifest.json": "[1, 2]"},
        "no-scenario": {"manifest.json": manifest},
        "scenario-not-utf8": {
            "scenario.yaml": scenario.encode().replace(b"a valid", b"caf\xe9"),
            "manifest.json": manifest,
        },
        "scenario-alias-bomb": {"scenario.yaml": scenario + BOMB, "manifest.json": manifest},
    }[what]
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (root / name).write_bytes(data)
    return root


RESUMES = [
    ("missing", "(directory)", "does not exist"),
    ("a-file", "(directory)", "is a file"),
    ("empty-directory", "manifest.json", "missing"),
    ("no-manifest", "manifest.json", "missing"),
    ("corrupt-manifest", "manifest.json", "not valid JSON (line 1"),
    ("manifest-not-json-text", "manifest.json", "not valid JSON"),
    ("manifest-a-list", "manifest.json", "'stages' mapping"),
    ("no-scenario", "(file)", "cannot read"),
    ("scenario-not-utf8", "byte ", "not UTF-8"),
    ("scenario-alias-bomb", "line ", "expands to more than"),
]


@pytest.mark.parametrize(("what", "where", "word"), RESUMES, ids=[r[0] for r in RESUMES])
def test_resume_of_what_is_not_a_run_exits_2_writing_nothing(tmp_path, capsys, what, where, word):
    root = _not_a_run(tmp_path, what)
    before = tree(tmp_path)
    t0 = time.monotonic()
    assert main(["run", "--resume", str(root)]) == EXIT_INVALID
    assert time.monotonic() - t0 < 1.0
    err = capsys.readouterr().err
    assert str(root) in err  # the file or directory is named ...
    assert_named(err, where, (word,))  # ... and what was expected of it
    assert tree(tmp_path) == before


def test_resume_refusal_in_a_subprocess(tmp_path):
    root = _not_a_run(tmp_path, "corrupt-manifest")
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", "--resume", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_INVALID, result.stderr
    assert_named(result.stderr, "manifest.json", ("not valid JSON",))
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("split", "side"), [("conv2_x", 32), ("conv3_x", 40), ("conv3_x", 36), ("conv4_x", 40)]
)
def test_the_nets_round_trip_exactly_the_sides_the_schema_accepts(split, side):
    """R(F(x)) has x's size exactly when the side is a multiple of the split's stride."""
    import torch

    from entities import nets

    featurizer, _ = nets.build_classifier("resnet18", split, num_classes=5)
    channels = nets.feature_shape(featurizer, side)[0]
    recon = nets.build_reconstructor(
        channels, backbone="resnet18", split=split, width=8, blocks_per_upscale=1, output="clamp"
    )
    featurizer.eval()
    recon.eval()
    with torch.no_grad():
        back = recon(featurizer(torch.zeros(1, 3, side, side)))
    stride = nets.stride("resnet18", split)
    assert back.shape[-1] == stride * math.ceil(side / stride)
    assert (back.shape[-1] == side) == (side % stride == 0)


# --- the manifest states what decides cross-machine results ----------------------------------------


def test_manifest_records_what_decides_cross_machine_results(tmp_path):
    import torch

    from simulator.rundir import RunDir

    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    run = RunDir.create(load_scenario(path), tmp_path / "runs")
    hw = run.manifest()["hardware"]
    assert hw["torch"] == torch.__version__
    assert hw["driver_torch_threads"] == torch.get_num_threads() >= 1  # the nodes': manifest["nodes"]
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hw["cuda_version"] == torch.version.cuda
    assert "cudnn_version" in hw
    assert hw["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert isinstance(hw["cudnn_deterministic"], bool) and isinstance(hw["cudnn_benchmark"], bool)


def test_errors_never_print_an_expanded_input(tmp_path):
    """The bomb's error is a line and a bound, a few hundred characters; the old loader's would not end."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BASE + BOMB)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert len(str(caught.value)) < 400
    assert "lol" not in str(caught.value)
    assert os.listdir(tmp_path) == ["bomb.yaml"]
