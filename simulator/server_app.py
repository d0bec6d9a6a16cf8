"""The ServerApp: drives the stages of a run by messages and writes what comes back.

Stages run in order; a stage marked done in the run's manifest is skipped, and so is a
collaboration row whose results are already written, which is what makes `--resume` work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from entities.data_owner import KEY_FILE
from simulator import node
from simulator.courier import Courier, Task, number, pack
from simulator.rundir import RunDir, write_atomic
from simulator.schema import DATA_OWNER_STAGES, DPM_STAGES, STAGES, Scenario

NETS_FILE = "nets.pt"
Log = Callable[[str], None]


class Driver:
    def __init__(self, grid: Grid, run: RunDir, log: Log):
        self.run = run
        self.scenario: Scenario = run.scenario()
        self.log = log
        self.courier = Courier(grid, run, timeout=self.scenario.timeouts.stage_seconds, log=log)
        self.parties = node.parties(self.scenario)
        self.entities = [e.name for e in self.scenario.entities]

    def task(self, party: str, stage: str, *, key: str = "", arrays: Any = None, **config: Any) -> Task:
        content = pack(arrays=arrays, config={"run_dir": str(self.run.root), "party": party, **config})
        return Task(party=party, message_type=f"train.{stage}", content=content, key=key or stage)

    def drive(self) -> None:
        torch.set_num_threads(max(1, int(self.scenario.resources.num_cpus)))
        self.courier.discover(self.parties, partition_of=self.parties.index)
        self.log(f"{len(self.parties)} nodes registered: {', '.join(self.parties)}")
        for stage in STAGES:
            if self.run.stage_done(stage):
                self.log(f"[bold]{stage}[/]: done in an earlier attempt, skipped")
                continue
            absent = self._absent(stage)
            if absent:
                self.run.mark_stage(stage, status="done", wall_s=0.0, skipped=absent)
                self.log(f"[bold]{stage}[/]: skipped ({absent})")
                continue
            t0 = time.monotonic()
            self.log(f"[bold]{stage}[/]: started")
            getattr(self, stage)()
            wall = time.monotonic() - t0
            self.run.mark_stage(stage, status="done", wall_s=wall)
            self.log(f"[bold]{stage}[/]: finished in {wall:.1f} s")

    def _absent(self, stage: str) -> str:
        """Why a stage has no work in this scenario ("" when it has)."""
        if stage in DPM_STAGES and not self.entities:
            return "the scenario has no entities"
        if stage in DATA_OWNER_STAGES and self.scenario.data_owner is None:
            return "the scenario has no data owner"
        return ""

    def _run_tasks(self, stage: str, tasks: list[Task], on_reply: Callable[[Task, RecordDict], None]) -> None:
        total, done = len(tasks), 0
        started = time.monotonic()

        def reply(task: Task, content: RecordDict) -> None:
            nonlocal done
            done += 1
            on_reply(task, content)
            at = time.monotonic() - started
            self.log(f"  {stage} {task.key}: {task.party} done at {at:.1f} s ({done}/{total})")

        self.courier.dispatch(stage, tasks, reply)

    # --- stages ---
    def prepare(self) -> None:
        records: list[dict[str, Any]] = []

        def on_reply(task: Task, content: RecordDict) -> None:
            n = int(number(content.metric_records["metrics"], "n_train"))
            records.append(_record("partitions", None, task.party, task.party, "n_train", n))

        self._run_tasks("prepare", [self.task(p, "prepare") for p in self.entities], on_reply)
        self.run.write_results("prepare", records)

    def pretrain(self) -> None:
        leader = self.scenario.leading_entity

        def on_reply(task: Task, content: RecordDict) -> None:
            states = {
                name: dict(content.array_records[name].to_torch_state_dict())
                for name in ("featurizer", "decider", "reconstructor")
            }
            self.run.shared_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run.shared_dir / (NETS_FILE + ".tmp")
            torch.save(states, tmp)
            tmp.replace(self.run.shared_dir / NETS_FILE)
            m = content.metric_records["metrics"]
            self.run.write_results(
                "pretrain",
                [
                    _record("pretrain", None, "F+C", leader, metric, number(m, metric))
                    for metric in ("top1", "top5", "classifier_s", "reconstructor_s")
                ],
            )

        self._run_tasks("pretrain", [self.task(leader, "pretrain")], on_reply)

    def nets(self, *names: str) -> dict[str, dict[str, torch.Tensor]]:
        states: dict[str, dict[str, torch.Tensor]] = torch.load(
            self.run.shared_dir / NETS_FILE, weights_only=True
        )
        return {n: states[n] for n in names}

    def poison(self) -> None:
        wanted_original = {
            src.of
            for row in self.scenario.collaboration
            for src in row.sources()
            if src.kind == "original" and src.of != row.entity
        }
        arrays = self.nets("featurizer", "decider", "reconstructor")
        records: list[dict[str, Any]] = []

        def on_reply(task: Task, content: RecordDict) -> None:
            m = content.metric_records["metrics"]
            for kind in ("original", "poisoned"):
                for metric in ("top1", "top5"):
                    records.append(
                        _record("table1", None, kind, task.party, metric, number(m, f"{metric}_{kind}"))
                    )
                for metric in ("l1", "ssim"):
                    records.append(
                        _record("table2", None, kind, task.party, metric, number(m, f"{metric}_{kind}"))
                    )
            for shard in content.config_records["config"]["published"]:  # type: ignore[union-attr]
                ident, shape, dtype, digest = str(shard).split(":")
                self.run.audit(
                    {
                        "t": round(time.time(), 3),
                        "type": "pool.publish",
                        "sender": task.party,
                        "receiver": "pool",
                        "shard": ident,
                        "shape": [int(s) for s in shape.split("x")],
                        "dtype": dtype,
                        "sha256": digest,
                    }
                )

        tasks = [
            self.task(p, "poison", arrays=arrays, publish_original=p in wanted_original)
            for p in self.entities
        ]
        self._run_tasks("poison", tasks, on_reply)
        self.run.write_results("poison", records)

    def refine(self) -> None:
        arrays = self.nets("featurizer", "decider")
        tasks = []
        for i, row in enumerate(self.scenario.collaboration):
            if self.run.has_results(_row_unit(i)):
                self.log(f"  refine row {row.label}: done in an earlier attempt, skipped")
                continue
            tasks.append(
                self.task(
                    row.entity,
                    "refine",
                    key=f"row {row.label}",
                    arrays=None if row.trains_from_raw else arrays,
                    row=i,
                )
            )

        def on_reply(task: Task, content: RecordDict) -> None:
            i = int(number(task.content.config_records["config"], "row"))
            row = self.scenario.collaboration[i]
            m = content.metric_records["metrics"]
            self.run.write_results(
                _row_unit(i),
                [
                    _record("table5", i + 1, row.label, row.entity, metric, number(m, metric))
                    for metric in ("top1", "top5", "n_train")
                ],
            )

        self._run_tasks("refine", tasks, on_reply)

    def codes(self) -> None:
        """The data owner publishes ambiguated codes and issues keys; its measurements become records."""
        owner = self.scenario.data_owner
        assert owner is not None  # _absent skips this stage otherwise
        records: list[dict[str, Any]] = []

        def on_reply(task: Task, content: RecordDict) -> None:
            for name, value in _scalar_metrics(task, content).items():
                table, label, metric = name.split(node.METRIC_SEP)
                records.append(_record(table, None, label, task.party, metric, value))
            config = content.config_records["config"]
            now = round(time.time(), 3)
            for item in config["published"]:  # type: ignore[union-attr]
                file, shape, dtype, digest = str(item).split(":")
                event = {"t": now, "type": "public.publish", "sender": task.party, "receiver": "public"}
                shape_list = [int(s) for s in shape.split("x")] if shape else None
                self.run.audit({**event, "file": file, "shape": shape_list, "dtype": dtype, "sha256": digest})
            for item in config["issued"]:  # type: ignore[union-attr]
                user, n_images, digest = str(item).split(":")
                # What was issued to whom, and the key file's digest: never the key bits.
                self.run.audit(
                    {
                        "t": now,
                        "type": "key.issue",
                        "sender": task.party,
                        "receiver": user,
                        "file": str((node.keys_dir(self.run, user) / KEY_FILE).relative_to(self.run.root)),
                        "n_images": int(n_images),
                        "sha256": digest,
                    }
                )

        self._run_tasks("codes", [self.task(owner.name, "codes")], on_reply)
        self.run.write_results("codes", records)

    def access(self) -> None:
        """Each authorised user reconstructs the images it holds keys for, and is refused the others."""
        owner = self.scenario.data_owner
        assert owner is not None
        records: list[dict[str, Any]] = []

        def on_reply(task: Task, content: RecordDict) -> None:
            for metric, value in _scalar_metrics(task, content).items():
                records.append(_record("access", None, task.party, task.party, metric, value))

        self._run_tasks("access", [self.task(u.name, "access") for u in owner.users], on_reply)
        self.run.write_results("access", records)


def _scalar_metrics(task: Task, content: RecordDict) -> dict[str, float]:
    """A reply's metrics, each a single number (a list could carry a key or a code: refused)."""
    out = {}
    for name, value in content.metric_records["metrics"].items():
        if not isinstance(value, int | float):
            raise ValueError(
                f"{task.party} replied a non-scalar metric {name!r}; only numbers may leave a party"
            )
        out[name] = float(value)
    return out


def _row_unit(index: int) -> str:
    return f"refine-row{index + 1:02d}"


def _record(
    table: str, row: int | None, label: str, entity: str, metric: str, value: float
) -> dict[str, Any]:
    return {"table": table, "row": row, "label": label, "entity": entity, "metric": metric, "value": value}


def make_server_app(run: RunDir, log: Log, failures: list[BaseException]) -> ServerApp:
    """A ServerApp bound to one run directory. Under run_simulation it runs in a thread of this
    process, so an exception is kept in `failures` for the launcher to raise."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            Driver(grid, run, log).drive()
        except BaseException as err:  # noqa: BLE001 - handed to the launcher, which fails loudly
            failures.append(err)

    return app


__all__ = ["Driver", "make_server_app", "write_atomic"]
