"""What a node saves by keeping what it loaded (simulator.cache): the scenario, the dataset, the shared nets.

    python bench/node_cache.py scenarios/collab-10-1.yaml

Before the restructuring every message made its node re-read and re-validate the scenario and rebuild the
dataset; now a process does each once per run. Prints the cost of one load (first in the process, and
again, as a warm process paid it before), a cache hit, how many tasks a run sends, and the saving.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entities.datasets import load_dataset  # noqa: E402
from simulator import cache  # noqa: E402
from simulator.roles import Party, Role  # noqa: E402
from simulator.rundir import RunDir  # noqa: E402
from simulator.schema import load_scenario  # noqa: E402
from simulator.stages import Server, stage_order  # noqa: E402
from simulator.views import PartyView  # noqa: E402


def timed(fn, repeat: int = 3) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    first = time.perf_counter()
    fn()
    first = time.perf_counter() - first
    again = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        again.append(time.perf_counter() - t0)
    return first, statistics.median(again)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/veil-node-cache"))
    args = parser.parse_args(argv)
    scenario = load_scenario(args.scenario)
    run = RunDir.create(scenario, args.out)

    load_first, load_again = timed(lambda: load_scenario(run.scenario_path))
    data_first, data_again = timed(lambda: load_dataset(scenario.dataset, seed=scenario.task_seed))
    view = PartyView(run.root, Party(scenario.entities[0].name, Role.ENTITY), scenario)
    cache.dataset(view)
    t0 = time.perf_counter()
    for _ in range(100):
        cache.scenario_of(run.root)
        cache.dataset(view)
    hit = (time.perf_counter() - t0) / 100

    # tasks a run sends to the parties (each one re-loaded the scenario and the dataset before)
    server = Server(run, scenario, [], print)
    tasks = 0
    for stage in stage_order():
        if stage.absent(scenario) or stage.name not in ("prepare", "pretrain", "poison", "refine"):
            continue
        if stage.name == "refine":
            tasks += len(scenario.collaboration)
        elif stage.name == "pretrain":
            tasks += 1
        else:
            tasks += len(scenario.entities)
    del server
    per_task = load_again + data_again
    print(
        f"scenario {scenario.name}: load + validate {load_first * 1e3:.1f} ms first, "
        f"{load_again * 1e3:.1f} ms again"
    )
    print(f"dataset build: {data_first:.3f} s first in a process, {data_again:.3f} s again (photos decoded)")
    print(f"cache hit (scenario + dataset): {hit * 1e6:.1f} us")
    print(
        f"Deep Poisoning tasks per run: {tasks}; saved per task {per_task:.3f} s; per run "
        f"{tasks * per_task:.1f} s (the cached process still builds once: {data_first:.3f} s)"
    )
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
