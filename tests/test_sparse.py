"""Sparse codes with ambiguation and the classical codecs: real code on tiny models and real patches."""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from entities import sparse
from entities.codecs import jpeg, jpeg_at_rate, jpeg_header_bytes, measure, psnr
from entities.data import to_float
from entities.datasets.photos import build_photos
from entities.sparse import KeyFormatError, SparsifyingAutoencoder

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "image_size": 32,
    "maps": 4,
    "code_length": 64,
    "k": 16,
    "widths": [8, 8, 8, 4],
    "strides": [1, 2, 1, 2],
}


@dataclass
class Recipe:
    epochs: int = 8
    lr: float = 0.005
    batch_size: int = 20
    weight_decay: float = 0.0
    optimizer: str = "adam"
    min_steps: int = 0


@pytest.fixture(scope="module")
def photos() -> tuple[torch.Tensor, torch.Tensor]:
    td = build_photos(
        patch=32, task_classes=5, public_classes=1, train_per_class=20, test_per_class=5, seed=0
    )
    return to_float(td.task_train.images), to_float(td.task_test.images)


def _bce(model: SparsifyingAutoencoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(model.eval().logits(x), x))


@pytest.fixture(scope="module")
def trained(photos: tuple[torch.Tensor, torch.Tensor]) -> tuple[SparsifyingAutoencoder, float, float]:
    """A tiny autoencoder trained for 40 steps on 100 real patches; its BCE before and after."""
    train, _ = photos
    torch.manual_seed(0)
    model = SparsifyingAutoencoder(**TINY)
    before = _bce(model, train)
    sparse.train_autoencoder(model, train, Recipe(), seed=0)
    model.cpu()  # trained on CUDA where there is one; the tests run on the CPU
    return model, before, _bce(model, train)


