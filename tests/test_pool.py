"""The common pool: round trip, manifest, corruption checks, concurrent publishers."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import pytest
import torch

from entities.rows import Rows
from simulator.pool import CorruptShard, Pool, PoolError, ShardInfo

RNG = np.random.default_rng(0)


def _features(rows: int = 6, *dims: int) -> np.ndarray:
    return RNG.normal(size=(rows, *(dims or (3, 4)))).astype(np.float32)


def _labels(rows: int = 6) -> np.ndarray:
    return RNG.integers(0, 10, size=rows)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file in the pool with its content (the lock file is content-free)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _publish_five(root: str, owner: str, start: Event) -> None:
    start.wait(30)
    pool = Pool(Path(root))
    for i in range(5):
        rows = 3 + i
        feats = np.full((rows, 4), float(i), dtype=np.float32)
        pool.publish(owner=owner, name=f"batch{i}", features=feats, labels=np.arange(rows))


def test_round_trip(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    feats, labs = _features(6, 2, 5), _labels(6)
    info = pool.publish(owner="org-a", name="poison.0", features=feats, labels=labs)
    assert isinstance(info, ShardInfo)

    got, got_labels = pool.read("org-a", "poison.0")
    assert isinstance(got, np.memmap)
    assert got.dtype == np.float16 and got.shape == (6, 2, 5)
    np.testing.assert_array_equal(got, feats.astype(np.float16))
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labs)
    assert not got.flags.writeable
    # the shard is an ordinary .npy file
    np.testing.assert_array_equal(np.load(tmp_path / "pool" / info.file, mmap_mode="r"), got)


def test_manifest_fields(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    labs = _labels(4)
    info = pool.publish(owner="orgB", name="p1", features=_features(4), labels=labs)
    path = tmp_path / "orgB--p1.f16.npy"
    assert info.file == path.name and path.is_file()
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.bytes == path.stat().st_size
    assert (info.owner, info.name, info.shape, info.dtype) == ("orgB", "p1", (4, 3, 4), "float16")
    assert "labels" not in repr(info)

    doc = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = doc["shards"]
    assert entry == {
        "name": "p1",
        "owner": "orgB",
        "file": "orgB--p1.f16.npy",
        "shape": [4, 3, 4],
        "dtype": "float16",
        "labels": labs.tolist(),
        "labels_sha256": hashlib.sha256(labs.astype("<i8").tobytes()).hexdigest(),
        "sha256": info.sha256,
        "bytes": info.bytes,
    }
    assert pool.shards() == [info] == pool.shards("orgB") and pool.shards("nobody") == []
    assert Pool(tmp_path).verify() == [info]


def test_shards_sorted_by_owner_then_name(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    for owner, name in [("b", "2"), ("a", "9"), ("b", "1"), ("a", "10")]:
        pool.publish(owner=owner, name=name, features=_features(2), labels=_labels(2))
    assert [(s.owner, s.name) for s in pool.shards()] == [("a", "10"), ("a", "9"), ("b", "1"), ("b", "2")]
    assert [s.name for s in pool.shards("b")] == ["1", "2"]


def test_corrupt_shard_refused(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    info = pool.publish(owner="org-a", name="p", features=_features(8), labels=_labels(8))
    path = tmp_path / info.file
    raw = bytearray(path.read_bytes())
    for i in (-1, -7, -20):  # the data area is at the end, past the header
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    actual = hashlib.sha256(bytes(raw)).hexdigest()

    with pytest.raises(CorruptShard) as exc:
        pool.read("org-a", "p")
    msg = str(exc.value)
    assert str(path) in msg and info.sha256 in msg and actual in msg and "org-a" in msg
    with pytest.raises(CorruptShard, match="org-a--p.f16.npy"):
        pool.verify()


def test_truncated_shard_refused(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    info = pool.publish(owner="o", name="p", features=_features(8), labels=_labels(8))
    path = tmp_path / info.file
    with open(path, "r+b") as f:
        f.truncate(info.bytes - 10)
    with pytest.raises(CorruptShard, match=re.escape(str(path))):
        pool.read("o", "p")
    with open(path, "r+b") as f:  # cut into the header too
        f.truncate(20)
    with pytest.raises(CorruptShard, match=re.escape(str(path))):
        pool.read("o", "p")


def test_missing_file_and_unknown_shard(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    info = pool.publish(owner="o", name="p", features=_features(2), labels=_labels(2))
    with pytest.raises(PoolError, match="no shard"):
        pool.read("o", "other")
    (tmp_path / info.file).unlink()
    with pytest.raises(PoolError, match="missing") as exc:
        pool.read("o", "p")
    assert not isinstance(exc.value, CorruptShard)
    with pytest.raises(PoolError, match="missing"):
        pool.verify()


def test_manifest_shape_mismatch(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    pool.publish(owner="o", name="p", features=_features(4), labels=_labels(4))
    manifest = tmp_path / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["shards"][0]["shape"] = [4, 12]  # digest still right: only the entry lies
    manifest.write_text(json.dumps(doc))
    with pytest.raises(PoolError, match=r"shape \(4, 3, 4\).*\(4, 12\)"):
        pool.read("o", "p")


def test_malformed_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PoolError, match="manifest.json"):
        Pool(tmp_path).shards()


def test_concurrent_publishers(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    Pool(root)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    owners = [f"org{i}" for i in range(4)]
    procs = [ctx.Process(target=_publish_five, args=(str(root), o, start)) for o in owners]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    pool = Pool(root)
    shards = pool.shards()
    assert [(s.owner, s.name) for s in shards] == [(o, f"batch{i}") for o in owners for i in range(5)]
    assert pool.verify() == shards
    feats, labs = pool.read("org2", "batch3")
    np.testing.assert_array_equal(feats, np.full((6, 4), 3.0, dtype=np.float16))
    np.testing.assert_array_equal(labs, np.arange(6))
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-")) == []


def test_republish_replaces(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    pool.publish(owner="o", name="p", features=_features(5), labels=_labels(5))
    other = pool.publish(owner="o", name="q", features=_features(2), labels=_labels(2))
    feats, labs = np.ones((3, 7), dtype=np.float64), np.array([7, 8, 9])
    info = pool.publish(owner="o", name="p", features=feats, labels=labs)

    assert pool.shards() == [info, other]
    assert info.shape == (3, 7)
    got, got_labels = pool.read("o", "p")
    np.testing.assert_array_equal(got, feats)
    np.testing.assert_array_equal(got_labels, labs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "manifest.json",
        "o--p.f16.npy",
        "o--q.f16.npy",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"owner": "bad/owner"}, "owner 'bad/owner'"),
        ({"owner": ".hidden"}, "owner '.hidden'"),
        ({"owner": ""}, "owner ''"),
        ({"name": "x y"}, "name 'x y'"),
        ({"labels": np.arange(5)}, "5 labels for 4"),
        ({"labels": np.arange(4.0)}, "integer"),
        ({"labels": np.arange(8).reshape(4, 2)}, "1-D"),
        ({"features": np.zeros(4)}, "ndim"),
        ({"features": np.zeros((4, 2), dtype=bool)}, "numeric"),
        ({"features": np.zeros((4, 2), dtype=complex)}, "numeric"),
        ({"features": np.full((4, 2), 1e6)}, "float16 range"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    pool = Pool(tmp_path)
    pool.publish(owner="o", name="p", features=_features(4), labels=_labels(4))
    before = _snapshot(tmp_path)
    args: dict[str, object] = {"owner": "o", "name": "p", "features": _features(4), "labels": _labels(4)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pool.publish(**args)  # type: ignore[arg-type]
    assert _snapshot(tmp_path) == before


def test_file_name_clash_is_refused(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    pool.publish(owner="a", name="b--c", features=_features(2), labels=_labels(2))
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="already holds"):
        pool.publish(owner="a--b", name="c", features=_features(3), labels=_labels(3))
    assert _snapshot(tmp_path) == before
    assert pool.verify()[0].owner == "a"


def test_bad_owner_on_read(tmp_path: Path) -> None:
    pool = Pool(tmp_path)
    with pytest.raises(ValueError, match="owner"):
        pool.read("../etc", "p")
    with pytest.raises(ValueError, match="name"):
        pool.read("o", "a/b")


# ---------------------------------------------------------------- streaming: chunks in, batches out


def _chunks(features: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(features), size):
        yield features[i : i + size]


def test_chunked_publish_writes_what_numpy_save_writes(tmp_path: Path) -> None:
    feats, labs = _features(10, 3, 4), _labels(10)
    pool = Pool(tmp_path)
    whole = pool.publish(owner="o", name="whole", features=feats, labels=labs)
    chunked = pool.publish(owner="o", name="chunked", features=_chunks(feats, 3), labels=labs)
    buffer = io.BytesIO()
    np.save(buffer, feats.astype(np.float16), allow_pickle=False)
    for info in (whole, chunked):
        data = (tmp_path / info.file).read_bytes()
        assert data == buffer.getvalue()
        assert info.sha256 == hashlib.sha256(data).hexdigest() and info.bytes == len(data)
        assert info.shape == (10, 3, 4)
    assert pool.size() == {"shards": 2, "rows": 20, "bytes": 2 * len(buffer.getvalue())}


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ([np.zeros((3, 4)), np.zeros((2, 4))], "4 labels for 5"),
        ([np.zeros((3, 4))], "4 labels for 3"),
        ([np.zeros((2, 4)), np.zeros((2, 5))], "rows of shape"),
        ([np.zeros((2, 4)), np.full((2, 4), 1e6)], "float16 range"),
        ([], "no chunks"),
    ],
)
def test_bad_chunks_write_nothing(tmp_path: Path, chunks: list[np.ndarray], match: str) -> None:
    pool = Pool(tmp_path)
    pool.publish(owner="o", name="p", features=_features(4), labels=_labels(4))
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=match):
        pool.publish(owner="o", name="p", features=iter(chunks), labels=_labels(4))
    assert _snapshot(tmp_path) == before


def test_rows_gather_like_one_tensor(tmp_path: Path) -> None:
    """Rows over memory maps and a tensor give what indexing their concatenation gives, in any order."""
    pool = Pool(tmp_path)
    parts = [_features(n, 2, 3) for n in (5, 1, 7)]
    for i, p in enumerate(parts):
        pool.publish(owner="o", name=f"s{i}", features=p, labels=_labels(len(p)))
    maps = [pool.read("o", f"s{i}")[0] for i in range(3)]
    own = torch.from_numpy(_features(4, 2, 3)).half()
    rows = Rows([maps[0], own, maps[1], maps[2]])
    whole = torch.cat(
        [torch.from_numpy(np.array(maps[0])), own, *(torch.from_numpy(np.array(m)) for m in maps[1:])]
    )
    assert rows.shape == tuple(whole.shape) and rows.dtype == torch.float16
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(0))
    for index in (
        order,
        order[:5],
        torch.tensor([16, 0, 16]),
        torch.tensor([-1]),
        torch.tensor([], dtype=torch.long),
    ):
        assert torch.equal(rows[index], whole[index])
    for sl in (slice(None), slice(3, 11), slice(9, 10), slice(2, 15, 4), slice(20, 30)):
        assert torch.equal(rows[sl], whole[sl])
    assert torch.equal(torch.cat(list(rows.batches(6))), whole)
    with pytest.raises(IndexError):
        rows[torch.tensor([len(whole)])]
    with pytest.raises(ValueError, match="part 1"):
        Rows([maps[0], own.float()])


# The refine stage's pool reader under a real memory limit. RLIMIT_DATA bounds a process's private
# writable memory (heap, anonymous maps) and not read-only file maps: the pool's shards may be mapped
# whole, while copying them into memory is refused. (RLIMIT_AS would count the maps themselves.) One
# process reads twice, each time with the limit set anew above what it holds: streaming, as refine
# reads, must pass; copying the shards into memory, as refine did before, must be refused (exit 3).
_LIMITED = """
import resource, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, torch
from torch import nn
from entities.entity import train_decider
from entities.rows import Rows
from simulator.pool import Pool
from simulator.roles import Party, Role
from simulator.stages.refine import pooled
from simulator.views import PoolView

