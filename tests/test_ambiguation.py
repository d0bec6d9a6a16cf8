"""The data owner and its authorised users (sparse codes with ambiguation) in real runs, and their key files.

The runs come from tests/conftest.py (the smoke scenario, which has a data owner and two users, and the
same data owner without entities); these tests read what they left behind, or work on copies of them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import result_records

from entities import data_owner as D
from entities import keys as K
from entities import publication as P
from entities.data_owner import AuthorisedUser, NoKey
from entities.files import write_atomic
from entities.owner_measures import quantise_values
from entities.sparse import KeyFormatError
from reports.tables import render_report
from simulator import node, sealing
from simulator.cli import EXIT_INVALID, main
from simulator.protocol import Payload, Sealed, Task
from simulator.rundir import RunDir
from simulator.schema import DataOwner, PhotosDataset, Scenario
from simulator.stages import RUN_ORDER as STAGES
from simulator.stages.codes import KEYS, seal_context
from simulator.views import Forbidden

DPM_STAGES = ("prepare", "pretrain", "poison", "refine")
DATA_OWNER_STAGES = ("codes", "access")

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def keys_dir(run: RunDir, user: str) -> Path:
    return run.root / "parties" / user / "keys"


def public_dir(run: RunDir) -> Path:
    return run.root / "public"


def owner_of(scenario: Scenario) -> DataOwner:
    assert scenario.data_owner is not None
    return scenario.data_owner


def records(run_dir: Path, table: str) -> dict[tuple[str, str], float]:
    return {(r["label"], r["metric"]): r["value"] for r in result_records(run_dir) if r["table"] == table}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- key files, no run needed


def _supports(n: int, maps: int = 3, m: int = 10, k: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, maps, m), dtype=bool)
    for i in range(n):
        for j in range(maps):
            out[i, j, rng.choice(m, k, replace=False)] = True
    return out


def test_key_file_round_trip_and_refusals(tmp_path: Path) -> None:
    supports = _supports(3)
    data = K.pack_key_file(
        user="alice", owner="owner", images=[4, 0, 7], supports=supports, codes_sha256="ab"
    )
    keys = K.unpack_key_file(data, user="alice", maps=3, code_length=10, codes_sha256="ab")
    assert sorted(keys) == [0, 4, 7]
    for j, index in enumerate([4, 0, 7]):
        assert np.array_equal(keys[index], supports[j])

    path = tmp_path / "keys" / K.KEY_FILE
    write_atomic(path, data, private=True)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert sorted(K.read_key_file(path, user="alice", maps=3, code_length=10)) == [0, 4, 7]

    flipped = bytearray(data)
    flipped[-1] ^= 0x01
    bad = {
        "issued to user 'alice', not to 'bob'": (data, "bob", "ab"),
        "other public codes": (data, "alice", "cd"),
        "not a Veil key file": (b"JUNK" + data[4:], "alice", "ab"),
        "version 9": (data[:4] + bytes([9]) + data[5:], "alice", "ab"),
        "shorter than": (data[:5], "alice", "ab"),
        "malformed header": (data[:9] + b"x" + data[10:], "alice", "ab"),
        "expected 3 keys": (data[:-1], "alice", "ab"),
        "key of image 7": (bytes(flipped), "alice", "ab"),
    }
    for words, (blob, user, digest) in bad.items():
        with pytest.raises(KeyFormatError, match=re.escape(words)):
            K.unpack_key_file(blob, user=user, maps=3, code_length=10, codes_sha256=digest)
    with pytest.raises(KeyFormatError, match="L=3, m=10 code maps, expected L=3, m=11"):
        K.unpack_key_file(data, user="alice", maps=3, code_length=11)
    with pytest.raises(KeyFormatError, match="cannot read the key file"):
        K.read_key_file(tmp_path / "nowhere.vkey", user="alice", maps=3, code_length=10)


def test_quantised_values_keep_the_support() -> None:
    codes = torch.tensor([[[0.0, 1.0, -0.5, 0.0], [0.2, 0.0, 0.0, -2.0]]])
    q = quantise_values(codes, torch.tensor([1.0, 2.0]))
    assert torch.equal(q != 0, codes != 0)
    assert (q - codes).abs().max() <= 2 * 2.0 / 255 / 2 + 1e-6


# ---------------------------------------------------------------- the smoke run's data owner


def test_data_owner_end_to_end(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = run.scenario()
    owner = owner_of(scenario)
    k, k_prime = owner.k, owner.k_prime
    assert all(run.stage_done(s) for s in STAGES)

    manifest = json.loads((smoke_run / "public" / P.MANIFEST_FILE).read_text())
    assert isinstance(scenario.dataset, PhotosDataset)
    n = scenario.dataset.task_classes * scenario.dataset.test_per_class
    shape = [n, owner.autoencoder.maps, owner.autoencoder.code_length]
    assert manifest["files"][P.CODES_FILE]["shape"] == shape
    assert (manifest["k"], manifest["k_prime"], manifest["sampler"]) == (k, k_prime, owner.sampler)
    public = P.read_public(smoke_run / "public")  # checks both digests
    assert ((public.codes != 0).sum(-1) == k_prime).all()  # every map ambiguated to k' non-zeros

    amb = records(smoke_run, "ambiguation")
    labels = {label for label, _ in amb}
    assert {
        f"authorised k={k}",
        f"authorised k_small={owner.k_small}",
        "ambiguated as is",
        "random guess",
        "magnitude attack",
        "jpeg at paper rate, whole file",
        "jpeg at paper rate, payload only",
    } <= labels
    for label in labels:
        assert 0 < amb[(label, "psnr_mean")] <= 100 and amb[(label, "psnr_std")] >= 0, label
        assert -1 <= amb[(label, "ssim_mean")] <= 1 and amb[(label, "ssim_std")] >= 0, label
    assert 0.3 < amb[("random guess", "support_recovery")] < 0.7  # k of k' = 2k at random: about half
    for label in ("jpeg at paper rate, whole file", "jpeg at paper rate, payload only"):
        assert 1 <= amb[(label, "quality")] <= 95
        assert amb[(label, "payload_bpv")] < amb[(label, "rate_bpv")]
    whole = amb[("jpeg at paper rate, whole file", "rate_bpv")]
    if amb[("jpeg at paper rate, whole file", "met")]:
        assert whole <= amb[("jpeg at paper rate, whole file", "target_bpv")]

    # The KS test of fake against true magnitudes, for both samplers, on the trained codes.
    ks = records(smoke_run, "ambiguation_test")
    assert 0 < ks[("ctg", "ks_statistic")] <= 1
    assert ks[("empirical", "ks_pvalue")] > 0.01  # drawn from the true magnitudes: not told apart at 1%
    assert ks[(owner.sampler, "published")] == 1.0

    sizes = records(smoke_run, "sizes")
    paper = "paper (L=20, m=512, k=128, k'=256)"
    assert sizes[(paper, "key_kb_h2")] == pytest.approx(1.01, abs=0.005)  # the paper's 1.01 KB
    assert sizes[(paper, "key_kb_exact")] < sizes[(paper, "key_kb_h2")]  # the exact value beside it
    assert sizes[(paper, "guessing_bits")] == pytest.approx(20 * 252, rel=0.01)
    ours = next(label for label, _ in sizes if label.startswith("this run"))
    assert sizes[(ours, "key_bits_exact")] < sizes[(ours, "key_bits_h2")]
    assert sizes[(ours, "key_file_bytes")] == 17 + shape[1] * shape[2] // 8

    curve = records(smoke_run, "rd_curve")
    assert {label for label, _ in curve} == {f"codes k={v}" for v in owner.sweep_k} | {
        f"jpeg q={q}" for q in owner.jpeg_qualities
    }

    access = records(smoke_run, "access")
    for user in owner.users:
        assert access[(user.name, "n_reconstructed")] == len(user.grant)
        assert access[(user.name, "refused_ungranted")] == 1


def test_authorised_user_reconstructs_only_its_images(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    owner = owner_of(run.scenario())
    saved = {}
    for user in owner.users:
        path = run.private_dir(user.name) / D.RECONSTRUCTIONS_FILE
        assert mode(path) == 0o600
        with np.load(path) as data:
            saved[user.name] = (data["indices"].tolist(), data["images"])
        assert saved[user.name][0] == sorted(user.grant)

    alice, bob = owner.users
    key_file = keys_dir(run, alice.name) / K.KEY_FILE
    holder = AuthorisedUser.load(
        alice.name,
        key_file=key_file.read_bytes(),
        publication=P.read_public(public_dir(run)),
        source=str(key_file),
    )
    assert holder.granted == sorted(alice.grant)
    again = np.rint(holder.reconstruct(holder.granted).numpy() * 255).astype(np.uint8)
    assert np.array_equal(again, saved[alice.name][1])
    # What the key adds: the owner's authorised decode of the same images, from its own key file.
    own = K.read_key_file(
        run.private_dir(owner.name) / K.KEY_FILE,
        user=owner.name,
        maps=owner.autoencoder.maps,
        code_length=owner.autoencoder.code_length,
    )
    for index in alice.grant:
        assert np.array_equal(own[index], holder.keys[index])
    for index in bob.grant:
        assert index not in holder.keys
        with pytest.raises(NoKey, match=rf"user 'alice' holds no key for image {index}"):
            holder.reconstruct([alice.grant[0], index])


def test_audit_shows_keys_crossed_only_sealed(smoke_run: Path) -> None:
    run = RunDir(smoke_run)
    scenario = run.scenario()
    owner = owner_of(scenario)
    maps, m = owner.autoencoder.maps, owner.autoencoder.code_length
    users = {u.name: u for u in owner.users}
    events = run.audit_events()
    owner_stages = {"train.codes", "train.access"}
    for event in events:
        if event["type"] in {"pool.publish", "public.publish", "sealed", "read"}:
            continue
        if event["type"] in {"train.attack", "train.score"}:
            continue  # an attacker's guessed supports, not keys (their route: test_run.py)
        for name, record in event["records"].items():
            assert not re.search("key|support|code", name, re.IGNORECASE), event
            if record["kind"] == "config" and event["type"] in owner_stages:
                # which stage and party, and the users' public keys to seal to: nothing else
                # (and the digests of files a party wrote or expects: never their content; and what the
                # node says of itself: its torch threads, pid, and when it began and ended the task)
                allowed = {"run_dir", "stage", "party", "key", "users", "public_keys", "expected", "wrote"}
                allowed |= set(node.NODE_FACTS) | set(node.NODE_TIMES)
                assert set(record["keys"]) <= allowed, event
            if record["kind"] == "sealed":  # keys travel sealed: from the owner, to their user
                assert (event["type"], event["sender"]) in {
                    ("train.codes", owner.name),
                    ("train.access", "server"),
                }
            if record["kind"] != "arrays":
                continue
            assert event["type"] not in owner_stages, event  # no arrays: metrics and records only
            for key, arr in record["arrays"].items():
                assert not re.search("key|support|code", key, re.IGNORECASE), (event["type"], key)
                assert tuple(arr["shape"][-2:]) != (maps, m), (event["type"], key, arr["shape"])

    sealed = [e for e in events if e["type"] == "sealed"]
    assert sorted(e["receiver"] for e in sealed) == sorted(users)
    for event in sealed:
        # who sealed what to whom, and the plaintext's digest: never a key bit
        assert set(event) == {"t", "type", "sender", "receiver", "what", "sha256"}, event
        assert event["sender"] == owner.name and event["what"] == KEYS
        path = keys_dir(run, event["receiver"]) / K.KEY_FILE
        plaintext = path.read_bytes()
        assert hashlib.sha256(plaintext).hexdigest() == event["sha256"]
        relayed = (run.root / "relay" / f"{event['receiver']}.{KEYS}.sealed").read_bytes()
        assert plaintext[:16] not in relayed  # the server kept ciphertext, not the key file
    published = {e["name"]: e for e in events if e["type"] == "public.publish"}
    assert set(published) == {P.CODES_FILE, P.NET_FILE}
    assert published[P.CODES_FILE]["shape"][1:] == [maps, m]
    for user in users:  # each user read its own keys and the publication, through its view
        reads = {e["what"] for e in events if e["type"] == "read" and e["party"] == user}
        assert {
            f"parties/{user}/keys/{K.KEY_FILE}",
            f"public/{P.CODES_FILE}",
            f"public/{P.NET_FILE}",
        } <= reads

    # Key files: one per user in its own keys directory, and the owner's own, all mode 0600.
    key_files = sorted(p.relative_to(run.root).as_posix() for p in run.root.rglob("*.vkey"))
    expected = [f"parties/{u}/keys/{K.KEY_FILE}" for u in users] + [
        f"parties/{owner.name}/private/{K.KEY_FILE}"
    ]
    assert key_files == sorted(expected)
    for rel in key_files:
        assert mode(run.root / rel) == 0o600, rel
    for user in users:
        assert [p.name for p in keys_dir(run, user).iterdir()] == [K.KEY_FILE]
        assert mode(keys_dir(run, user)) == 0o700
    assert sorted(p.name for p in public_dir(run).iterdir()) == sorted(
        [P.CODES_FILE, P.NET_FILE, P.MANIFEST_FILE]
    )


def _copy_run(smoke_run: Path, tmp_path: Path) -> RunDir:
    root = tmp_path / "run"
    shutil.copytree(smoke_run, root)
    return RunDir(root)


def _access(run: RunDir, user: str, key_file: bytes, *, sealed_to: str | None = None) -> Payload:
    """The access stage on `user`'s node (inline), with `key_file` sealed by the owner to `sealed_to`."""
    owner = owner_of(run.scenario()).name
    recipient = sealed_to or user
    public = sealing.public_key((run.private_dir(recipient) / "identity.key").read_bytes())
    blob = sealing.seal(public, key_file, seal_context(owner, recipient))
    task = Task("access", user, Payload(sealed=[Sealed(user, KEYS, blob, "")]))
    return node.handle(run.root, user, task)


