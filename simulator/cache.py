"""What a node keeps for the rest of the run, once per process: the scenario, the dataset, the shared nets.

An engine may give one process to several parties in turn (Flower's Ray backend does): the dataset is
the same for all, and each caller of `shared_nets` gets its own copy to train.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import torch

from entities import entity as E
from entities.datasets import TaskData, load_dataset
from simulator.protocol import Read, StateDict, state_sha256
from simulator.schema import Scenario, load_scenario
from simulator.views import PartyView

SCENARIO_FILE = "scenario.yaml"

_scenarios: dict[tuple[str, int], Scenario] = {}
_datasets: dict[tuple[str, int, int | None], TaskData] = {}
_nets: dict[str, E.SharedNets] = {}


def scenario_of(root: Path) -> Scenario:
    """The run's resolved scenario, validated once per process (and again only if the file changes)."""
    path = Path(root) / SCENARIO_FILE
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _scenarios:
        _scenarios[key] = load_scenario(path)
    return _scenarios[key]


def dataset(view: PartyView, side: int | None = None) -> TaskData:
    """The scenario's dataset (at `side` pixels when given), built once per process."""
    scenario = view.scenario
    spec = scenario.dataset.model_dump_json()
    key = (spec, scenario.task_seed, side)
    if key not in _datasets:
        _datasets[key] = load_dataset(scenario.dataset, seed=scenario.task_seed, side=side)
        digest = hashlib.sha256(repr(key).encode()).hexdigest()
        view.reads.append(Read(f"dataset built in process {os.getpid()}", digest))
    return _datasets[key]


def num_classes(view: PartyView) -> int:
    return len(dataset(view).task_train.classes)


def to_torch(state: StateDict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in state.items()}


def to_numpy(state: dict[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}


def shared_nets(view: PartyView, arrays: dict[str, StateDict]) -> E.SharedNets:
    """F, C, R as the server sent them, built once per process; each call gets its own copy to train."""
    names = [n for n in ("featurizer", "decider", "reconstructor") if n in arrays]
    key = "|".join(f"{n}:{state_sha256(arrays[n])}" for n in names)
    if key not in _nets:
        s = view.scenario
        assert s.reconstructor is not None, "shared nets in a scenario without a reconstructor section"
        states: dict[str, dict[str, torch.Tensor]] = {n: to_torch(arrays[n]) for n in names}
        _nets[key] = E.load_nets(s.backbone, s.reconstructor, s.dataset.side, num_classes(view), states)
    return copy.deepcopy(_nets[key])
