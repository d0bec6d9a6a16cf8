"""Checks `veil run` makes before torch loads and before anything is trained: the dataset's files are there
in their kind's layout, the output can take a run's files, and a run to resume still has the scenario it
started with. No torch, no flwr."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from entities.datasets import DatasetError, TaskData, kind_of
from simulator.schema import Problem, Scenario, ScenarioError, too_few_images

MIN_FREE_MB = 200  # below this much free space (VEIL_MIN_FREE_MB) a run does not start


def check_writable(where: Path, option: str) -> None:
    """Raise ScenarioError when `where` cannot take a run's files: not writable, or its file system nearly
    full. Creates `where` when it is missing; leaves nothing else behind."""
    try:
        where.mkdir(parents=True, exist_ok=True)
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
    if free < need:
        problem = Problem(
            option,
            f"only {free:.0f} MiB free on its file system; a run needs {need:g} MiB (VEIL_MIN_FREE_MB)",
        )
        raise ScenarioError(str(where), [problem])


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


def check_devices(scenario: Scenario) -> None:
    """Raise ScenarioError when the scenario asks for a GPU share and this machine has no CUDA device,
    unless it allows the CPU (`resources.cpu_fallback`): a paper-scale run would otherwise train for days
    on the CPU without a word. Loads torch only when a GPU is asked for."""
    if scenario.resources.num_gpus <= 0 or scenario.resources.cpu_fallback:
        return
    import torch

    if not torch.cuda.is_available():
        problem = Problem(
            "resources.num_gpus",
            f"{scenario.resources.num_gpus:g} of a GPU per node, but this machine has no CUDA device; "
            "expected 0 here, or resources.cpu_fallback: true to run on the CPU",
        )
        raise ScenarioError(scenario.name, [problem])