def test_bad_key_files_are_refused_and_nothing_is_written(smoke_run: Path, tmp_path: Path) -> None:
    run = _copy_run(smoke_run, tmp_path)
    scenario = run.scenario()
    alice, bob = (u.name for u in owner_of(scenario).users)
    private = run.private_dir(alice)
    (private / D.RECONSTRUCTIONS_FILE).unlink()
    key_file = keys_dir(run, alice) / K.KEY_FILE
    good = key_file.read_bytes()
    cases = {
        f"issued to user '{bob}', not to '{alice}'": (keys_dir(run, bob) / K.KEY_FILE).read_bytes(),
        "not a Veil key file": b"\x00" * 64,
        "bytes of keys": good[:-3],
        "malformed header": good[:12] + b"\xff" + good[13:],
    }
    for words, data in cases.items():
        with pytest.raises(KeyFormatError, match=re.escape(words)) as caught:
            _access(run, alice, data)
        assert str(key_file) in str(caught.value)
        assert sorted(p.name for p in private.iterdir()) == ["identity.key"], words  # nothing written
    # A key file sealed to bob does not open on alice's node.
    with pytest.raises(ValueError, match="does not open"):
        _access(run, alice, good, sealed_to=bob)

    measured = _access(run, alice, good).metrics
    assert measured["refused_ungranted"] == 1 and (private / D.RECONSTRUCTIONS_FILE).is_file()
    # Another party's node may not play a user.
    with pytest.raises(Forbidden, match="not for owner"):
        node.handle(run.root, "owner", Task("access", "owner"))


