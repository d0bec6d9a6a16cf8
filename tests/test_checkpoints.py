"""Issue 16, item 5: a fit stopped mid-way (an exception, a SIGKILL) goes on from its last checkpoint and
ends bit for bit where an uninterrupted one does: weights, BatchNorm statistics, losses, and every random
state after it. Then the same through a real run, killed during `pretrain` and resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from entities.training import CHECKPOINT_ENV, checkpointing, fit

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
RECIPE = SimpleNamespace(
    epochs=EPOCHS, lr=0.05, batch_size=16, weight_decay=1e-4, optimizer="sgd", min_steps=0
)


class Stop(Exception):
    """The interruption: raised after an epoch, as a crash would end the task."""


def train(
    seed: int = 0, *, stop_after: int | None = None, kill_after: int | None = None
) -> tuple[dict[str, torch.Tensor], list[float], list[int], tuple[float, ...]]:
    """A small net with BatchNorm and dropout, fitted on 100 samples with noise augmentation drawn from
    its own generator, and numpy's and Python's generators in the loss too, so that every random state a
    checkpoint holds matters. Returns its state, its losses, the epochs this call ran, and draws from the
    global generators after the fit. One torch thread, whichever process calls it: a reduction split over
    another number of threads sums in another order (an earlier in-process run may have set it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, stop_after=stop_after, kill_after=kill_after)
    finally:
        torch.set_num_threads(threads)


def _train(
    seed: int, *, stop_after: int | None, kill_after: int | None
) -> tuple[dict[str, torch.Tensor], list[float], list[int], tuple[float, ...]]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, 8, generator=data), torch.randint(0, 3, (100,), generator=data)
    aug = torch.Generator().manual_seed(seed + 1)

    def loss(index: torch.Tensor) -> torch.Tensor:
        xb = x[index] + 0.1 * torch.randn(len(index), 8, generator=aug)
        scale = 1 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return nn.functional.cross_entropy(net(xb * scale), y[index])

    ran: list[int] = []

    def on_epoch(epoch: int, _loss: float) -> None:
        ran.append(epoch + 1)
        if epoch + 1 == stop_after:
            raise Stop
        if epoch + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    history = fit(net, recipe=RECIPE, n=len(x), loss_fn=loss, seed=seed, on_epoch=on_epoch, generators=[aug])
    after = (float(torch.rand(1)), float(np.random.rand()), random.random())
    return {k: v.clone() for k, v in net.state_dict().items()}, history, ran, after


def assert_same(a: Any, b: Any) -> None:
    state_a, history_a, _, after_a = a
    state_b, history_b, _, after_b = b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key  # bit for bit, not close
    assert history_a == history_b
    assert after_a == after_b


def test_a_fit_stopped_after_epoch_2_resumes_at_epoch_3_bit_for_bit(tmp_path: Path) -> None:
    whole = train()
    assert whole[2] == [1, 2, 3, 4]
    where = tmp_path / "private" / "checkpoints-task"
    with pytest.raises(Stop), checkpointing(where, every_s=0):
        train(stop_after=2)
    assert (where / "fit-0.pt").is_file()  # kept: the task did not finish
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE((where / "fit-0.pt").stat().st_mode) == 0o600
    with checkpointing(where, every_s=0) as ckpt:
        resumed = train()
    assert resumed[2] == [3, 4]  # went on from the checkpoint of epoch 2
    assert ckpt.resumed == [(0, "net", 3)]
    assert_same(resumed, whole)
    assert not where.exists()  # the task finished: its checkpoints are gone


def test_a_fit_killed_mid_way_resumes_bit_for_bit(tmp_path: Path) -> None:
    """SIGKILL after epoch 2 in a process of its own: whatever was on disk at that moment is all there is."""
    where = tmp_path / "checkpoints-task"
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        " from test_checkpoints import train; from entities.training import checkpointing\n"
        "with checkpointing(Path(sys.argv[2]), every_s=0): train(kill_after=2)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "tests"), str(where)], env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in where.iterdir()] == ["fit-0.pt"]  # no temporary file left half-written
    with checkpointing(where, every_s=0):
        resumed = train()
    assert resumed[2] == [3, 4]
    assert_same(resumed, train())


