"""Checks `veil run` makes before torch loads and before anything is trained: the dataset's files are there
in their kind's layout, the output can take a run's files, and a run to resume still has the scenario it
started with. No torch, no flwr."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from entities.datasets import DatasetError, TaskData, kind_of
from simulator.schema import (
    Problem,
    Scenario,
    ScenarioError,
    load_scenario,
    too_few_images,
    training_steps,
)

MIN_FREE_MB = 200  # below this much free space (VEIL_MIN_FREE_MB) a run does not start


def check_writable(where: Path, option: str, *, free_space: bool = True) -> None:
    """Raise ScenarioError when `where` cannot take a run's files: not writable, or (free_space) its file
    system nearly full. Creates `where` when it is missing, and removes what it created when it refuses: a
    refused run leaves nothing behind."""
    created: list[Path] = []
    try:
        try:
            missing = [p for p in (where, *where.parents) if not p.exists()]
            for path in reversed(missing):
                path.mkdir()
                created.append(path)
            fd, probe = tempfile.mkstemp(prefix=".veil-probe-", dir=where)
            try:
                os.write(fd, b"veil")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            raise ScenarioError(
                str(where), [Problem(option, f"cannot write here: {err.strerror or err}")]
            ) from None
        need = float(os.environ.get("VEIL_MIN_FREE_MB", MIN_FREE_MB))
        free = shutil.disk_usage(where).free / 2**20
        if free_space and free < need:
            problem = Problem(
                option,
                f"only {free:.0f} MiB free on its file system; a run needs {need:g} MiB (VEIL_MIN_FREE_MB)",
            )
            raise ScenarioError(str(where), [problem])
    except ScenarioError:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def check_out_dir(out: Path, option: str) -> Path:
    """`out` as a directory for runs: refused when it is a file or its name cannot be one."""
    try:
        is_file = out.exists() and not out.is_dir()
    except OSError as err:
        raise ScenarioError(
            str(out), [Problem(option, f"{err.strerror}; expected a directory for runs")]
        ) from None
    if is_file:
        raise ScenarioError(str(out), [Problem(option, "is a file; expected a directory for runs")])
    return out


def check_new_run(
    file: str | Path,
    overrides: Sequence[str],
    out: Path,
    warn: Callable[[list[str]], None],
    *,
    cluster: bool = False,
    engine: str = "flower",
    out_option: str = "--out",
) -> Scenario:
    """What a new run is checked for before torch loads and anything is written (`veil run FILE`, and the
    Flower App's ServerApp): the scenario with its overrides, this machine's devices (findings a cluster
    may answer go to `warn`, with the work warnings), the dataset's files, and `out` (named `out_option` in
    errors). Raises ScenarioError; returns the scenario."""
    scenario = load_scenario(file, overrides)
    warn(check_devices(scenario, cluster=cluster, engine=engine) + work_warnings(scenario))
    check_dataset(scenario)
    check_writable(check_out_dir(out, out_option), out_option)
    return scenario


def check_scenario_unchanged(root: Path) -> None:
    """Raise ScenarioError naming scenario.yaml when it differs from the digest the manifest recorded at
    the run's start (a run from before digests were recorded has none: nothing to compare)."""
    path = root / "scenario.yaml"
    recorded = (json.loads((root / "manifest.json").read_bytes()).get("digests") or {}).get("scenario.yaml")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if recorded is not None and actual != recorded:
        problem = Problem(
            "(file)",
            f"changed since the run started (sha256 {actual}, the manifest recorded {recorded}); "
            "a resumed run keeps the scenario it started with: start a new run for the new one",
        )
        raise ScenarioError(str(path), [problem])


SPLITS = ("task_train", "task_test", "public_train", "public_test")


def load_checked(scenario: Scenario) -> TaskData:
    """The scenario's dataset, its files checked in its kind's layout; a ScenarioError naming the path and
    the layout expected when they are not."""
    section = scenario.dataset
    try:
        kind = kind_of(section)
        kind.check(section)
        return kind.load(section, seed=scenario.task_seed)
    except DatasetError as err:
        problem = Problem("dataset", f"{err.problem}; expected {err.expected}")
        raise ScenarioError(err.path, [problem]) from None


