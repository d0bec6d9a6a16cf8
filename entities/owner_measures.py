"""What the data owner measures of its codes: quality for authorised users and for guessers, JPEG at a
matched measured rate, key and public sizes, whether fakes can be told from true values, and the
rate-distortion curve. The owner holds the originals and every key, so it can score all of these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from entities import sparse
from entities.codecs import jpeg, jpeg_at_rate, measure
from entities.data import to_float
from entities.data_owner import Codes, decode, encode
from entities.grids import IMAGES

VALUE_BITS = 8  # the width of a non-zero value in the quantised rate
PAPER = {"maps": 20, "code_length": 512, "k": 128, "k_prime": 256, "pixels": 3 * 128 * 128}

Record = dict[str, Any]  # {"table", "label", "metric", "value"}; the caller adds the party


@dataclass
class Measured:
    records: list[Record]
    shown: dict[str, torch.Tensor]  # the codes grid: row label -> the first test images as that row shows


def quantise_values(codes: torch.Tensor, scale: torch.Tensor, bits: int = VALUE_BITS) -> torch.Tensor:
    """Non-zero values rounded to a uniform grid of 2^bits levels on [-scale_l, scale_l] per map (scale:
    the largest training magnitude of each map, part of the public model); zeros stay zero."""
    step = (2 * scale / (2**bits - 1)).to(codes.dtype)[None, :, None]
    q = torch.round(codes / step).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * step
    return torch.where(codes != 0, q, torch.zeros_like(codes))


def usage_prior_attack(ambiguated: torch.Tensor, usage: torch.Tensor, k: int) -> torch.Tensor:
    """Guess each map's support as the k of its k' non-zeros at the positions the public network uses most.

    usage (L, m): how often each position is in the support when the attacker encodes images of its own
    (public ones) with the public network. Fakes go to uniformly random zero positions, but a trained
    network does not use its positions uniformly, so the true support hides less well than the guessing
    cost C(k', k)^L suggests. The paper does not consider this attack.
    """
    score = usage.to(ambiguated.device)[None].expand_as(ambiguated).masked_fill(ambiguated == 0, -1.0)
    index = score.topk(k, dim=-1).indices
    return torch.zeros_like(ambiguated, dtype=torch.bool).scatter(-1, index, True)


def _quality(
    label: str, x: torch.Tensor, y: torch.Tensor, table: str = "ambiguation", **extra: float
) -> list[Record]:
    values = {**{k: v for k, v in measure(x, y).items() if k != "n"}, **extra}
    return [{"table": table, "label": label, "metric": m, "value": float(v)} for m, v in values.items()]


def _sizes(
    label: str, *, maps: int, m: int, k: int, k_prime: int, pixels: int, **extra: float
) -> list[Record]:
    exact, h2 = sparse.key_bits_exact(maps, m, k), sparse.key_bits_h2(maps, m, k)
    public = sparse.public_bits(maps, m, k_prime)
    values = {
        "key_bits_exact": exact,
        "key_bits_h2": h2,
        "key_kb_exact": exact / 8 / 1024,
        "key_kb_h2": h2 / 8 / 1024,
        "public_bits": public,
        "public_kb": public / 8 / 1024,
        "guessing_bits": sparse.guessing_bits(maps, k_prime, k),
        "rate_paper": sparse.rate_bpp_paper(maps, m, k, pixels),
        "rate_quantised8": sparse.rate_bpp_quantised(maps, m, k, pixels, VALUE_BITS),
        "values_per_image": float(pixels),
        **extra,
    }
    return [{"table": "sizes", "label": label, "metric": n, "value": float(v)} for n, v in values.items()]


def _jpeg_records(label: str, x: torch.Tensor, out: dict[str, Any], target_bpv: float) -> list[Record]:
    return _quality(
        label,
        x,
        out["images"],
        quality=out["quality"],
        rate_bpp=out["bpp"],
        rate_bpv=out["bpv"],
        payload_bpp=out["payload_bpp"],
        payload_bpv=out["payload_bpp"] / 3,
        target_bpv=target_bpv,
        met=float(out["met"]),
    )


def measure_owner(owner: Any, made: Codes, *, seed: int) -> Measured:
    """Every measurement of the owner's codes, as flat records, and the first test images as authorised
    users, the codes as published, a random guess of the supports and JPEG at the matched rate show them."""
    ae, k, k_small, k_prime = owner.autoencoder, owner.k, owner.k_small, owner.k_prime
    maps, m = ae.maps, ae.code_length
    data, model, codes, train_codes, truth = made.data, made.model, made.codes, made.train_codes, made.truth
    x_train, x_test = to_float(data.task_train.images), to_float(data.task_test.images)
    n_test, pixels = len(x_test), int(np.prod(x_test.shape[1:]))
    public = made.published
    ambiguated = public[owner.sampler]
    t_train, t_codes = made.train_s, made.codes_s
    t2 = time.monotonic()
    records: list[Record] = []
    rate = sparse.rate_bpp_paper(maps, m, k, pixels)
    rate_q8 = sparse.rate_bpp_quantised(maps, m, k, pixels, VALUE_BITS)
    mask = torch.from_numpy(truth)
    authorised = decode(model, ambiguated * mask)
    shown = {"original": x_test[:IMAGES], f"authorised k={k}": authorised[:IMAGES]}  # for the codes grid
    records += _quality(f"authorised k={k}", x_test, authorised, rate_bpv=rate, rate_bpv_q8=rate_q8, k=k)
    scale = train_codes.abs().amax(dim=(0, 2))
    quantised = decode(model, quantise_values(ambiguated * mask, scale))
    records += _quality(
        f"authorised k={k}, {VALUE_BITS}-bit values", x_test, quantised, rate_bpv=rate_q8, k=k
    )
    small = decode(model, encode(model, x_test, k_small))
    records += _quality(
        f"authorised k_small={k_small}",
        x_test,
        small,
        k=k_small,
        rate_bpv=sparse.rate_bpp_paper(maps, m, k_small, pixels),
        rate_bpv_q8=sparse.rate_bpp_quantised(maps, m, k_small, pixels, VALUE_BITS),
    )
    as_published = decode(model, ambiguated)
    shown[f"ambiguated k'={k_prime}"] = as_published[:IMAGES].clone()  # a slice would keep the whole batch
    records += _quality("ambiguated as is", x_test, as_published, k=k_prime)
    # An attacker with the public network and public images of its own (D_q) estimates position usage.
    usage = sparse.supports(encode(model, to_float(data.public_train.images), k)).float().mean(0)
    attacks = (
        ("random guess", sparse.random_guess(ambiguated, k, torch.Generator().manual_seed(seed + 2))),
        ("magnitude attack", sparse.magnitude_attack(ambiguated, k)),
        ("usage-prior attack", usage_prior_attack(ambiguated, usage, k)),
    )
    for name, support in attacks:
        decoded = decode(model, ambiguated * support)
        if name == "random guess":
            shown[name] = decoded[:IMAGES].clone()
        records += _quality(
            name, x_test, decoded, support_recovery=sparse.support_recovery(support, mask), k=k
        )
    for name, target in (("paper rate", rate), (f"{VALUE_BITS}-bit rate", rate_q8)):
        matched = jpeg_at_rate(x_test, target)
        records += _jpeg_records(f"jpeg at {name}, whole file", x_test, matched, target)
        if target == rate:  # the authorised decode's rate, JPEG's whole file counted
            over = "" if matched["met"] else " (over rate)"
            shown[f"JPEG q={matched['quality']}{over}"] = matched["images"][:IMAGES].clone()
        records += _jpeg_records(
            f"jpeg at {name}, payload only", x_test, jpeg_at_rate(x_test, target, count="payload"), target
        )

    # Can the fakes be told from the true values by their law? (KS on the published test codes)
    for sampler, amb in public.items():
        fake = (amb != 0) & ~mask
        stat, p = sparse.two_sample_test(amb[fake].abs().numpy(), codes[mask].abs().numpy())
        recovery = sparse.support_recovery(sparse.magnitude_attack(amb, k), mask)
        for metric, value in (
            ("ks_statistic", stat),
            ("ks_pvalue", p),
            ("magnitude_attack_recovery", recovery),
            ("published", float(sampler == owner.sampler)),
        ):
            records.append(
                {"table": "ambiguation_test", "label": sampler, "metric": metric, "value": float(value)}
            )

    key_file_bytes = len(sparse.pack_key(truth[0]))
    records += _sizes(
        f"this run (L={maps}, m={m}, k={k}, k'={k_prime})",
        maps=maps,
        m=m,
        k=k,
        k_prime=k_prime,
        pixels=pixels,
        key_file_bytes=key_file_bytes,
    )
    records += _sizes(
        "paper (L={maps}, m={code_length}, k={k}, k'={k_prime})".format(**PAPER),
        maps=PAPER["maps"],
        m=PAPER["code_length"],
        k=PAPER["k"],
        k_prime=PAPER["k_prime"],
        pixels=PAPER["pixels"],
    )

    # The rate-distortion curve: the codes at each k of the sweep, JPEG at each quality.
    for k_ in owner.sweep_k:
        records += _quality(
            f"codes k={k_}",
            x_test,
            decode(model, encode(model, x_test, k_)),
            table="rd_curve",
            k=k_,
            rate_bpv=sparse.rate_bpp_paper(maps, m, k_, pixels),
            rate_bpv_q8=sparse.rate_bpp_quantised(maps, m, k_, pixels, VALUE_BITS),
        )
    for q in owner.jpeg_qualities:
        out = jpeg(x_test, q)
        records += _quality(
            f"jpeg q={q}",
            x_test,
            out["images"],
            table="rd_curve",
            quality=q,
            rate_bpp=out["bpp"],
            rate_bpv=out["bpv"],
            payload_bpv=out["payload_bpp"] / 3,
        )

    with torch.no_grad():
        bce = float(torch.nn.functional.binary_cross_entropy(authorised.clamp(1e-6, 1 - 1e-6), x_test))
    for metric, value in (
        ("n_train", len(x_train)),
        ("n_test", n_test),
        ("test_bce", bce),
        ("train_s", t_train),
        ("codes_s", t_codes),
        ("measure_s", time.monotonic() - t2),
    ):
        records.append(
            {"table": "data_owner", "label": "autoencoder", "metric": metric, "value": float(value)}
        )
    return Measured(records, shown)