def test_a_checkpoint_of_another_fit_is_not_loaded(tmp_path: Path) -> None:
    where = tmp_path / "checkpoints-task"
    with pytest.raises(Stop), checkpointing(where, every_s=0):
        train(seed=0, stop_after=2)
    with checkpointing(where, every_s=0) as ckpt:
        other = train(seed=5)  # another seed: another fit, whose checkpoint this is not
    assert other[2] == [1, 2, 3, 4] and ckpt.resumed == []
    assert_same(other, train(seed=5))


def test_short_epochs_save_no_checkpoint(tmp_path: Path) -> None:
    """Under the threshold nothing is written: epochs of milliseconds would cost more to save than to redo."""
    where = tmp_path / "checkpoints-task"
    with pytest.raises(Stop), checkpointing(where, every_s=3600):
        train(stop_after=3)
    assert not where.exists()


def test_saving_does_not_change_the_result(tmp_path: Path) -> None:
    with checkpointing(tmp_path / "checkpoints-task", every_s=0):
        saved = train()
    assert_same(saved, train())


# --- through a real run -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["inline", pytest.param("flower", marks=pytest.mark.slow)])
def test_a_run_killed_mid_fit_resumes_mid_fit_with_the_same_results(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smoke scenario with two entities and one table row (the leader's F+C trains 8 epochs in
    `pretrain`): once uninterrupted (inline), once SIGKILLed, the whole session, with F+C part-trained,
    and resumed. The resumed F+C goes on from the last epoch saved (the audit says which), and every
    record equals the uninterrupted run's."""
    # here, not at the top: the SIGKILL test's subprocess imports this module, and needs neither
    from conftest import RUN_TIMEOUT_S, Veil
    from test_trust import result_files

    data = yaml.safe_load((ROOT / "scenarios" / "smoke.yaml").read_text())
    for section in ("data_owner", "adversaries", "fedavg"):
        data.pop(section)
    data["entities"] = data["entities"][:2]
    data["collaboration"] = [row for row in data["collaboration"] if row["label"] == "E1 + E2 poisoned"]
    data["pretrain"]["min_steps"] = 24  # F+C: 8 epochs of 3 steps, each checkpoint ~90 MB
    scenario = tmp_path / "smoke-pretrain.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))

    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    whole = Veil(
        [str(scenario), "--engine", "inline", "--out", str(tmp_path / "whole")], tmp_path / "whole.log"
    )
    monkeypatch.setenv(
        CHECKPOINT_ENV, "0"
    )  # every epoch, for the run to be killed (Ray's workers inherit it)
    killed = Veil(
        [str(scenario), "--engine", engine, "--out", str(tmp_path / "killed")], tmp_path / "killed.log"
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        pattern = "killed/*/parties/E1/private/checkpoints-pretrain-*/fit-0.pt"
        while not (saved := list(tmp_path.glob(pattern))):
            assert killed.proc.poll() is None, killed.output[-3000:]
            assert time.monotonic() < deadline, f"no checkpoint of F+C within {RUN_TIMEOUT_S:g} s"
            time.sleep(0.01)
    finally:
        killed.kill()  # after epoch 1 or 2 of 8: mid-fit
    assert whole.wait() == 0, whole.output[-3000:]
    run_dir = saved[0].parents[4]
    epoch_at_kill = torch.load(saved[0], weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 8  # F+C was part-trained when the run died

    resumed = Veil(["--resume", str(run_dir), "--engine", engine], tmp_path / "resumed.log")
    assert resumed.wait() == 0, resumed.output[-3000:]
    events = [json.loads(x) for x in (run_dir / "audit.jsonl").read_text().splitlines()]
    (resume,) = [e for e in events if e["type"] == "fit.resume"]
    assert [resume[k] for k in ("stage", "party", "net", "fit")] == ["pretrain", "E1", "classifier", 0]
    assert resume["epoch"] == epoch_at_kill + 1  # went on after the last epoch saved before the kill
    (whole_dir,) = (tmp_path / "whole").iterdir()
    assert result_files(run_dir) == result_files(whole_dir)
    assert not list(run_dir.glob("parties/*/private/checkpoints-*"))  # every task finished: none left
