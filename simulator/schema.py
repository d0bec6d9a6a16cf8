"""The scenario schema: what a researcher writes in YAML, validated before anything runs.

This module imports no torch, so `veil validate` answers at once. Structural problems
(types, ranges, unknown keys) and cross-references (a row naming an entity that does not
exist) are all reported together, each with its YAML path.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo

from entities import attack_options, registry, threats
from entities.datasets import DatasetSection
from entities.datasets.photos import PhotosDataset
from entities.files import NotRegular, read_regular
from entities.protections import DPMSection, ProtectionSection
from entities.strict import Boolean, Strict
from simulator.yamlio import YamlRefused, decode, loads

SCHEMA_VERSION: Final = 1


def one_of(family: registry.Registry[Any]) -> AfterValidator:
    """A check that a string is one of a registry's names (entities.registry)."""

    def check(value: str) -> str:
        if value not in family.names:
            raise ValueError(f"got {value!r}; expected one of: {', '.join(map(repr, family.names))}")
        return value

    return AfterValidator(check)


Optimizer = Annotated[str, one_of(registry.OPTIMIZERS)]
Objective = Annotated[str, one_of(registry.OBJECTIVES)]
Sampler = Annotated[str, one_of(registry.SAMPLERS)]


# --- data ---------------------------------------------------------------------------------


def _dataset_union() -> Any:
    """The `dataset:` section: one model per registered kind, chosen by `kind` (entities.datasets)."""
    sections = tuple(kind.section for _, kind in registry.DATASETS.items())
    return Annotated[typing.Union[sections], Field(discriminator="kind")]  # noqa: UP007 (built at run time)


if typing.TYPE_CHECKING:
    Dataset = DatasetSection  # what code may rely on; the schema validates the kind's own section
else:
    Dataset = _dataset_union()


# --- protections ---------------------------------------------------------------------------


def _protection_union() -> Any:
    """An entity's `protection:` section: one model per registered protection, chosen by `kind`
    (entities.protections)."""
    sections = tuple(kind.section for _, kind in registry.PROTECTIONS.items())
    return Annotated[typing.Union[sections], Field(discriminator="kind")]  # noqa: UP007 (built at run time)


if typing.TYPE_CHECKING:
    Protection = ProtectionSection
else:
    Protection = _protection_union()

# the families whose sections are a discriminated union on `kind`, by the key that holds them
TAGGED: dict[str, registry.Registry[Any]] = {"dataset": registry.DATASETS, "protection": registry.PROTECTIONS}


class StratifiedPartition(Strict):
    """Every entity holds the same share of every class (the paper's setting; the default)."""

    kind: Literal["stratified"] = "stratified"


class DirichletPartition(Strict):
    """Label skew: each entity's class mix drawn from Dirichlet(concentration * 1) over the classes; its
    size stays its `fraction`. Small concentrations give few classes per entity, large ones near-uniform."""

    kind: Literal["dirichlet"]
    concentration: float = Field(gt=0, description="the Dirichlet's concentration per class (> 0)")


class ClassesPartition(Strict):
    """Label skew: each entity holds images of `per_entity` classes only (in equal shares)."""

    kind: Literal["classes"]
    per_entity: int = Field(ge=1, description="how many classes each entity holds")


Partition = Annotated[
    StratifiedPartition | DirichletPartition | ClassesPartition, Field(discriminator="kind")
]
PARTITION_KINDS: dict[str, type[Strict]] = {
    "stratified": StratifiedPartition,
    "dirichlet": DirichletPartition,
    "classes": ClassesPartition,
}


# --- nets ---------------------------------------------------------------------------------


