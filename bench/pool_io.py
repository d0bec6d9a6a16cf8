"""Pool write and read throughput against numpy.save / numpy.load of the same arrays (issue 20: >= 0.8x).

    python bench/pool_io.py --mb 256 --shards 4 --repeat 3

Both sides hash what they move, since the pool must: writing is numpy.save + fsync + sha256 of the bytes
written, against Pool.publish (chunks cast, hashed and written, fsync, manifest update) of one array and
of the same rows arriving as chunks (what the poison stage does). Reading is numpy.load + sha256 of each
file + the shards as one tensor (what refine did) + every row as float32 in batches, against Pool.read
(the digest streamed over the file) + the same batches gathered from the memory maps (entities.rows);
both in order and in refine's shuffled order. Files are in a temporary directory, so reads are likely
from the page cache on both sides. Prints MB/s of float16 feature bytes (the median of the repeats) and
the pool/numpy ratios; on a loaded machine run it twice, the write figures are noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entities.rows import Rows  # noqa: E402
from entities.training import batches  # noqa: E402
from simulator.pool import Pool  # noqa: E402

BATCH = 512


def median_s(fn: Callable[[int], object], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=256, help="feature bytes in all, float16 (default 256)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--row", default="64x8x8", help="the shape of one row (default 64x8x8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary directory)")
    args = parser.parse_args(argv)
    row = tuple(int(n) for n in args.row.split("x"))
    per_row = 2 * int(np.prod(row))
    rows = args.mb * 2**20 // per_row // args.shards
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((rows, *row), dtype=np.float32).astype(np.float16) for _ in range(args.shards)
    ]
    labels = [rng.integers(0, 10, rows) for _ in range(args.shards)]
    mb = sum(a.nbytes for a in arrays) / 2**20
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="veil-pool-io-", dir=args.dir) as tmp:
        root = Path(tmp)
        pool = Pool(root / "pool")
        (root / "npy").mkdir()

        def np_write(i: int) -> None:
            for k, a in enumerate(arrays):
                with open(root / "npy" / f"s{k}.npy", "wb") as f:
                    np.save(f, a, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                hashlib.sha256(a.data).hexdigest()

        def pool_write(i: int) -> None:
            for k, a in enumerate(arrays):
                pool.publish(owner=f"e{k}", name="poisoned", features=a, labels=labels[k])

        def pool_write_chunks(i: int) -> None:
            def chunks(a: np.ndarray) -> Iterator[np.ndarray]:
                for start in range(0, len(a), 1024):
                    yield a[start : start + 1024]

            for k, a in enumerate(arrays):
                pool.publish(owner=f"e{k}", name="poisoned", features=chunks(a), labels=labels[k])

        def np_load() -> torch.Tensor:
            loaded = []
            for k in range(len(arrays)):
                path = root / "npy" / f"s{k}.npy"
                with open(path, "rb") as f:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                loaded.append(torch.from_numpy(np.load(path)))
            return torch.cat(loaded)  # what refine did: the shards as one tensor in memory

        def np_read(i: int) -> None:
            whole = np_load()
            for start in range(0, len(whole), BATCH):
                whole[start : start + BATCH].float()

        def np_read_shuffled(i: int) -> None:
            whole = np_load()
            for index in batches(len(whole), BATCH, torch.Generator().manual_seed(i)):
                whole[index].float()

        def pool_read(i: int) -> None:
            features = Rows([pool.read(f"e{k}", "poisoned")[0] for k in range(len(arrays))])
            for batch in features.batches(BATCH):
                batch.float()

        def pool_read_shuffled(i: int) -> None:
            features = Rows([pool.read(f"e{k}", "poisoned")[0] for k in range(len(arrays))])
            for index in batches(len(features), BATCH, torch.Generator().manual_seed(i)):
                features[index].float()

        results = {}
        for name, fn in (
            ("numpy.save + sha256", np_write),
            ("Pool.publish (one array)", pool_write),
            ("Pool.publish (chunks)", pool_write_chunks),
            ("numpy.load + sha256", np_read),
            ("numpy.load + shuffled", np_read_shuffled),
            ("Pool.read + batches", pool_read),
            ("Pool.read + shuffled batches", pool_read_shuffled),
        ):
            results[name] = mb / median_s(fn, args.repeat)
            print(f"{name:30s} {results[name]:8.0f} MB/s", flush=True)

    print(f"\n{mb:.0f} MB in {args.shards} shards of {rows} rows {row}, median of {args.repeat}")
    for name, base in (
        ("Pool.publish (one array)", "numpy.save + sha256"),
        ("Pool.publish (chunks)", "numpy.save + sha256"),
        ("Pool.read + batches", "numpy.load + sha256"),
        ("Pool.read + shuffled batches", "numpy.load + shuffled"),
    ):
        print(f"{name:30s} / {base:20s} {results[name] / results[base]:5.2f}x (target >= 0.8x)")
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