@pytest.fixture(scope="module")
def trained_codes(trained: tuple, photos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return trained[0].encode(torch.cat(photos))


def _gaussian_codes(n: int, maps: int, m: int, k: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sparse.k_sparse(scale * torch.randn(n, maps, m, generator=g), k)


# ---------------------------------------------------------------- k-sparse operator and the net


def test_k_sparse_keeps_the_k_largest_magnitudes_with_their_signs() -> None:
    z = torch.randn(5, 3, 50, requires_grad=True)
    out = sparse.k_sparse(z, 7)
    assert ((out != 0).sum(-1) == 7).all()
    top = z.detach().abs().topk(7, dim=-1).indices
    mask = torch.zeros_like(out, dtype=torch.bool).scatter(-1, top, True)
    assert torch.equal(out != 0, mask)
    assert torch.equal(out.detach()[mask], z.detach()[mask])  # same values, signs included
    out.sum().backward()
    assert z.grad is not None and torch.equal(z.grad, mask.float())  # gradient through the kept entries only
    for bad in (0, 51):
        with pytest.raises(ValueError, match=rf"k={bad}, m=50"):
            sparse.k_sparse(z, bad)


def test_autoencoder_shapes_and_evaluation_k() -> None:
    torch.manual_seed(1)
    model = SparsifyingAutoencoder(**TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (2, 4, 64)
        assert ((codes != 0).sum(-1) == 16).all()
        out = model.decode(codes)
        assert out.shape == (2, 3, 32, 32)
        assert out.min() >= 0 and out.max() <= 1
        assert model.logits(x).shape == (2, 3, 32, 32)
        assert torch.allclose(model(x), out)
        fewer = model.encode(x, k=8)  # evaluated at another k than trained with
        assert ((fewer != 0).sum(-1) == 8).all()
        assert model(x, k=8).shape == (2, 3, 32, 32)
        # the grouped linear block: map 1's matrix feeds code map 1 only
        dense = model.code_maps(x)
        model.weight.data[1] *= 2
        changed = (model.code_maps(x) != dense).flatten(2).any(-1).any(0)
        assert changed.tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="divisible"):
        SparsifyingAutoencoder(**{**TINY, "image_size": 30})
    with pytest.raises(ValueError, match="k=65, m=64"):
        SparsifyingAutoencoder(**{**TINY, "k": 65})
    with pytest.raises(ValueError, match="k=65, m=64"):
        model.encode(x, k=65)


def test_training_reduces_the_loss(trained: tuple[SparsifyingAutoencoder, float, float]) -> None:
    _, before, after = trained
    print(f"BCE before {before:.4f}, after 40 steps {after:.4f}")
    assert after < before - 0.05


# ---------------------------------------------------------------- ambiguation


@pytest.mark.parametrize("sampler", ["ctg", "empirical"])
def test_ambiguate_adds_fakes_only_at_zero_positions(sampler: Literal["ctg", "empirical"]) -> None:
    codes = _gaussian_codes(50, 3, 64, 16)
    lam, sigma = sparse.ambiguation_stats(codes, 16)
    amb = sparse.ambiguate(codes, 40, sampler=sampler, lam=lam, sigma=sigma, generator=torch.Generator())
    assert ((amb != 0).sum(-1) == 40).all()
    true = codes != 0
    assert torch.equal(amb[true], codes[true])  # the true non-zeros untouched
    fake = (amb != 0) & ~true
    assert int(fake.sum()) == 50 * 3 * 24
    if sampler == "ctg":
        assert (amb.abs() >= lam[None, :, None]).masked_select(fake).all()
    else:  # every fake magnitude is a true magnitude of the same map
        for j in range(3):
            pool = set(codes[:, j].abs()[true[:, j]].tolist())
            assert set(amb[:, j].abs()[fake[:, j]].tolist()) <= pool
    assert torch.equal(sparse.ambiguate(codes, 16, sampler=sampler, lam=lam, sigma=sigma), codes)


def test_ctg_sampler_is_the_complementary_truncated_gaussian() -> None:
    # on k-sparse Gaussian codes, sigma recovers the Gaussian's scale
    codes = _gaussian_codes(400, 2, 64, 16, scale=2.0)
    lam, sigma = sparse.ambiguation_stats(codes, 16)
    assert torch.allclose(sigma, torch.full((2,), 2.0), rtol=0.1), sigma
    g = torch.Generator().manual_seed(3)
    amb = sparse.ambiguate(codes, 48, sampler="ctg", lam=lam, sigma=sigma, generator=g)
    fake = (amb != 0) & (codes == 0)
    for j in range(2):
        v = amb[:, j][fake[:, j]].double()
        a = float(lam[j] / sigma[j])
        expected = float(sigma[j]) * math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / stats.norm.sf(a)
        assert abs(float(v.abs().mean()) / expected - 1) < 0.02
        assert abs(float((v > 0).double().mean()) - 0.5) < 0.03  # random signs
    # the sampler alone, against scipy's truncated normal
    magnitude = sparse.sample_ctg(torch.tensor(1.3), torch.tensor(0.9), (20000,), torch.Generator())
    assert float(magnitude.min()) >= 1.3
    tail = stats.truncnorm(1.3 / 0.9, np.inf, scale=0.9)
    assert stats.kstest(magnitude.numpy(), tail.cdf).pvalue > 0.01


def test_samplers_against_the_magnitude_attack(trained_codes: torch.Tensor) -> None:
    codes, k, m, k_prime = trained_codes, 16, 64, 32
    truth = codes != 0
    lam, sigma = sparse.ambiguation_stats(codes, k)
    g = torch.Generator().manual_seed(0)

    empirical = sparse.ambiguate(codes, k_prime, sampler="empirical", generator=g)
    fake = (empirical != 0) & ~truth
    _, p = sparse.two_sample_test(empirical[fake].abs().numpy(), codes[truth].abs().numpy())
    assert p > 0.01
    empirical_recovery = sparse.support_recovery(sparse.magnitude_attack(empirical, k), truth)

    ctg = sparse.ambiguate(codes, k_prime, sampler="ctg", lam=lam, sigma=sigma, generator=g)
    fake = (ctg != 0) & ~truth
    ctg_stat, ctg_p = sparse.two_sample_test(ctg[fake].abs().numpy(), codes[truth].abs().numpy())
    ctg_recovery = sparse.support_recovery(sparse.magnitude_attack(ctg, k), truth)
    scaled = ctg.clone()
    scaled[fake] *= m / k  # the public code's sampler
    scaled_recovery = sparse.support_recovery(sparse.magnitude_attack(scaled, k), truth)
    print(
        f"magnitude attack recovers: empirical {empirical_recovery:.3f} (KS p {p:.3f}), "
        f"ctg {ctg_recovery:.3f} (KS D {ctg_stat:.3f}, p {ctg_p:.2g}), scaled by m/k {scaled_recovery:.3f}; "
        f"chance {k / k_prime:.2f}"
    )
    assert scaled_recovery > 0.95
    assert empirical_recovery < 0.65


def test_random_guess_and_decode_with_key(trained: tuple, trained_codes: torch.Tensor) -> None:
    model, codes = trained[0], trained_codes
    truth = codes != 0
    amb = sparse.ambiguate(codes, 32, sampler="empirical", generator=torch.Generator().manual_seed(1))
    guess = sparse.random_guess(amb, 16, torch.Generator().manual_seed(2))
    assert ((guess.sum(-1)) == 16).all() and not (guess & (amb == 0)).any()
    assert abs(sparse.support_recovery(guess, truth) - 0.5) < 0.05
    with torch.no_grad():
        assert torch.allclose(sparse.decode_with_key(model, amb, truth), model.decode(codes))
        one = sparse.decode_with_key(model, amb[:1], truth[0].numpy())  # one image's (L, m) key
        assert torch.allclose(one, model.decode(codes[:1]))
    with pytest.raises(ValueError, match="k=33, k_prime=32"):
        sparse.magnitude_attack(amb, 33)
    with pytest.raises(ValueError, match="shape"):
        sparse.support_recovery(guess[:1], truth)


# ---------------------------------------------------------------- the key as bytes


def test_key_round_trip() -> None:
    support = (_gaussian_codes(1, 20, 512, 128)[0] != 0).numpy()
    data = sparse.pack_key(support)
    assert len(data) == 17 + 20 * 512 // 8
    assert np.array_equal(sparse.unpack_key(data, 20, 512), support)
    odd = (_gaussian_codes(1, 3, 5, 2)[0] != 0).numpy()  # 15 bits: one padding bit
    assert np.array_equal(sparse.unpack_key(sparse.pack_key(odd), 3, 5), odd)
    with pytest.raises(ValueError, match="same, non-zero"):
        sparse.pack_key(np.eye(3, dtype=bool) | np.eye(3, k=1, dtype=bool))


def test_malformed_keys_are_refused() -> None:
    support = (_gaussian_codes(1, 3, 5, 2)[0] != 0).numpy()
    good = sparse.pack_key(support)
    header, payload = good[:17], good[17:]
    _, version, maps, length, k = struct.unpack(">4sBIII", header)
    cases = {
        "magic": b"JUNK" + good[4:],
        "version": good[:4] + bytes([version + 1]) + good[5:],
        "header": good[:10],
        "payload": good[:-1],
        "payload is 3 bytes": good + b"\0",
        "L=4": good,  # unpacked as L=4
        "k=6": struct.pack(">4sBIII", b"VSK\0", version, maps, length, 6) + payload,
        "bits set": header + bytes([payload[0] ^ 0x80]) + payload[1:],
        "padding": header + payload[:-1] + bytes([payload[-1] | 0x01]),
    }
    for expected, data in cases.items():
        with pytest.raises(KeyFormatError, match=expected):
            sparse.unpack_key(data, 4 if expected == "L=4" else 3, 5)
    assert issubclass(KeyFormatError, ValueError)


# ---------------------------------------------------------------- sizes


def test_sizes_match_the_paper() -> None:
    h2_kb = sparse.key_bits_h2(20, 512, 128) / 8 / 1024
    exact_kb = sparse.key_bits_exact(20, 512, 128) / 8 / 1024
    print(f"key for L=20, m=512, k=128: {h2_kb:.4f} KB by H2 (paper 1.01), {exact_kb:.4f} KB exact")
    assert abs(h2_kb - 1.01) < 0.01
    assert exact_kb < h2_kb and h2_kb - exact_kb > 0.005
    assert sparse.key_bits_exact(3, 4, 2) == pytest.approx(3 * math.log2(6))
    assert abs(sparse.guessing_bits(1, 256, 128) - 252) < 0.5
    assert sparse.guessing_bits(20, 256, 128) == pytest.approx(20 * sparse.guessing_bits(1, 256, 128))
    values = 3 * 128 * 128
    assert sparse.rate_bpp_paper(20, 512, 128, values) == pytest.approx(0.1690, abs=5e-4)
    k64 = sparse.rate_bpp_paper(20, 512, 64, values)
    print(f"rate for k=64: {k64:.4f} by H2; the paper's Table 1 says 0.0845 (= 0.1690 / 2)")
    assert k64 == pytest.approx(0.1132, abs=5e-4)
    quantised = sparse.rate_bpp_quantised(20, 512, 128, values)
    assert quantised == pytest.approx(0.1690 + 128 * 20 * 8 / values, abs=5e-4)
    assert sparse.public_bits(20, 512, 256) == pytest.approx(32 * 512 * 20)  # H2(1/2) = 1
    with pytest.raises(ValueError, match="k=600"):
        sparse.key_bits_h2(20, 512, 600)


# ---------------------------------------------------------------- codecs


def test_jpeg_rate_is_measured_from_the_bytes(photos: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = photos[1]
    out = jpeg(x, 50)
    pixels = np.rint(x.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    sizes, decoded = [], []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=50)
        sizes.append(len(buffer.getvalue()))
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
        assert 500 < jpeg_header_bytes(buffer.getvalue()) < sizes[-1]
    assert out["sizes"] == sizes
    assert out["bpp"] == pytest.approx(np.mean([8 * s / (32 * 32) for s in sizes]))
    assert out["bpv"] == pytest.approx(out["bpp"] / 3)
    assert 0 < out["payload_bpp"] < out["bpp"]
    assert torch.equal(out["images"], torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 255)

    low, high = jpeg(x, 10), jpeg(x, 90)
    assert psnr(x, high["images"]).mean() > psnr(x, low["images"]).mean()
    target = (low["bpv"] + high["bpv"]) / 2
    matched = jpeg_at_rate(x, target)
    assert matched["met"] and matched["bpv"] <= target
    assert 10 <= matched["quality"] < 90
    assert jpeg(x, matched["quality"] + 1)["bpv"] > target  # the largest quality under the target
    floor = jpeg_at_rate(x, 0.01)  # headers alone are over this rate on 32x32 patches
    assert not floor["met"] and floor["quality"] == 1


def test_psnr_and_measure() -> None:
    x = torch.zeros(2, 3, 16, 16)
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0))
    assert torch.equal(psnr(x, x), torch.full((2,), 100.0))
    y = torch.rand(4, 3, 16, 16)
    report = measure(y, y)
    assert report["psnr_mean"] == 100.0 and report["ssim_mean"] == pytest.approx(1.0, abs=1e-5)
    assert report["n"] == 4
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        jpeg(x - 1, 50)


def test_bad_inputs_name_the_fields() -> None:
    codes = _gaussian_codes(4, 2, 64, 16)
    lam, sigma = sparse.ambiguation_stats(codes, 16)
    for k_prime in (15, 65):
        with pytest.raises(ValueError, match=rf"k_prime={k_prime}, k=16, m=64"):
            sparse.ambiguate(codes, k_prime, sampler="ctg", lam=lam, sigma=sigma)
    with pytest.raises(ValueError, match="needs lam and sigma"):
        sparse.ambiguate(codes, 32, sampler="ctg")
    with pytest.raises(ValueError, match="sampler"):
        sparse.ambiguate(codes, 32, sampler="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k=16"):
        sparse.ambiguation_stats(_gaussian_codes(4, 2, 64, 8), 16)
    with pytest.raises(ValueError, match="k=64, m=64"):
        sparse.ambiguation_stats(_gaussian_codes(4, 2, 64, 64), 64)
    with pytest.raises(ValueError, match="non-zeros in every map"):
        sparse.ambiguate(torch.cat([codes, _gaussian_codes(1, 2, 64, 8)]), 32, sampler="empirical")
