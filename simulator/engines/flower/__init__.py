"""The Flower engine: a Flower 1.41 simulation on Ray, one SuperNode per party. The only package that
imports flwr; it loads when this engine runs, so `veil validate` and the inline engine never pay for it."""

from __future__ import annotations

from simulator.engines import ENGINES, Log
from simulator.rundir import RunDir


@ENGINES.register("flower")
def run_flower(run: RunDir, log: Log, ray_address: str | None = None) -> None:
    from simulator.engines.flower.launch import simulate

    simulate(run, log, ray_address)
