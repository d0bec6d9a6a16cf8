"""Each attack's options, typed and with their ranges: what `adversaries[i].attacks[j].options` may hold.

One model per attack (entities.threats.ATTACKS names it beside the attack's target and needs), torch-free,
so that `veil validate` refuses an unknown option, a wrong type or a value out of range before anything
trains; `entities.attacks.make_attack` validates through the same model, and the attack's constructor takes
the validated fields as keyword arguments (tests/test_hostile_inputs.py checks that the two agree).

The upper bounds are not the attacks' limits but what a run on one machine can do: an attack trains for
at most MAX_EPOCHS epochs or MAX_STEPS optimizer steps, far beyond any scenario in scenarios/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from pydantic import Field, ValidationError, field_validator

from entities.strict import Boolean, Strict

MAX_EPOCHS: Final = 10_000
MAX_STEPS: Final = 10_000_000
MAX_SEED: Final = 2**32 - 1
MAX_WIDTH: Final = 4096  # channels or hidden units
MAX_BATCH: Final = 1 << 20
MAX_REPEATS: Final = 1000

Seed = Field(0, ge=0, le=MAX_SEED, description="the attack's own seed")
# section 4.2.2's reconstructor shapes (entities.attacks.pool.paper_variants); the output head not R's
VARIANTS = (
    "paper R",
    "residual",
    "1 block per upscale",
    "3 blocks per upscale",
    "x4 upscale",
    "minmax",
    "clamp",
)


class NoOptions(Strict):
    """An attack that takes no options."""


class SeedOnly(Strict):
    seed: int = Seed


class MagnitudeOptions(Strict):
    end: Literal["smallest", "largest"] = Field("smallest", description="which end is the main result")


class TrainedDecoder(Strict):
    """A decoder trained for `epochs` (the published recipe's when None), at least `min_steps` steps."""

    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS)
    min_steps: int | None = Field(None, ge=0, le=MAX_STEPS)
    seed: int = Seed


class ReconstructorFamilyOptions(TrainedDecoder):
    variants: list[Literal[VARIANTS]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, description="which of section 4.2.2's shapes to train (all when absent)"
    )
    holdout: float = Field(0.1, ge=0, lt=1, description="share of D_q held out to pick the best shape")

    @field_validator("variants")
    @classmethod
    def _once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"got {value}; each variant once")
        return value


class InsiderOptions(TrainedDecoder):
    output: Literal["minmax", "clamp"] | None = Field(None, description="the decoder's head (R's when None)")


class SurrogateOptions(InsiderOptions):
    surrogates: int = Field(1, ge=1, le=64, description="surrogate DPMs trained with the published recipe")


class FeatureAlignmentOptions(Strict):
    steps: int = Field(300, ge=1, le=MAX_STEPS)
    decoder_epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    blocks: int = Field(2, ge=1, le=64)
    width: int = Field(32, ge=1, le=MAX_WIDTH)
    mmd_weight: float = Field(1.0, ge=0)
    class_weight: float = Field(1.0, ge=0)
    label_weight: float = Field(0.1, ge=0)
    rec_weight: float = Field(1.0, ge=0)
    lr: float = Field(1e-3, gt=0, le=10)
    seed: int = Seed


class KnownPairsOptions(Strict):
    ns: list[int] = Field(
        [10, 100, 1000], min_length=1, description="N: how many known pairs each decoder trains on"
    )
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    min_steps: int = Field(300, ge=0, le=MAX_STEPS)
    width: int = Field(32, ge=1, le=MAX_WIDTH)
    seed: int = Seed

    @field_validator("ns")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(not 1 <= n <= 10**9 for n in value):
            raise ValueError(f"got {value}; each N is a count of pairs in [1, 10^9]")
        return value


class SupportDetectorOptions(Strict):
    repeats: int = Field(4, ge=1, le=MAX_REPEATS, description="ambiguations of each of its own codes")
    steps: int = Field(400, ge=1, le=MAX_STEPS)
    hidden: int = Field(64, ge=1, le=MAX_WIDTH)
    batch_size: int = Field(1024, ge=1, le=MAX_BATCH)
    seed: int = Seed
    images: int | None = Field(None, ge=1, description="public images it encodes (all when absent)")


class CuriousSupportDetectorOptions(SupportDetectorOptions):
    key_repeats: int = Field(4, ge=1, le=MAX_REPEATS, description="ambiguations of each of its own keys")


def option_problems(attack: str, model: type[Strict], options: Mapping[str, object]) -> list[tuple[str, str]]:
    """(option, what is wrong) for each problem of `options` against the attack's model; [] when valid."""
    try:
        model.model_validate(dict(options))
    except ValidationError as err:
        out = []
        names = sorted(model.model_fields)
        for e in err.errors():
            key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
            if e["type"] == "extra_forbidden":
                takes = f"it takes: {', '.join(names)}" if names else "it takes no options"
                out.append((key, f"{attack!r} has no option {str(e['loc'][-1])!r}; {takes}"))
            elif isinstance(e.get("input"), Boolean):
                out.append((key, f"got {e['input']!r}; expected a number, not true/false"))
            elif e["type"] == "value_error" and "error" in e.get("ctx", {}):
                out.append((key, str(e["ctx"]["error"])))
            else:
                shown = repr(e.get("input"))
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                out.append((key, f"got {shown}; {e['msg'][:1].lower()}{e['msg'][1:]}"))
        return out
    return []


def validated(attack: str, model: type[Strict], options: Mapping[str, object]) -> dict[str, object]:
    """`options` as the attack's constructor takes them (every field, defaults included); ValueError naming
    each bad option otherwise."""
    problems = option_problems(attack, model, options)
    if problems:
        raise ValueError(f"attack {attack!r}: " + "; ".join(f"options.{k}: {m}" for k, m in problems))
    return dict(model.model_validate(dict(options)).model_dump())
