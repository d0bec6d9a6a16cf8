"""The attacks of entities.attacks and the referee's scores, on a toy world (no simulation)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from entities.attacks import (
    Attack,
    AttackResult,
    Knowledge,
    MissingKnowledge,
    Pooled,
    UnknownAttack,
    attack_names,
    describe,
    get_attack,
    make_attack,
    require,
)
from entities.attacks.scoring import score_images, score_result
from entities.attacks.toy import World, build_world
from entities.grids import save_grid
from entities.rows import Rows

POOL_ATTACKS = {
    "shared-reconstructor",
    "reconstructor-family",
    "surrogate-dpm",
    "surrogate-dpm-insider",
    "protection-holder",
    "feature-alignment",
    "known-pairs",
}
CODE_ATTACKS = {
    "decode-as-published",
    "random-guess",
    "magnitude",
    "usage-prior",
    "support-detector",
    "support-detector-curious",
}
# cheap options for the "every attack runs" tests
CHEAP: dict[str, dict[str, Any]] = {
    "reconstructor-family": {"variants": ["paper R", "residual", "x4 upscale"], "epochs": 1, "min_steps": 8},
    "surrogate-dpm": {"epochs": 2, "min_steps": 20, "surrogates": 2},
    "surrogate-dpm-insider": {"epochs": 2, "min_steps": 20},
    "protection-holder": {"epochs": 2, "min_steps": 20},
    "feature-alignment": {"steps": 8, "decoder_epochs": 1},
    "known-pairs": {"ns": [4, 16], "epochs": 2, "min_steps": 10},
    "support-detector": {"steps": 100},
    "support-detector-curious": {"steps": 100},
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------- registry and knowledge (no training)


def test_registry_lists_every_attack_and_refuses_an_unknown_name() -> None:
    assert set(attack_names("pool")) == POOL_ATTACKS
    assert set(attack_names("codes")) == CODE_ATTACKS
    described = {d["name"]: d for d in describe()}
    assert set(described) == POOL_ATTACKS | CODE_ATTACKS
    assert all(d["summary"] and d["needs"] for d in described.values())
    assert "known_pairs" in described["known-pairs"]["needs"]
    with pytest.raises(UnknownAttack) as refused:
        get_attack("gradient-inversion")
    assert "gradient-inversion" in str(refused.value)
    assert all(name in str(refused.value) for name in POOL_ATTACKS | CODE_ATTACKS)


def test_require_names_the_missing_knowledge() -> None:
    with pytest.raises(MissingKnowledge, match=r"Knowledge\.pool"):
        require(Knowledge(), {"pool"})
    nets = Knowledge(pool={}, featurizer=torch.nn.Identity(), decider=torch.nn.Identity())
    with pytest.raises(MissingKnowledge, match=r"'shared_nets'.*Knowledge\.reconstructor"):
        require(nets, {"pool", "shared_nets"})
    with pytest.raises(ValueError, match="vocabulary"):
        require(Knowledge(), {"telepathy"})
    # an attack refuses to run without what it needs: a support detector that cannot see the codes
    with pytest.raises(MissingKnowledge, match=r"Knowledge\.codes"):
        make_attack("support-detector").run(
            Knowledge(public_images=np.zeros((2, 3, 8, 8), np.uint8)), "owner"
        )


def test_an_attack_sees_only_the_knowledge_it_needs() -> None:
    seen: dict[str, bool] = {}

    class Spy(Attack):
        target = "pool"
        needs = frozenset({"pool", "public_images"})
        summary = "looks at everything"

        def attack(self, knowledge: Knowledge, victim: str) -> AttackResult:
            seen.update(
                {f.name: getattr(knowledge, f.name) is not None for f in dataclasses.fields(knowledge)}
            )
            return AttackResult(images=torch.zeros(1, 3, 4, 4))

    everything = Knowledge(
        pool={"E1": Pooled(Rows([torch.zeros(1, 2, 2, 2)]), torch.zeros(1, dtype=torch.long))},
        featurizer=torch.nn.Identity(),
        decider=torch.nn.Identity(),
        reconstructor=torch.nn.Identity(),
        public_images=np.zeros((2, 3, 4, 4), np.uint8),
        public_labels=np.zeros(2, np.int64),
        own_images=np.zeros((2, 3, 4, 4), np.uint8),
        own_dpm=torch.nn.Identity(),
        codes=torch.ones(1, 2, 4),
        k=1,
    )
    Spy().run(everything, "E1")
    visible = {name for name, present in seen.items() if present}
    assert visible == {"pool", "public_images", "public_labels"}
    with pytest.raises(KeyError, match="E9"):
        Spy().run(everything, "E9")


def test_the_referee_tells_a_perfect_reconstruction_from_noise(tmp_path: Any) -> None:
    truth = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    truth = torch.nn.functional.avg_pool2d(truth, 3, 1, 1)  # some structure for SSIM
    perfect = score_images(truth, truth)
    noise = score_images(torch.rand(12, 3, 16, 16), truth)
    assert perfect["ssim"] > 0.99 and perfect["reid_rank1"] == 1.0 and perfect["l1"] == 0.0
    assert noise["ssim"] < 0.2 and noise["psnr"] < perfect["psnr"]
    assert perfect["reid_chance"] == pytest.approx(1 / 12)
    path = save_grid(tmp_path / "grid.png", truth, truth.flip(-1), n=5)
    with Image.open(path) as image:
        assert image.size == (5 * 18, 2 * 18)
        plain = np.asarray(image)
    # any number of rows, each with a label in a white column on the left
    path = save_grid(tmp_path / "rows.png", truth, truth.flip(-1), 1 - truth, n=5, labels=("x", "y", "z"))
    with Image.open(path) as image:
        pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    assert height == 3 * 18 and width > 5 * 18
    assert (pixels[: 2 * 18, width - 5 * 18 :] == plain).all()  # the same images, right of the labels
    assert (pixels[:, : width - 5 * 18] < 100).any()  # the labels: dark text


# ---------------------------------------------------------------- the toy world


@pytest.fixture(scope="module")
def pool_world() -> World:
    torch.set_num_threads(1)
    return build_world(train_per_class=30, victims=1, codes=False)


@pytest.fixture(scope="module")
def codes_world() -> World:
    torch.set_num_threads(1)
    return build_world(train_per_class=30, pool=False)


def _score(world: World, result: AttackResult, victim: str = "E1") -> dict[str, float]:
    v, nets = world.victims[victim], world.nets
    assert nets is not None
    return score_result(result, v.images, labels=v.labels, featurizer=nets.featurizer, decider=nets.decider)


def test_scoring_tells_a_working_attack_from_a_failed_one(pool_world: World) -> None:
    """On one victim: R on unprotected features and a decoder from known pairs score clearly above R on
    the DPM's poisoned features."""
    protected = _score(pool_world, make_attack("shared-reconstructor").run(pool_world.knowledge(), "E1"))
    unprotected = _score(
        pool_world, make_attack("shared-reconstructor").run(pool_world.knowledge(protected=False), "E1")
    )
    pairs = make_attack("known-pairs", ns=[10, 90], epochs=5, min_steps=150)
    known = _score(pool_world, pairs.run(pool_world.knowledge(known_pairs=90), "E1"))
    print(f"\nSSIM: R protected {protected['ssim']:.3f}, R unprotected {unprotected['ssim']:.3f}, ")
    print(f"known pairs N=10 {known['N=10/ssim']:.3f}, N=90 {known['ssim']:.3f} (scored on the other images)")
    assert unprotected["ssim"] > protected["ssim"] + 0.15
    assert known["ssim"] > protected["ssim"] + 0.15
    assert known["known_left_out"] == 90 and known["n"] == len(pool_world.victims["E1"].images) - 90
    assert known["N=90/ssim"] > known["N=10/ssim"]


