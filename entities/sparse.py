"""Sparse codes with ambiguation (Ferdowsi et al., ICASSP 2020): the sparsifying autoencoder, the
secret key (the supports), the ambiguation of the public codes, the adversary's guesses, and the sizes.

Names follow the paper: L code maps of length m, each k-sparse; the support of a code map is the set of
its k non-zero positions and is the secret key u_s; the public part u_p is the code with k' - k fake
non-zeros added at random zero positions (ambiguation).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch
from scipy import stats
from torch import nn

from entities.data import to_float
from entities.recipes import Recipe
from entities.registry import SAMPLERS
from entities.training import device, fit, to_device

# ---------------------------------------------------------------- the k-sparse operator


def k_sparse(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest magnitude of each code map (last dim) with their signs; zero the rest.

    An adaptive hard threshold: the threshold follows each input, so every map has exactly k non-zeros.
    Gradients flow through the kept entries only.
    """
    m = z.shape[-1]
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, m], got k={k}, m={m}")
    index = z.abs().topk(k, dim=-1).indices
    return torch.zeros_like(z).scatter(-1, index, z.gather(-1, index))


def supports(codes: torch.Tensor) -> torch.Tensor:
    """The support (non-zero positions) of each code map: the secret key of the paper."""
    return codes != 0


