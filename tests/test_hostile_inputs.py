"""Issue 19: hostile input beyond the scenario file, and damage noticed at every read.

Each class of failure the second audit found, tried with more inputs of its own: a file that is not a
regular file; checks that waited for the run (attack options, an insider's victims, resources, an absurd
amount of work, a stage timeout); command-line edges (--seeds, a refused run's folders, names too long);
damaged sweep.json, manifests and results lines; reports on damaged records or where they cannot be
written; values that are not finite; compare of one run, or of one run twice; a pool shard, the shared nets
or the scenario altered under a finished run, seen by `veil report` and `--resume` before they compute
anything; the relay's sealed files. Every refusal: its exit status (2, or 1 where a stored file was
damaged), one message naming the file or field and what was expected, no traceback, within seconds, and
nothing written or left behind. The run directories here are small and made by hand (real files, the
real pool writer): no run trains.

`HOSTILE_INPUTS` counts the inputs tried, by class (test_every_class_tries_more_inputs_than_the_audit).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_compare import seed_records, write_run
from test_hostile import BASE

from entities import attack_options, threats
from entities.files import NotRegular, read_regular
from simulator.cli import EXIT_INVALID, main
from simulator.pool import Pool
from simulator.rundir import RUN_ORDER, RunDir, sha256_of
from simulator.schema import MAX_TRAIN_STEPS, load_scenario
from simulator.yamlio import YamlRefused, load_file

EXIT_DAMAGED = 1
WITHIN_S = 5.0  # a refusal reads a few files; the synthetic runs' reports take longer (plots)
LONG = "n" * 300  # longer than any file system's 255-byte name


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content; a FIFO or other special file by its kind,
    never opened."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        key = str(path.relative_to(root))
        if stat.S_ISDIR(mode):
            out[key] = "dir"
        elif stat.S_ISREG(mode):
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = f"special {stat.S_IFMT(mode):o}"
    return out


def refused(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    *words: str,
    status: int = EXIT_INVALID,
    within: float = WITHIN_S,
) -> str:
    """`veil ARGV` in-process: exit `status` within `within` s, no traceback, every word said; its stderr."""
    t0 = time.monotonic()
    got = main(argv)
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert got == status, f"exit {got}, expected {status}:\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out, err
    for word in words:
        assert word in err, f"{word!r} not said:\n{err[-3000:]}"
    assert elapsed < within, f"took {elapsed:.1f} s"
    assert len(err) < 8000, "the input is echoed back"
    return err


@pytest.fixture
def fifo_guard() -> Iterator[Callable[[Path], None]]:
    """guard(fifo): should a reader block on the FIFO, a writer opens and closes it after 3 s, so that the
    test fails (it took 3 s) instead of hanging."""
    threads: list[threading.Thread] = []
    done = threading.Event()

    def unblock(path: Path) -> None:
        if not done.wait(3.0):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader: nothing blocked on it
                return
            os.close(fd)

    def guard(path: Path) -> None:
        t = threading.Thread(target=unblock, args=(path,), daemon=True)
        t.start()
        threads.append(t)

    yield guard
    done.set()
    for t in threads:
        t.join()


# --- scenarios built on test_hostile.BASE ----------------------------------------------------------


def scenario(tmp_path: Path, extra: dict[str, Any] | None = None, name: str = "s.yaml") -> Path:
    """BASE with top-level sections replaced or added from `extra`, as a file."""
    data = yaml.safe_load(BASE)
    data.update(extra or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_attack(spec: Any, knowledge: str = "outsider") -> dict[str, Any]:
    adversary: dict[str, Any] = {"name": "eve", "knowledge": knowledge, "attacks": [spec]}
    if knowledge == "insider":
        adversary["of"] = "E3"
    if knowledge == "curious-user":
        adversary["of"] = "alice"
    return {"adversaries": [adversary]}


# --- 1. files that are not regular files -------------------------------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_read_regular_refuses_special_files_unopened(tmp_path: Path, fifo_guard: Any) -> None:
    fifo = _fifo(tmp_path / "fifo")
    fifo_guard(fifo)
    for special in (fifo, tmp_path, Path("/dev/null")):
        t0 = time.monotonic()
        with pytest.raises(NotRegular, match="not a regular file"):
            read_regular(special)
        assert time.monotonic() - t0 < 1.0
    with pytest.raises(YamlRefused, match="FIFO"):
        load_file(fifo)
    (tmp_path / "big").write_bytes(b"x" * 100)
    assert len(read_regular(tmp_path / "big", limit=10)) == 11  # a caller can tell it is too large


NOT_REGULAR_COMMANDS = ["validate", "run", "run-sweep", "dry-run"]


@pytest.mark.parametrize("command", NOT_REGULAR_COMMANDS)
def test_a_fifo_or_device_scenario_is_refused_without_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fifo_guard: Any, command: str
) -> None:
    fifo = _fifo(tmp_path / "scenario.yaml")
    fifo_guard(fifo)
    argv = {
        "validate": ["validate", str(fifo)],
        "run": ["run", str(fifo), "--out", str(tmp_path / "runs")],
        "run-sweep": ["run", str(fifo), "--seeds", "0-1", "--out", str(tmp_path / "runs")],
        "dry-run": ["run", str(fifo), "--dry-run"],
    }[command]
    before = tree(tmp_path)
    refused(argv, capsys, str(fifo), "FIFO", "expected a scenario file", within=2.0)
    assert tree(tmp_path) == before
    refused(["validate", "/dev/null"], capsys, "character device")


@pytest.mark.parametrize("which", ["manifest.json", "sweep.json", "results", "scenario.yaml"])
def test_a_fifo_in_a_run_or_sweep_is_refused_by_resume_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fifo_guard: Any, which: str
) -> None:
    run = synthetic_run(tmp_path / "sweep" / "seed-0")
    root = run
    if which == "sweep.json":
        root = run.parent
        _fifo(root / "sweep.json")
        fifo_guard(root / "sweep.json")
    elif which == "results":
        target = run / "results" / "refine.jsonl"
        target.unlink()
        fifo_guard(_fifo(target))
    else:
        (run / which).unlink()
        fifo_guard(_fifo(run / which))
    before = tree(tmp_path)
    refused(["report", str(root)], capsys, "not a regular file", within=3.0)
    if which != "results":  # a resume reads no results
        refused(["run", "--resume", str(root)], capsys, "FIFO", within=3.0)
    assert tree(tmp_path) == before


# --- 2. attack options against each attack's declared options ---------------------------------------

# (attack spec, adversary knowledge, the option named, words said)
BAD_OPTIONS = [
    ({"name": "surrogate-dpm", "options": {"surogates": 2}}, "outsider", "surogates", "no option"),
    ({"name": "surrogate-dpm", "options": {"surrogates": 0}}, "outsider", "surrogates", "greater than"),
    ({"name": "surrogate-dpm", "options": {"surrogates": "two"}}, "outsider", "surrogates", "valid integer"),
    ({"name": "surrogate-dpm", "options": {"surrogates": True}}, "outsider", "surrogates", "true/false"),
    ({"name": "surrogate-dpm", "options": {"surrogates": [2]}}, "outsider", "surrogates", "valid integer"),
    ({"name": "surrogate-dpm", "options": {"epochs": 0}}, "outsider", "epochs", "greater than"),
    ({"name": "surrogate-dpm", "options": {"epochs": 10**12}}, "outsider", "epochs", "less than"),
    ({"name": "surrogate-dpm", "options": {"epochs": 2.5}}, "outsider", "epochs", "integer"),
    ({"name": "surrogate-dpm", "options": {"output": "sigmoid"}}, "outsider", "output", "'minmax'"),
    ({"name": "surrogate-dpm", "options": {"seed": -1}}, "outsider", "seed", "greater than"),
    ({"name": "surrogate-dpm", "options": {"min_steps": 10**12}}, "outsider", "min_steps", "less than"),
    (
        {"name": "reconstructor-family", "options": {"variants": ["paper r"]}},
        "outsider",
        "variants[0]",
        "'paper R'",
    ),
    (
        {"name": "reconstructor-family", "options": {"variants": ["residual", "residual"]}},
        "outsider",
        "variants",
        "once",
    ),
    ({"name": "reconstructor-family", "options": {"variants": []}}, "outsider", "variants", "at least 1"),
    ({"name": "reconstructor-family", "options": {"holdout": 1.5}}, "outsider", "holdout", "less than 1"),
    ({"name": "reconstructor-family", "options": {"holdout": -0.1}}, "outsider", "holdout", "greater than"),
    ({"name": "feature-alignment", "options": {"lr": 0}}, "outsider", "lr", "greater than 0"),
    ({"name": "feature-alignment", "options": {"steps": 10**12}}, "outsider", "steps", "less than"),
    ({"name": "feature-alignment", "options": {"mmd_weight": -1}}, "outsider", "mmd_weight", "greater than"),
    ({"name": "feature-alignment", "options": {"width": "wide"}}, "outsider", "width", "valid integer"),
    ({"name": "magnitude", "options": {"end": "middle"}}, "outsider", "end", "'smallest'"),
    ({"name": "random-guess", "options": {"seed": 2**40}}, "outsider", "seed", "less than"),
    ({"name": "random-guess", "options": {"steps": 10}}, "outsider", "steps", "it takes: seed"),
    ({"name": "shared-reconstructor", "options": {"epochs": 1}}, "outsider", "epochs", "takes no options"),
    ({"name": "decode-as-published", "options": {"k": 3}}, "outsider", "k", "takes no options"),
    ({"name": "usage-prior", "options": {"seed": 1}}, "outsider", "seed", "takes no options"),
    ({"name": "support-detector", "options": {"images": 0}}, "outsider", "images", "greater than"),
    ({"name": "support-detector", "options": {"repeats": 10**6}}, "outsider", "repeats", "less than"),
    ({"name": "support-detector", "options": {"hidden": 0}}, "outsider", "hidden", "greater than"),
    (
        {"name": "support-detector-curious", "options": {"key_repeats": 0}},
        "curious-user",
        "key_repeats",
        "greater",
    ),
    ({"name": "known-pairs", "options": {"ns": [0, 10]}}, "insider", "ns", "[1, 10^9]"),
    ({"name": "known-pairs", "options": {"ns": []}}, "insider", "ns", "at least 1"),
    ({"name": "known-pairs", "options": {"ns": ["ten"]}}, "insider", "ns[0]", "valid integer"),
    ({"name": "protection-holder", "options": {"surrogates": 3}}, "insider", "surrogates", "no option"),
    ({"name": "protection-holder", "options": {"epochs": -3}}, "insider", "epochs", "greater than"),
]


@pytest.mark.parametrize(
    ("spec", "knowledge", "option", "word"),
    BAD_OPTIONS,
    ids=[f"{s['name']}-{o}-{i}" for i, (s, _, o, _) in enumerate(BAD_OPTIONS)],
)
def test_bad_attack_options_are_refused_at_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: Any, knowledge: str, option: str, word: str
) -> None:
    extra = with_attack(spec, knowledge)
    if spec["name"] == "known-pairs":
        extra["adversaries"][0]["known_pairs"] = 5
    path = scenario(tmp_path, extra)
    before = tree(tmp_path)
    err = refused(["validate", str(path)], capsys, within=1.0)
    lines = [x for x in err.splitlines() if x.startswith(f"  adversaries[0].attacks[0].options.{option}")]
    assert lines and any(word in x for x in lines), err
    assert tree(tmp_path) == before


def test_good_attack_options_validate(tmp_path: Path) -> None:
    for spec in (
        {"name": "surrogate-dpm", "options": {"surrogates": 2, "epochs": 4, "output": "clamp"}},
        {"name": "reconstructor-family", "options": {"variants": ["minmax", "paper R"], "holdout": 0}},
        {"name": "magnitude", "options": {"end": "largest"}},
    ):
        assert load_scenario(scenario(tmp_path, with_attack(spec))).adversaries[0].attack_specs()[0].options


def test_each_attack_takes_exactly_its_declared_options() -> None:
    """The constructor's keyword arguments and defaults are the options model's fields and defaults, so that
    what validation accepts is what the attack takes (one declaration, two readers)."""
    from entities.attacks import ATTACKS, make_attack

    assert set(ATTACKS) == set(threats.ATTACKS)
    for name, cls in ATTACKS.items():
        model = threats.ATTACKS[name].options
        params = {
            p.name: p.default
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        if name == "support-detector-curious":  # **options: the support detector's
            params |= {
                p.name: p.default
                for p in inspect.signature(ATTACKS["support-detector"].__init__).parameters.values()
                if p.name != "self"
            }
        fields = {k: f.default for k, f in model.model_fields.items()}
        assert set(params) == set(fields), (name, set(params) ^ set(fields))
        for key, default in params.items():
            assert fields[key] == (list(default) if isinstance(default, tuple) else default), (name, key)
        make_attack(name)  # the defaults construct
    with pytest.raises(ValueError, match=r"options\.ns: .*\[1, 10\^9\]"):
        make_attack("known-pairs", ns=[0])
    with pytest.raises(ValueError, match="has no option 'surogates'"):
        make_attack("surrogate-dpm", surogates=2)


# --- 3. an adversary's victims -------------------------------------------------------------------------

VICTIMS = [
    (["E3"], 0),
    (["E1", "E3"], 1),
    (["E3", "E3"], 0),
    (["E2", "E1", "E3"], 2),
]


@pytest.mark.parametrize(("victims", "index"), VICTIMS, ids=["-".join(v) for v, _ in VICTIMS])
def test_an_insider_naming_itself_as_victim_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], victims: list[str], index: int
) -> None:
    extra = with_attack("shared-reconstructor", "insider")
    extra["adversaries"][0]["victims"] = victims
    path = scenario(tmp_path, extra)
    refused(
        ["validate", str(path)], capsys, f"adversaries[0].victims[{index}]", "the insider itself", within=1.0
    )


# --- 4. resources against the machine ----------------------------------------------------------------

CPUS = [64, 1e6, 2.5 + os.cpu_count()]  # type: ignore[operator]


@pytest.mark.parametrize("cpus", CPUS)
def test_more_cpus_than_the_machine_is_an_error_here_and_a_warning_for_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cpus: float
) -> None:
    from simulator.preflight import check_devices, machine_cpus

    path = scenario(tmp_path, {"resources": {"num_cpus": cpus}})
    out = tmp_path / "runs"
    refused(
        ["run", str(path), "--out", str(out)], capsys, "resources.num_cpus", f"this process {machine_cpus()}"
    )
    assert not out.exists()
    refused(["run", str(path), "--seeds", "0-1", "--out", str(out)], capsys, "resources.num_cpus")
    assert not out.exists()
    assert main(["validate", str(path)]) == 0  # a scenario for another machine: a warning
    assert "warning: resources.num_cpus" in capsys.readouterr().err
    warned = check_devices(load_scenario(path), cluster=True)  # --ray-address: the cluster may have them
    assert len(warned) == 1 and "--ray-address may have them" in warned[0]
    assert check_devices(load_scenario(path), engine="inline") == []  # inline asks Ray for nothing


def test_a_gpu_share_without_a_gpu_is_a_warning_for_a_cluster(tmp_path: Path) -> None:
    import torch

    from simulator.preflight import check_devices
    from simulator.schema import ScenarioError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    s = load_scenario(scenario(tmp_path, {"resources": {"num_gpus": 0.5}}))
    with pytest.raises(ScenarioError, match="no CUDA device"):
        check_devices(s)
    assert "no CUDA device" in check_devices(s, cluster=True)[0]


@pytest.mark.parametrize(
    "resources", [{"num_cpus": 0}, {"num_cpus": -2}, {"num_gpus": 1.5}, {"num_gpus": -1}]
)
def test_resources_out_of_range_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], resources: dict[str, float]
) -> None:
    (key,) = resources
    refused(["validate", str(scenario(tmp_path, {"resources": resources}))], capsys, f"resources.{key}")


# --- 5. an absurd amount of work, a stage timeout --------------------------------------------------------

FEDAVG = {"rounds": 2, "local_epochs": 1, "lr": 0.1}
WORK = [
    ({"pretrain": {"epochs": 10**12, "lr": 0.1}}, "pretrain.epochs"),
    ({"pretrain": {"epochs": 1, "lr": 0.1, "min_steps": 10**12}}, "pretrain.min_steps"),
    ({"dpm": {"lambda": 0.5, "epochs": 10**10, "lr": 0.01}}, "dpm.epochs"),
    ({"refine": {"epochs": 1, "lr": 0.01, "min_steps": 2 * 10**9}}, "refine.min_steps"),
    (
        {"reconstructor": {"width": 32, "training": {"epochs": 10**12, "lr": 0.01, "optimizer": "adam"}}},
        "reconstructor.training.epochs",
    ),
    ({"fedavg": FEDAVG | {"rounds": 10**12}}, "fedavg.rounds"),
    ({"fedavg": FEDAVG | {"local_epochs": 10**12}}, "fedavg.rounds"),
]


@pytest.mark.parametrize(("extra", "where"), WORK, ids=[w for _, w in WORK])
def test_work_that_would_never_end_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: dict[str, Any], where: str
) -> None:
    path = scenario(tmp_path, extra)
    out = tmp_path / "runs"
    refused(["validate", str(path)], capsys, where, "optimizer steps", "at most 10^9", within=1.0)
    refused(["run", str(path), "--out", str(out)], capsys, where, within=1.0)
    assert not out.exists()


def test_work_beyond_the_warning_bound_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.preflight import WORK_WARN_STEPS

    path = scenario(tmp_path, {"pretrain": {"epochs": 1, "lr": 0.1, "min_steps": 2 * WORK_WARN_STEPS}})
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: pretrain: about 2e+07 optimizer steps" in err, err
    assert 2 * WORK_WARN_STEPS < MAX_TRAIN_STEPS
    assert main(["validate", str(scenario(tmp_path))]) == 0
    assert "warning" not in capsys.readouterr().err


TIMEOUTS = [1e-9, 0, 0.5, -1, 0.999]


@pytest.mark.parametrize("seconds", TIMEOUTS)
def test_a_stage_timeout_below_a_second_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds: float
) -> None:
    path = scenario(tmp_path, {"timeouts": {"stage_seconds": seconds}})
    refused(["validate", str(path)], capsys, "timeouts.stage_seconds", "greater than or equal to 1")


# --- 6. command-line edges ---------------------------------------------------------------------------------

SEEDS = ["", " ", ",", "0-", "-1", "a", "3-1", "0,,1", "0-2000", "1.5"]


@pytest.mark.parametrize("seeds", SEEDS, ids=[repr(s) for s in SEEDS])
def test_bad_seeds_are_refused_writing_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seeds: str
) -> None:
    path = scenario(tmp_path)
    out = tmp_path / "runs"
    before = tree(tmp_path)
    refused(["run", str(path), "--seeds", seeds, "--out", str(out)], capsys, "--seeds", within=1.0)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_a_free_space_refusal_leaves_no_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sweep: bool
) -> None:
    path = scenario(tmp_path)
    out = tmp_path / "a" / "b" / "runs"
    monkeypatch.setenv("VEIL_MIN_FREE_MB", str(10**12))
    before = tree(tmp_path)
    argv = ["run", str(path), "--out", str(out), *(["--seeds", "0-1"] if sweep else [])]
    refused(argv, capsys, "--out", "MiB free", str(out), within=10.0)
    assert tree(tmp_path) == before  # not even the empty a/b/runs


def _long(tmp_path: Path, what: str) -> list[str]:
    good = scenario(tmp_path)
    long = str(tmp_path / LONG)
    run = synthetic_run(tmp_path / "run")
    return {
        "validate": ["validate", long],
        "run-file": ["run", long],
        "run-out": ["run", str(good), "--out", f"{long}/runs"],
        "run-out-parent": ["run", str(good), "--out", f"{tmp_path}/{LONG}"],
        "sweep-out": ["run", str(good), "--seeds", "0-1", "--out", f"{long}/runs"],
        "resume": ["run", "--resume", long],
        "resume-inside": ["run", "--resume", f"{long}/run"],
        "report": ["report", long],
        "compare": ["compare", long],
        "compare-second": ["compare", str(run), long],
    }[what]


LONG_NAMES = [
    "validate",
    "run-file",
    "run-out",
    "run-out-parent",
    "sweep-out",
    "resume",
    "resume-inside",
    "report",
    "compare",
    "compare-second",
]


@pytest.mark.parametrize("what", LONG_NAMES)
def test_a_name_too_long_for_the_file_system_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    argv = _long(tmp_path, what)
    before = tree(tmp_path)
    err = refused(argv, capsys, "File name too long")
    assert len([x for x in err.splitlines() if "File name too long" in x]) == 1
    assert tree(tmp_path) == before


# --- synthetic run directories -------------------------------------------------------------------------


def synthetic_run(root: Path, records: list[dict[str, Any]] | None = None) -> Path:
    """A finished run directory made by hand: the resolved BASE scenario, a manifest with every stage done
    and the digests `veil run` records, results, shared/nets.pt and a pool of two real shards."""
    path = root.parent / f".{root.name}.yaml"
    root.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BASE)
    resolved = load_scenario(path).resolved_yaml()
    path.unlink()
    data = yaml.safe_load(resolved)
    write_run(root, data, records if records is not None else seed_records(0))
    (root / "scenario.yaml").write_text(resolved)
    nets = root / "shared" / "nets.pt"
    nets.parent.mkdir()
    nets.write_bytes(bytes(range(256)) * 8)
    pool = Pool(root / "pool")
    rng = np.random.default_rng(0)
    digests = {"scenario.yaml": sha256_of(resolved.encode()), "shared/nets.pt": sha256_of(nets.read_bytes())}
    for owner in ("E1", "E2"):
        info = pool.publish(
            owner=owner,
            name="poisoned",
            features=rng.normal(size=(12, 4, 8, 8)),
            labels=rng.integers(0, 6, 12),
        )
        digests[f"pool/{owner}/poisoned"] = info.content_sha256
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stages"] = {s: {"status": "done", "wall_s": 1.0} for s in RUN_ORDER}
    manifest["digests"] = digests
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic run; every test copies it before changing anything."""
    return synthetic_run(tmp_path_factory.mktemp("made") / "run")