def _finite(scores: dict[str, float]) -> bool:
    return bool(scores) and all(math.isfinite(v) for v in scores.values())


@pytest.mark.parametrize("name", sorted(POOL_ATTACKS))
def test_every_pool_attack_returns_finite_scores(pool_world: World, name: str) -> None:
    # a cheaper published recipe, so that the surrogates train in seconds
    s = pool_world.scenario
    cheap_dpm = SimpleNamespace(**{**vars(s.dpm), "epochs": 1, "min_steps": 8})
    attack = make_attack(name, **CHEAP.get(name, {}))
    for protected in (True, False):
        knowledge = pool_world.knowledge(protected=protected, known_pairs=16, own="E1")
        knowledge.dpm_recipe = cheap_dpm
        result = attack.run(knowledge, "E1")
        scores = _score(pool_world, result)
        assert _finite(scores), scores
        assert result.images is not None and result.images.shape == pool_world.victims["E1"].images.shape
        assert all(math.isfinite(v) for v in result.records.values()), result.records
    if name == "reconstructor-family":
        assert set(result.variants) == {"paper R", "residual", "x4 upscale"}
        assert {"paper R/ssim", "residual/ssim", "x4 upscale/ssim"} <= set(scores)


def test_every_code_attack_returns_finite_scores(codes_world: World) -> None:
    knowledge = codes_world.knowledge()
    knowledge.own_keys = codes_world.own_keys(10)
    truth = codes_world.codes_truth
    assert truth is not None
    images = torch.as_tensor(codes_world.data.task_test.images).float() / 255
    s = codes_world.scenario
    for name in sorted(CODE_ATTACKS):
        result = make_attack(name, **CHEAP.get(name, {})).run(knowledge, "owner")
        scores = score_result(result, images, truth_support=truth != 0)
        assert _finite(scores), (name, scores)
        assert result.support is not None
        per_map = result.support.sum(-1)
        assert bool((per_map == (s.k_prime if name == "decode-as-published" else s.k)).all()), name
    published = make_attack("decode-as-published").run(knowledge, "owner")
    assert score_result(published, truth_support=truth != 0)["support_recovery"] == 1.0


