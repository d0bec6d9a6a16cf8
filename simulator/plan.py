"""`veil run FILE --dry-run`: what a run would do and need on this machine, without training and without
writing anything.

The parties and their resources; each stage, or why it does not run; the dataset and each entity's
images; the pool's bytes; disk and memory needed against what this machine has; and a time per stage
from throughputs measured here on a few batches of the scenario's own nets. Counts follow exactly from
the scenario and the files (the partitions as `prepare` draws them, the pool as simulator.pool stores
it); memory and times are estimates and say so. Where the files are not here, a kind that knows its
dataset's published sizes (DatasetKind.published) stands in for them, with a warning.
"""

from __future__ import annotations

import functools
import io
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from entities import entity as E
from entities import threats
from entities.datasets import kind_of
from entities.datasets.base import Published, images_budget
from entities.grids import IMAGES
from entities.metrics import l1, ssim
from entities.nets import DPM, build_classifier, feature_shape, stride
from entities.publication import autoencoder_config
from entities.recipes import Recipe
from entities.registry import OPTIMIZERS
from entities.sparse import SparsifyingAutoencoder
from entities.training import device, schedule_of
from simulator.preflight import MIN_FREE_MB, SPLITS, check_counts, load_checked
from simulator.roles import parties
from simulator.schema import Problem, Scenario, ScenarioError, Training
from simulator.stages import stage_order
from simulator.stages.poison import originals_published, victims_of
from simulator.stages.prepare import partitions

MEASURE_SIDE = 32  # nets are timed at this side at most, their cost scaled by pixels (convolutions)
MEASURE_BATCH = 16  # and at this batch at most: a few seconds in all on a laptop's CPU
MEASURE_BUDGET_S = 0.5  # per net: a larger batch is timed when its step stays under this
OTHER_FILES = 2 * 2**20  # results, audit log, manifest, resolved scenario: a run of smoke writes ~1 MiB
# the stages no time is estimated for, and why
UNTIMED = {
    "prepare": "labels only: seconds",
    "access": "each user decodes the few images it was granted",
    "leak": "copies of the known pairs",
    "attack": "each attack's own recipe: `veil attacks`",
    "score": "the referee's comparisons",
}
OPTIMIZER_STATES = {"sgd": 1, "adam": 2}  # float32 tensors per parameter (momentum; Adam's two moments)


# --- the data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    kind: str
    side: int
    task_classes: int
    public_classes: int
    splits: dict[str, int]  # images per split (preflight.SPLITS)
    entity_images: dict[str, int]  # each entity's partition of task_train
    published: Published | None = None  # set when the files are not here: the sizes are the published ones
    missing: str = ""  # what a run would say about the files then


def plan_data(scenario: Scenario) -> DataPlan:
    """The dataset's sizes from its files, as a run checks them; or, where the files are not here and the
    kind knows them, the published sizes. A ScenarioError (exit 2) otherwise, as a run gives."""
    section = scenario.dataset
    try:
        data = load_checked(scenario)
    except ScenarioError as err:
        published = kind_of(section).published(section)
        if published is None:
            raise
        check_counts(scenario, published.splits)
        n = published.splits["task_train"]
        # the schema's own count (partition's controlled rounding differs by an image at most)
        images = {e.name: max(1, round(e.fraction * n)) for e in scenario.entities}
        return DataPlan(
            section.kind,
            section.side,
            published.task_classes,
            published.public_classes,
            dict(published.splits),
            images,
            published,
            str(err).strip(),
        )
    splits = {name: len(getattr(data, name)) for name in SPLITS}
    check_counts(scenario, splits)
    images = {}
    if scenario.entities:  # drawn exactly as `prepare` draws them
        index = partitions(scenario, data.task_train.labels)
        images = {e.name: len(i) for e, i in zip(scenario.entities, index, strict=True)}
    classes = (len(data.task_train.classes), len(data.public_train.classes))
    return DataPlan(section.kind, section.side, *classes, splits, images)


# --- the pool --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    owner: str
    name: str  # "poisoned" or "original"
    rows: int
    nbytes: int  # of its file: numpy's header and the float16 features


