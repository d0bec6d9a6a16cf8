"""The stages of a run, one module each (`simulator/stages/<name>.py`), registered as they are imported.

The run order is declared here, once; a stage registered later runs after these: one a test registers
in-process, or one in a module named in VEIL_PLUGINS (comma-separated), which every process of a run
imports, Flower's nodes included.
"""

import importlib
import os

from simulator.rundir import RUN_ORDER
from simulator.stages.base import STAGES, Server, Stage, register, stage_order

for _name in RUN_ORDER:
    importlib.import_module(f"simulator.stages.{_name}")
for _module in filter(None, os.environ.get("VEIL_PLUGINS", "").split(",")):
    importlib.import_module(_module.strip())

__all__ = ["RUN_ORDER", "STAGES", "Server", "Stage", "register", "stage_order"]
