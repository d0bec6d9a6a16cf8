"""How much is left in the pool for refining C? The shared C's loss on each entity's training features.

    python bench/pool_signal.py --run runs/collab-10-1-<time>     # or --run latest

For every entity, the cross-entropy and top-1 of the leader's shared C on the entity's training images'
features, original and poisoned (mirror images included when the scenario shares them). Refining C
learns only from what C does not already fit: the leader's own images are fit by pre-training, and
each DPM's CE term fits its owner's poisoned features to the frozen C. A low loss on a poisoned shard
means the shard has little left to teach C, however many images it holds.

An analysis of a finished run with access to everything in it (private partitions included); no party
of the simulation could compute the "original" column for another party.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
from pick_run import run_to_check  # bench/pick_run.py; it also puts the repo on sys.path

from entities import entity as E  # noqa: E402
from entities.datasets import load_dataset  # noqa: E402
from entities.metrics import accuracy  # noqa: E402
from simulator.pool import Pool  # noqa: E402
from simulator.rundir import RunDir  # noqa: E402
from simulator.stages.prepare import PARTITION_FILE  # noqa: E402


def pool_signal(run: RunDir) -> pd.DataFrame:
    scenario = run.scenario()
    task = load_dataset(scenario.dataset, seed=scenario.task_seed)
    assert scenario.reconstructor is not None, "a Deep Poisoning run has a reconstructor section"
    nets = E.load_nets(
        scenario.backbone,
        scenario.reconstructor,
        scenario.dataset.side,
        len(task.task_train.classes),
        run.load_nets(),
    )
    decider, pool, mirrored = nets.decider.eval(), Pool(run.pool_dir), scenario.dpm.share_mirrored
    rows = []
    for entity in scenario.entities:
        with np.load(run.private_dir(entity.name) / PARTITION_FILE) as data:
            images, labels = data["images"], data["labels"]
        y = torch.as_tensor(np.concatenate([labels, labels]) if mirrored else labels)
        shard, _ = pool.read(entity.name, "poisoned")
        for kind, feats in (
            ("original", E.featurize(nets.featurizer, images, mirrored=mirrored)),
            ("poisoned", torch.from_numpy(np.array(shard)).float()),
        ):
            with torch.no_grad():
                logits = decider(feats)
            rows.append(
                {
                    "entity": entity.name,
                    "features": kind,
                    "n": len(feats),
                    "CE of C": torch.nn.functional.cross_entropy(logits, y).item(),
                    "train top1 of C": accuracy(logits, y)["top1"],
                }
            )
    table = pd.DataFrame(rows)
    return table.pivot_table(index="entity", columns="features", values=["CE of C", "train top1 of C"])


def main(argv: list[str] | None = None) -> int:
    run_dir = run_to_check(__doc__, "collab-10-1", argv)
    torch.set_num_threads(1)
    print(f"{run_dir}: the leader's shared C on each entity's training features\n")
    print(pool_signal(RunDir.open(run_dir)).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