class Backbone(Strict):
    name: Annotated[str, one_of(registry.BACKBONES)] = "resnet18"
    split: str = Field(
        "conv2_x",
        validate_default=True,  # a VGG with the default split is an error too
        description=(
            "where F ends (entities.registry.BACKBONE_SPLITS): a ResNet stage conv2_x..conv4_x "
            "(conv2_x = torchvision layer1), or a VGG block block1..block5 (after its max-pool)"
        ),
    )

    @field_validator("split")
    @classmethod
    def _backbone_has_split(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("name")  # absent when the name failed (reported there)
        points = registry.BACKBONE_SPLITS.get(name) if isinstance(name, str) else None
        if points is not None and value not in points:
            default = " (the default)" if value == cls.model_fields["split"].default else ""
            raise ValueError(
                f"got {value!r}{default}; expected one of {name}'s splits: {', '.join(map(repr, points))}"
            )
        return value


class Training(Strict):
    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(5e-4, ge=0)
    optimizer: Optimizer = "sgd"
    min_steps: int = Field(0, ge=0, description="train at least this many steps (more epochs on small data)")


class ReconstructorSection(Strict):
    """The paper's R: inverse bottleneck blocks before each x2 upscale, then an image head."""

    blocks_per_upscale: int = Field(2, ge=1)
    width: int = Field(64, ge=4, description="bottleneck width of the inverse blocks")
    output: Literal["minmax", "clamp"] = "minmax"
    training: Training


class DPMShape(Strict):
    blocks: int = Field(4, ge=1, description="residual blocks in the DPM (4 in the paper)")
    width: int = Field(64, ge=4, description="hidden channels of each residual block")


class DPMTraining(Training):
    lam: float = Field(alias="lambda", gt=0, description="weight of SSIM(R(P(F(x))), x) in the loss")
    objective: Objective = Field(
        "ce",
        description=(
            "the task term: 'ce' is the paper's CE(C(P(F(x))), y); 'distill' is KL(C(F(x)) || C(P(F(x)))), "
            "functional equivalence to the original features, which leaves the pool something to teach C"
        ),
    )
    temperature: float = Field(
        4.0,
        gt=0,
        description=(
            "'distill' only: both distributions are softmax(logits / T), the KL scaled by T^2 "
            "(Hinton et al.); T > 1 asks P to keep C's whole ranking of classes, not only its top class"
        ),
    )
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Optimizer = "adam"
    share_mirrored: bool = Field(
        True, description="also share (and refine on) the features of each image's mirror image"
    )


class RefineTraining(Training):
    shift: int = Field(
        0,
        ge=0,
        description=(
            "random translation of each feature map by up to this many cells, zero-filled: random crops "
            "in feature space, since the pool holds fixed features (0: none)"
        ),
    )


class FedAvgSection(Strict):
    """Federated averaging over the entities' partitions (the baseline the paper argued against): each
    round every entity trains F + C on its own images for `local_epochs`, the server averages the
    weights, weighted by each entity's number of images (Flower's FedAvg)."""

    rounds: int = Field(ge=1, description="rounds of local training and averaging")
    local_epochs: int = Field(ge=1, description="epochs each entity trains on its own images per round")
    lr: float = Field(gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(5e-4, ge=0)
    optimizer: Optimizer = "sgd"
    init: Literal["scratch", "pretrained"] = Field(
        "scratch",
        description="the first global model: F + C from a seeded initialisation, or the leader's pre-trained",
    )

    # the recipe one round's local fit uses (entities.recipes.Recipe)
    @property
    def epochs(self) -> int:
        return self.local_epochs

    @property
    def min_steps(self) -> int:
        return 0


# --- parties ------------------------------------------------------------------------------


class Entity(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    fraction: float = Field(gt=0, le=1, description="share of the D_p training set it holds")
    dpm: DPMShape = DPMShape()
    protection: Protection = Field(
        default_factory=DPMSection,
        description="what it applies to its features before it pools them (default: the paper's DPM)",
    )
    seed_offset: int = 0


SOURCE_KINDS = ("own:raw", "own:features", "raw:all", "original:<entity>", "poisoned:<entity>")


@dataclass(frozen=True)
class Source:
    """One ingredient of a table row's training data."""

    kind: Literal["raw", "original", "poisoned"]
    of: str  # an entity name, or "all" for the whole D_p training set (the centralised reference)

    @classmethod
    def parse(cls, text: str, owner: str) -> Source:
        head, _, tail = text.partition(":")
        if head == "own" and tail == "raw":
            return cls("raw", owner)
        if head == "own" and tail == "features":
            return cls("original", owner)
        if head == "raw" and tail == "all":
            return cls("raw", "all")
        if head in ("original", "poisoned") and tail == "all":
            raise ValueError(
                f"{text!r} is not a data source; only raw:all means all of D_p "
                f"(features come from one entity's DPM: {head}:<entity>)"
            )
        if head in ("original", "poisoned") and tail:
            return cls(head, tail)  # type: ignore[arg-type]
        raise ValueError(f"{text!r} is not a data source; expected one of {', '.join(SOURCE_KINDS)}")


def _check_source(text: str) -> str:
    Source.parse(text, owner="self")
    return text


SourceText = Annotated[str, AfterValidator(_check_source)]  # checked item by item: errors name data[j]


class Row(Strict):
    """A row of the collaboration table: one entity trains on one mix of data.

    A row of raw images trains F+C from scratch (rows 1-5 of the paper's Table 5); a row
    of features refines the shared decider C on the mix (rows 6-12).
    """

    label: str
    entity: str
    data: list[SourceText] = Field(min_length=1)
    inferred: bool = Field(False, description="the paper's label for this row was inferred")

    def sources(self) -> list[Source]:
        return [Source.parse(text, self.entity) for text in self.data]

    @property
    def trains_from_raw(self) -> bool:
        return any(s.kind == "raw" for s in self.sources())


# --- the data owner (sparse codes with ambiguation) ------------------------------------------

PARTY_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"


class Autoencoder(Strict):
    """The sparsifying autoencoder's shape (Ferdowsi et al.; see entities.sparse)."""

    maps: int = Field(ge=1, description="L: code maps per image")
    code_length: int = Field(ge=2, description="m: length of each code map")
    k: int = Field(ge=1, description="non-zeros per code map while training (the paper trains with 2x its k)")
    widths: list[int] = Field(min_length=1, description="channels of each down block")
    strides: list[int] = Field(min_length=1, description="stride of each down block (same length as widths)")
    skip_channels: int = Field(10, ge=1, description="channels of each skip branch")

    @field_validator("widths", "strides")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"got {value}; every entry must be at least 1")
        return value


class UserGrant(Strict):
    """A user the data owner gives keys to: it can reconstruct the granted images, no others."""

    name: str = Field(pattern=PARTY_NAME)
    grant: list[int] = Field(min_length=1, description="indices into the data owner's test images")

    @field_validator("grant")
    @classmethod
    def _indices(cls, value: list[int]) -> list[int]:
        if any(i < 0 for i in value):
            raise ValueError(f"got {value}; image indices must be non-negative")
        if len(set(value)) != len(value):
            raise ValueError(f"got {value}; an image is granted twice")
        return value


class DataOwner(Strict):
    """A party that publishes ambiguated sparse codes of its test images and issues keys (supports)."""

    name: str = Field("owner", pattern=PARTY_NAME)
    image_size: int = Field(
        64, ge=16, description="side of the owner's images (built-in photos: the patch size)"
    )
    autoencoder: Autoencoder
    training: Training
    k: int = Field(ge=1, description="non-zeros per code map of the published codes")
    k_small: int = Field(ge=1, description="a smaller k, also measured (the paper's k=64 row)")
    k_prime: int = Field(ge=1, description="non-zeros per map after ambiguation (k' - k fakes)")
    sampler: Sampler = Field(
        "ctg", description="law of the fake values: complementary truncated Gaussian, or the true magnitudes"
    )
    sweep_k: list[int] = Field(default_factory=list, description="k values of the rate-distortion curve")
    jpeg_qualities: list[int] = Field(default_factory=list, description="JPEG qualities of the curve")
    users: list[UserGrant] = Field(default_factory=list)

    @field_validator("jpeg_qualities")
    @classmethod
    def _qualities(cls, value: list[int]) -> list[int]:
        if any(not 1 <= q <= 100 for q in value):
            raise ValueError(f"got {value}; JPEG qualities lie in [1, 100]")
        return value


# --- adversaries ----------------------------------------------------------------------------

OptionValue = int | float | str | bool | list[int] | list[float] | list[str]


class AttackSpec(Strict):
    """An attack by its registered name (`veil attacks` lists them), with options for its constructor."""

    name: str
    options: dict[str, OptionValue] = Field(default_factory=dict)


class Adversary(Strict):
    """A party that attacks what the method shares, knowing what its threat model allows."""

    name: str = Field(pattern=PARTY_NAME)
    knowledge: Literal["outsider", "insider", "curious-user"] = Field(
        "outsider",
        description=(
            "outsider: the pool with its labels, the public codes and network, the shared F, C, R, the "
            "public set D_q and the published recipes; insider: also one entity's own images and DPM (`of`); "
            "curious-user: also one authorised user's keys and the images they open (`of`)"
        ),
    )
    of: str | None = Field(None, description="the entity an insider is, or the user a curious user is")
    known_pairs: int = Field(
        0, ge=0, description="N (image, poisoned feature) pairs of each victim it knows (known plaintext)"
    )
    attacks: list[str | AttackSpec] = Field(min_length=1)
    victims: list[str] = Field(
        default_factory=list, description="entities whose pooled features it attacks (default: every other)"
    )

    def attack_specs(self) -> list[AttackSpec]:
        return [AttackSpec(name=a) if isinstance(a, str) else a for a in self.attacks]


class Verdict(Strict):
    """When the run says out loud that an attack broke a protection."""

    ssim: float = Field(
        0.3, gt=0, le=1, description="SSIM of reconstructions of protected pooled features above this"
    )
    reidentification: float = Field(
        5.0, gt=1, description="or rank-1 re-identification above this many times chance"
    )


class GPUSettings(Strict):
    """How a node trains where it has a CUDA device; a node without one ignores this section, so CPU
    results never depend on it (entities.training.Acceleration)."""

    batch_scale: int = Field(
        1, ge=1, le=1024, description="every training batch is this many times its recipe's batch_size"
    )
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="'linear': each learning rate times batch_scale too (Goyal et al., 2017)"
    )
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision: autocast to this dtype ('fp16' with a gradient scaler)"
    )
    channels_last: bool = Field(
        False, description="the trained nets and image batches in channels-last format"
    )
    pin_memory: bool = Field(True, description="copy batches to the GPU from pinned memory, asynchronously")