def copy_of(made_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(made_run, run)
    return run


def _manifest(run: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads((run / "manifest.json").read_text())
    change(data)
    (run / "manifest.json").write_text(json.dumps(data))


# --- 7. damaged sweep.json -------------------------------------------------------------------------------

SWEEPS: list[tuple[str, bytes | None, str]] = [
    ("garbage-bytes", b"\x00\xff\xfe garbage", "sweep.json"),
    ("not-json", b'{"runs": ["seed-0"', "not valid JSON"),
    ("a-list", b'["seed-0"]', "expected an object"),
    ("a-number", b"3", "expected an object"),
    ("runs-not-a-list", b'{"runs": "seed-0"}', "runs"),
    ("runs-empty", b'{"runs": []}', "runs"),
    ("runs-numbers", b'{"runs": [0, 1]}', "runs[0]"),
    ("runs-missing-run", b'{"runs": ["seed-0", "seed-9"]}', "seed-9"),
    ("runs-traversal", b'{"runs": ["seed-0", ".."]}', "runs[1]"),
    ("runs-a-path", b'{"runs": ["seed-0", "../../etc"]}', "runs[1]"),
    ("runs-twice", b'{"runs": ["seed-0", "seed-0"]}', "listed twice"),
    ("varied-too-short", b'{"runs": ["seed-0", "seed-1"], "varied": {"seed": [0]}}', "varied.seed"),
    ("varied-not-lists", b'{"runs": ["seed-0"], "varied": {"seed": 0}}', "varied.seed"),
    ("unknown-key", b'{"runs": ["seed-0"], "rnus": []}', "rnus"),
    ("empty-file", b"", "not valid JSON"),
    ("deep-nesting", b"[" * 100000 + b"]" * 100000, "sweep.json"),
]


@pytest.mark.parametrize(("name", "content", "word"), SWEEPS, ids=[s[0] for s in SWEEPS])
def test_a_damaged_sweep_json_is_refused_by_resume_and_report(
    made_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, word: str
) -> None:
    root = tmp_path / "sweep"
    root.mkdir()
    for seed in ("seed-0", "seed-1"):
        shutil.copytree(made_run, root / seed)
    (root / "sweep.json").write_bytes(content)  # type: ignore[arg-type]
    before = tree(tmp_path)
    refused(["run", "--resume", str(root)], capsys, str(root / "sweep.json"), word)
    refused(["report", str(root)], capsys, "sweep.json")
    assert tree(tmp_path) == before


# --- 8. damaged manifests -------------------------------------------------------------------------------

MANIFESTS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("stage-entry-a-string", lambda m: m["stages"].update(prepare="done"), "stages.prepare"),
    ("status-a-number", lambda m: m["stages"]["prepare"].update(status=1), "stages.prepare.status"),
    ("wall-time-text", lambda m: m["stages"]["refine"].update(wall_s="fast"), "stages.refine.wall_s"),
    ("wall-time-negative", lambda m: m["stages"]["refine"].update(wall_s=-5), "stages.refine.wall_s"),
    ("unknown-stage", lambda m: m["stages"].update(exfiltrate={"status": "done"}), "no such stage"),
    ("stage-typo", lambda m: m["stages"].update(prepar={"status": "done"}), "stages.prepar"),
    ("seed-text", lambda m: m.update(seed="0"), "seed"),
    ("seed-bool", lambda m: m.update(seed=True), "seed"),
    ("digest-a-number", lambda m: m["digests"].update({"scenario.yaml": 5}), "digests.scenario.yaml"),
    ("digest-not-hex", lambda m: m["digests"].update({"shared/nets.pt": "xyz"}), "digests.shared/nets.pt"),
    ("digests-a-list", lambda m: m.update(digests=["a"]), "digests"),
    ("hardware-a-list", lambda m: m.update(hardware=[1, 2]), "hardware"),
    ("versions-nested", lambda m: m.update(versions={"torch": {"v": 2}}), "versions.torch"),
    ("nodes-a-number", lambda m: m.update(nodes={"E1": 3}), "nodes.E1"),
    ("pool-text", lambda m: m.update(pool={"rows": "many"}), "pool.rows"),
]


@pytest.mark.parametrize(("name", "change", "word"), MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_a_manifest_with_wrong_types_or_stages_is_refused_before_the_lock(
    made_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, change: Any, word: str
) -> None:
    run = copy_of(made_run, tmp_path)
    _manifest(run, change)
    before = tree(tmp_path)
    refused(["run", "--resume", str(run)], capsys, "manifest.json", word)
    assert not (run / ".lock").exists()
    if name not in ("unknown-stage", "stage-typo"):  # a report shows any stage it is given
        refused(["report", str(run)], capsys, "manifest.json", word)
    assert tree(tmp_path) == before


# --- 9. damaged results lines ------------------------------------------------------------------------------

RECORD = {"table": "table5", "row": 1, "label": "E1 own raw", "entity": "E1", "metric": "top1", "value": 50}
LINES = [
    ("bare-number", "5", "expected an object"),
    ("bare-string", '"E1"', "expected an object"),
    ("a-list", "[1, 2]", "expected an object"),
    ("null", "null", "expected an object"),
    ("row-text", json.dumps(RECORD | {"row": "1"}), "row"),
    ("row-bool", json.dumps(RECORD | {"row": True}), "row"),
    ("row-fraction", json.dumps(RECORD | {"row": 1.5}), "row"),
    ("row-a-list", json.dumps(RECORD | {"row": [1]}), "row"),
    ("value-text", json.dumps(RECORD | {"value": "high"}), "value"),
    ("value-bool", json.dumps(RECORD | {"value": True}), "value"),
    ("value-object", json.dumps(RECORD | {"value": {}}), "value"),
    ("table-number", json.dumps(RECORD | {"table": 5}), "table"),
    ("metric-null", json.dumps(RECORD | {"metric": None}), "metric"),
    ("label-a-list", json.dumps(RECORD | {"label": ["a"]}), "label"),
    ("not-json", '{"table": "table5", "row": ', "not JSON"),
    ("missing-fields", '{"table": "table5"}', "missing"),
    ("deep-nesting", "[" * 100000 + "]" * 100000, "not JSON"),
]


@pytest.mark.parametrize(("name", "line", "word"), LINES, ids=[x[0] for x in LINES])
def test_a_damaged_results_line_is_named_with_its_file_and_line(
    made_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, line: str, word: str
) -> None:
    run = copy_of(made_run, tmp_path)
    results = run / "results" / "refine.jsonl"
    n = len(results.read_text().splitlines()) + 1
    with open(results, "a") as fh:
        fh.write(line + "\n")
    before = tree(tmp_path)
    for command in ("report", "compare"):
        err = refused([command, str(run)], capsys, f"{results}:{n}:", word)
        assert len(err.strip().splitlines()) == 1, err
    assert tree(tmp_path) == before


def test_a_results_file_that_is_not_utf8_is_named(made_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = copy_of(made_run, tmp_path)
    (run / "results" / "refine.jsonl").write_bytes(b'{"table": "t\xff"}\n')
    refused(["report", str(run)], capsys, "refine.jsonl", "not UTF-8")


# --- 10. a report that cannot be written --------------------------------------------------------------------


def test_report_where_report_is_a_file_is_refused(made_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = copy_of(made_run, tmp_path)
    (run / "report").write_text("my notes\n")
    before = tree(tmp_path)
    refused(["report", str(run)], capsys, str(run / "report"), "is a file")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("errno_name", ["EROFS", "EACCES", "ENOSPC"])
def test_report_on_a_read_only_run_is_refused(
    made_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, errno_name: str
) -> None:
    """The file system refuses the write (a read-only mount, no permission, no space): stand-ins for it
    at its boundary, since root may write anywhere."""
    import errno as errnos

    run = copy_of(made_run, tmp_path)
    before = tree(tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        code = getattr(errnos, errno_name)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("simulator.preflight.tempfile.mkstemp", refuse)
    refused(
        ["report", str(run)], capsys, "report", "cannot write here", os.strerror(getattr(errnos, errno_name))
    )
    assert tree(tmp_path) == before  # not even an empty report/


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_report_on_a_read_only_directory_is_refused(made_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = copy_of(made_run, tmp_path)
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        refused(["report", str(run)], capsys, "cannot write here")
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


# --- 11. values that are not finite -------------------------------------------------------------------------

NON_FINITE = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 1e200, None]


def test_non_finite_values_are_shown_with_a_warning(tmp_path: Path, capsys: Any) -> None:
    records = seed_records(0)
    table5 = [i for i, r in enumerate(records) if r["table"] == "table5"]
    for i, value in zip(table5, NON_FINITE, strict=False):
        records[i]["value"] = value
    run = synthetic_run(tmp_path / "run", records)
    assert main(["report", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    said = {"nan", "inf", "-inf", "1e+308", "-1e+308", "1e+200"}
    assert "warning:" in err and f"{len(NON_FINITE)} recorded values are not finite" in err, err
    for word in said:
        assert f"= {word}" in err, (word, err)
    for page in ("report.md", "index.html"):
        text = (run / "report" / page).read_text()
        assert "recorded values are not finite" in text and "= 1e+308" in text, page
    assert main(["compare", str(run)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "= -1e+308" in out


# --- 12. compare: one run twice, one run ----------------------------------------------------------------


def _twice(run: Path, tmp_path: Path, how: str) -> list[str]:
    if how == "same-path":
        return [str(run), str(run)]
    if how == "trailing-slash":
        return [str(run), f"{run}/"]
    if how == "dot-segments":
        return [str(run), f"{run.parent}/./{run.name}/../{run.name}"]
    if how == "symlink":
        (tmp_path / "link").symlink_to(run)
        return [str(run), str(tmp_path / "link")]
    # a sweep and one of its own runs
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(run, sweep / "seed-0")
    (sweep / "sweep.json").write_text(json.dumps({"runs": ["seed-0"], "varied": {"seed": [0]}}))
    return [str(sweep), str(sweep / "seed-0")]


TWICE = ["same-path", "trailing-slash", "dot-segments", "symlink", "sweep-and-its-run"]


@pytest.mark.parametrize("how", TWICE)
def test_compare_refuses_one_run_given_twice(made_run: Path, tmp_path: Path, capsys: Any, how: str) -> None:
    run = copy_of(made_run, tmp_path)
    argv = _twice(run, tmp_path, how)
    before = tree(tmp_path)
    refused(["compare", *argv], capsys, "same run directory")
    assert tree(tmp_path) == before


def test_compare_of_one_run_gives_no_interval(made_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = copy_of(made_run, tmp_path)
    assert main(["compare", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no interval" in out
    for column in ("ci_low", "ci_high", " sd "):
        assert column not in out, column
    assert " value" in out


# --- 13. damage noticed before anything is computed from it -------------------------------------------------


def _flip_shard(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "E2--poisoned.f16.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the features, not the header
    path.write_bytes(bytes(data))
    return path, "is corrupt: expected sha256"


def _tear_shard(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "E1--poisoned.f16.npy"
    path.write_bytes(path.read_bytes()[:100])
    return path, "is corrupt"


def _remove_shard(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "E2--poisoned.f16.npy"
    path.unlink()
    return path, "is missing"


def _relabel(run: Path, reseal: bool) -> tuple[Path, str]:
    path = run / "pool" / "manifest.json"
    doc = json.loads(path.read_text())
    entry = next(e for e in doc["shards"] if e["owner"] == "E2")
    entry["labels"][0] = (entry["labels"][0] + 1) % 6
    if reseal:
        entry["labels_sha256"] = hashlib.sha256(
            np.asarray(entry["labels"], dtype="<i8").tobytes()
        ).hexdigest()
    path.write_text(json.dumps(doc))
    return run / "pool" / "E2--poisoned.f16.npy", "is not what E2 published" if reseal else "altered labels"


def _garble_pool_manifest(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "manifest.json"
    path.write_text('{"version": 1, "shards": [{"owner": 3}]}')
    return path, "malformed"


def _lose_pool_manifest(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "manifest.json"
    path.unlink()
    return path, "missing"


def _flip_nets(run: Path) -> tuple[Path, str]:
    path = run / "shared" / "nets.pt"
    data = bytearray(path.read_bytes())
    data[7] ^= 0x80
    path.write_bytes(bytes(data))
    return path, "altered since stage 'pretrain' saved it"


def _drop_a_shard_from_the_pool(run: Path) -> tuple[Path, str]:
    path = run / "pool" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["shards"] = [e for e in doc["shards"] if e["owner"] != "E1"]
    path.write_text(json.dumps(doc))
    return path, "lists no shard 'E1/poisoned'"


DAMAGE = {
    "flipped-bit-in-a-shard": _flip_shard,
    "torn-shard": _tear_shard,
    "removed-shard": _remove_shard,
    "relabelled-shard": lambda run: _relabel(run, reseal=False),
    "relabelled-shard-resealed": lambda run: _relabel(run, reseal=True),
    "garbled-pool-manifest": _garble_pool_manifest,
    "lost-pool-manifest": _lose_pool_manifest,
    "shard-dropped-from-the-pool": _drop_a_shard_from_the_pool,
    "flipped-bit-in-the-nets": _flip_nets,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["report", "resume"])
def test_stored_damage_is_named_before_anything_is_computed(
    made_run: Path, tmp_path: Path, capsys: Any, damage: str, command: str
) -> None:
    run = copy_of(made_run, tmp_path)
    path, said = DAMAGE[damage](run)
    before = tree(tmp_path)
    argv = (
        ["report", str(run)] if command == "report" else ["run", "--resume", str(run), "--engine", "inline"]
    )
    err = refused(argv, capsys, str(path), said, status=EXIT_DAMAGED)
    if "expected sha256" in said:  # the file, and both digests
        assert len(set(re.findall(r"\b[0-9a-f]{64}\b", err))) == 2, err
    assert tree(tmp_path) == before  # no report/, no lock, no stage re-run


def test_an_intact_synthetic_run_passes_the_checks(made_run: Path) -> None:
    from simulator.rundir import verify_stored

    verify_stored(made_run)  # the cases above fail for their damage alone


def test_report_of_a_run_whose_scenario_changed_exits_1(made_run: Path, tmp_path: Path, capsys: Any) -> None:
    run = copy_of(made_run, tmp_path)
    path = run / "scenario.yaml"
    path.write_text(path.read_text().replace("seed: 7", "seed: 8", 1))
    refused(["report", str(run)], capsys, str(path), "altered since the run started", status=EXIT_DAMAGED)
    refused(["run", "--resume", str(run)], capsys, str(path), "changed since the run started")


# --- 14. the relay's files ----------------------------------------------------------------------------------


def test_relay_files_for_sealed_keys_are_0600_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run = RunDir(tmp_path)
        run.keep_sealed("alice", "keys", b"sealed bytes")
    finally:
        os.umask(old)
    path = tmp_path / "relay" / "alice.keys.sealed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert run.sealed("alice", "keys") == b"sealed bytes"


# --- the count --------------------------------------------------------------------------------------------

HOSTILE_INPUTS = {
    # read_regular: FIFO, directory, device, and a FIFO through load_file; a FIFO scenario to each command,
    # and a device; a FIFO for four files of a run or sweep, to report (4) and resume (3)
    "not a regular file": 4 + len(NOT_REGULAR_COMMANDS) + 1 + 4 + 3,
    "attack options": len(BAD_OPTIONS) + 2,
    "an insider's victims": len(VICTIMS),
    "resources beyond the machine": len(CPUS) * 2 + 1 + 4,
    "absurd work": len(WORK) * 2 + 1,
    "stage timeout": len(TIMEOUTS),
    "--seeds": len(SEEDS),
    "folders left behind": 2,
    "names too long": len(LONG_NAMES),
    "damaged sweep.json": len(SWEEPS) * 2,
    "damaged manifests": len(MANIFESTS) * 2 - 2,
    "damaged results lines": len(LINES) * 2 + 1,
    "report not writable": 1 + 3,
    "non-finite values": len(NON_FINITE),
    "compare: one run twice, one run": len(TWICE) + 1,
    "stored damage (report, --resume)": len(DAMAGE) * 2 + 2,
}


def test_every_class_tries_more_inputs_than_the_audit() -> None:
    print("\nhostile inputs tried, by class:")
    for what, n in HOSTILE_INPUTS.items():
        print(f"  {what}: {n}")
    print(f"  total: {sum(HOSTILE_INPUTS.values())}")
    assert sum(HOSTILE_INPUTS.values()) > 206 - 117  # the audit's cases beyond the scenario file
    assert all(n >= 2 for n in HOSTILE_INPUTS.values())
    assert attack_options.MAX_STEPS < MAX_TRAIN_STEPS