def test_bad_scenario_is_refused_before_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(SMOKE.read_text())
    data["data_owner"]["k"] = 100  # more than m = 64
    data["data_owner"]["k_prime"] = 8  # fewer than k
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "data_owner.k: k=100 is more than" in err and "data_owner.k_prime: k_prime=8" in err
    assert not out.exists()  # nothing written


def test_data_owner_alone(owner_only_run: Path) -> None:
    run = RunDir(owner_only_run)
    manifest = run.manifest()["stages"]
    for stage in DPM_STAGES:
        assert manifest[stage]["status"] == "done" and manifest[stage]["skipped"], stage
    for stage in DATA_OWNER_STAGES:
        assert manifest[stage]["status"] == "done" and "skipped" not in manifest[stage], stage
    assert not [e for e in run.audit_events() if e["type"] in {f"train.{s}" for s in DPM_STAGES}]
    assert records(owner_only_run, "ambiguation")
    assert not (owner_only_run / "pool").exists()


def test_report_has_the_ambiguation_section(smoke_run: Path, tmp_path: Path) -> None:
    run = _copy_run(smoke_run, tmp_path)
    text = render_report(run.root)
    for words in ("Ambiguation", "paper", "30.75", "random guess", "key_kb_h2", "rd_curve.png"):
        assert words in text, words
    plot = run.root / "plots" / "rd_curve.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