def _count_per_map(codes: torch.Tensor, what: str) -> int:
    """The number of non-zeros per code map, which must be the same in every map."""
    if codes.ndim != 3:
        raise ValueError(f"{what} must be (N, L, m), got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        raise ValueError(f"{what} is empty")
    counts = (codes != 0).sum(-1)
    lo, hi = int(counts.min()), int(counts.max())
    if lo != hi:
        raise ValueError(f"{what} must have the same number of non-zeros in every map, got {lo} to {hi}")
    return lo


# ---------------------------------------------------------------- the autoencoder


def _groups(channels: int) -> int:
    return 5 if channels % 5 == 0 else 1


class DownBlock(nn.Module):
    """1x1 strided shortcut + (3x3 conv, LeakyReLU, 5x5 strided grouped conv, BatchNorm), then LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 5, stride=stride, padding=2, groups=_groups(out_channels)),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(self.shortcut(x) + self.body(x))


class SkipDown(nn.Module):
    """A skip branch from a block's input straight down to the bottleneck resolution (stride `factor`)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=factor)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(in_channels, in_channels, 5, padding=2),
            nn.Conv2d(in_channels, out_channels, 1, stride=factor),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(self.shortcut(x) + self.body(x))


class UpBlock(nn.Module):
    """Bilinear upsampling, then 1x1 shortcut + (5x5 conv, GroupNorm, LeakyReLU, 3x3 conv).

    GroupNorm, not BatchNorm, on the way up, as in the public code (BN there hurt reconstruction).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False) if scale > 1 else None
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 5, padding=2),
            nn.GroupNorm(1, out_channels),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            x = self.up(x)
        return self.shortcut(x) + self.body(x)


class SkipUp(nn.Module):
    """A skip branch from the bottleneck straight up to one up block's resolution (scale `factor`)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        self.up = (
            nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False) if factor > 1 else None
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.GroupNorm(1, in_channels),
            nn.LeakyReLU(),
            nn.Conv2d(in_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            x = self.up(x)
        return self.shortcut(x) + self.body(x)


class SparsifyingAutoencoder(nn.Module):
    """The paper's autoencoder: a convolutional encoder to L feature maps, each map through its own
    bias-free linear layer to a code map of length m (the grouped linear block), k-sparsified; a decoder
    with tied weights (each map's transposed linear layer) and a symmetric convolutional up path.

    The k used in training (`k`) and the k used to encode for evaluation may differ (the paper trains with
    256 and evaluates with 128 and 64).
    """

    def __init__(
        self,
        *,
        image_size: int,
        channels: int = 3,
        maps: int,
        code_length: int,
        k: int,
        widths: list[int],
        strides: list[int],
        skip_channels: int = 10,
    ):
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError(
                f"widths and strides must be non-empty and of one length, got {widths}, {strides}"
            )
        if any(s < 1 for s in strides) or any(w < 1 for w in widths) or skip_channels < 1:
            raise ValueError("widths, strides and skip_channels must be positive")
        down = math.prod(strides)
        if image_size % down:
            raise ValueError(f"image_size={image_size} must be divisible by prod(strides)={down}")
        if maps < 1 or code_length < 1:
            raise ValueError(f"maps and code_length must be positive, got {maps}, {code_length}")
        if not 1 <= k <= code_length:
            raise ValueError(f"k must be in [1, m], got k={k}, m={code_length}")
        self.image_size, self.channels = image_size, channels
        self.maps, self.code_length, self.k = maps, code_length, k
        self.side = image_size // down  # the bottleneck's side
        concat = widths[-1] + skip_channels * len(widths)

        blocks, skips = [], []
        in_channels, factor = channels, down
        for width, stride in zip(widths, strides, strict=True):
            skips.append(SkipDown(in_channels, skip_channels, factor))
            blocks.append(DownBlock(in_channels, width, stride))
            in_channels, factor = width, factor // stride
        self.down = nn.ModuleList(blocks)
        self.skips_down = nn.ModuleList(skips)
        self.to_maps = nn.Conv2d(concat, maps, 1)

        # the grouped linear block: map l has its own (m, HW) matrix; the decoder uses its transpose
        hw = self.side * self.side
        self.weight = nn.Parameter(torch.empty(maps, code_length, hw).uniform_(-1, 1) / math.sqrt(hw))

        self.from_maps = nn.Conv2d(maps, concat, 1)
        self.split = [widths[-1]] + [skip_channels] * len(widths)
        rev = widths[::-1] + [channels]
        ups, skips_up, factor = [], [], 1
        for i, stride in enumerate(strides[::-1]):
            factor *= stride
            ups.append(UpBlock(rev[i], rev[i + 1], stride))
            skips_up.append(SkipUp(skip_channels, rev[i + 1], factor))
        self.up = nn.ModuleList(ups)
        self.skips_up = nn.ModuleList(skips_up)

    def code_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The dense code maps z (N, L, m), before sparsification."""
        branches = []
        for block, skip in zip(self.down, self.skips_down, strict=True):
            branches.append(skip(x))
            x = block(x)
        features = self.to_maps(torch.cat([*branches, x], 1))  # (N, L, side, side)
        return torch.einsum("nlp,lmp->nlm", features.flatten(2), self.weight)

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """k-sparse codes (N, L, m) of images in [0, 1]; k defaults to the training k."""
        return k_sparse(self.code_maps(x), self.k if k is None else k)

    def decode_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Image logits from codes (N, L, m); sigmoid of these is the reconstruction."""
        if codes.shape[1:] != (self.maps, self.code_length):
            raise ValueError(f"codes must be (N, {self.maps}, {self.code_length}), got {tuple(codes.shape)}")
        features = torch.einsum("nlm,lmp->nlp", codes, self.weight)  # tied weights
        features = features.reshape(len(codes), self.maps, self.side, self.side)
        main, *branches = self.from_maps(features).split(self.split, dim=1)
        last = len(self.up) - 1
        for i, (block, skip, branch) in enumerate(zip(self.up, self.skips_up, branches, strict=True)):
            main = block(main) + skip(branch)
            if i < last:  # the last sum is the logits
                main = nn.functional.leaky_relu(main)
        return main

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes (N, L, m)."""
        return torch.sigmoid(self.decode_logits(codes))

    def logits(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Reconstruction logits, for BCE-with-logits training (stabler than BCE on the sigmoid)."""
        return self.decode_logits(self.encode(x, k))

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, k))


def train_autoencoder(
    model: SparsifyingAutoencoder, images: np.ndarray | torch.Tensor, recipe: Recipe, seed: int
) -> SparsifyingAutoencoder:
    """Train with BCE between the sigmoid output and the image (the paper's loss) at the model's k.

    images: uint8 (N, C, H, W) or float in [0, 1]. Returns the model in eval mode, on the device used.
    """
    x = to_float(images) if isinstance(images, np.ndarray) else images.float()
    if x.ndim != 4 or x.shape[1:] != (model.channels, model.image_size, model.image_size):
        raise ValueError(
            f"images must be (N, {model.channels}, {model.image_size}, {model.image_size}), "
            f"got {tuple(x.shape)}"
        )
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("float images must lie in [0, 1]")
    dev = device()
    model.to(dev).train()

    def loss(index: torch.Tensor) -> torch.Tensor:
        xb = to_device(x[index])
        return nn.functional.binary_cross_entropy_with_logits(model.logits(xb), xb)

    fit(model, recipe=recipe, n=len(x), loss_fn=loss, seed=seed, net="autoencoder")
    return model.eval()


