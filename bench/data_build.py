"""How long building the built-in photos dataset takes: the first build (decoding and upscaling the
photos) and a rebuild (the photo cache warm), at collab-10-1's size and a larger one.

    python bench/data_build.py
"""

from __future__ import annotations

import time

from runs import ROOT  # noqa: F401  # bench/runs.py puts the repo on sys.path

from entities.data import build_photos  # noqa: E402

SIZES = {
    "collab-10-1": dict(
        patch=32,
        task_classes=12,
        public_classes=6,
        train_per_class=100,
        test_per_class=100,
        public_per_class=300,
        jitter_strength=0.3,
        layout="tiles",
    ),
    "4000 train patches": dict(
        patch=32, task_classes=10, public_classes=8, train_per_class=400, test_per_class=100
    ),
}


def main() -> None:
    for name, args in SIZES.items():
        start = time.perf_counter()
        first = build_photos(**args, seed=0)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        build_photos(**args, seed=0)
        warm = time.perf_counter() - start
        n = len(first.task_train) + len(first.task_test) + len(first.public_train) + len(first.public_test)
        print(f"{name:20s} {n:6d} patches   first build {cold:5.2f} s   rebuild {warm:5.2f} s")


if __name__ == "__main__":
    main()
