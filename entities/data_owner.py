"""The data owner and its authorised users (sparse codes with ambiguation, Ferdowsi et al., ICASSP 2020).

The owner trains the sparsifying autoencoder on its own images, encodes its test images, ambiguates each
code map with k' - k fake non-zeros and publishes the result together with the network: in the paper the
network and the ambiguated codes are public and the supports are the secret. It writes each authorised
user a key file holding the supports of the images granted to that user, readable by that user only.
A user reconstructs exactly the images it holds keys for; asking for any other raises `NoKey`.

Files (the caller chooses the directories):

    <public>/codes.npy        float32 (N, L, m): the ambiguated codes u_p
    <public>/autoencoder.pt   the network: its shape and weights
    <public>/manifest.json    shapes, k, k', sampler, N and the sha256 of both files
    <keys of user>/keys.vkey  that user's key file (mode 0600)
    <owner's private>/keys.vkey  the owner's own keys, for every image

A key file is: magic b"VKF\\0", a version byte, the length of a JSON header (uint32, big-endian), the
header (user, owner, image indices, L, m, k, bytes per key, sha256 of the public codes), then one
`entities.sparse.pack_key` record per image in header order. A file made for another user, for other
codes, or damaged in any way is refused with `KeyFormatError` before anything is written.

The scenario comes in as the simulator's pydantic object; this module reads its fields only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entities import sparse
from entities.codecs import jpeg, jpeg_at_rate, measure
from entities.data import TaskData, to_float
from entities.entity import load_task_data
from entities.sparse import KeyFormatError, SparsifyingAutoencoder
from entities.training import apply

CODES_FILE = "codes.npy"
NET_FILE = "autoencoder.pt"
MANIFEST_FILE = "manifest.json"
KEY_FILE = "keys.vkey"
RECONSTRUCTIONS_FILE = "reconstructions.npz"

KEY_FILE_MAGIC = b"VKF\x00"  # Veil key file
KEY_FILE_VERSION = 1
_KEY_FILE_HEAD = struct.Struct(">4sBI")  # magic, version, header length
VALUE_BITS = 8  # the width of a non-zero value in the quantised rate
PAPER = {"maps": 20, "code_length": 512, "k": 128, "k_prime": 256, "pixels": 3 * 128 * 128}

Record = dict[str, Any]  # {"table", "label", "metric", "value"}; the caller adds the party


class NoKey(PermissionError):
    """A user asked to reconstruct an image whose key (support) it does not hold."""

    def __init__(self, user: str, index: int):
        self.user, self.index = user, index
        super().__init__(f"user {user!r} holds no key for image {index}: the data owner did not grant it")


class CorruptPublication(ValueError):
    """The public codes or network do not match their manifest (damaged or replaced)."""


# ---------------------------------------------------------------- files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (temp file, fsync, rename). private: the file is created with mode 0600 and its
    directory with 0700, so that no other local user can read it at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        if private:
            os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def pack_key_file(
    *, user: str, owner: str, images: list[int], supports: np.ndarray, codes_sha256: str
) -> bytes:
    """The key file of `user`: the supports (n, L, m) of the images `images`, with a header naming them."""
    supports = np.asarray(supports)
    if supports.ndim != 3 or len(supports) != len(images):
        raise ValueError(f"need one (L, m) support per image: {len(images)} images, {supports.shape}")
    keys = [sparse.pack_key(s) for s in supports]
    _, maps, length = supports.shape
    header = {
        "user": user,
        "owner": owner,
        "images": [int(i) for i in images],
        "maps": int(maps),
        "code_length": int(length),
        "k": int(supports[0].sum(1)[0]) if len(keys) else 0,
        "key_bytes": len(keys[0]) if keys else 0,
        "codes_sha256": codes_sha256,
    }
    text = json.dumps(header, sort_keys=True).encode()
    return _KEY_FILE_HEAD.pack(KEY_FILE_MAGIC, KEY_FILE_VERSION, len(text)) + text + b"".join(keys)


def unpack_key_file(
    data: bytes,
    *,
    user: str,
    maps: int,
    code_length: int,
    codes_sha256: str | None = None,
    source: str = "key file",
) -> dict[int, np.ndarray]:
    """{image index: (L, m) bool support} from a key file made for `user`; KeyFormatError otherwise."""

    def bad(why: str) -> KeyFormatError:
        return KeyFormatError(f"{source}: {why}")

    if len(data) < _KEY_FILE_HEAD.size:
        raise bad(f"{len(data)} bytes, shorter than the {_KEY_FILE_HEAD.size}-byte preamble of a key file")
    magic, version, size = _KEY_FILE_HEAD.unpack_from(data)
    if magic != KEY_FILE_MAGIC:
        raise bad(f"not a Veil key file (magic {magic!r}, expected {KEY_FILE_MAGIC!r})")
    if version != KEY_FILE_VERSION:
        raise bad(f"key file version {version} is not supported (only {KEY_FILE_VERSION})")
    end = _KEY_FILE_HEAD.size + size
    try:
        header = json.loads(data[_KEY_FILE_HEAD.size : end].decode())
        holder, images, key_bytes = header["user"], header["images"], int(header["key_bytes"])
        if not isinstance(images, list) or not all(isinstance(i, int) and i >= 0 for i in images):
            raise ValueError("image indices must be non-negative integers")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise bad(f"malformed header ({err})") from None
    if holder != user:
        raise bad(f"this key file was issued to user {holder!r}, not to {user!r}")
    if len(set(images)) != len(images):
        raise bad("an image appears twice in the header")
    if codes_sha256 is not None and header.get("codes_sha256") != codes_sha256:
        raise bad("its keys are for other public codes than the ones published (sha256 differs)")
    if len(data) - end != key_bytes * len(images):
        raise bad(f"{len(data) - end} bytes of keys, expected {len(images)} keys of {key_bytes} bytes")
    out = {}
    for j, index in enumerate(images):
        chunk = data[end + j * key_bytes : end + (j + 1) * key_bytes]
        try:
            out[index] = sparse.unpack_key(chunk, maps, code_length)
        except KeyFormatError as err:
            raise bad(f"key of image {index}: {err}") from None
    return out


def read_key_file(
    path: Path, *, user: str, maps: int, code_length: int, codes_sha256: str | None = None
) -> dict[int, np.ndarray]:
    """`unpack_key_file` of the file at `path` (a missing file is a KeyFormatError too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise KeyFormatError(f"{path}: cannot read the key file ({err.strerror})") from None
    return unpack_key_file(
        data, user=user, maps=maps, code_length=code_length, codes_sha256=codes_sha256, source=str(path)
    )


# ---------------------------------------------------------------- the public part


def autoencoder_config(spec: Any, image_size: int) -> dict[str, Any]:
    """Constructor arguments of the scenario's autoencoder (a `DataOwner.autoencoder` section)."""
    return {
        "image_size": int(image_size),
        "maps": spec.maps,
        "code_length": spec.code_length,
        "k": spec.k,
        "widths": list(spec.widths),
        "strides": list(spec.strides),
        "skip_channels": spec.skip_channels,
    }


def publish(
    public_dir: Path,
    *,
    owner: str,
    codes: torch.Tensor,
    model: SparsifyingAutoencoder,
    k: int,
    k_prime: int,
    sampler: str,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write the ambiguated codes and the network to `public_dir`; the manifest last, so that a reader
    never finds a manifest without its files. Returns the manifest."""
    buffer = io.BytesIO()
    np.save(buffer, codes.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
    codes_bytes = buffer.getvalue()
    buffer = io.BytesIO()
    state = {k_: v.detach().cpu() for k_, v in model.state_dict().items()}
    torch.save({"config": config, "state_dict": state}, buffer)
    net_bytes = buffer.getvalue()
    write_file(public_dir / CODES_FILE, codes_bytes)
    write_file(public_dir / NET_FILE, net_bytes)
    n, maps, length = codes.shape
    manifest = {
        "owner": owner,
        "n_images": int(n),
        "maps": int(maps),
        "code_length": int(length),
        "k": int(k),
        "k_prime": int(k_prime),
        "sampler": sampler,
        "files": {
            CODES_FILE: {
                "shape": [int(n), int(maps), int(length)],
                "dtype": "float32",
                "sha256": sha256(codes_bytes),
            },
            NET_FILE: {"sha256": sha256(net_bytes)},
        },
    }
    write_file(public_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


@dataclass
class Publication:
    """What every party can read: the manifest, the ambiguated codes and the network."""

    manifest: dict[str, Any]
    codes: torch.Tensor  # (N, L, m) float32
    model: SparsifyingAutoencoder

    @property
    def codes_sha256(self) -> str:
        return str(self.manifest["files"][CODES_FILE]["sha256"])


def read_public(public_dir: Path) -> Publication:
    """The owner's publication, checked against its manifest (CorruptPublication when it does not match)."""
    public_dir = Path(public_dir)
    path = public_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the data owner has not published (stage 'codes')")
    manifest = json.loads(path.read_text())
    blobs = {}
    for name in (CODES_FILE, NET_FILE):
        data = (public_dir / name).read_bytes()
        if sha256(data) != manifest["files"][name]["sha256"]:
            raise CorruptPublication(f"{public_dir / name}: corrupt (sha256 differs from {path})")
        blobs[name] = data
    codes = torch.from_numpy(np.load(io.BytesIO(blobs[CODES_FILE]), allow_pickle=False))
    if list(codes.shape) != manifest["files"][CODES_FILE]["shape"]:
        raise CorruptPublication(f"{public_dir / CODES_FILE}: shape {list(codes.shape)} differs from {path}")
    net = torch.load(io.BytesIO(blobs[NET_FILE]), weights_only=True)
    model = SparsifyingAutoencoder(**net["config"])
    model.load_state_dict(net["state_dict"])
    return Publication(manifest, codes, model.eval())


# ---------------------------------------------------------------- the owner


def owner_images(scenario: Any) -> TaskData:
    """The owner's images: the scenario's task set D_p (train and test) and public set D_q, built as the
    entities' are but at the owner's image size."""
    spec = scenario.dataset
    if spec.kind != "photos":
        raise ValueError(
            f"dataset.kind {spec.kind!r}: the data owner runs only on the built-in 'photos' dataset in this "
            "version of Veil; the local image-folder loader is not implemented yet"
        )
    resized = spec.model_copy(update={"patch": scenario.data_owner.image_size})
    return load_task_data(scenario.model_copy(update={"dataset": resized}))


def _decode(model: SparsifyingAutoencoder, codes: torch.Tensor) -> torch.Tensor:
    return apply(model.decode, codes, batch_size=128)


def _encode(model: SparsifyingAutoencoder, images: torch.Tensor, k: int) -> torch.Tensor:
    return apply(lambda x: model.encode(x, k), images, batch_size=128)


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


def jpeg_at_payload_rate(images: torch.Tensor, target_bpv: float) -> dict[str, Any]:
    """`codecs.jpeg_at_rate`, but matching the payload rate (the file without its header bytes, as when
    the tables are agreed in advance): the largest quality in 1..95 whose payload bits per value are at most
    the target, by bisection. "met" is False when quality 1 is already over the target."""
    lo, hi = 1, 95
    best = jpeg(images, lo)
    if best["payload_bpp"] / 3 > target_bpv:
        return {**best, "met": False}
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = jpeg(images, mid)
        if trial["payload_bpp"] / 3 <= target_bpv:
            lo, best = mid, trial
        else:
            hi = mid - 1
    return {**best, "met": True}


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


@dataclass
class Issued:
    """One key file the owner wrote (for the audit log: never the key bits)."""

    user: str
    n_images: int
    sha256: str


@dataclass
class OwnerOutcome:
    records: list[Record]
    issued: list[Issued]
    manifest: dict[str, Any]


def run_owner(
    scenario: Any,
    *,
    public_dir: Path,
    private_dir: Path,
    keys_dir: Callable[[str], Path],
    seed: int,
) -> OwnerOutcome:
    """The owner's whole stage: train, encode, ambiguate, publish, issue keys, and measure.

    keys_dir(user) is where that user's key file goes. Returns the measurements as flat records and
    what was issued; nothing in the outcome is a key, a code or an image.
    """
    owner = scenario.data_owner
    ae, k, k_small, k_prime = owner.autoencoder, owner.k, owner.k_small, owner.k_prime
    maps, m = ae.maps, ae.code_length
    t0 = time.monotonic()
    data = owner_images(scenario)
    x_train, x_test = to_float(data.task_train.images), to_float(data.task_test.images)
    n_test, pixels = len(x_test), int(np.prod(x_test.shape[1:]))
    for user in owner.users:  # the schema checks this for photos; here for any dataset
        missing = [i for i in user.grant if i >= n_test]
        if missing:
            raise ValueError(f"user {user.name!r} is granted images {missing}; the owner has {n_test}")

    config = autoencoder_config(ae, owner.image_size)
    torch.manual_seed(seed)
    model = SparsifyingAutoencoder(**config)
    sparse.train_autoencoder(model, x_train, owner.training, seed=seed)
    model = model.cpu().eval()
    t_train = time.monotonic() - t0

    t1 = time.monotonic()
    codes = _encode(model, x_test, k)
    train_codes = _encode(model, x_train, k)
    lam, sigma = sparse.ambiguation_stats(train_codes, k)  # from the training codes, as the paper does
    generator = torch.Generator().manual_seed(seed + 1)
    public = {}
    for sampler in ("ctg", "empirical"):  # the scenario's sampler is published; the other is only measured
        public[sampler] = sparse.ambiguate(
            codes, k_prime, sampler=sampler, lam=lam, sigma=sigma, generator=generator
        )
    ambiguated = public[owner.sampler]
    manifest = publish(
        public_dir,
        owner=owner.name,
        codes=ambiguated,
        model=model,
        k=k,
        k_prime=k_prime,
        sampler=owner.sampler,
        config=config,
    )
    codes_sha = manifest["files"][CODES_FILE]["sha256"]

    truth = sparse.supports(codes).numpy()
    own = pack_key_file(
        user=owner.name, owner=owner.name, images=list(range(n_test)), supports=truth, codes_sha256=codes_sha
    )
    write_file(private_dir / KEY_FILE, own, private=True)
    issued = []
    for user in owner.users:
        data_ = pack_key_file(
            user=user.name,
            owner=owner.name,
            images=list(user.grant),
            supports=truth[user.grant],
            codes_sha256=codes_sha,
        )
        write_file(keys_dir(user.name) / KEY_FILE, data_, private=True)
        issued.append(Issued(user.name, len(user.grant), sha256(data_)))
    t_codes = time.monotonic() - t1

    # --- measurements (the owner holds the originals and every key)
    t2 = time.monotonic()
    records: list[Record] = []
    rate = sparse.rate_bpp_paper(maps, m, k, pixels)
    rate_q8 = sparse.rate_bpp_quantised(maps, m, k, pixels, VALUE_BITS)
    mask = torch.from_numpy(truth)
    authorised = _decode(model, ambiguated * mask)
    records += _quality(f"authorised k={k}", x_test, authorised, rate_bpv=rate, rate_bpv_q8=rate_q8, k=k)
    scale = train_codes.abs().amax(dim=(0, 2))
    quantised = _decode(model, quantise_values(ambiguated * mask, scale))
    records += _quality(
        f"authorised k={k}, {VALUE_BITS}-bit values", x_test, quantised, rate_bpv=rate_q8, k=k
    )
    small = _decode(model, _encode(model, x_test, k_small))
    records += _quality(
        f"authorised k_small={k_small}",
        x_test,
        small,
        k=k_small,
        rate_bpv=sparse.rate_bpp_paper(maps, m, k_small, pixels),
        rate_bpv_q8=sparse.rate_bpp_quantised(maps, m, k_small, pixels, VALUE_BITS),
    )
    records += _quality("ambiguated as is", x_test, _decode(model, ambiguated), k=k_prime)
    # An attacker with the public network and public images of its own (D_q) estimates position usage.
    usage = sparse.supports(_encode(model, to_float(data.public_train.images), k)).float().mean(0)
    attacks = (
        ("random guess", sparse.random_guess(ambiguated, k, torch.Generator().manual_seed(seed + 2))),
        ("magnitude attack", sparse.magnitude_attack(ambiguated, k)),
        ("usage-prior attack", usage_prior_attack(ambiguated, usage, k)),
    )
    for name, support in attacks:
        records += _quality(
            name,
            x_test,
            _decode(model, ambiguated * support),
            support_recovery=sparse.support_recovery(support, mask),
            k=k,
        )
    for name, target in (("paper rate", rate), (f"{VALUE_BITS}-bit rate", rate_q8)):
        records += _jpeg_records(f"jpeg at {name}, whole file", x_test, jpeg_at_rate(x_test, target), target)
        records += _jpeg_records(
            f"jpeg at {name}, payload only", x_test, jpeg_at_payload_rate(x_test, target), target
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
            _decode(model, _encode(model, x_test, k_)),
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
    return OwnerOutcome(records, issued, manifest)


# ---------------------------------------------------------------- an authorised user


class AuthorisedUser:
    """A user holding keys for some of the owner's images: it reconstructs those and no others."""

    def __init__(self, name: str, keys: dict[int, np.ndarray], publication: Publication):
        self.name = name
        self.keys = keys
        self.publication = publication

    @classmethod
    def load(cls, name: str, *, key_file: Path, public_dir: Path) -> AuthorisedUser:
        """Read the publication and the user's key file, and check that every key fits the public codes."""
        publication = read_public(public_dir)
        manifest = publication.manifest
        keys = read_key_file(
            key_file,
            user=name,
            maps=manifest["maps"],
            code_length=manifest["code_length"],
            codes_sha256=publication.codes_sha256,
        )
        n = manifest["n_images"]
        for index, support in keys.items():
            if index >= n:
                raise KeyFormatError(
                    f"{key_file}: a key for image {index}, but only {n} images are published"
                )
            if (support & (publication.codes[index].numpy() == 0)).any():
                raise KeyFormatError(f"{key_file}: the key of image {index} does not fit the public codes")
        return cls(name, keys, publication)

    @property
    def granted(self) -> list[int]:
        return sorted(self.keys)

    def reconstruct(self, indices: list[int]) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1]; NoKey for the first index the user holds no key for."""
        for index in indices:
            if index not in self.keys:
                raise NoKey(self.name, index)
        codes = self.publication.codes[list(indices)]
        support = torch.from_numpy(np.stack([self.keys[i] for i in indices]))
        with torch.no_grad():
            return sparse.decode_with_key(self.publication.model, codes, support)


def run_user(name: str, *, key_file: Path, public_dir: Path, private_dir: Path) -> dict[str, float]:
    """The user's stage: reconstruct every granted image into `private_dir`, and check that an image it
    was not granted is refused. Everything is read and checked before anything is written."""
    user = AuthorisedUser.load(name, key_file=key_file, public_dir=public_dir)
    granted = user.granted
    images = user.reconstruct(granted)
    n = user.publication.manifest["n_images"]
    ungranted = next((i for i in range(n) if i not in user.keys), None)
    refused = 0
    if ungranted is not None:
        try:
            user.reconstruct([ungranted])
        except NoKey:
            refused = 1
        else:  # pragma: no cover - reconstruct refuses by construction
            raise AssertionError(f"user {name!r} reconstructed image {ungranted} without its key")
    pixels = np.rint(images.numpy() * 255).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, indices=np.asarray(granted, dtype=np.int64), images=pixels)
    write_file(private_dir / RECONSTRUCTIONS_FILE, buffer.getvalue(), private=True)
    return {
        "n_granted": float(len(granted)),
        "n_reconstructed": float(len(pixels)),
        "refused_ungranted": float(refused),
        "tried_ungranted": float(-1 if ungranted is None else ungranted),
    }
