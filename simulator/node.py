"""What a node does for each stage, as the party its partition id makes it.

Each function gets the run directory, the scenario and the incoming records, does the
party's work with `entities`, and returns the records of the reply. Private things are read
and written only under the party's own `parties/<name>/private/`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from entities import data_owner as D
from entities import entity as E
from entities.data import partition
from simulator.courier import number, pack, state_dict
from simulator.pool import Pool
from simulator.rundir import RunDir
from simulator.schema import Scenario

PARTITION_FILE = "partition.npz"
DPM_FILE = "dpm.pt"


def parties(scenario: Scenario) -> list[str]:
    """Every party of the run, in partition-id order: a node's partition id is its index here.

    The entities, then the data owner, then its authorised users.
    """
    names = [e.name for e in scenario.entities]
    if scenario.data_owner is not None:
        names += [scenario.data_owner.name, *(u.name for u in scenario.data_owner.users)]
    return names


def role(scenario: Scenario, partition_id: int) -> str:
    names = parties(scenario)
    if not 0 <= partition_id < len(names):
        raise ValueError(f"partition id {partition_id} has no party; the scenario has {len(names)}")
    return names[partition_id]


def _own_partition(run: RunDir, party: str) -> tuple[np.ndarray, np.ndarray]:
    path = run.private_dir(party) / PARTITION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; stage 'prepare' has not run for {party}")
    with np.load(path) as data:
        return data["images"], data["labels"]


def _num_classes(task: Any) -> int:
    return len(task.task_train.classes)


def _own_raw_seed(scenario: Scenario, party: str) -> int:
    """The seed of a classifier trained on a party's own raw images alone.

    The leader's pre-training and its "own raw images" table row share it, so that row is the very
    classifier the leader shared (retrained bit for bit), and the rows refined from its C compare with it.
    """
    return E.derive_seed(scenario.seed + scenario.entity(party).seed_offset, "own:raw", party)


def prepare(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """Load this party's private partition of D_p and keep it in its private directory."""
    task = E.load_task_data(scenario)
    index = partition(task.task_train.labels, [e.fraction for e in scenario.entities], seed=scenario.seed)
    mine = task.task_train.subset(index[parties(scenario).index(party)])
    private = run.private_dir(party)
    private.mkdir(parents=True, exist_ok=True)
    tmp = private / (PARTITION_FILE + ".tmp.npz")
    np.savez(tmp, images=mine.images, labels=mine.labels)
    tmp.replace(private / PARTITION_FILE)
    return pack(metrics={"n_train": len(mine), "n_classes": _num_classes(task)})


