"""The base of every scenario section: unknown keys refused, frozen, and YAML's true/false never a number.

Torch-free, like everything the schema imports, so that `veil validate` answers at once; it lives in
`entities` because the dataset kinds (entities.datasets) bring their own sections.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


def _number_shape(annotation: Any) -> str | None:
    """'one' for a number field (int, float, Literal[1], optionally None), 'list' for a list of numbers."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (int, float):
        return "one"
    if origin is Literal:
        return "one" if any(type(a) in (int, float) for a in args) else None
    if origin is list and args and args[0] in (int, float):
        return "list"
    if args and origin is not list:  # a union: int | None
        shapes = {_number_shape(a) for a in args if a is not type(None)}
        return "one" if shapes == {"one"} else None
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML's true/false are not numbers, though pydantic alone reads `epochs: true` as 1: each one
        given for a number is swapped for a stand-in that fails validation where it stands."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias in data else name
            shape = _number_shape(field.annotation) if key in data else None
            value = data.get(key)
            if shape == "one" and isinstance(value, bool):
                out[key] = Boolean(value)
            elif shape == "list" and isinstance(value, list):
                out[key] = [Boolean(v) if isinstance(v, bool) else v for v in value]
        return out


class Boolean:
    """A YAML true/false where a number is expected: no number validates it, and the error says so."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return str(self.value).lower()