def npy_bytes(shape: tuple[int, ...], dtype: type = np.float16) -> int:
    """The size of the file numpy.save writes for an array of `shape` (simulator.pool's shard files)."""
    header = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return len(header.getvalue()) + math.prod(shape) * np.dtype(dtype).itemsize


def pool_shards(scenario: Scenario, images: dict[str, int], shape: tuple[int, int, int]) -> list[Shard]:
    """The shards `poison` publishes: each entity's poisoned features (its mirror images' too with
    dpm.share_mirrored), and its original features where a row or an attack needs them."""
    if scenario.dpm is None:
        return []
    copies = 2 if scenario.dpm.share_mirrored else 1
    originals = originals_published(scenario)
    out = []
    for e in scenario.entities:
        rows = images[e.name] * copies
        for name in ("poisoned", "original") if e.name in originals else ("poisoned",):
            out.append(Shard(e.name, name, rows, npy_bytes((rows, *shape))))
    return out


# --- the nets, timed here ----------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    """One net's cost on this machine, per image at the scenario's image side."""

    train_s: float  # a training step: forward, backward, optimizer step
    forward_s: float  # a forward pass without gradients
    activations: int  # bytes of one image's module outputs, which backward keeps
    weights: int  # bytes of its float32 parameters and buffers
    how: str  # what was timed