def vm_data():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))

root, headroom = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
view = SimpleNamespace(pool=PoolView(root, Party("E1", Role.ENTITY), []))
owners = [info.owner for info in Pool(root).shards()]
recipe = SimpleNamespace(
    epochs=1, lr=0.01, batch_size=512, weight_decay=0.0, optimizer="sgd", min_steps=0, shift=0
)
_, hard = resource.getrlimit(resource.RLIMIT_DATA)
for mode in ("stream", "whole"):
    decider = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
    base = vm_data()
    resource.setrlimit(resource.RLIMIT_DATA, (base + headroom, hard))
    try:
        parts = [pooled(view, SimpleNamespace(of=o, kind="poisoned"), None) for o in owners]
        if mode == "whole":
            parts = [(torch.from_numpy(np.array(f)), labels) for f, labels in parts]
        features = Rows([f for f, _ in parts])
        labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        train_decider(recipe, decider, features, labels, seed=0)
        grew = (vm_data() - base) / 2**20
    except (MemoryError, RuntimeError) as err:
        print(f"{mode}: refused: {type(err).__name__}: {str(err)[:120]}")
        sys.exit(3 if mode == "whole" else 2)
    finally:
        parts = features = None
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    print(f"{mode}: read {len(labels)} rows; VmData grew {grew:.0f} MiB, headroom {headroom / 2**20:.0f} MiB")
"""


def test_refine_streams_a_pool_three_times_its_memory_headroom(tmp_path: Path) -> None:
    headroom = 64 << 20
    row = (64, 8, 8)  # 8 KiB of float16 per row
    rows = headroom // (2 * 64 * 8 * 8) + 1  # per shard: three shards, each above the headroom
    pool = Pool(tmp_path / "pool")

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, rows, 2048):  # cheap values: what matters is the size
            yield np.full((min(2048, rows - start), *row), start % 7, dtype=np.float16)

    for owner in ("E2", "E3", "E4"):
        pool.publish(owner=owner, name="poisoned", features=chunks(), labels=np.arange(rows) % 10)
    size = pool.size()
    assert size["bytes"] >= 3 * headroom and size["rows"] == 3 * rows

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}  # no thread stacks under the limit
    script = [sys.executable, "-c", _LIMITED, str(pool.root), str(headroom)]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    print(done.stdout.strip())
    assert f"stream: read {3 * rows} rows" in done.stdout, done.stdout + done.stderr[-3000:]
    assert done.returncode == 3 and "whole: refused" in done.stdout, done.stdout + done.stderr[-3000:]
