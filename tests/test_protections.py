"""Protections (entities.protections): the family, its checks at validation, each protector on real
features, and every protection through a real inline run of a tiny scenario cut from the smoke one, a
protection registered by this test module among them."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

from entities import entity as E
from entities.attacks.base import Knowledge
from entities.attacks.pool import victim_protection
from entities.protections import Holdings, ProtectionKind, ProtectionSection, make_protection
from entities.protections.gaussian_mechanism import GaussianMechanismSection, analytic_sigma
from entities.protections.perturbations import (
    GaussianFilterSection,
    GaussianNoiseSection,
    MeanFilterSection,
)
from entities.registry import PROTECTIONS
from reports.protections import frontier_points, on_frontier, utility_column
from reports.report import write_report
from reports.runs import Run, load_sweep, read_records
from simulator import protection as P
from simulator.cli import main
from simulator.rundir import RunDir
from simulator.schema import ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


# --- a protection added by a test module: one class, one section ------------------------------------


class HalveSection(ProtectionSection):
    """Multiply the features by `factor` (a test's protection)."""

    kind: Literal["test-scale"]
    factor: float = Field(0.5, gt=0)

    def label(self) -> str:
        return f"scale x{self.factor:g}"


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.register_buffer("factor", torch.tensor(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@PROTECTIONS.register("test-scale")
class ScaleProtection(ProtectionKind[HalveSection]):
    section = HalveSection

    def build(self, channels: int, holdings: Holdings) -> nn.Module:
        return Scale(1.0)

    def train(self, holdings: Holdings, *, seed: int) -> nn.Module:
        return Scale(self.spec.factor)


# --- validation ----------------------------------------------------------------------------------------


def smoke_with(protection: Any, *, drop_dpm: bool = False) -> dict[str, Any]:
    data = yaml.safe_load(SMOKE.read_text())
    data["entities"][1]["protection"] = protection
    if drop_dpm:
        del data["dpm"]
        for e in data["entities"]:
            e["protection"] = copy.deepcopy(protection)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data)
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize(
    ("protection", "path", "says"),
    [
        ({"kind": "gaussian-noise", "sigma": -1}, "entities[1].protection.sigma", "greater than 0"),
        ({"kind": "gaussian-noise"}, "entities[1].protection.sigma", "required"),
        ({"kind": "gaussian-filter", "size": 4}, "entities[1].protection.size", "odd"),
        ({"kind": "mean-filter", "size": 0}, "entities[1].protection.size", "odd"),
        ({"kind": "gaussian-filter", "sigma": 0}, "entities[1].protection.sigma", "greater than 0"),
        ({"kind": "gaussian-mechanism", "epsilon": 0}, "entities[1].protection.epsilon", "greater than 0"),
        ({"kind": "gaussian-mechanism", "epsilon": -2}, "entities[1].protection.epsilon", "greater than 0"),
        ({"kind": "gaussian-mechanism"}, "entities[1].protection.epsilon", "required"),
        (
            {"kind": "gaussian-mechanism", "epsilon": 1, "delta": 1},
            "entities[1].protection.delta",
            "less than 1",
        ),
        ({"kind": "blur"}, "entities[1].protection.kind", "'gaussian-noise'"),
        (
            {"kind": "adaptive-dpm", "decoders": 0},
            "entities[1].protection.decoders",
            "greater than or equal to 1",
        ),
        ({"kind": "nopeek", "alpha": 0}, "entities[1].protection.alpha", "greater than 0"),
        ({"kind": "shared-obfuscator", "lambda": -1}, "entities[1].protection.lambda", "greater than 0"),
        ({"sigma": 1.0}, "entities[1].protection.kind", "missing"),
        ({"kind": "mean-filter", "sise": 3}, "entities[1].protection.sise", "did you mean 'size'"),
    ],
)
def test_bad_protections_are_refused_naming_the_field(protection: Any, path: str, says: str) -> None:
    found = problems(smoke_with(protection))
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: ") and says in found[0], found


def test_the_default_protection_is_the_papers_dpm_and_the_dpm_recipe_is_needed_only_for_a_dpm() -> None:
    s = parse_scenario(yaml.safe_load(SMOKE.read_text()))
    # E1-E4 declare none: the paper's DPM; the others the protections that need no training
    assert {e.name: e.protection.kind for e in s.entities} == {
        **{f"E{i}": "dpm" for i in range(1, 5)},
        "GN": "gaussian-noise",
        "MF": "mean-filter",
        "GM": "gaussian-mechanism",
    }
    assert P.compares_protections(s)  # so the smoke scenario writes Table 3
    noise = {"kind": "gaussian-noise", "sigma": 1.0}
    parse_scenario(smoke_with(noise, drop_dpm=True))  # no entity trains a DPM: no dpm section needed
    found = problems(smoke_with({**noise, "then_dpm": True}, drop_dpm=True))
    assert found == ["dpm: field required when an entity's protection trains a DPM"]
    default = yaml.safe_load(SMOKE.read_text())
    del default["dpm"]
    assert problems(default) == ["dpm: field required when an entity's protection trains a DPM"]


def test_every_protection_names_its_table3_row() -> None:
    from reports.paper import table3_row

    assert table3_row(GaussianNoiseSection(kind="gaussian-noise", sigma=0.5).label()) == "GN"
    assert table3_row(GaussianFilterSection(kind="gaussian-filter", then_dpm=True).label()) == "GF+DPM"
    assert table3_row(MeanFilterSection(kind="mean-filter", size=5).label()) == "MF"
    default = parse_scenario(yaml.safe_load(SMOKE.read_text())).entities[0].protection
    assert table3_row(default.label()) == "DPM"
    assert table3_row(make_protection(default).spec.label()) == "DPM"


# --- the protectors on real features --------------------------------------------------------------


@pytest.fixture(scope="module")
def holdings() -> Holdings:
    """Untrained F, C, R of the smoke shapes (resnet18 at conv2_x), and 24 random 32x32 images."""
    s = parse_scenario(yaml.safe_load(SMOKE.read_text()))
    assert s.reconstructor is not None
    torch.manual_seed(0)
    nets = E.empty_nets(s.backbone, s.reconstructor, 32, 6)
    for m in (nets.featurizer, nets.decider, nets.reconstructor):
        m.eval()
    images = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(24, dtype=np.int64) % 6
    return Holdings(nets, images, labels, s.dpm, s.entities[0].dpm)


def protect(spec: ProtectionSection, holdings: Holdings) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    protector = make_protection(spec).train(holdings, seed=3)
    feats = E.featurize(holdings.nets.featurizer, holdings.images)
    return feats, E.featurize(holdings.nets.featurizer, holdings.images, protector), protector


def test_gaussian_noise_is_scaled_by_the_features_spread_and_replays_from_its_weights(
    holdings: Holdings,
) -> None:
    spec = GaussianNoiseSection(kind="gaussian-noise", sigma=0.5)
    feats, protected, protector = protect(spec, holdings)
    assert protected.shape == feats.shape and torch.isfinite(protected).all()
    ratio = float((protected - feats).std() / feats.std())
    assert 0.45 < ratio < 0.55, ratio
    # rebuilt from its saved weights (as an insider does), it draws the same noise
    again = make_protection(spec).build(feats.shape[1], holdings)
    again.load_state_dict(protector.state_dict())
    fresh = make_protection(spec).train(holdings, seed=3)
    assert torch.equal(again(feats), fresh(feats))
    assert not torch.equal(make_protection(spec).train(holdings, seed=4)(feats), fresh(feats))


@pytest.mark.parametrize(
    "spec",
    [
        GaussianFilterSection(kind="gaussian-filter", size=5, sigma=1.0),
        MeanFilterSection(kind="mean-filter", size=3),
    ],
)
def test_the_filters_smooth_each_map_and_keep_a_constant_one(
    spec: ProtectionSection, holdings: Holdings
) -> None:
    protector = make_protection(spec).train(holdings, seed=0)
    maps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    smoothed = protector(maps)
    assert smoothed.shape == maps.shape
    assert float(smoothed.var()) < 0.5 * float(maps.var())
    flat = torch.full((1, 4, 8, 8), 2.5)
    assert torch.allclose(protector(flat), flat, atol=1e-5)
    # each channel alone: a map of zeros next to a busy one stays zero
    mixed = torch.cat([maps[:, :1], torch.zeros(2, 1, 8, 8)], 1)
    assert float(protector(mixed)[:, 1].abs().max()) == 0.0


def test_analytic_gaussian_mechanism_is_tight_and_below_the_classic_bound() -> None:
    def delta_of(sigma: float, eps: float, sens: float) -> float:
        phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
        a, b = sens / (2 * sigma), eps * sigma / sens
        return phi(a - b) - math.exp(eps) * phi(-a - b)

    for eps, delta, sens in [(0.5, 1e-5, 2.0), (1.0, 1e-6, 1.0), (8.0, 1e-5, 3.0)]:
        sigma = analytic_sigma(eps, delta, sens)
        assert delta_of(sigma, eps, sens) <= delta * (1 + 1e-6)
        assert delta_of(0.98 * sigma, eps, sens) > delta  # the smallest such sigma
        if eps < 1:
            assert sigma < sens * math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert analytic_sigma(1.0, 1e-5, 1.0) > analytic_sigma(4.0, 1e-5, 1.0)  # less privacy, less noise


def test_the_gaussian_mechanism_clips_each_vector_and_adds_its_calibrated_noise(holdings: Holdings) -> None:
    spec = GaussianMechanismSection(kind="gaussian-mechanism", epsilon=2.0, delta=1e-5, clip_norm=1.0)
    feats, protected, protector = protect(spec, holdings)
    sigma = float(protector.sigma)  # type: ignore[arg-type]
    assert sigma == pytest.approx(analytic_sigma(2.0, 1e-5, 2.0))
    clipped = feats.flatten(1) / feats.flatten(1).norm(dim=1, keepdim=True).clamp_min(1.0)
    noise = protected.flatten(1) - clipped
    assert float(noise.std()) == pytest.approx(sigma, rel=0.05)
    # without clip_norm, the median norm of the entity's own features
    auto = make_protection(GaussianMechanismSection(kind="gaussian-mechanism", epsilon=2.0)).train(
        holdings, seed=0
    )
    assert float(auto.clip) == pytest.approx(float(feats.flatten(1).norm(dim=1).median()), rel=1e-5)  # type: ignore[arg-type]


def test_distance_correlation_is_one_for_a_function_of_the_input_and_falls_with_noise() -> None:
    from entities.protections.adversarial import distance_correlation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert float(distance_correlation(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-4)
    noise = torch.randn(200, 4, generator=g)
    scores = [float(distance_correlation(x, x + s * noise)) for s in (0.5, 2.0)]
    scores.append(float(distance_correlation(x, noise)))  # independent: near 0 (a V-statistic: above it)
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.4, scores
    # a nonlinear dependence that Pearson's correlation misses (zero for x^2 against x) is seen
    assert float(distance_correlation(x, x**2)) > 0.4


def test_recipe_attacks_train_the_protection_the_victim_declared() -> None:
    noise = make_protection(GaussianNoiseSection(kind="gaussian-noise", sigma=1.0))
    k = Knowledge(protections={"V": noise})
    assert victim_protection(k, "V") is noise
    assert victim_protection(k, "W").spec.kind == "dpm"  # undeclared: the published DPM recipe
    assert victim_protection(Knowledge(), "V").spec.kind == "dpm"


# --- every protection through a real inline run ------------------------------------------------


def tiny_protections_scenario() -> dict[str, Any]:
    """The smoke scenario's data and nets, eleven entities each with another protection (two share the
    leader's obfuscator), one refined row, no data owner, an outsider and a holder of the obfuscator."""
    data = yaml.safe_load(SMOKE.read_text())
    data.pop("data_owner")
    data.pop("fedavg")  # not a protection's concern
    data["name"] = "protections-smoke"
    protections = [
        None,
        {"kind": "none"},
        {"kind": "gaussian-noise", "sigma": 1.0},
        {"kind": "gaussian-filter", "size": 3, "then_dpm": True},
        {"kind": "mean-filter", "size": 3},
        {"kind": "gaussian-mechanism", "epsilon": 8},
        {"kind": "shared-obfuscator"},
        {"kind": "shared-obfuscator"},
        {"kind": "test-scale", "factor": 0.5},
        {"kind": "adaptive-dpm", "decoders": 2, "restart_every": 2},
        {"kind": "nopeek", "alpha": 1.0},
    ]
    data["entities"] = [
        {"name": f"E{i + 1}", "fraction": 0.08, **({"protection": p} if p else {})}
        for i, p in enumerate(protections)
    ]
    data["collaboration"] = [{"label": "E1 + E3 GN", "entity": "E1", "data": ["own:features", "poisoned:E3"]}]
    data["adversaries"] = [
        {
            "name": "eve",
            "knowledge": "outsider",
            "victims": ["E3", "E4", "E6", "E7", "E9", "E10", "E11"],
            "attacks": ["shared-reconstructor", {"name": "surrogate-dpm", "options": {"epochs": 1}}],
        },
        {
            "name": "mallory",
            "knowledge": "insider",
            "of": "E8",
            "victims": ["E1", "E7"],
            "attacks": [{"name": "protection-holder", "options": {"epochs": 1}}],
        },
    ]
    return data


@pytest.fixture(scope="module")
def protections_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("protections")
    scenario = where / "protections-smoke.yaml"
    scenario.write_text(yaml.safe_dump(tiny_protections_scenario(), sort_keys=False))
    # the inline engine: the test's own protection lives in this process only
    assert main(["run", str(scenario), "--engine", "inline", "--out", str(where / "runs")]) == 0
    (run_dir,) = (where / "runs").iterdir()
    return run_dir


def test_every_protection_runs_and_writes_finite_table3_records(protections_run: Path) -> None:
    records = read_records(protections_run)
    table3 = records[records["table"] == "table3"]
    labels = set(table3["label"])
    assert labels == {
        "none",
        "DPM",
        "GN (sigma=1)",
        "GF+DPM (size=3, sigma=1)",
        "MF (size=3)",
        "GM (epsilon=8, delta=1e-05)",
        "shared obfuscator",
        "scale x0.5",
        "adaptive DPM (2 decoders)",
        "NoPeek (alpha=1)",
    }
    for label in labels:
        rows = table3[table3["label"] == label]
        assert set(rows["metric"]) == {"top1", "top5", "l1", "ssim"}, label
        assert np.isfinite(rows["value"].to_numpy(float)).all(), label
    # Tables 1-2 stay the DPM's: only E1 (the paper's DPM) writes them
    assert set(records[records["table"] == "table1"]["entity"]) == {"E1"}
    # the protections that change the features change what R reconstructs from them
    protected = table3.set_index(["label", "entity", "metric"])["value"]
    assert protected[("GM (epsilon=8, delta=1e-05)", "E6", "ssim")] != protected[("none", "E6", "ssim")]
    assert protected[("scale x0.5", "E9", "top1")] != protected[("none", "E9", "top1")] or (
        protected[("scale x0.5", "E9", "l1")] != protected[("none", "E9", "l1")]
    )


def test_every_protected_pool_is_attacked_with_finite_scores(protections_run: Path) -> None:
    records = read_records(protections_run)
    scored = records[(records["table"] == "attack") & (records["metric"] == "ssim")]
    seen = {(lab, ent) for lab, ent in zip(scored["label"], scored["entity"], strict=True)}
    for victim in ("E3", "E4", "E6", "E7", "E9", "E10", "E11"):
        for attack in ("shared-reconstructor", "surrogate-dpm"):
            assert (f"eve: {attack} on protected", victim) in seen
    for victim in ("E1", "E7"):
        assert ("mallory: protection-holder on protected", victim) in seen
    assert np.isfinite(scored["value"].to_numpy(float)).all()


def test_the_frontier_keeps_exactly_the_points_nothing_dominates() -> None:
    lost = np.array([0.1, 0.2, 0.2, 0.5, 0.05, 0.3])
    utility = np.array([50.0, 60.0, 55.0, 70.0, 10.0, 60.0])
    # (0.2, 55) loses to (0.2, 60); (0.3, 60) to (0.2, 60); the rest trade privacy for utility
    assert on_frontier(lost, utility).tolist() == [True, True, False, True, True, False]


def test_the_frontier_ranks_by_the_refined_rows_where_every_victim_has_one() -> None:
    fields = ("table", "row", "label", "entity", "metric", "value")

    def rec(*values: Any) -> dict[str, Any]:
        return dict(zip(fields, values, strict=True))

    records = pd.DataFrame(
        [
            rec("table3", None, "GN (sigma=1)", "A", "top1", 40.0),
            rec("table3", None, "DPM", "B", "top1", 60.0),
            rec("attack", None, "eve: shared-reconstructor on protected", "A", "ssim", 0.2),
            rec("attack", None, "eve: shared-reconstructor on protected", "B", "ssim", 0.3),
            rec("table5", 1, "E + A", "E", "top1", 70.0),  # A's pool refines better than B's
            rec("table5", 2, "E + B", "E", "top1", 50.0),
            rec("table5", 3, "E + A, B", "E", "top1", 99.0),  # two pools: nobody's alone
        ]
    )
    records["row"] = records["row"].astype("Int64")
    rows = [["own:features", "poisoned:A"], ["own:features", "poisoned:B"], ["poisoned:A", "poisoned:B"]]
    scenario = {"collaboration": [{"label": f"r{i}", "entity": "E", "data": d} for i, d in enumerate(rows)]}
    points = frontier_points([Run(Path("."), scenario, {}, records)]).set_index("victim")
    assert points["refined"].to_dict() == {"A": 70.0, "B": 50.0}
    assert utility_column(points) == "refined"
    # by Table 3's top-1, B (more utility, more lost) would be on the frontier; by the refined rows it is not
    assert points["on frontier"].to_dict() == {"A": True, "B": False}


def test_the_report_puts_each_protection_on_the_frontier_and_beside_tables_3_and_4(
    protections_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    write_report(load_sweep(protections_run), out)
    points = pd.read_csv(out / "frontier.csv")
    # a point per attacked victim, its utility C's top-1 through its protection (Table 3's)
    assert set(points["victim"]) == {"E1", "E3", "E4", "E6", "E7", "E9", "E10", "E11"}
    records = read_records(protections_run)
    t3 = records[(records["table"] == "table3") & (records["metric"] == "top1")]
    for victim, label, top1 in zip(points["victim"], points["protection"], points["top1"], strict=True):
        assert top1 == pytest.approx(float(t3[(t3.entity == victim) & (t3.label == label)]["value"].iloc[0]))
    # privacy lost: the strongest attack on its protected pool, and every point off the frontier dominated
    attacks = records[(records["table"] == "attack") & (records["metric"] == "ssim")]
    for victim, ssim in zip(points["victim"], points["ssim"], strict=True):
        on_pool = attacks[(attacks.entity == victim) & attacks.label.str.endswith(" on protected")]
        assert ssim == pytest.approx(float(on_pool["value"].max()))
    for _, p in points[~points["on frontier"]].iterrows():
        assert ((points["ssim"] <= p["ssim"]) & (points["top1"] >= p["top1"])).any()
    # the one refined row that pools a single victim's features ("E1 + E3 GN") is E3's refined utility
    t5 = records[(records["table"] == "table5") & (records["metric"] == "top1")]
    refined = points.set_index("victim")["refined"]
    assert refined["E3"] == pytest.approx(float(t5[t5.row == 1]["value"].iloc[0]))
    assert refined.drop("E3").isna().all()  # the others have no such row: Table 3's top-1 ranks them all
    assert (out / "frontier.png").stat().st_size > 0
    # Table 4: the shared obfuscator's holder and the private DPM under the same attack, the paper beside
    table4 = pd.read_csv(out / "table4.csv").set_index("victim")
    assert table4.loc["E7", "protection"] == "shared obfuscator" and table4.loc["E1", "protection"] == "DPM"
    assert np.isfinite(table4.loc[["E1", "E7"], "holder ssim"]).all()
    assert table4.loc["E7", "paper holder ssim"] == pytest.approx(0.8232)
    assert "strongest attack ssim" in pd.read_csv(out / "table3.csv")


def test_the_shared_obfuscator_is_the_leaders_and_each_holder_rebuilds_its_own_protector(
    protections_run: Path,
) -> None:
    run = RunDir(protections_run)
    s = run.scenario()
    nets_states = run.load_nets()
    assert set(nets_states) == {"featurizer", "decider", "reconstructor"}  # F, C, R go to every party
    # the leader sealed its obfuscator to its two holders, and the server relayed only the ciphertext
    sealed = [e for e in run.audit_events() if e["type"] == "sealed" and e["what"] == P.SHARED]
    assert sorted((e["sender"], e["receiver"]) for e in sealed) == [
        (s.leading_entity, "E7"),
        (s.leading_entity, "E8"),
    ]
    assert sorted(p.name for p in (run.root / "relay").glob(f"*.{P.SHARED}.sealed")) == [
        f"E7.{P.SHARED}.sealed",
        f"E8.{P.SHARED}.sealed",
    ]
    for event in run.audit_events():  # in `poison` only its holders get sealed bytes; eve never does
        if "sealed" in event.get("records", {}):
            assert event["receiver"] != "eve", event
            if event["type"] == "train.poison":
                assert event["receiver"] in {"E7", "E8", "server"}, event
    nets = E.load_nets(s.backbone, s.reconstructor, s.dataset.side, 6, nets_states)  # type: ignore[arg-type]
    x = torch.randn(3, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    holders = [P.rebuild(s, n, nets, (run.private_dir(n) / "dpm.pt").read_bytes()) for n in ("E7", "E8")]
    with torch.no_grad():
        assert torch.equal(holders[0](x), holders[1](x))  # both hold the one obfuscator
        own = P.rebuild(s, "E1", nets, (run.private_dir("E1") / "dpm.pt").read_bytes())
        assert not torch.equal(own(x), holders[0](x))  # a private DPM is another module


def test_the_smoke_scenarios_cheap_protections_run_through_flower_and_are_attacked(smoke_run: Path) -> None:
    """The smoke run (the real Flower/Ray simulation; test_structure checks the inline engine gives the
    same records) protects three entities without training: each has its Table 3 row, finite, and its
    protected pool was attacked with finite scores."""
    records = read_records(smoke_run)
    table3 = records[records["table"] == "table3"]
    protected = {
        "GN": "GN (sigma=1)",
        "MF": "MF (size=3)",
        "GM": next(label for label in table3["label"] if str(label).startswith("GM (epsilon=8")),
    }
    for entity, label in protected.items():
        rows = table3[(table3["entity"] == entity) & (table3["label"] == label)]
        assert set(rows["metric"]) >= {"top1", "ssim"}, entity
        assert np.isfinite(rows["value"].to_numpy(float)).all(), entity
    attacked = records[(records["table"] == "attack") & (records["metric"] == "ssim")]
    for entity in ("GN", "GM"):  # eve's victims among them
        values = attacked[attacked["entity"] == entity]["value"].to_numpy(float)
        assert len(values) and np.isfinite(values).all(), entity


@pytest.mark.slow
def test_every_library_protection_runs_through_the_flower_engine(tmp_path: Path) -> None:
    """The same scenario through the real Flower/Ray simulation, less the test's own protection (a Ray
    node does not import this module): the leader's shared part travels in messages like F, C, R."""
    data = tiny_protections_scenario()
    data["entities"] = [
        e for e in data["entities"] if (e.get("protection") or {}).get("kind") != "test-scale"
    ]
    data["adversaries"][0]["victims"] = ["E3", "E7", "E10", "E11"]
    scenario = tmp_path / "protections-flower.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(scenario), "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = read_records(run_dir)
    table3 = records[records["table"] == "table3"]
    assert len(set(table3["label"])) == 9  # none and the eight library protections declared
    assert np.isfinite(table3["value"].to_numpy(float)).all()