def pretrain(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """The leader trains F+C on its own images and R on the public set; F, C, R go back to the server."""
    task = E.load_task_data(scenario)
    images, labels = _own_partition(run, party)
    seed = _own_raw_seed(scenario, party)
    t0 = time.monotonic()
    featurizer, decider = E.train_classifier(scenario, images, labels, _num_classes(task), seed=seed)
    t1 = time.monotonic()
    recon = E.train_reconstructor(scenario, featurizer, task.public_train, seed=seed + 1)
    t2 = time.monotonic()
    nets = E.SharedNets(featurizer, decider, recon)
    acc = E.evaluate(featurizer, decider, task.task_test)
    return pack(
        arrays=nets.state_dicts(),
        metrics={**acc, "classifier_s": t1 - t0, "reconstructor_s": t2 - t1},
    )


def _shared_nets(scenario: Scenario, content: RecordDict, num_classes: int) -> E.SharedNets:
    names = [n for n in ("featurizer", "decider", "reconstructor") if n in content.array_records]
    return E.load_nets(scenario, num_classes, {n: state_dict(content, n) for n in names})


def _mirrored(scenario: Scenario) -> bool:
    """Whether the pool holds each image's mirror image too (`dpm.share_mirrored`)."""
    assert scenario.dpm is not None, "a Deep Poisoning stage ran for a scenario without a dpm section"
    return scenario.dpm.share_mirrored


def poison(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """Train the private DPM, measure it, and publish poisoned features (and labels) to the pool."""
    task = E.load_task_data(scenario)
    nets = _shared_nets(scenario, content, _num_classes(task))
    images, labels = _own_partition(run, party)
    entity = scenario.entity(party)
    seed = E.derive_seed(scenario.seed + entity.seed_offset, "poison", party)
    dpm = E.train_dpm(scenario, entity, nets, images, labels, seed=seed)
    E.save_private(run.private_dir(party), DPM_FILE, dpm.state_dict())
    measured = E.measure_dpm(nets, dpm, task.task_test)

    pool = Pool(run.pool_dir)
    mirror = _mirrored(scenario)
    shared_labels = np.concatenate([labels, labels]) if mirror else labels
    shards = [
        pool.publish(
            owner=party,
            name="poisoned",
            features=E.featurize(nets.featurizer, images, dpm, mirrored=mirror).numpy(),
            labels=shared_labels,
        )
    ]
    if bool(content.config_records["config"]["publish_original"]):
        # Only for the table's "original features" reference rows: these are NOT protected.
        shards.append(
            pool.publish(
                owner=party,
                name="original",
                features=E.featurize(nets.featurizer, images, mirrored=mirror).numpy(),
                labels=shared_labels,
            )
        )
    published = [f"{s.owner}/{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}:{s.sha256}" for s in shards]
    return pack(metrics=measured, config={"published": published})


def _row_features(
    run: RunDir, scenario: Scenario, party: str, row: Any, nets: E.SharedNets
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature mix a row names: own original features are computed here, the rest come from the pool."""
    pool = Pool(run.pool_dir)
    feats, labels = [], []
    for src in row.sources():
        if src.kind == "original" and src.of == party:
            images, y = _own_partition(run, party)
            f = E.featurize(nets.featurizer, images, mirrored=_mirrored(scenario)).half()
            y = np.concatenate([y, y]) if _mirrored(scenario) else y
        else:
            shard, y = pool.read(src.of, src.kind)
            f = torch.from_numpy(np.array(shard))
        feats.append(f)
        labels.append(torch.as_tensor(np.asarray(y), dtype=torch.int64))
    return torch.cat(feats), torch.cat(labels)


def refine(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """One row of the collaboration table: train on the row's data, report top-1/top-5 on the test set."""
    task = E.load_task_data(scenario)
    index = int(number(content.config_records["config"], "row"))
    row = scenario.collaboration[index]
    if row.entity != party:
        raise ValueError(f"row {row.label!r} belongs to {row.entity}, not to {party}")
    if [(s.kind, s.of) for s in row.sources()] == [("raw", party)]:
        seed = _own_raw_seed(scenario, party)
    else:
        seed = E.derive_seed(scenario.seed, "refine", row.label)
    if row.trains_from_raw:
        sources = row.sources()
        parts = [task.task_train if s.of == "all" else None for s in sources]
        images = np.concatenate([p.images if p is not None else _own_partition(run, party)[0] for p in parts])
        labels = np.concatenate([p.labels if p is not None else _own_partition(run, party)[1] for p in parts])
        featurizer, decider = E.train_classifier(scenario, images, labels, _num_classes(task), seed=seed)
        n = len(images)
    else:
        nets = _shared_nets(scenario, content, _num_classes(task))
        feats, labels_t = _row_features(run, scenario, party, row, nets)
        featurizer = nets.featurizer
        decider = E.train_decider(scenario, nets.decider, feats, labels_t, seed=seed)
        n = len(feats)
    return pack(metrics={**E.evaluate(featurizer, decider, task.task_test), "n_train": n})


# --- the data owner and its authorised users ------------------------------------------------

KEYS_DIR = "keys"
METRIC_SEP = "|"  # a reply's metric names are "table|label|metric"


def keys_dir(run: RunDir, user: str) -> Path:
    """Where a user's key file lives: `parties/<user>/keys/`, readable by that user only."""
    return run.root / "parties" / user / KEYS_DIR


def public_dir(run: RunDir) -> Path:
    """The data owner's publication (ambiguated codes, the network): readable by every party."""
    return run.root / "public"


def codes(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """The data owner trains the autoencoder, publishes ambiguated codes and writes each user's keys.

    The reply holds metrics, and names and digests of what was published and issued: never a key, a
    code or an image.
    """
    owner = scenario.data_owner
    if owner is None or party != owner.name:
        raise ValueError(f"stage 'codes' is the data owner's; {party} is not the data owner")
    outcome = D.run_owner(
        scenario,
        public_dir=public_dir(run),
        private_dir=run.private_dir(party),
        keys_dir=lambda user: keys_dir(run, user),
        seed=E.derive_seed(scenario.seed, "codes", party),
    )
    metrics = {METRIC_SEP.join((r["table"], r["label"], r["metric"])): r["value"] for r in outcome.records}
    files = outcome.manifest["files"]
    published = [
        f"{name}:{'x'.join(map(str, info.get('shape', [])))}:{info.get('dtype', '')}:{info['sha256']}"
        for name, info in files.items()
    ]
    issued = [f"{i.user}:{i.n_images}:{i.sha256}" for i in outcome.issued]
    return pack(metrics=metrics, config={"published": published, "issued": issued})


def access(run: RunDir, scenario: Scenario, party: str, content: RecordDict) -> RecordDict:
    """An authorised user reconstructs the images it holds keys for, into its private directory."""
    owner = scenario.data_owner
    if owner is None or party not in {u.name for u in owner.users}:
        raise ValueError(f"stage 'access' is for authorised users; {party} is not one")
    measured = D.run_user(
        party,
        key_file=keys_dir(run, party) / D.KEY_FILE,
        public_dir=public_dir(run),
        private_dir=run.private_dir(party),
    )
    return pack(metrics=measured)
