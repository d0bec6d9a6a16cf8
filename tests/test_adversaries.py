"""Adversaries in real runs: every attack through the Flower simulation, what each adversary could reach,
the referee's records and verdicts, and scenarios refused at validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EVERY_ATTACK

from entities import threats
from simulator.cli import EXIT_INVALID, main
from simulator.roles import Party, Role
from simulator.rundir import RunDir
from simulator.schema import ScenarioError, load_scenario
from simulator.views import Forbidden, PartyView

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.yaml"


def attack_records(run_dir: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted((run_dir / "results").glob("attack-*.jsonl")):
        if path.name.startswith("attack-fit-"):
            continue
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def test_every_attack_runs_and_scores_finite(attacks_run: Path) -> None:
    records = attack_records(attacks_run)
    for adversary in EVERY_ATTACK:
        for spec in adversary["attacks"]:
            name = spec if isinstance(spec, str) else spec["name"]
            mine = [r for r in records if str(r["label"]).startswith(f"{adversary['name']}: {name}")]
            assert mine, (adversary["name"], name)
            assert all(math.isfinite(float(r["value"])) for r in mine), (adversary["name"], name)
            target = threats.ATTACKS[name].target
            metrics = {r["metric"] for r in mine}
            assert (
                {"ssim", "psnr", "l1", "reid_rank1", "reid_chance"}
                if target == "pool"
                else {"support_recovery"}
            ) <= metrics
            if target == "pool":
                assert "identification_top1" in metrics  # the shared F+C on the reconstructions
                kinds = {"protected" if "on protected" in str(r["label"]) else "unprotected" for r in mine}
                assert kinds == {"protected", "unprotected"}, name  # what the DPM buys, side by side
    figures = sorted(p.name for p in (attacks_run / "figures").glob("*.png"))
    assert any("shared-reconstructor-E1-poisoned" in f for f in figures), figures
    for path in (attacks_run / "figures").glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # known pairs are not scored: the attacker knew them (the main result used all 10, a variant N of them)
    scored = {r["label"]: r["value"] for r in records if r["metric"] == "n" and r["entity"] == "E1"}
    pooled = 2 * round(0.3 * 6 * 40)  # E1's pooled rows: 30% of 240 images, with their mirror images
    assert scored["mallory: known-pairs on protected"] == pooled - 10
    assert scored["mallory: known-pairs (N=5) on protected"] == pooled - 5
    assert scored["eve: shared-reconstructor on protected"] == pooled


def test_the_audit_shows_what_each_adversary_received(attacks_run: Path) -> None:
    events = RunDir(attacks_run).audit_events()
    reads: dict[str, set[str]] = {}
    for e in events:
        if e["type"] == "read":
            reads.setdefault(e["party"], set()).add(e["what"])
    # the outsider: the pool and the publication, never a party's directory
    assert {w for w in reads["eve"] if w.startswith("pool/")} >= {"pool/E1/poisoned", "pool/E2/poisoned"}
    assert "public/codes.npy" in reads["eve"]
    assert not [w for w in reads["eve"] if w.startswith("parties/")]
    assert "knowledge: own_images" not in reads["eve"] and "knowledge: pool" in reads["eve"]
    # the insider read its own entity's partition and DPM, and nobody else's
    insider = {w for w in reads["mallory"] if w.startswith("parties/")}
    assert insider == {"parties/E3/private/partition.npz", "parties/E3/private/dpm.pt"}
    # the curious user read its own user's keys, and no other user's
    assert {w for w in reads["carol"] if w.startswith("parties/")} == {"parties/alice/keys/keys.vkey"}
    # the known pairs reached mallory sealed, from its victim
    sealed = [e for e in events if e["type"] == "sealed" and e["receiver"] == "mallory"]
    assert [(e["sender"], e["what"]) for e in sealed] == [("E1", "pairs-E1")]


def test_an_adversary_cannot_reach_what_its_knowledge_excludes(attacks_run: Path) -> None:
    scenario = RunDir(attacks_run).scenario()
    eve = PartyView(attacks_run, Party("eve", Role.ADVERSARY), scenario)
    mallory = PartyView(attacks_run, Party("mallory", Role.ADVERSARY), scenario)
    carol = PartyView(attacks_run, Party("carol", Role.ADVERSARY), scenario)
    for view in (eve, carol):
        with pytest.raises(Forbidden, match="is no insider"):
            view.insider_file("partition.npz")  # a private partition
    with pytest.raises(Forbidden, match="is no insider"):
        eve.insider_file("dpm.pt")  # a DPM
    for view in (eve, mallory):
        with pytest.raises(Forbidden, match="is no curious-user"):
            view.curious_keys()  # another user's key
    with pytest.raises(Forbidden, match="not a plain file name"):
        mallory.insider_file("../../E1/private/dpm.pt")  # its own entity's files only
    with pytest.raises(Forbidden):
        eve.keys_file()  # no keys were issued to an adversary
    # and its own private directory holds nothing of anyone else's
    assert eve.read_private("identity.key")
    with pytest.raises(FileNotFoundError):
        eve.read_private("partition.npz")


def test_the_verdict_is_loud_when_a_protection_fails(attacks_run: Path) -> None:
    """At smoke size the DPMs barely train (a DPM from one epoch is close to the identity), so R recovers
    the protected features as well as the unprotected: the run must say so."""
    verdicts = []
    for path in (attacks_run / "results").glob("attack-*.jsonl"):
        verdicts += [json.loads(x) for x in path.read_text().splitlines() if '"verdict"' in x]
    by_label = {(v["label"], v["entity"]) for v in verdicts}
    assert ("eve: shared-reconstructor on protected", "E1") in by_label
    assert all("unprotected" not in label for label, _ in by_label)
    records = attack_records(attacks_run)
    ssim = {
        (r["label"], r["entity"]): r["value"]
        for r in records
        if r["metric"] == "ssim" and r["entity"] == "E1"
    }
    assert (
        ssim[("eve: shared-reconstructor on protected", "E1")] > RunDir(attacks_run).scenario().verdict.ssim
    )


def _with_adversaries(tmp_path: Path, adversaries: list[dict[str, object]], **changes: object) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["adversaries"] = adversaries
    data.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("adversaries", "where", "words"),
    [
        (
            [{"name": "x", "attacks": ["nope"]}],
            "adversaries[0].attacks[0]",
            "unknown attack 'nope'; known attacks: ",
        ),
        (
            [{"name": "x", "attacks": ["support-detector-curious"]}],
            "adversaries[0].attacks[0]",
            "needs own_keys, which an adversary with knowledge 'outsider' lacks",
        ),
        (
            [{"name": "x", "attacks": ["known-pairs"]}],
            "adversaries[0].attacks[0]",
            "needs known_pairs, which an adversary with knowledge 'outsider' and known_pairs: 0 lacks",
        ),
        (
            [{"name": "x", "known_pairs": 100000, "victims": ["E4"], "attacks": ["known-pairs"]}],
            "adversaries[0].known_pairs",
            "100000 pairs, but victim 'E4' pooled only 24 features",
        ),
        (
            [{"name": "x", "knowledge": "insider", "attacks": ["shared-reconstructor"]}],
            "adversaries[0].of",
            "an insider is one of the entities",
        ),
        (
            [{"name": "x", "knowledge": "curious-user", "of": "E1", "attacks": ["random-guess"]}],
            "adversaries[0].of",
            "one of the data owner's users",
        ),
        (
            [{"name": "E1", "attacks": ["random-guess"]}],
            "adversaries[0].name",
            "'E1' is already a party's name",
        ),
        (
            [{"name": "x", "victims": ["nobody"], "attacks": ["shared-reconstructor"]}],
            "adversaries[0].victims[0]",
            "'nobody' is not an entity",
        ),
    ],
)
def test_bad_adversaries_are_refused_at_validation(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    adversaries: list[dict[str, object]],
    where: str,
    words: str,
) -> None:
    path = _with_adversaries(tmp_path, adversaries)
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"{where}: " in err and words in err, err
    assert "Traceback" not in err


def test_a_code_attack_needs_codes_to_attack(tmp_path: Path) -> None:
    """`support-detector` for an adversary of a scenario without a data owner: nothing to attack."""
    data = yaml.safe_load(SMOKE.read_text())
    data.pop("data_owner")
    data["adversaries"] = [{"name": "x", "attacks": ["support-detector"]}]
    with pytest.raises(
        ScenarioError, match=r"adversaries\[0\]\.attacks\[0\]: 'support-detector' attacks the codes"
    ):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(data))
        load_scenario(path)


def test_veil_attacks_lists_every_attack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name, entry in threats.ATTACKS.items():
        assert name in out and entry.summary in out


def test_the_catalogue_and_the_implementations_agree() -> None:
    from entities import attacks as A

    assert set(A.attack_names()) == set(threats.ATTACKS)
    for name, entry in threats.ATTACKS.items():
        cls = A.get_attack(name)
        assert (cls.target, cls.needs) == (entry.target, entry.needs), name
    assert np.all([w in threats.KNOWLEDGE_WORDS for e in threats.ATTACKS.values() for w in e.needs])