def check_counts(scenario: Scenario, sizes: Mapping[str, int]) -> None:
    """Raise ScenarioError when a split the run trains on is empty or an entity's share of the training
    images is too small to train on; `sizes`: images per split (SPLITS)."""
    problems = []
    for name in SPLITS[:3]:
        if sizes[name] == 0:
            problems.append(Problem("dataset", f"the {name} split holds no images"))
    problems += too_few_images(enumerate(scenario.entities), sizes["task_train"])
    owner = scenario.data_owner
    n_test = sizes["task_test"]
    for i, user in enumerate(owner.users if owner is not None else []):
        for j, index in enumerate(user.grant):
            if index >= n_test:
                problems.append(
                    Problem(
                        f"data_owner.users[{i}].grant[{j}]",
                        f"image {index} does not exist; the owner has {n_test} test images",
                    )
                )
    if problems:
        raise ScenarioError(str(getattr(scenario.dataset, "root", scenario.dataset.kind)), problems)


def check_dataset(scenario: Scenario) -> TaskData:
    """Raise ScenarioError when the dataset's files are not where the section says, or not in its kind's
    layout, or hold too few images for the entities: the path and the layout expected, before any training
    and before anything is written. Returns the dataset (its pixels still on disk)."""
    data = load_checked(scenario)
    check_counts(scenario, {name: len(getattr(data, name)) for name in SPLITS})
    return data


WORK_WARN_STEPS = 10**7  # optimizer steps of one training section: hours even on a GPU


def machine_cpus() -> int:
    """The CPUs this process may use (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def work_warnings(scenario: Scenario) -> list[str]:
    """A warning for each training section whose estimated steps (schema.training_steps) pass
    WORK_WARN_STEPS: a run that would take days, said before it starts."""
    data = scenario.model_dump(mode="json", by_alias=True)
    return [
        f"{where}: about {steps:.2g} optimizer steps (epochs x batches of the task's training set); "
        f"more than {WORK_WARN_STEPS:.0e}, which takes hours even on a GPU and days on CPUs"
        for where, steps in training_steps(data)
        if steps > WORK_WARN_STEPS
    ]


def check_devices(
    scenario: Scenario,
    *,
    cluster: bool = False,
    engine: str = "flower",
    gpus: bool = True,
    because: str = "the cluster at --ray-address may have them",
) -> list[str]:
    """Raise ScenarioError when the scenario asks for resources this machine does not have and no cluster
    (`--ray-address`, `cluster`) may supply them: more CPUs per node than this process may use (Ray would
    never place the node: the run would wait forever), or a GPU share where there is no CUDA device,
    unless the scenario allows the CPU (`resources.cpu_fallback`: a paper-scale run would otherwise train
    for days on the CPU without a word). Where a cluster may supply them, the same findings are returned as
    warnings, each ending in (`because`). The inline engine runs every party in this process: it asks Ray
    for nothing. Loads torch only when a GPU is asked for (and `gpus`: `veil validate` leaves it out)."""
    found: list[Problem] = []
    cpus = machine_cpus()
    if engine == "flower" and scenario.resources.num_cpus > cpus:
        found.append(
            Problem(
                "resources.num_cpus",
                f"{scenario.resources.num_cpus:g} CPUs per node, but this machine gives this process {cpus}; "
                f"expected at most {cpus} here (Ray could never place a node), or --ray-address of a cluster "
                "whose nodes have them",
            )
        )
    if gpus and scenario.resources.num_gpus > 0 and not scenario.resources.cpu_fallback:
        import torch

        if not torch.cuda.is_available():
            found.append(
                Problem(
                    "resources.num_gpus",
                    f"{scenario.resources.num_gpus:g} of a GPU per node, but this machine has no CUDA "
                    "device; expected 0 here, or resources.cpu_fallback: true to run on the CPU",
                )
            )
    if found and not cluster:
        raise ScenarioError(scenario.name, found)
    return [f"{p} ({because})" for p in found]
