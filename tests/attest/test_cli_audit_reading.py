"""``stagewarden audit`` as a newcomer reads it: the unpinned verifier key explained once, with
the command that pins it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from receipt_fixtures import small_run, write_run

from stagewarden.cli import cli


def test_audit_explains_the_unpinned_key_once(tmp_path: Path) -> None:
    """An audit without --verifier-key has no VERIFIER_KEY_UNPINNED row in a findings table; one
    note says what that means and gives the command that pins the key. A pinned audit has no note;
    the JSON report keeps the finding for machines."""
    run = small_run()
    path = write_run(tmp_path, run, None)
    result = CliRunner().invoke(cli, ["audit", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("VERIFIER_KEY_UNPINNED") == 1
    assert "audit of" not in result.output  # no findings table for a clean run
    assert "whoever wrote the directory could have written that key too" in result.output
    assert f"stagewarden audit {path} --verifier-key <64 hex digits>" in result.output
    assert "coordinator key" in result.output and "not pinned" in result.output
    pinned = CliRunner().invoke(
        cli,
        ["audit", str(path), "--verifier-key", run.verifier_key.hex(), "--coordinator-key", run.coordinator_key.hex()],
    )
    assert pinned.exit_code == 0 and "VERIFIER_KEY_UNPINNED" not in pinned.output
    assert "(pinned)" in pinned.output and "not pinned" not in pinned.output
    data = json.loads(CliRunner().invoke(cli, ["audit", str(path), "--format", "json"]).output)
    assert [f["code"] for f in data["findings"]] == ["VERIFIER_KEY_UNPINNED", "COORDINATOR_KEY_UNPINNED"]


RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "clean"


@pytest.fixture(scope="module")
def unattested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run trained without attestation, with receipts (the record is sealed: its summary
    cannot be edited to say so afterwards)."""
    from stagewarden.runtime.launch import launch_local

    sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
    from distributed_helpers import tiny_config

    run = tmp_path_factory.mktemp("unattested") / "run"
    launch_local(tiny_config(attestation=False, steps=1), run)
    return run


def _unattested_copy(tmp_path: Path, source: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "run"))


def _recorded_copy(tmp_path: Path, attestation: bool, receipts: bool, keep_files: bool = False) -> Path:
    """The recorded clean run, copied, with its summary saying whether it had attestation and
    receipts, and (unless ``keep_files``) without the files it then would not have."""
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary["config"]["attestation"] = summary["attestation"] = attestation
    summary["config"]["receipts"] = receipts
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if not keep_files:
        if not attestation:
            shutil.rmtree(run / "attestation")
        if not receipts:
            (run / "receipts.log").unlink()
    return run


def test_run_without_attestation_is_audited_for_what_it_has(tmp_path: Path, unattested: Path) -> None:
    """A run trained without attestation (no verifier.pub) is not refused: its receipts are
    audited, one warning says attestation is absent, and exit 0."""
    run = _unattested_copy(tmp_path, unattested)
    result = CliRunner().invoke(cli, ["audit", str(run), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["clean"] and data["counts"]["receipts"] > 0 and data["verifier_key"] == ""
    assert [(f["code"], f["severity"]) for f in data["findings"]] == [
        ("ATTESTATION_ABSENT", "warning"),
        ("COORDINATOR_KEY_UNPINNED", "warning"),
    ]
    text = CliRunner().invoke(cli, ["audit", str(run)]).output
    assert "no attestation to check: clean" in text and "does not exist" not in text


def test_tampered_receipts_still_fail_without_attestation(tmp_path: Path, unattested: Path) -> None:
    """Without attestation the receipt log is still checked: a flipped byte in it fails the audit."""
    run = _unattested_copy(tmp_path, unattested)
    log = bytearray((run / "receipts.log").read_bytes())
    log[len(log) // 2] ^= 0x01
    (run / "receipts.log").write_bytes(bytes(log))
    result = CliRunner().invoke(cli, ["audit", str(run)])
    assert result.exit_code == 1, result.output
    assert "error finding(s)" in result.output


def test_pinned_key_expects_attestation(tmp_path: Path, unattested: Path) -> None:
    """Pinning a verifier key says attestation is expected: the unattested run then fails, its
    signing keys attested by no result."""
    run = _unattested_copy(tmp_path, unattested)
    result = CliRunner().invoke(cli, ["audit", str(run), "--verifier-key", "00" * 32, "--format", "json"])
    assert result.exit_code == 1
    codes = {f["code"] for f in json.loads(result.output)["findings"]}
    assert "KEY_UNATTESTED" in codes and "ATTESTATION_ABSENT" not in codes


def test_a_missing_key_of_an_attested_run_is_not_excused(tmp_path: Path) -> None:
    """A run whose summary says it was attested but whose verifier key is gone is refused (exit
    2), not audited as if it had never had attestation; the same for a missing receipt log."""
    run = _recorded_copy(tmp_path, attestation=True, receipts=True)
    (run / "attestation" / "verifier.pub").unlink()
    result = CliRunner().invoke(cli, ["audit", str(run)])
    assert result.exit_code == 2 and "verifier.pub" in result.output
    (run / "receipts.log").unlink()
    shutil.rmtree(run / "attestation")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary["config"]["attestation"] = False
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    result = CliRunner().invoke(cli, ["audit", str(run)])
    assert result.exit_code == 2 and "receipts.log" in result.output


def test_run_without_receipts_says_there_is_nothing_to_check(tmp_path: Path) -> None:
    """A run without receipts or attestation: two warnings say what it lacks, and the verdict does
    not call it clean."""
    run = _recorded_copy(tmp_path, attestation=False, receipts=False)
    result = CliRunner().invoke(cli, ["audit", str(run)])
    assert result.exit_code == 0, result.output
    assert "ATTESTATION_ABSENT" in result.output and "RECEIPTS_ABSENT" in result.output
    assert "nothing to check (the run kept no receipts)" in result.output


def test_a_spec_that_requires_attestation_still_fails_an_unattested_run(tmp_path: Path, unattested: Path) -> None:
    """Stripping attestation from a run does not pass an audit against a spec that requires it:
    the conformance check names the missing attestation (exit 1)."""
    run = _unattested_copy(tmp_path, unattested)
    spec = Path(__file__).resolve().parents[2] / "stagewarden" / "spec" / "examples" / "demo.yaml"
    result = CliRunner().invoke(cli, ["audit", str(run), "--spec", str(spec), "--format", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert not data["clean"]
    messages = " ".join(f["message"] for f in data["findings"] if f["severity"] == "error")
    assert "attestation" in messages


def test_a_witness_path_that_names_nothing_is_bad_input(tmp_path: Path) -> None:
    """``--witness`` naming no file is the caller's mistake: one line and exit 2, not a warning."""
    path = write_run(tmp_path, small_run(), None)
    result = CliRunner().invoke(cli, ["audit", str(path), "--witness", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
