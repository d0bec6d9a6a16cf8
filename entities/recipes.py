"""The recipes entity functions take: each reads one scenario section, typed by what it uses.

The simulator's pydantic sections (simulator.schema) satisfy these protocols; entities never import
the simulator, so tests and scripts can pass any object with the same fields.
"""

from __future__ import annotations

from typing import Protocol


class Recipe(Protocol):
    """A training section: how long, how fast, which optimizer."""

    @property
    def epochs(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def min_steps(self) -> int: ...


class DPMRecipe(Recipe, Protocol):
    """The DPM's training (scenario `dpm`): task term + lambda * SSIM(R(P(F(x))), x)."""

    @property
    def lam(self) -> float: ...
    @property
    def objective(self) -> str: ...
    @property
    def temperature(self) -> float: ...


class RefineRecipe(Recipe, Protocol):
    """Refining the decider on pooled features (scenario `refine`)."""

    @property
    def shift(self) -> int: ...


class BackboneSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def split(self) -> str: ...


class ReconstructorSpec(Protocol):
    """R's shape and training (scenario `reconstructor`)."""

    @property
    def blocks_per_upscale(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def output(self) -> str: ...
    @property
    def training(self) -> Recipe: ...


class DPMShape(Protocol):
    @property
    def blocks(self) -> int: ...
    @property
    def width(self) -> int: ...
