"""Every attack of entities.attacks once, on the toy world, protected and unprotected side by side.

    .venv/bin/python bench/attacks.py                 # ~10-20 min on a busy 2-core machine
    .venv/bin/python bench/attacks.py --quick         # fewer epochs and steps, a few minutes
    .venv/bin/python bench/attacks.py --out DIR       # also write the PNG grids there

The toy world (entities.attacks.toy): the built-in photos at 32 px, F+C (ResNet-18 split at conv2_x)
pre-trained on the task set, R on the public set D_q, one DPM per victim entity (distillation objective,
lambda 1), and a small sparsifying autoencoder whose ambiguated test codes (ctg sampler) are published.
Pool attacks run against each victim's poisoned features ("protected") and its original features
("unprotected"); the referee scores them against the victim's true images. Known pairs are the first 60
of a victim's images, left out of its scores. Code attacks are scored on all published images except
the curious user's own 20.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from entities.attacks import AttackResult, attack_names, make_attack  # noqa: E402
from entities.attacks.scoring import score_result  # noqa: E402
from entities.attacks.toy import World, build_world  # noqa: E402
from entities.grids import save_grid  # noqa: E402

KNOWN_PAIRS = 60
OWN_KEYS = 20


def options(quick: bool) -> dict[str, dict[str, Any]]:
    if quick:
        return {
            "reconstructor-family": {"epochs": 5, "min_steps": 150},
            "surrogate-dpm": {"epochs": 5, "min_steps": 150},
            "surrogate-dpm-insider": {"epochs": 5, "min_steps": 150},
            "feature-alignment": {"steps": 100, "decoder_epochs": 10},
            "known-pairs": {"ns": [10, 30, KNOWN_PAIRS], "epochs": 5, "min_steps": 150},
            "support-detector": {"steps": 300},
            "support-detector-curious": {"steps": 300},
        }
    return {
        "known-pairs": {"ns": [10, 30, KNOWN_PAIRS], "min_steps": 300},
    }


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def pool_rows(world: World, opts: dict[str, dict[str, Any]], out: Path | None) -> list[dict[str, Any]]:
    print("\nattacks on the pool")
    rows = []
    nets = world.nets
    assert nets is not None
    for name in attack_names("pool"):
        # one instance for every view and victim: decoders that depend only on the attacker's knowledge
        # (public images, F, the recipes) are trained once
        attack = make_attack(name, **opts.get(name, {}))
        for protected in (True, False):
            for victim, v in world.victims.items():
                own = next(n for n in world.victims if n != victim)  # the insider is the other entity
                knowledge = world.knowledge(protected=protected, known_pairs=KNOWN_PAIRS, own=own)
                t = time.monotonic()
                result = attack.run(knowledge, victim)
                seconds = time.monotonic() - t
                scores = score_result(
                    result, v.images, labels=v.labels, featurizer=nets.featurizer, decider=nets.decider
                )
                features = "protected" if protected else "unprotected"
                rows.append({"attack": name, "victim": victim, "features": features, "s": seconds, **scores})
                for variant in result.variants:
                    rows.append(
                        {
                            "attack": f"  {name} [{variant}]",
                            "victim": victim,
                            "features": features,
                            "s": float("nan"),
                            **{
                                m[len(variant) + 1 :]: x
                                for m, x in scores.items()
                                if m.startswith(variant + "/")
                            },
                        }
                    )
                if out is not None and result.images is not None:
                    save_grid(out / f"{name}--{victim}--{features}.png", v.images, result.images)
                print(
                    f"  {name:24s} {victim} {features:11s} SSIM {fmt(scores['ssim'])}  {seconds:.0f} s",
                    flush=True,
                )
    return rows


def code_rows(world: World, opts: dict[str, dict[str, Any]], out: Path | None) -> list[dict[str, Any]]:
    truth = world.codes_truth
    assert truth is not None
    knowledge = world.knowledge()
    knowledge.own_keys = world.own_keys(OWN_KEYS)
    others = torch.arange(OWN_KEYS, len(truth))
    images = torch.as_tensor(world.data.task_test.images).float() / 255
    rows = []
    for name in attack_names("codes"):
        t = time.monotonic()
        result = make_attack(name, **opts.get(name, {})).run(knowledge, "owner")
        seconds = time.monotonic() - t
        scores = score_result(result, images, truth_support=truth != 0, only=others)
        rows.append({"attack": name, "s": seconds, **scores})
        for variant in result.variants:
            rows.append(
                {
                    "attack": f"  {name} [{variant}]",
                    "s": float("nan"),
                    **{m[len(variant) + 1 :]: x for m, x in scores.items() if m.startswith(variant + "/")},
                }
            )
        if out is not None and result.images is not None:
            save_grid(out / f"{name}--owner.png", images[others], result.images[others])
    # what the key gives an authorised user: the reference
    model = world.autoencoder
    assert model is not None and world.codes is not None
    with torch.no_grad():
        keyed = model.decode(world.codes * (truth != 0)).clamp(0, 1)
    rows.append({"attack": "(the key itself)", "s": 0.0, **score_result_images(keyed, images, others)})
    return rows


def score_result_images(images: torch.Tensor, truth: torch.Tensor, only: torch.Tensor) -> dict[str, float]:
    return score_result(AttackResult(images=images), truth, only=only)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer epochs and steps")
    parser.add_argument("--out", type=Path, default=None, help="write PNG grids here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampler", choices=["ctg", "empirical"], default="ctg", help="the published sampler"
    )
    parser.add_argument("--codes-only", action="store_true", help="skip the pool (no F, C, R, DPMs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    world = build_world(seed=args.seed, sampler=args.sampler, pool=not args.codes_only)
    print(
        f"toy world built in {time.monotonic() - t0:.0f} s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in world.timings.items())
    )
    opts = options(args.quick)

    rows = [] if args.codes_only else pool_rows(world, opts, args.out)
    if rows:
        print(
            f"\n{'attack':44s} {'victim':6s} {'features':11s} {'SSIM':>6s} {'PSNR':>6s} {'L1':>6s} "
            f"{'ident%':>6s} {'reid':>6s} {'s':>5s}"
        )
        for r in rows:
            print(
                f"{r['attack']:44s} {r['victim']:6s} {r['features']:11s} {fmt(r.get('ssim')):>6s} "
                f"{fmt(r.get('psnr'), 2):>6s} {fmt(r.get('l1')):>6s} "
                f"{fmt(r.get('identification_top1'), 1):>6s} {fmt(r.get('reid_rank1'), 2):>6s} "
                f"{fmt(r.get('s'), 0):>5s}"
            )
        chance = {r["victim"]: r.get("reid_chance") for r in rows if "reid_chance" in r}
        print("reid chance: " + ", ".join(f"{v} {fmt(c, 3)}" for v, c in chance.items()))

    print(
        f"\nattacks on the ambiguated codes (sampler {world.sampler}; "
        f"scored on {len(world.data.task_test)} - {OWN_KEYS} images)"
    )
    crow = code_rows(world, opts, args.out)
    print(f"{'attack':44s} {'recovery':>8s} {'SSIM':>6s} {'PSNR':>6s} {'s':>5s}")
    for r in crow:
        print(
            f"{r['attack']:44s} {fmt(r.get('support_recovery')):>8s} {fmt(r.get('ssim')):>6s} "
            f"{fmt(r.get('psnr'), 2):>6s} {fmt(r.get('s'), 0):>5s}"
        )
    print(f"\ntotal {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
