"""How long building the built-in photos dataset takes: the first build (decoding and upscaling the
photos) and a rebuild (the photo cache warm), at collab-10-1's size and a larger one.

    python bench/data_build.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pick_run import ROOT  # bench/pick_run.py puts the repo on sys.path

from entities.datasets import TaskData, load_dataset  # noqa: E402
from entities.datasets.photos import build_photos  # noqa: E402
from simulator.schema import load_scenario  # noqa: E402

COLLAB = load_scenario(ROOT / "scenarios" / "collab-10-1.yaml")
BUILDS: dict[str, Callable[[], TaskData]] = {
    "collab-10-1": lambda: load_dataset(COLLAB.dataset, seed=COLLAB.task_seed),
    "4000 train patches": lambda: build_photos(
        patch=32, task_classes=10, public_classes=8, train_per_class=400, test_per_class=100, seed=0
    ),
}


def main() -> None:
    for name, build in BUILDS.items():
        start = time.perf_counter()
        first = build()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        build()
        warm = time.perf_counter() - start
        n = len(first.task_train) + len(first.task_test) + len(first.public_train) + len(first.public_test)
        print(f"{name:20s} {n:6d} patches   first build {cold:5.2f} s   rebuild {warm:5.2f} s")


if __name__ == "__main__":
    main()