def test_support_detector_beats_random_guess_on_ctg_codes(codes_world: World) -> None:
    knowledge = codes_world.knowledge()
    truth = codes_world.codes_truth
    assert truth is not None and codes_world.sampler == "ctg"
    n_keys = 20
    knowledge.own_keys = codes_world.own_keys(n_keys)
    others = torch.arange(n_keys, len(truth))  # the curious user attacks the images granted to others

    def recovery(name: str, **options: Any) -> float:
        result = make_attack(name, **options).run(knowledge, "owner")
        return score_result(result, truth_support=truth != 0, only=others)["support_recovery"]

    guess = recovery("random-guess")
    detector = recovery("support-detector")
    curious = recovery("support-detector-curious")
    usage = recovery("usage-prior")
    print(f"\nsupport recovery: random {guess:.3f}, usage prior {usage:.3f}, ")
    print(f"detector {detector:.3f}, curious detector {curious:.3f}")
    assert guess == pytest.approx(0.5, abs=0.05)  # k of k' = 2k at random
    assert detector > guess + 0.05


@pytest.mark.slow
def test_surrogate_dpm_beats_the_papers_test(pool_world: World) -> None:
    """The adaptive attacker, at the published recipe, against the paper's own test (minutes)."""
    knowledge = pool_world.knowledge()
    paper = _score(pool_world, make_attack("shared-reconstructor").run(knowledge, "E1"))
    surrogate = _score(pool_world, make_attack("surrogate-dpm").run(knowledge, "E1"))
    print(f"\nSSIM on protected features: R {paper['ssim']:.3f}, surrogate-dpm {surrogate['ssim']:.3f}")
    assert surrogate["ssim"] > paper["ssim"] + 0.15


@pytest.mark.parametrize("side", [32, 9])  # an 11-pixel window, and the 7-pixel one small images get
def test_ssim_against_a_filtered_gallery_is_ssim_bit_for_bit(side: int) -> None:
    """Re-identification compares each reconstruction with a gallery: the gallery's own statistics,
    filtered once for all images, give exactly the numbers of SSIM on each pair."""
    from entities.metrics import Filtered, ssim, ssim_with

    generator = torch.Generator().manual_seed(0)
    gallery = torch.rand(300, 3, side, side, generator=generator)
    filtered = Filtered.of(gallery)
    for i in range(5):
        x = torch.rand(1, 3, side, side, generator=generator)
        index = torch.randperm(300, generator=generator)[:100]
        expected = ssim(x.expand(100, -1, -1, -1), gallery[index])
        assert torch.equal(ssim_with(x, filtered[index]), expected), i
    both = Filtered.cat([filtered[:1], filtered[torch.tensor([5, 7])]])
    assert torch.equal(both.images, gallery[[0, 5, 7]])