MIN_STAGE_SECONDS: Final = 1.0


class Resources(Strict):
    num_cpus: float = Field(1.0, gt=0, description="CPU share of each simulated node")
    num_gpus: float = Field(0.0, ge=0, le=1, description="GPU share of each node (0 on a CPU machine)")
    cpu_fallback: bool = Field(
        False, description="where num_gpus > 0 and the machine has no GPU: run on the CPU (else refuse)"
    )
    gpu: GPUSettings = GPUSettings()


class Timeouts(Strict):
    stage_seconds: float = Field(
        3600,
        ge=MIN_STAGE_SECONDS,
        description="how long the server waits for a stage's replies (at least a second: starting a "
        "stage's nodes alone takes that)",
    )


class Scenario(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    dataset: Dataset = PhotosDataset()
    backbone: Backbone = Backbone()
    # The Deep Poisoning parties; pretrain, reconstructor, dpm and refine are required with entities.
    pretrain: Training | None = None
    reconstructor: ReconstructorSection | None = None
    leader: str | None = Field(None, description="entity that pre-trains F, C and R (default: the first)")
    entities: list[Entity] = Field(default_factory=list)
    dpm: DPMTraining | None = None
    refine: RefineTraining | None = None
    collaboration: list[Row] = Field(default_factory=list)
    partition: Partition = Field(
        StratifiedPartition(), description="how D_p's training images are split among the entities"
    )
    fedavg: FedAvgSection | None = Field(None, description="federated averaging over the same partitions")
    data_owner: DataOwner | None = Field(None, description="the sparse-codes data owner and its users")
    adversaries: list[Adversary] = Field(default_factory=list)
    verdict: Verdict = Verdict()
    resources: Resources = Resources()
    timeouts: Timeouts = Timeouts()

    @property
    def task_seed(self) -> int:
        """The seed that chooses the task (`dataset.seed`, by default the run seed)."""
        return self.seed if self.dataset.seed is None else self.dataset.seed

    @property
    def leading_entity(self) -> str:
        return self.leader or self.entities[0].name

    def entity(self, name: str) -> Entity:
        return next(e for e in self.entities if e.name == name)

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# --- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        message = self.message  # a value echoed back is cut short: errors never print a whole input
        return f"{self.path}: {message if len(message) <= 400 else message[:397] + '...'}"


class ScenarioError(Exception):
    """Every problem with a scenario file, reported together."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def _rebuild(name: str, kind: Any) -> None:
    """A kind registered after this module loaded (a test's): the scenario's union takes it in."""
    Scenario.model_fields["dataset"] = FieldInfo.from_annotated_attribute(_dataset_union(), PhotosDataset())
    Scenario.model_rebuild(force=True)


def _rebuild_protections(name: str, kind: Any) -> None:
    """A protection registered after this module loaded (a test's): the entities' union takes it in."""
    field = FieldInfo.from_annotated_attribute(_protection_union(), Entity.model_fields["protection"])
    Entity.model_fields["protection"] = field
    Entity.model_rebuild(force=True)
    Scenario.model_rebuild(force=True)


registry.DATASETS.on_register(_rebuild)
registry.PROTECTIONS.on_register(_rebuild_protections)


def _valid_dataset(raw: object) -> DatasetSection | None:
    """The `dataset:` section as its kind's model, or None when it does not validate (the structural
    pass reports why)."""
    raw = raw if isinstance(raw, dict) else {}
    model = _section(raw.get("kind", "photos"))
    if model is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _section(kind: object) -> type[DatasetSection] | None:
    """The section model of a dataset kind, if one is registered under that name."""
    return (
        registry.DATASETS.get(kind).section if isinstance(kind, str) and kind in registry.DATASETS else None
    )


M = TypeVar("M", bound=BaseModel)


def _tagged_section(key: object, tag: object) -> type[BaseModel] | None:
    """The section model under union tag `tag` of the family `key` holds (dataset, protection)."""
    family = TAGGED.get(key) if isinstance(key, str) else None
    if family is None or not isinstance(tag, str) or tag not in family:
        return None
    section: type[BaseModel] = family.get(tag).section
    return section


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` without the union tag pydantic inserts after `dataset` or `protection`
    (dataset.photos.patch, entities.0.protection.gaussian-noise.sigma)."""
    for i in range(len(loc) - 1):
        if _tagged_section(loc[i], loc[i + 1]) is not None:
            return loc[: i + 1] + loc[i + 2 :]
    if len(loc) > 1 and loc[0] == "partition" and loc[1] in PARTITION_KINDS:
        return loc[:1] + loc[2:]
    return loc


def _yaml_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `loc` (a pydantic loc, tag included),
    to suggest close field names."""
    model: Any = Scenario
    if len(loc) > 1 and loc[0] == "dataset" and _section(loc[1]) is not None:
        model, loc = _section(loc[1]), loc[2:]
    elif len(loc) > 1 and loc[0] == "partition" and loc[1] in PARTITION_KINDS:
        model, loc = PARTITION_KINDS[loc[1]], loc[2:]
    previous: object = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        tagged = _tagged_section(previous, part)
        previous = part
        if tagged is not None:  # the union tag after `protection`: its kind's section
            model = tagged
            continue
        field = model.model_fields.get(part)
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        inner = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        model = inner
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _structural_problems(err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = _untagged(tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            model = _model_at(tuple(e["loc"][:-1]))
            names = []
            if model is not None:
                names = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            msg = f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            if names:
                msg += f" (expected one of: {', '.join(sorted(names))})"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg.lower()}"
        elif e["type"] in ("union_tag_not_found", "union_tag_invalid"):
            family = TAGGED.get(str(loc[-1]) if loc else "", registry.DATASETS)
            loc = (*loc, "kind")
            got = f"got {e['ctx']['tag']!r}" if e["type"] == "union_tag_invalid" else "missing"
            msg = f"{got}; expected one of: {', '.join(map(repr, family.names))}"
        elif isinstance(e.get("input"), Boolean):
            msg = f"got {e['input']!r}; expected a number, not true/false"
        elif e["type"] == "value_error" and "error" in e.get("ctx", {}):
            msg = str(e["ctx"]["error"])  # our own message, without pydantic's "Value error, " prefix
        problems.append(Problem(_yaml_path(loc), msg))
    return problems


def _well_formed(model: type[M], items: Any) -> list[tuple[int, M]]:
    """The items of a YAML list that are valid on their own, each with its index."""
    out = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            out.append((i, model.model_validate(item)))
        except ValidationError:
            pass  # reported by the structural pass
    return out


def _semantic_problems(data: dict[str, Any]) -> list[Problem]:
    """Cross-reference checks on a mapping of scenario fields.

    They read the raw document, not a Scenario, so that they can run even where the
    structural pass failed: each check looks only at the parts that are well-formed on their
    own (a row that does not validate is not cross-checked), and checks that need every
    entity's name are skipped while some entity has none.
    """
    problems = []
    raw_entities = data.get("entities")
    if not isinstance(raw_entities, list):
        raw_entities = []
    given = [(i, e.get("name")) for i, e in enumerate(raw_entities) if isinstance(e, dict)]
    named = [(i, name) for i, name in given if isinstance(name, str)]
    seen: set[str] = set()
    for i, name in named:
        if name in seen:
            problems.append(Problem(f"entities[{i}].name", f"duplicate entity name {name!r}"))
        seen.add(name)
        if name == "all":
            problems.append(Problem(f"entities[{i}].name", "'all' is reserved (raw:all means all of D_p)"))
    names = [n for _, n in named] if raw_entities and len(named) == len(raw_entities) else None

    entities = _well_formed(Entity, raw_entities)
    total = sum(e.fraction for _, e in entities)  # valid fractions are > 0: a partial sum is a lower bound
    if total > 1 + 1e-9:
        at_least = "" if len(entities) == len(raw_entities) else "at least "
        problems.append(Problem("entities", f"fractions add up to {at_least}{total:g}; expected at most 1"))

    def unknown(path: str, name: str) -> Problem:
        return Problem(path, f"{name!r} is not an entity; expected one of {names}")

    leader = data.get("leader")
    if isinstance(leader, str) and names is not None and leader not in names:
        problems.append(unknown("leader", leader))

    rows = _well_formed(Row, data.get("collaboration"))
    for i, row in rows:
        if names is not None and row.entity not in names:
            problems.append(unknown(f"collaboration[{i}].entity", row.entity))
            continue
        sources = row.sources()
        for j, src in enumerate(sources):
            if names is not None and src.of != "all" and src.of not in names:
                problems.append(unknown(f"collaboration[{i}].data[{j}]", src.of))
        if len({src.kind == "raw" for src in sources}) > 1:
            mixed = "mixes raw images with features; a row trains on one or the other"
            problems.append(Problem(f"collaboration[{i}].data", mixed))
    seen = set()
    for i, row in rows:
        if row.label in seen:
            problems.append(Problem(f"collaboration[{i}].label", f"duplicate row label {row.label!r}"))
        seen.add(row.label)
    return (
        problems
        + _party_problems(data)
        + _data_owner_problems(data)
        + _input_problems(data)
        + _adversary_problems(data)
        + _partition_problems(data)
        + _work_problems(data)
    )


def _partition_problems(data: dict[str, Any]) -> list[Problem]:
    """A label skew the data cannot give: more classes per entity than the task has, a partition or a
    FedAvg section without entities."""
    problems = []
    raw = data.get("partition")
    section = raw if isinstance(raw, dict) else {}
    per_entity = _int(section, "per_entity")
    dataset = _valid_dataset(data.get("dataset", {}))
    classes = getattr(dataset, "task_classes", None) if dataset is not None else None
    count = len(classes) if isinstance(classes, list) else classes
    if section.get("kind") == "classes" and per_entity is not None and isinstance(count, int):
        if per_entity > count:
            problems.append(
                Problem("partition.per_entity", f"got {per_entity}; the task set has only {count} classes")
            )
    if data.get("fedavg") is not None and not data.get("entities"):
        problems.append(Problem("fedavg", "needs entities: FedAvg trains over the entities' partitions"))
    return problems


def _int(mapping: Any, key: str) -> int | None:
    """mapping[key] when it is an int (not a bool), else None: a check skips operands that are malformed
    (the structural pass reports those)."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


DPM_SECTIONS = ("pretrain", "reconstructor", "dpm", "refine")


def _trains_a_dpm(entity: object) -> bool:
    """Whether a raw entity's protection (the DPM by default) needs the `dpm:` recipe; a malformed one
    counts as not (the structural pass reports it)."""
    raw = entity.get("protection") if isinstance(entity, dict) else None
    if raw is None:
        return True
    section = _tagged_section("protection", raw.get("kind") if isinstance(raw, dict) else None)
    try:
        return section is not None and bool(section.model_validate(raw).uses_dpm())  # type: ignore[attr-defined]
    except ValidationError:
        return False


def _party_problems(data: dict[str, Any]) -> list[Problem]:
    """Which parties a scenario has: entities (with their DPM sections), a data owner, or both."""
    problems = []
    entities, owner = data.get("entities"), data.get("data_owner")
    if isinstance(entities, list) and entities:
        for section in DPM_SECTIONS:
            if data.get(section) is None:
                if section == "dpm" and not any(_trains_a_dpm(e) for e in entities):
                    continue  # no entity's protection trains a DPM
                why = (
                    "when an entity's protection trains a DPM"
                    if section == "dpm"
                    else "when the scenario has entities"
                )
                problems.append(Problem(section, f"field required {why}"))
    elif owner is None and (entities is None or entities == []):
        what = "got an empty list; expected" if entities == [] else "expected"
        problems.append(Problem("entities", f"{what} at least 1 entity, or a data_owner section"))
    if entities in (None, []) and data.get("collaboration"):
        problems.append(Problem("collaboration", "a collaboration table needs entities"))
    return problems


def _data_owner_problems(data: dict[str, Any]) -> list[Problem]:
    """Cross-field checks of the data_owner section: k <= m, k_small <= k < k' <= m, the sweep, the
    network's strides, the grants, and party names."""
    owner = data.get("data_owner")
    if not isinstance(owner, dict):
        return []
    problems = []
    at = "data_owner"
    raw_ae = owner.get("autoencoder")
    ae: dict[str, Any] = raw_ae if isinstance(raw_ae, dict) else {}
    m, k_train = _int(ae, "code_length"), _int(ae, "k")
    k, k_small, k_prime = _int(owner, "k"), _int(owner, "k_small"), _int(owner, "k_prime")
    if m is not None and k_train is not None and k_train > m:
        problems.append(Problem(f"{at}.autoencoder.k", f"k={k_train} is more than code_length m={m}"))
    if m is not None and k is not None and k > m:
        problems.append(Problem(f"{at}.k", f"k={k} is more than the autoencoder's code_length m={m}"))
    if k is not None and k_small is not None and k_small > k:
        problems.append(Problem(f"{at}.k_small", f"k_small={k_small} is more than k={k}"))
    if k is not None and k_prime is not None and k_prime <= k:
        problems.append(
            Problem(f"{at}.k_prime", f"k_prime={k_prime} must be more than k={k} (k' - k fakes are added)")
        )
    if m is not None and k_prime is not None and k_prime > m:
        problems.append(Problem(f"{at}.k_prime", f"k_prime={k_prime} is more than code_length m={m}"))
    sweep = owner.get("sweep_k")
    for j, value in enumerate(sweep if isinstance(sweep, list) else []):
        if m is not None and isinstance(value, int) and not 1 <= value <= m:
            problems.append(Problem(f"{at}.sweep_k[{j}]", f"k={value} is outside [1, code_length m={m}]"))
    widths, strides = ae.get("widths"), ae.get("strides")
    if isinstance(widths, list) and isinstance(strides, list) and len(widths) != len(strides):
        problems.append(
            Problem(f"{at}.autoencoder.strides", f"{len(strides)} strides for {len(widths)} widths")
        )
    size = _int(owner, "image_size")
    if size is not None and isinstance(strides, list) and all(isinstance(v, int) and v >= 1 for v in strides):
        down = 1
        for v in strides:
            down *= v
        if size % down:
            problems.append(
                Problem(f"{at}.image_size", f"{size} is not divisible by the product of the strides ({down})")
            )

    section = _valid_dataset(data.get("dataset", {}))
    sizes = section.sizes() if section is not None else None
    n_images = sizes["task_test"] if sizes is not None else None
    listed = data.get("entities")
    raw_entities: list[Any] = listed if isinstance(listed, list) else []
    entity_names = {
        e.get("name") for e in raw_entities if isinstance(e, dict) and isinstance(e.get("name"), str)
    }
    owner_name = owner.get("name", "owner")
    if not isinstance(owner_name, str):
        owner_name = None  # reported by the structural pass
    if owner_name in entity_names:
        problems.append(Problem(f"{at}.name", f"{owner_name!r} is already an entity's name"))
    seen: set[str] = set()
    for i, user in _well_formed(UserGrant, owner.get("users")):
        if user.name in entity_names or user.name == owner_name or user.name in seen:
            what = (
                "an entity's"
                if user.name in entity_names
                else "the data owner's"
                if user.name == owner_name
                else "another user's"
            )
            problems.append(Problem(f"{at}.users[{i}].name", f"{user.name!r} is already {what} name"))
        seen.add(user.name)
        for j, index in enumerate(user.grant):
            if n_images is not None and index >= n_images:
                problems.append(
                    Problem(
                        f"{at}.users[{i}].grant[{j}]",
                        f"image {index} does not exist; the owner has {n_images} test images",
                    )
                )
    return problems


NAME_MAX: Final = 64  # party and scenario names become directory names (a run's is name + a time stamp)
SEED_MAX: Final = 2**32 - 1
MAX_FILE_BYTES: Final = 1 << 20
MIN_TRAIN_IMAGES: Final = 2  # entities.training.fit skips a batch of one (BatchNorm needs two)
MAX_DATASET_GIB: Final = 16  # every party process builds the dataset in memory


def too_few_images(entities: Iterable[tuple[int, Entity]], n_train: int) -> list[Problem]:
    """An entity whose share of the n_train training images is too small to train on."""
    problems = []
    for i, entity in entities:
        got = max(1, round(entity.fraction * n_train))
        if got < MIN_TRAIN_IMAGES:
            problems.append(
                Problem(
                    f"entities[{i}].fraction",
                    f"{entity.fraction:g} of the {_count(n_train)} training images is {got}; "
                    f"expected at least {MIN_TRAIN_IMAGES} per entity "
                    "(a batch of one cannot train: BatchNorm needs two)",
                )
            )
    return problems


def _count(value: int) -> str:
    """An integer as a message shows it: a huge one by its length, not its 4000 digits."""
    text = str(value) if abs(value) < 10**15 else f"a {len(str(abs(value)))}-digit number"
    return text


def _input_problems(data: dict[str, Any]) -> list[Problem]:
    """What the types allow but a run cannot use: seeds out of range, a geometry the nets cannot
    round-trip, more images asked of the data than it holds, names that cannot be directory names."""
    problems = []
    raw = data.get("dataset", {})
    dataset: dict[str, Any] = raw if isinstance(raw, dict) else {}
    for path, seed in (("seed", _int(data, "seed")), ("dataset.seed", _int(dataset, "seed"))):
        if seed is not None and not 0 <= seed <= SEED_MAX:
            problems.append(Problem(path, f"got {_count(seed)}; expected a seed in [0, 2^32 - 1]"))

    # geometry: F downsamples by the split's stride, R upsamples x2 back; a side that is not a multiple
    # comes back rounded up (R(F(x)) would not be the image's size) and the SSIM term cannot be computed
    raw = data.get("backbone", {})
    backbone: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = backbone.get("name", Backbone.model_fields["name"].default)
    split = backbone.get("split", Backbone.model_fields["split"].default)
    points = registry.BACKBONE_SPLITS.get(name, {}) if isinstance(name, str) else {}
    stride = points.get(split) if isinstance(split, str) else None
    section = _valid_dataset(dataset)
    entities = data.get("entities")
    if stride is not None and section is not None and isinstance(entities, list):
        side, side_key = section.side, section.side_field
        if entities and side % stride:
            problems.append(
                Problem(
                    f"dataset.{side_key}",
                    f"{side} is not a multiple of {stride}: F (split {split}) downsamples by {stride} and R "
                    f"upsamples x2 {int(math.log2(stride))} times, so R(F(x)) would be "
                    f"{stride * math.ceil(side / stride)} pixels; expected a multiple of {stride}, "
                    f"e.g. {max(stride, side // stride * stride)}",
                )
            )
        shift = _int(data.get("refine"), "shift")
        if entities and shift is not None and side >= stride and shift >= side // stride:
            problems.append(
                Problem(
                    "refine.shift",
                    f"{shift} cells, but the features are {side // stride} cells wide ({side_key} {side} / "
                    f"{stride}); expected fewer",
                )
            )

    # counts: what the section alone says the data holds (the built-in photos); each entity needs images
    # to train on. A kind that reads files is checked against them before the run (simulator.preflight).
    if section is not None:
        problems += [Problem(f"dataset.{f}", m) for f, m in section.problems()]
    sizes = section.sizes() if section is not None else None
    if sizes is not None:
        n_train = sizes["task_train"]
        problems += too_few_images(_well_formed(Entity, entities), n_train)
        images = sum(sizes.values())
        sides = [section.side]  # type: ignore[union-attr]
        owner = data.get("data_owner")
        owner_side = _int(owner, "image_size") if isinstance(owner, dict) else None
        if owner_side is not None and owner_side > 0:
            sides.append(owner_side)
        gib = images * 3 * max(sides) ** 2 / 2**30
        if gib > MAX_DATASET_GIB:
            problems.append(
                Problem(
                    "dataset.train_per_class",
                    f"the dataset would take {_count(round(gib))} GiB ({_count(images)} images of "
                    f"{max(sides)}x{max(sides)} pixels) in every party's memory; expected at most "
                    f"{MAX_DATASET_GIB} GiB",
                )
            )

    # names: each party's directory, and the run directory
    names: list[tuple[str, str]] = []
    if isinstance(data.get("name"), str):
        names.append(("name", data["name"]))
    for i, entity in enumerate(entities if isinstance(entities, list) else []):
        if isinstance(entity, dict) and isinstance(entity.get("name"), str):
            names.append((f"entities[{i}].name", entity["name"]))
    owner = data.get("data_owner")
    if isinstance(owner, dict):
        if isinstance(owner.get("name"), str):
            names.append(("data_owner.name", owner["name"]))
        users = owner.get("users")
        for j, user in enumerate(users if isinstance(users, list) else []):
            if isinstance(user, dict) and isinstance(user.get("name"), str):
                names.append((f"data_owner.users[{j}].name", user["name"]))
    for path, name in names:
        if len(name) > NAME_MAX:
            problems.append(
                Problem(path, f"{len(name)} characters; expected at most {NAME_MAX} (it names a directory)")
            )
    seen: dict[str, str] = {}
    for path, name in names[1:]:  # the parties; `name` is the scenario's
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            problems.append(
                Problem(
                    path,
                    f"{name!r} differs from {other!r} only in case; party names are directory names, "
                    "which a case-insensitive file system would merge",
                )
            )
    return problems


MAX_TRAIN_STEPS: Final = 10**9  # optimizer steps of one training section: 500x an ImageNet run's


def training_steps(data: dict[str, Any]) -> list[tuple[str, int]]:
    """(section, estimated optimizer steps) of each training section: epochs x batches of the whole task
    training set (a party trains on its share of it, so this bounds it from above), or min_steps when
    more; with a dataset whose size is known only from its files, one batch an epoch. The estimate the
    work bound (MAX_TRAIN_STEPS) and the work warning (simulator.preflight) are stated in."""
    section = _valid_dataset(data.get("dataset", {}))
    sizes = section.sizes() if section is not None else None
    n = sizes["task_train"] if sizes is not None else 1
    owner = data.get("data_owner")
    recon = data.get("reconstructor")
    fedavg = data.get("fedavg") if isinstance(data.get("fedavg"), dict) else None
    places: list[tuple[str, Any]] = [
        ("pretrain", data.get("pretrain")),
        ("reconstructor.training", recon.get("training") if isinstance(recon, dict) else None),
        ("dpm", data.get("dpm")),
        ("refine", data.get("refine")),
        ("data_owner.training", owner.get("training") if isinstance(owner, dict) else None),
    ]
    out = []
    for where, raw in places:
        epochs = _int(raw, "epochs")
        if epochs is None or epochs < 1:
            continue
        batch = _int(raw, "batch_size") or 64
        steps = epochs * max(1, -(-n // max(batch, 1)))
        out.append((where, max(steps, _int(raw, "min_steps") or 0)))
    if fedavg is not None:
        rounds, local = _int(fedavg, "rounds"), _int(fedavg, "local_epochs")
        if rounds is not None and local is not None and rounds > 0 and local > 0:
            batch = _int(fedavg, "batch_size") or 64
            out.append(("fedavg", rounds * local * max(1, -(-n // max(batch, 1)))))
    return out


def _work_problems(data: dict[str, Any]) -> list[Problem]:
    """A training section that could not finish on any machine: more than MAX_TRAIN_STEPS steps."""
    problems = []
    for where, steps in training_steps(data):
        if steps > MAX_TRAIN_STEPS:
            field = "min_steps" if steps == _int(_at_path(data, where), "min_steps") else "epochs"
            if where == "fedavg":
                field = "rounds"
            problems.append(
                Problem(
                    f"{where}.{field}",
                    f"about {_count(steps)} optimizer steps; expected at most 10^9 (500 times an ImageNet "
                    "training run: this one would not end)",
                )
            )
    return problems


def _at_path(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _adversary_problems(data: dict[str, Any]) -> list[Problem]:
    """Each adversary's attacks exist, its threat model gives it what they need, there is something to
    attack, `of` names a party of the right kind, and N known pairs are pairs its victims hold."""
    problems: list[Problem] = []
    raw = data.get("adversaries")
    entities = [e.name for _, e in _well_formed(Entity, data.get("entities"))]
    owner = data.get("data_owner") if isinstance(data.get("data_owner"), dict) else None
    users = [u.name for _, u in _well_formed(UserGrant, (owner or {}).get("users"))]
    taken = set(entities) | set(users) | ({owner.get("name", "owner")} if owner else set())
    sizes: dict[str, int] = {}
    section = _valid_dataset(data.get("dataset", {}))
    try:
        mirrored = bool((data.get("dpm") or {}).get("share_mirrored", True))
        n_train = section.sizes()["task_train"]  # type: ignore[union-attr,index]
        sizes = {
            e.name: max(1, round(e.fraction * n_train)) * (2 if mirrored else 1)
            for _, e in _well_formed(Entity, data.get("entities"))
        }
    except (AttributeError, TypeError):
        pass  # reported by the structural pass, or counted from the files before the run
    for i, adversary in _well_formed(Adversary, raw):
        at = f"adversaries[{i}]"
        if adversary.name in taken:
            problems.append(Problem(f"{at}.name", f"{adversary.name!r} is already a party's name"))
        taken.add(adversary.name)
        if adversary.knowledge == "outsider" and adversary.of is not None:
            problems.append(
                Problem(f"{at}.of", "an outsider is no party; `of` is for insiders and curious users")
            )
        if adversary.knowledge == "insider" and adversary.of not in entities:
            problems.append(
                Problem(f"{at}.of", f"an insider is one of the entities; expected one of {entities}")
            )
        if adversary.knowledge == "curious-user" and adversary.of not in users:
            problems.append(
                Problem(
                    f"{at}.of", f"a curious user is one of the data owner's users; expected one of {users}"
                )
            )
        for j, victim in enumerate(adversary.victims):
            if victim not in entities:
                problems.append(
                    Problem(f"{at}.victims[{j}]", f"{victim!r} is not an entity; expected one of {entities}")
                )
            elif adversary.knowledge == "insider" and victim == adversary.of:
                others = [e for e in entities if e != victim]
                problems.append(
                    Problem(
                        f"{at}.victims[{j}]",
                        f"{victim!r} is the insider itself (`of`); it holds its own images, so it attacks "
                        f"the other entities: expected one of {others}",
                    )
                )
        knows = threats.knowledge_of(adversary.knowledge, adversary.known_pairs)
        for j, spec in enumerate(adversary.attack_specs()):
            where = f"{at}.attacks[{j}]"
            entry = threats.ATTACKS.get(spec.name)
            if entry is None:
                known = ", ".join(threats.ATTACKS)
                problems.append(Problem(where, f"unknown attack {spec.name!r}; known attacks: {known}"))
                continue
            for key, message in attack_options.option_problems(spec.name, entry.options, spec.options):
                problems.append(Problem(f"{where}.options.{key}", message))
            missing = sorted(entry.needs - knows)
            if missing:
                why = f"an adversary with knowledge {adversary.knowledge!r}"
                if "known_pairs" in missing:
                    why += " and known_pairs: 0"
                problems.append(
                    Problem(where, f"{spec.name!r} needs {', '.join(missing)}, which {why} lacks")
                )
            if entry.target == "pool" and not entities:
                problems.append(
                    Problem(where, f"{spec.name!r} attacks the pool, but the scenario has no entities")
                )
            if entry.target == "codes" and owner is None:
                problems.append(
                    Problem(where, f"{spec.name!r} attacks the codes, but the scenario has no data_owner")
                )
        victims = adversary.victims or [e for e in entities if e != adversary.of]
        for victim in victims:
            if victim in sizes and adversary.known_pairs > sizes[victim]:
                problems.append(
                    Problem(
                        f"{at}.known_pairs",
                        f"{adversary.known_pairs} pairs, but victim {victim!r} pooled only "
                        f"{sizes[victim]} features",
                    )
                )
    return problems


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a loaded YAML document; raise ScenarioError listing every problem, structural
    and cross-reference alike."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [Problem("(top level)", "expected a mapping of scenario fields")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(source, _structural_problems(err) + _semantic_problems(data)) from None
    problems = _semantic_problems(scenario.model_dump(mode="json", by_alias=True))
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def apply_overrides(data: Any, overrides: Sequence[str], source: str) -> None:
    """Set `a.b.c=VALUE` in place: VALUE read as YAML, list items by index (`entities[1].fraction=0.2`).

    For sweeps without copying a scenario file; the run directory's resolved scenario records the result.
    A key the schema does not know is still refused by validation, with its path.
    """
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        where = f"--set {key or item}"
        if not sep or not key:
            problems.append(Problem(where, "expected KEY=VALUE, e.g. dpm.objective=distill"))
            continue
        try:
            value = loads(text)
        except YamlRefused as err:
            shown = text if len(text) <= 60 else text[:57] + "..."
            message = f"the value is not valid YAML ({err.where}: {err.message}): {shown!r}"
            problems.append(Problem(where, message))
            continue
        parts = key.replace("[", ".").replace("]", "").split(".")  # entities[1].fraction as errors print it
        node = data
        for depth, part in enumerate(parts):
            here = ".".join(parts[:depth]) or "(top level)"
            index: int | str
            if isinstance(node, dict):
                index = part
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                index = int(part)
            else:
                expected = f"has items 0-{len(node) - 1}" if isinstance(node, list) else "is a single value"
                problems.append(Problem(where, f"{here} {expected}, not a place for {part!r}"))
                break
            if depth == len(parts) - 1:
                node[index] = value
            else:
                node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]
    if problems:
        raise ScenarioError(source, problems)


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read and validate a scenario file, with `--set` overrides. The name defaults to the file's stem."""
    path = Path(path)
    try:
        raw = read_regular(path, MAX_FILE_BYTES)
    except NotRegular as err:
        what = "is a directory" if path.is_dir() else str(err.strerror)
        problem = Problem("(file)", f"{what}; expected a scenario file")
        raise ScenarioError(str(path), [problem]) from None
    except OSError as err:
        raise ScenarioError(str(path), [Problem("(file)", f"cannot read: {err.strerror}")]) from None
    try:
        data = loads(decode(raw))
    except YamlRefused as err:
        raise ScenarioError(str(path), [Problem(err.where, err.message)]) from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
        apply_overrides(data, overrides, str(path))
    return parse_scenario(data, str(path))