def _weights(*modules: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


class _Outputs:
    """Counts the bytes of every leaf module's output while active: what backward keeps of a batch."""

    def __init__(self, modules: list[nn.Module]):
        self.leaves = [m for module in modules for m in module.modules() if not list(m.children())]
        self.total = 0

    def _hook(self, _m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            self.total += out.numel() * out.element_size()

    def during(self, fn: Callable[[], object]) -> int:
        handles = [m.register_forward_hook(self._hook) for m in self.leaves]
        try:
            fn()
        finally:
            for h in handles:
                h.remove()
        return self.total


def _seconds(fn: Callable[[int], object], b: int) -> float:
    sync = torch.cuda.synchronize if device().type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn(b)
    sync()
    return time.perf_counter() - t0


def _per_image(fn: Callable[[int], object], batch: int, first_s: float) -> tuple[float, int]:
    """Seconds per image of fn(b) and that b: 8 or MEASURE_BATCH images (at most `batch`) when a step of
    two, `first_s`, says it fits MEASURE_BUDGET_S, else two. A machine shared with other work gives noisy
    times: a quick step is timed twice and the best kept (the least disturbed)."""
    top = max(2, min(batch, MEASURE_BATCH))
    b = max([x for x in (2, 8, MEASURE_BATCH) if x <= top and first_s * x / 2 < MEASURE_BUDGET_S] or [2])
    if b == 2:
        return (min(first_s, _seconds(fn, 2)) if first_s < MEASURE_BUDGET_S / 2 else first_s) / 2, 2
    fn(b)  # warm-up at this shape
    return _seconds(fn, b) / b, b


def _measure(
    trained: nn.Module,
    frozen: list[nn.Module],
    loss: Callable[[int], torch.Tensor],
    recipe: Recipe,
    *,
    scale: float,
    what: str,
) -> Speed:
    """Time a training step of `trained` (with `frozen` in the graph); `scale`: the scenario's pixels over
    the measured ones. A forward pass is taken as a third of a step (backward costs about two)."""
    opt = OPTIMIZERS.get(recipe.optimizer)([p for p in trained.parameters() if p.requires_grad], recipe)

    def step(b: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss(b).backward()
        opt.step()

    trained.train()
    acts = _Outputs([trained, *frozen]).during(lambda: step(2)) // 2  # also the warm-up
    train_s, b = _per_image(step, recipe.batch_size, _seconds(step, 2))
    scaled = f", scaled x{scale:.3g} by pixels" if scale != 1 else ""
    return Speed(
        train_s * scale,
        train_s * scale / 3,
        int(acts * scale),
        _weights(trained),
        f"{what}: batch {b}{scaled}",
    )


@dataclass
class Speeds:
    """The scenario's nets, timed once each (a DPM once per distinct shape)."""

    classifier: Speed | None = None  # F + C from raw images
    featurizer: Speed | None = None  # F alone (featurizing), forward only
    reconstructor: Speed | None = None
    decider: Speed | None = None  # C refined on features
    dpm: dict[tuple[int, int], Speed] = field(default_factory=dict)
    autoencoder: Speed | None = None
    process: int = 0  # bytes a node's process holds before any data: Python, torch, Veil


def _rss() -> int:
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return 0


def measure(scenario: Scenario, data: DataPlan) -> Speeds:
    """Time the nets the scenario trains, at its batch sizes (capped) and image side (capped, scaled)."""
    out = Speeds(process=_rss())
    dev = device()
    torch.manual_seed(0)
    s = scenario
    if s.entities and s.pretrain is not None:
        st = stride(s.backbone.name, s.backbone.split)
        side = data.side if data.side <= MEASURE_SIDE else st * math.ceil(MEASURE_SIDE / st)
        scale = (data.side / side) ** 2
        k = data.task_classes
        featurizer, decider = build_classifier(s.backbone.name, s.backbone.split, k)
        net = nn.Sequential(featurizer, decider).to(dev)
        images = lambda b: torch.rand(b, 3, side, side, device=dev)  # noqa: E731
        labels = lambda b: torch.randint(0, k, (b,), device=dev)  # noqa: E731
        ce = nn.functional.cross_entropy
        at = f"{side} px"
        out.classifier = _measure(
            net, [], lambda b: ce(net(images(b)), labels(b)), s.pretrain, scale=scale, what=f"F+C at {at}"
        )
        with torch.no_grad():  # F alone featurizes (the pool, R's and the DPM's inputs)
            featurizer.eval()
            forward = lambda b: featurizer(images(b))  # noqa: E731
            forward(2)
            f_s, _ = _per_image(forward, s.pretrain.batch_size, _seconds(forward, 2))
        c, h, w = feature_shape(featurizer.cpu(), side)
        featurizer.to(dev)
        out.featurizer = Speed(f_s * scale, f_s * scale, 0, _weights(featurizer), f"F at {at}")
        feats = lambda b: torch.rand(b, c, h, w, device=dev)  # noqa: E731
        if s.refine is not None:
            out.decider = _measure(
                decider,
                [],
                lambda b: ce(decider(feats(b)), labels(b)),
                s.refine,
                scale=scale,
                what=f"C on {h}x{w} cells",
            )
        if s.reconstructor is not None:
            recon = E.new_reconstructor(s.reconstructor, s.backbone, c).to(dev)
            out.reconstructor = _measure(
                recon,
                [],
                lambda b: l1(recon(feats(b)), images(b)).mean(),
                s.reconstructor.training,
                scale=scale,
                what=f"R to {at}",
            )
            if s.dpm is not None:
                E.freeze(decider, recon)
                for shape in sorted({(e.dpm.blocks, e.dpm.width) for e in s.entities}):
                    dpm = DPM(c, blocks=shape[0], width=shape[1]).to(dev)

                    def loss(b: int, dpm: nn.Module = dpm) -> torch.Tensor:
                        poisoned = dpm(feats(b))
                        return ce(decider(poisoned), labels(b)) + ssim(recon(poisoned), images(b)).mean()

                    out.dpm[shape] = _measure(
                        dpm,
                        [decider, recon],
                        loss,
                        s.dpm,
                        scale=scale,
                        what=f"DPM {shape[0]}x{shape[1]} with C and R",
                    )
    owner = s.data_owner
    if owner is not None:
        model = SparsifyingAutoencoder(**autoencoder_config(owner.autoencoder, owner.image_size)).to(dev)
        side = owner.image_size
        pixels = lambda b: torch.rand(b, 3, side, side, device=dev)  # noqa: E731

        def bce(b: int) -> torch.Tensor:
            x = pixels(b)
            return nn.functional.binary_cross_entropy_with_logits(model.logits(x), x)

        out.autoencoder = _measure(
            model, [], bce, owner.training, scale=1.0, what=f"autoencoder at {side} px"
        )
    return out


# --- the stages' work --------------------------------------------------------------------------


def epochs_of(recipe: Training, n: int) -> int:
    """The epochs `fit` trains for on n samples."""
    return schedule_of(recipe, n)[0]


@dataclass(frozen=True)
class Work:
    """One piece of a stage on one party: a training (a `fit`) or passes over images."""

    party: str
    what: str
    seconds: float | None  # None: not estimated
    memory: int  # bytes its process holds meanwhile (an estimate)


@dataclass
class Budget:
    """What a party holds: arrays whole when they fit the images budget, else a batch at a time."""

    speeds: Speeds
    streamed: list[tuple[str, int]] = field(default_factory=list)

    def held(self, what: str, n: int, per_item: int, batch: int, *, pixels: int = 0) -> int:
        """Bytes of n items of per_item bytes held whole, or of one batch; `pixels`: the uint8 bytes of an
        item, which the budget is about (ImageSet.images), where the float copy beside them is not."""
        total = n * per_item
        if n * (pixels or per_item) <= images_budget():
            return total
        self.streamed.append((what, total))
        return batch * per_item

    def training(self, speed: Speed, recipe: Training, *, frozen: int = 0) -> int:
        """Weights, gradients and optimizer states of a net that trains; a batch's activations."""
        states = 2 + OPTIMIZER_STATES.get(recipe.optimizer, 2)
        return self.speeds.process + speed.weights * states + frozen + speed.activations * recipe.batch_size


def _fit(party: str, label: str, speed: Speed, recipe: Training, n: int, memory: int) -> Work:
    epochs = epochs_of(recipe, n)
    what = f"{label}: {n:,} images x {epochs} epochs, batch {recipe.batch_size}"
    return Work(party, what, speed.train_s * n * epochs, memory)


def plan_work(scenario: Scenario, data: DataPlan, sp: Speeds, budget: Budget) -> dict[str, list[Work]]:
    """Each stage's trainings and passes, per party, as the stage modules do them."""
    s, out = scenario, {}
    side = data.side
    pixel = 3 * side * side  # one image's bytes, uint8; to_float makes a float32 copy (x4) beside it
    test = data.splits["task_test"]
    fc, f, c, r = sp.classifier, sp.featurizer, sp.decider, sp.reconstructor
    if s.entities and fc is not None and f is not None and s.pretrain is not None:
        shape = _shape(s, side)
        feature = 4 * math.prod(shape)  # float32 features held in memory while a net trains on them
        leader, n = s.leading_entity, data.entity_images[s.leading_entity]
        works = []
        held = budget.held(f"{leader}'s images", n, 5 * pixel, s.pretrain.batch_size, pixels=pixel)
        works.append(_fit(leader, "F+C", fc, s.pretrain, n, budget.training(fc, s.pretrain) + held))
        if r is not None and s.reconstructor is not None:
            q, rec = data.splits["public_train"], s.reconstructor.training
            held = budget.held("D_q's images and features", q, 5 * pixel + feature, rec.batch_size)
            works.append(Work(leader, f"F featurizes D_q: {q:,} images", f.forward_s * q, sp.process + held))
            works.append(_fit(leader, "R", r, rec, q, budget.training(r, rec, frozen=f.weights) + held))
        works.append(Work(leader, f"F+C on the test set: {test:,}", fc.forward_s * test, sp.process))
        out["pretrain"] = works
    if s.entities and s.dpm is not None and f is not None and sp.dpm and r is not None and fc is not None:
        shape = _shape(s, side)
        feature = 4 * math.prod(shape)
        copies = 2 if s.dpm.share_mirrored else 1
        originals = originals_published(s)
        works = []
        for e in s.entities:
            n, dpm = data.entity_images[e.name], sp.dpm[(e.dpm.blocks, e.dpm.width)]
            frozen = fc.weights + r.weights
            held = budget.held(f"{e.name}'s images and features", n, 5 * pixel + feature, s.dpm.batch_size)
            works.append(Work(e.name, f"F featurizes its {n:,} images", f.forward_s * n, sp.process + held))
            works.append(
                _fit(e.name, "DPM", dpm, s.dpm, n, budget.training(dpm, s.dpm, frozen=frozen) + held)
            )
            per_test = f.forward_s + dpm.forward_s + 2 * (c.forward_s if c else 0) + 2 * r.forward_s
            works.append(Work(e.name, f"measured on the test set: {test:,}", per_test * test, sp.process))
            rows = n * copies * (2 if e.name in originals else 1)
            publish = (f.forward_s * rows) + dpm.forward_s * n * copies
            works.append(Work(e.name, f"features to the pool: {rows:,}", publish, sp.process + held))
        out["poison"] = works
    if s.entities and s.collaboration and fc is not None and f is not None and s.pretrain is not None:
        shape = _shape(s, side)
        copies = 2 if s.dpm is None or s.dpm.share_mirrored else 1
        works = []
        for i, row in enumerate(s.collaboration):
            label = f"row {i + 1} ({row.label})"
            if row.trains_from_raw:
                n = sum(
                    data.splits["task_train"] if x.of == "all" else data.entity_images[x.of]
                    for x in row.sources()
                )
                held = budget.held(f"{label}'s images", n, 5 * pixel, s.pretrain.batch_size, pixels=pixel)
                works.append(
                    _fit(
                        row.entity, f"{label} F+C", fc, s.pretrain, n, budget.training(fc, s.pretrain) + held
                    )
                )
            elif c is not None and s.refine is not None:
                n = sum(data.entity_images[x.of] * copies for x in row.sources())
                own = (
                    data.entity_images[row.entity] * copies
                    if any(x.kind == "original" and x.of == row.entity for x in row.sources())
                    else 0
                )
                if own:
                    works.append(
                        Work(
                            row.entity,
                            f"{label} F featurizes its {own:,} images",
                            f.forward_s * own,
                            sp.process,
                        )
                    )
                # float16 from the pool, copied when read and again when the sources are concatenated
                held = budget.held(f"{label}'s features", n, 4 * math.prod(shape), s.refine.batch_size)
                works.append(
                    _fit(row.entity, f"{label} C", c, s.refine, n, budget.training(c, s.refine) + held)
                )
            works.append(
                Work(row.entity, f"{label} on the test set: {test:,}", fc.forward_s * test, sp.process)
            )
        out["refine"] = works
    owner, ae = s.data_owner, sp.autoencoder
    if owner is not None and ae is not None:
        n, side_o = data.splits["task_train"], owner.image_size
        pixels_o, batch_o = 3 * side_o * side_o, owner.training.batch_size
        held = budget.held("the owner's training images", n, 5 * pixels_o, batch_o, pixels=pixels_o)
        held += budget.held("the owner's test images", test, 5 * pixels_o, batch_o, pixels=pixels_o)
        works = [
            _fit(owner.name, "autoencoder", ae, owner.training, n, budget.training(ae, owner.training) + held)
        ]
        passes = n + test * (2 + len(owner.sweep_k))  # encode both; decode per measured k
        works.append(
            Work(
                owner.name,
                f"codes and their measures: {passes:,} passes",
                ae.forward_s * passes,
                sp.process + held,
            )
        )
        out["codes"] = works
    return out


def _shape(scenario: Scenario, side: int) -> tuple[int, int, int]:
    """F's feature shape (C, H, W) at `side`, from the backbone itself."""
    return _feature_shape(scenario.backbone.name, scenario.backbone.split, side)


@functools.cache
def _feature_shape(backbone: str, split: str, side: int) -> tuple[int, int, int]:
    featurizer, _ = build_classifier(backbone, split, 2)
    return feature_shape(featurizer, side)


# --- disk and the machine --------------------------------------------------------------------


def disk_needed(scenario: Scenario, data: DataPlan, shards: list[Shard], sp: Speeds) -> dict[str, int]:
    """Bytes a run writes, by what (the pool exactly; the rest estimated from the shapes)."""
    s, side = scenario, data.side
    out: dict[str, int] = {"pool": sum(x.nbytes for x in shards) + sum(8 * x.rows + 512 for x in shards)}
    if s.entities:
        nets = sum(x.weights for x in (sp.classifier, sp.reconstructor) if x is not None)
        dpms = sum(sp.dpm[(e.dpm.blocks, e.dpm.width)].weights for e in s.entities if sp.dpm)
        out["nets (F, C, R) and the DPMs"] = nets + dpms
        out["partitions"] = sum(8 * n + 1024 for n in data.entity_images.values())
        out["figures"] = len(s.entities) * 3 * IMAGES * 3 * (side + 2) ** 2  # PNG, at most uncompressed
    owner = s.data_owner
    if owner is not None:
        ae, test = owner.autoencoder, data.splits["task_test"]
        codes = 4 * test * ae.maps * ae.code_length  # float32 ambiguated codes, dense
        keys = (1 + len(owner.users)) * test * ae.maps * ae.code_length // 8  # supports as bits
        net = sp.autoencoder.weights if sp.autoencoder else 0
        out["public codes, network, keys"] = codes + net + keys
    kept = 0
    for a in s.adversaries:  # what the referee keeps of an attack on the pool: an image per pooled row
        pool_attacks = sum(threats.ATTACKS[x.name].target == "pool" for x in a.attack_specs())
        rows = sum(data.entity_images.get(v, 0) for v in victims_of(s, a)) if s.entities else 0
        kept += pool_attacks * rows * 2 * 2 * 3 * side * side  # mirrored rows; protected and unprotected
    if kept:
        out["attack outputs (estimate)"] = kept
    out["records, audit, manifest"] = OTHER_FILES
    return out


def free_disk(out: Path) -> tuple[Path, int]:
    """Free bytes where --out would be: its nearest existing folder (nothing is created)."""
    where = out.resolve()
    while not where.exists():
        where = where.parent
    return where, shutil.disk_usage(where).free


def machine_memory() -> tuple[int, int]:
    """(total, available) bytes of this machine's memory."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0]) * 1024
    return info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))


# --- the plan, printed -----------------------------------------------------------------------


def gib(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def dry_run(scenario: Scenario, out: Path) -> tuple[str, list[str]]:
    """The plan as text, and the warnings (each also in the text). Raises ScenarioError as a run would."""
    lines: list[str] = []
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        lines.append(f"WARNING: {text}")

    s = scenario
    if out.exists() and not out.is_dir():
        raise ScenarioError(str(out), [Problem("--out", "is a file; expected a directory for runs")])
    data = plan_data(s)
    lines.append(f"dry run of scenario {s.name!r}: nothing is trained, nothing is written")
    if data.published is not None:
        pub = data.published
        warn(
            f"the dataset's files are not here; the sizes below are the published ones of {pub.name} "
            f"({pub.images:,} images, {pub.classes:,} classes), estimated under the section: a run here "
            "would stop with exit 2"
        )
        lines += [f"  {x}" for x in data.missing.splitlines()]

    cpus, res = os.cpu_count() or 1, s.resources
    gpus = torch.cuda.device_count()
    lines.append("\nparties (one Flower SuperNode each, on Ray)")
    for p in parties(s):
        lines.append(f"  {p.name:<12} {p.role.value:<16} {res.num_cpus:g} CPUs, {res.num_gpus:g} GPUs")
    at_once = int(cpus / res.num_cpus)
    if res.num_gpus > 0 and gpus:
        at_once = min(at_once, int(gpus / res.num_gpus))
    lines.append(f"  this machine: {cpus} CPUs, {gpus} GPUs: {max(at_once, 0)} node(s) at once")
    if at_once == 0:
        warn(
            f"resources.num_cpus is {res.num_cpus:g} per node and this machine has {cpus} CPUs: Ray can "
            "place no node (Flower's actor pool would be empty); lower resources.num_cpus here"
        )
    if res.num_gpus > 0 and not gpus:
        warn(
            f"the scenario asks for {res.num_gpus:g} GPU per node and this machine has none: nodes would "
            "get CPUs only, and the times below are this CPU's"
        )

    lines.append(f"\ndataset: {data.kind}, {data.side} px")
    lines.append(f"  classes: D_p (task) {data.task_classes:,}, D_q (public) {data.public_classes:,}")
    lines.append("  images: " + ", ".join(f"{k} {v:,}" for k, v in data.splits.items()))
    for e, n in data.entity_images.items():
        lines.append(f"  {e}: {n:,} training images")

    if s.data_owner is not None:  # the schema checks grants for photos only; `codes` would fail on them
        n_test = data.splits["task_test"]
        for user in s.data_owner.users:
            beyond = [i for i in user.grant if i >= n_test]
            if beyond:
                warn(f"user {user.name!r} is granted images {beyond[:5]}; the owner has {n_test} test images")

    shards: list[Shard] = []
    if s.entities:
        shape = _shape(s, data.side)
        shards = pool_shards(s, data.entity_images, shape)
        total = sum(x.nbytes for x in shards)
        cells = "x".join(map(str, shape))
        lines.append(f"\npool: {total:,} bytes ({gib(total)}) of float16 features {cells}")
        for x in shards:
            lines.append(f"  {x.owner}/{x.name}: {x.rows:,} rows, {x.nbytes:,} bytes")
    t0 = time.monotonic()
    speeds = measure(s, data)
    measured_s = time.monotonic() - t0
    budget = Budget(speeds)
    work = plan_work(s, data, speeds, budget)

    lines.append(f"\nstages (times from throughputs measured here on {device().type}, in {measured_s:.1f} s)")
    for stage in stage_order():
        why = stage.absent(s)
        if why:
            lines.append(f"  {stage.name:<9} does not run: {why}")
            continue
        items = work.get(stage.name)
        if items is None:
            why = UNTIMED.get(stage.name, "no model of it")
            lines.append(f"  {stage.name:<9} runs; not estimated ({why})")
            continue
        total_s = sum(w.seconds or 0 for w in items)
        lines.append(f"  {stage.name:<9} {duration(total_s)} of work")
        for w in items:
            lines.append(f"      {w.party}: {w.what}: {duration(w.seconds or 0)}")
    for speed in (
        speeds.classifier,
        speeds.reconstructor,
        speeds.decider,
        *speeds.dpm.values(),
        speeds.autoencoder,
    ):
        if speed is not None:
            lines.append(f"  measured {speed.how}: {1 / speed.train_s:.3g} images/s training")

    disk = disk_needed(s, data, shards, speeds)
    need = sum(disk.values())
    where, free = free_disk(out)
    lines.append(f"\ndisk: {gib(need)} needed under {out}, {gib(free)} free at {where}")
    for k, v in disk.items():
        lines.append(f"  {k}: {gib(v)}")
    if need + MIN_FREE_MB * 2**20 > free:
        warn(f"the run needs {gib(need)} on disk and {where} has {gib(free)} free")

    total_mem, available = machine_memory()
    per_party: dict[str, int] = {}
    stage_peak = 0
    for items in work.values():
        peak: dict[str, int] = {}
        for w in items:
            peak[w.party] = max(peak.get(w.party, 0), w.memory)
            per_party[w.party] = max(per_party.get(w.party, 0), w.memory)
        at = sorted(peak.values(), reverse=True)[: max(1, at_once)]
        stage_peak = max(stage_peak, sum(at))
    lines.append(f"\nmemory: {gib(total_mem)} on this machine, {gib(available)} available")
    lines.append(
        f"  per node (estimate: its process {gib(speeds.process)}, data held whole up to the images budget "
        f"of {gib(images_budget())}, weights, gradients and optimizer states, a batch's activations)"
    )
    for name, m in per_party.items():
        lines.append(f"    {name}: {gib(m)}")
    lines.append(f"  at once (the nodes that run together, at their peaks): {gib(stage_peak)}")
    if budget.streamed:
        largest = sorted(budget.streamed, key=lambda x: -x[1])
        shown = "; ".join(f"{what} {gib(n)}" for what, n in largest[:3])
        lines.append(
            f"  above the images budget, counted as one batch each: {len(largest)} arrays, "
            f"the largest {shown}"
            " (a stage that streams reads these in batches; one that still reads them whole stops with a "
            "MemoryError)"
        )
    big = [n for n, m in per_party.items() if m > available]
    if big:
        warn(f"{', '.join(big)} would need more memory than this machine has available ({gib(available)})")
    elif stage_peak > available:
        warn(f"the nodes that run at once would need {gib(stage_peak)}; {gib(available)} is available")
    if warnings:
        lines.append(f"\n{len(warnings)} warning(s)")
    return "\n".join(lines) + "\n", warnings