# ---------------------------------------------------------------- the key (supports) as bytes


class KeyFormatError(ValueError):
    """Key bytes that are not a well-formed key of the expected size."""


KEY_MAGIC = b"VSK\x00"  # Veil sparse key
KEY_VERSION = 1
_HEADER = struct.Struct(">4sBIII")  # magic, version, L, m, k (big-endian)


def pack_key(support: np.ndarray) -> bytes:
    """One image's key: a 17-byte header (magic, version, L, m, k) then the (L, m) support bit-packed.

    L*m bits instead of the entropy bound L*log2 C(m, k): simple, and only ~1.2x that bound at k/m=1/4.
    """
    support = np.asarray(support)
    if support.dtype != np.bool_ or support.ndim != 2:
        raise ValueError(f"support must be a bool (L, m) array, got {support.dtype} {support.shape}")
    counts = support.sum(1)
    if len(counts) == 0 or counts.min() != counts.max() or counts[0] == 0:
        raise ValueError("support must have the same, non-zero number of entries in every map")
    maps, length = support.shape
    header = _HEADER.pack(KEY_MAGIC, KEY_VERSION, maps, length, int(counts[0]))
    return header + np.packbits(support.reshape(-1)).tobytes()


def unpack_key(data: bytes, maps: int, code_length: int) -> np.ndarray:
    """The (L, m) bool support from `pack_key` bytes; KeyFormatError on anything malformed."""
    if len(data) < _HEADER.size:
        raise KeyFormatError(f"key is {len(data)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, version, key_maps, key_length, k = _HEADER.unpack_from(data)
    if magic != KEY_MAGIC:
        raise KeyFormatError(f"not a Veil sparse key: magic {magic!r}, expected {KEY_MAGIC!r}")
    if version != KEY_VERSION:
        raise KeyFormatError(f"key format version {version} is not supported (only {KEY_VERSION})")
    if (key_maps, key_length) != (maps, code_length):
        raise KeyFormatError(
            f"key is for L={key_maps}, m={key_length} code maps, expected L={maps}, m={code_length}"
        )
    if not 1 <= k <= code_length:
        raise KeyFormatError(f"key header has k={k}, outside [1, m={code_length}]")
    bits = maps * code_length
    payload = len(data) - _HEADER.size
    if payload != (bits + 7) // 8:
        raise KeyFormatError(f"key payload is {payload} bytes, expected {(bits + 7) // 8} for {bits} bits")
    unpacked = np.unpackbits(np.frombuffer(data, np.uint8, offset=_HEADER.size))
    if unpacked[bits:].any():
        raise KeyFormatError("key padding bits are not zero")
    support = unpacked[:bits].reshape(maps, code_length).astype(bool)
    counts = support.sum(1)
    if (counts != k).any():
        bad = int(np.argmax(counts != k))
        raise KeyFormatError(f"key map {bad} has {int(counts[bad])} bits set, header says k={k}")
    return support


# ---------------------------------------------------------------- ambiguation


def ambiguation_stats(codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per code map l: lambda_l, the mean over images of the smallest kept magnitude, and
    sigma_l = lambda_l / (sqrt(2) erfinv(1 - k/m)), so that a N(0, sigma_l^2) value exceeds lambda_l in
    magnitude with probability k/m, as a true value does.
    """
    m = codes.shape[-1]
    if not 1 <= k < m:
        raise ValueError(f"ambiguation needs 1 <= k < m, got k={k}, m={m}")
    if _count_per_map(codes, "codes") != k:
        raise ValueError(f"codes must be k-sparse with k={k} non-zeros per map")
    magnitudes = codes.abs().double().masked_fill(codes == 0, math.inf)
    lam = magnitudes.amin(-1).mean(0)
    sigma = lam / (math.sqrt(2) * torch.special.erfinv(torch.tensor(1 - k / m, dtype=torch.float64)))
    return lam.to(codes.dtype), sigma.to(codes.dtype)


def sample_ctg(
    lam: torch.Tensor, sigma: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Magnitudes |v| of v ~ N(0, sigma^2) conditioned on |v| >= lam (exact inverse-CDF sampling).

    lam and sigma broadcast against `shape`. With a = lam/sigma and tail mass t = Phi(-a):
    |v| = -sigma * Phi^-1(u t), u ~ U(0, 1]; no rescaling (the public code's extra factor 1/erfc = m/k
    put every fake above every true value).
    """
    lam64, sigma64 = lam.double(), sigma.double()
    tail = torch.special.ndtr(-lam64 / sigma64)
    u = 1 - torch.rand(shape, generator=generator, dtype=torch.float64)  # (0, 1]
    magnitude = -sigma64 * torch.special.ndtri(u * tail)
    return torch.maximum(magnitude, lam64)  # guards rounding at u = 1


@SAMPLERS.register("ctg")
def ctg_magnitudes(
    codes: torch.Tensor,
    shape: tuple[int, int, int],
    *,
    lam: torch.Tensor | None,
    sigma: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Fake magnitudes from the complementary truncated Gaussian of `ambiguation_stats` (per map)."""
    maps = shape[1]
    if lam is None or sigma is None:
        raise ValueError("sampler='ctg' needs lam and sigma (see ambiguation_stats)")
    if lam.shape != (maps,) or sigma.shape != (maps,):
        raise ValueError(f"lam and sigma must be ({maps},), got {tuple(lam.shape)}, {tuple(sigma.shape)}")
    return sample_ctg(lam.cpu()[:, None], sigma.cpu()[:, None], shape, generator)


@SAMPLERS.register("empirical")
def empirical_magnitudes(
    codes: torch.Tensor,
    shape: tuple[int, int, int],
    *,
    lam: torch.Tensor | None,
    sigma: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Fake magnitudes drawn with replacement from the true kept magnitudes of the same code map."""
    n, maps, fakes = shape
    m = codes.shape[-1]
    magnitude = torch.empty(shape, dtype=torch.float64)
    kept = codes.abs().double().transpose(0, 1).reshape(maps, n * m)
    for j in range(maps):
        pool = kept[j][kept[j] != 0]
        magnitude[:, j] = pool[torch.randint(len(pool), (n, fakes), generator=generator)]
    return magnitude


def ambiguate(
    codes: torch.Tensor,
    k_prime: int,
    *,
    sampler: str,
    lam: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The public part u_p: each k-sparse code map gets k' - k fake non-zeros at random zero positions.

    sampler "ctg": magnitudes from the complementary truncated Gaussian of `ambiguation_stats` (lam,
    sigma, per map); "empirical": magnitudes drawn with replacement from the true kept magnitudes of the
    same code map across the batch. Signs are random. The true non-zeros are left untouched.
    Randomness is drawn on the CPU (`generator` is a CPU generator); the result is on the codes' device.
    """
    k = _count_per_map(codes, "codes")
    n, maps, m = codes.shape
    if not k <= k_prime <= m:
        raise ValueError(f"k_prime must be in [k, m], got k_prime={k_prime}, k={k}, m={m}")
    fakes = k_prime - k
    if fakes == 0:
        return codes.clone()
    cpu = codes.detach().cpu()
    # random zero positions: random scores, with the support pushed below every zero position
    scores = torch.rand(cpu.shape, generator=generator).masked_fill(cpu != 0, -1.0)
    where = scores.topk(fakes, dim=-1).indices  # (N, L, fakes)
    shape = (n, maps, fakes)
    magnitude = SAMPLERS.get(sampler)(cpu, shape, lam=lam, sigma=sigma, generator=generator)
    sign = torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) * 2 - 1
    return cpu.scatter(-1, where, (magnitude * sign).to(cpu.dtype)).to(codes.device)


def decode_with_key(
    model: SparsifyingAutoencoder, ambiguated: torch.Tensor, support: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """What an authorised user sees: the ambiguated codes restricted to the key's support, decoded."""
    mask = torch.as_tensor(support)
    if mask.shape != ambiguated.shape[-mask.ndim :] or mask.ndim not in (2, 3):
        raise ValueError(
            f"support {tuple(mask.shape)} must be (L, m) or (N, L, m) of codes {tuple(ambiguated.shape)}"
        )
    return model.decode(ambiguated * mask.to(device=ambiguated.device, dtype=torch.bool))


def random_guess(ambiguated: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An adversary who knows k: a support of k of the k' non-zeros of each map, chosen at random."""
    k_prime = _count_per_map(ambiguated, "ambiguated")
    if not 1 <= k <= k_prime:
        raise ValueError(f"k must be in [1, k_prime], got k={k}, k_prime={k_prime}")
    scores = torch.rand(ambiguated.shape, generator=generator).masked_fill(ambiguated.cpu() == 0, -1.0)
    guess = torch.zeros(ambiguated.shape, dtype=torch.bool).scatter(-1, scores.topk(k, dim=-1).indices, True)
    return guess.to(ambiguated.device)


def magnitude_attack(ambiguated: torch.Tensor, k: int) -> torch.Tensor:
    """Guess the support as the k smallest non-zero magnitudes of each map.

    True values sit just above lambda; this breaks samplers whose fakes are too large (the public code's).
    """
    k_prime = _count_per_map(ambiguated, "ambiguated")
    if not 1 <= k <= k_prime:
        raise ValueError(f"k must be in [1, k_prime], got k={k}, k_prime={k_prime}")
    magnitudes = ambiguated.abs().masked_fill(ambiguated == 0, math.inf)
    index = magnitudes.topk(k, dim=-1, largest=False).indices
    return torch.zeros_like(ambiguated, dtype=torch.bool).scatter(-1, index, True)


def support_recovery(guess: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of the true support that the guess contains."""
    if guess.shape != truth.shape:
        raise ValueError(f"guess {tuple(guess.shape)} and truth {tuple(truth.shape)} differ in shape")
    total = int(truth.sum())
    if total == 0:
        raise ValueError("truth has an empty support")
    return int((guess.bool() & truth.bool()).sum()) / total


def two_sample_test(fake: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov two-sample test: can the fake values be told from the true ones by law?"""
    result = stats.ks_2samp(np.ravel(fake), np.ravel(true))
    return float(result.statistic), float(result.pvalue)


# ---------------------------------------------------------------- sizes (paper eq. 2)


def h2(p: float) -> float:
    """Binary entropy in bits."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p in (0, 1):
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _check(L: int, m: int, k: int, k_name: str = "k") -> None:
    if L < 1 or m < 1 or not 0 <= k <= m:
        raise ValueError(f"need L >= 1, m >= 1 and 0 <= {k_name} <= m, got L={L}, m={m}, {k_name}={k}")


def key_bits_exact(L: int, m: int, k: int) -> float:
    """Bits of the key, L log2 C(m, k): the supports, enumeratively coded."""
    _check(L, m, k)
    return L * math.log2(math.comb(m, k))


def key_bits_h2(L: int, m: int, k: int) -> float:
    """Bits of the key as the paper counts them: L m H2(k/m), the Stirling bound on L log2 C(m, k)."""
    _check(L, m, k)
    return L * m * h2(k / m)


def public_bits(L: int, m: int, k_prime: int, value_bits: int = 32) -> float:
    """Bits of the public part as the paper approximates it: value_bits * m L H2(k'/m).

    (The paper's approximation multiplies the position entropy by the value width; positions plus values
    would be m L H2(k'/m) + k' L value_bits.)
    """
    _check(L, m, k_prime, "k_prime")
    return value_bits * m * L * h2(k_prime / m)


def guessing_bits(L: int, k_prime: int, k: int) -> float:
    """log2 of the guesses an adversary who knows k must make: L log2 C(k', k)."""
    _check(L, k_prime, k)
    return L * math.log2(math.comb(k_prime, k))


def rate_bpp_paper(L: int, m: int, k: int, pixels: int) -> float:
    """The paper's rate: key_bits_h2 over `pixels` = C*H*W values (3x128x128 in the paper), so it is
    bits per value, not per pixel; the non-zero values themselves are not counted.

    Paper Table 1 gives 0.1690 for k=128 (this formula, L=20, m=512) but 0.0845 for k=64, exactly half of
    0.1690; the formula gives 0.1132 for k=64. We report the computed value.
    """
    if pixels < 1:
        raise ValueError(f"pixels must be positive, got {pixels}")
    return key_bits_h2(L, m, k) / pixels


def rate_bpp_quantised(L: int, m: int, k: int, pixels: int, value_bits: int = 8) -> float:
    """A full rate: the support (key_bits_h2) plus k L values of value_bits bits, over C*H*W values."""
    if pixels < 1 or value_bits < 0:
        raise ValueError(f"pixels must be positive and value_bits non-negative, got {pixels}, {value_bits}")
    return (key_bits_h2(L, m, k) + k * L * value_bits) / pixels
