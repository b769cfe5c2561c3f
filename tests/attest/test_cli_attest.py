"""In-process tests of `stagewarden attest` (exit codes 0 accepted / 1 rejected / 2 bad input,
SIMULATED in every output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stagewarden.cli import cli

NOW = "2026-03-01T12:00:00+00:00"
MEASUREMENT = "ab" * 32


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    """A vendor, a receipt key, a nonce and evidence, made through the CLI."""
    runner = CliRunner()
    vendor = str(tmp_path / "vendor")
    result = runner.invoke(cli, ["attest", "init-vendor", vendor, "--now", NOW])
    assert result.exit_code == 0 and "SIMULATED" in result.output
    key = runner.invoke(cli, ["attest", "keygen", "--out", str(tmp_path / "worker.key")]).output.strip()
    nonce = runner.invoke(cli, ["attest", "nonce"]).output.strip()
    evidence = str(tmp_path / "ev.bin")
    result = runner.invoke(
        cli,
        [
            "attest",
            "make-evidence",
            "--vendor",
            vendor,
            "--device-id",
            "gpu-0",
            "--key",
            key,
            "--nonce",
            nonce,
            "--measurement",
            MEASUREMENT,
            "--out",
            evidence,
            "--now",
            NOW,
        ],
    )
    assert result.exit_code == 0 and "SIMULATED" in result.output, result.output
    return {"vendor": vendor, "key": key, "nonce": nonce, "evidence": evidence, "tmp": str(tmp_path)}


def _verify(s: dict[str, str], *extra: str, nonce: str | None = None, evidence: str | None = None):  # type: ignore[no-untyped-def]
    args = [
        "attest",
        "verify",
        evidence or s["evidence"],
        "--vendor",
        s["vendor"],
        "--nonce",
        nonce or s["nonce"],
        "--key",
        s["key"],
        "--reference",
        MEASUREMENT,
        "--now",
        NOW,
        *extra,
    ]
    return CliRunner().invoke(cli, args)


def test_verify_accepts(setup: dict[str, str]) -> None:
    """Valid evidence is accepted with exit code 0, the checks and a result token."""
    result = _verify(setup)
    assert result.exit_code == 0, result.output
    assert "ACCEPTED" in result.output and "SIMULATED TEE" in result.output and "check measurement" in result.output


def test_verify_json_and_result_file(setup: dict[str, str]) -> None:
    """--format json prints the claims and token; --result-out writes the token."""
    out = Path(setup["tmp"]) / "result.jwt"
    result = _verify(setup, "--format", "json", "--result-out", str(out))
    payload = json.loads(result.output)
    assert result.exit_code == 0 and payload["accepted"] and payload["simulated"] is True
    assert payload["claims"]["stagewarden.attested-key"] == setup["key"]
    assert out.read_text().strip() == payload["token"]


def test_verify_wrong_nonce_exit_1(setup: dict[str, str]) -> None:
    """Evidence checked against another nonce is rejected with exit code 1 and KEY_BINDING."""
    result = _verify(setup, nonce="cd" * 32)
    assert result.exit_code == 1 and "KEY_BINDING:" in result.output and "SIMULATED" in result.output


def test_verify_malformed_evidence_exit_1(setup: dict[str, str]) -> None:
    """Malformed evidence is a rejection (exit 1, EVIDENCE_MALFORMED), not a crash."""
    bad = Path(setup["tmp"]) / "bad.bin"
    bad.write_bytes(b"SWSIMTEE\x00\x01garbage")
    result = _verify(setup, "--format", "json", evidence=str(bad))
    assert result.exit_code == 1 and json.loads(result.output)["code"] == "EVIDENCE_MALFORMED"


def test_verify_debug_rejected(setup: dict[str, str]) -> None:
    """Debug-mode evidence is rejected with DEBUG_ENABLED."""
    debug = str(Path(setup["tmp"]) / "debug.bin")
    CliRunner().invoke(
        cli,
        [
            "attest",
            "make-evidence",
            "--vendor",
            setup["vendor"],
            "--device-id",
            "gpu-0",
            "--key",
            setup["key"],
            "--nonce",
            setup["nonce"],
            "--measurement",
            MEASUREMENT,
            "--out",
            debug,
            "--debug",
            "--now",
            NOW,
        ],
    )
    result = _verify(setup, evidence=debug)
    assert result.exit_code == 1 and "DEBUG_ENABLED:" in result.output


def test_verify_policy_file(setup: dict[str, str]) -> None:
    """Out-of-date evidence is rejected by default and accepted with a warning under a policy file;
    a bad policy exits 1."""
    old = str(Path(setup["tmp"]) / "old.bin")
    CliRunner().invoke(
        cli,
        [
            "attest",
            "make-evidence",
            "--vendor",
            setup["vendor"],
            "--device-id",
            "gpu-0",
            "--key",
            setup["key"],
            "--nonce",
            setup["nonce"],
            "--measurement",
            MEASUREMENT,
            "--out",
            old,
            "--svn",
            "1,1,1,1",
            "--now",
            NOW,
        ],
    )
    assert _verify(setup, evidence=old).exit_code == 1
    policy = Path(setup["tmp"]) / "policy.json"
    policy.write_text('{"version": 1, "warn": ["TCB_OUT_OF_DATE"]}')
    result = _verify(setup, "--policy", str(policy), evidence=old)
    assert result.exit_code == 0 and "status warning" in result.output
    policy.write_text('{"version": 1, "warn": ["TCB_REVOKED"]}')
    result = _verify(setup, "--policy", str(policy), evidence=old)
    assert result.exit_code == 1 and "POLICY_MALFORMED:" in result.output


def test_verify_revoked_device(setup: dict[str, str]) -> None:
    """After `attest revoke`, the device's evidence is rejected with CERT_REVOKED."""
    result = CliRunner().invoke(
        cli, ["attest", "revoke", "--vendor", setup["vendor"], "--device-id", "gpu-0", "--now", NOW]
    )
    assert result.exit_code == 0
    assert "CERT_REVOKED:" in _verify(setup).output


@pytest.mark.parametrize(
    "change",
    [{"nonce": "zz"}, {"nonce": "ab"}, {"evidence": "/nonexistent/ev.bin"}],
    ids=["nonce-not-hex", "nonce-short", "missing-file"],
)
def test_verify_bad_input_exit_2(setup: dict[str, str], change: dict[str, str]) -> None:
    """Bad flags and missing files exit 2 without a traceback."""
    result = _verify(setup, **change)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_verify_missing_vendor_exit_2(setup: dict[str, str]) -> None:
    """A missing vendor folder exits 2."""
    result = _verify({**setup, "vendor": setup["tmp"] + "/no-vendor"})
    assert result.exit_code == 2


def test_show_text_and_json(setup: dict[str, str]) -> None:
    """show prints the evidence fields and says SIMULATED, in text and JSON."""
    text = CliRunner().invoke(cli, ["attest", "show", setup["evidence"]])
    assert text.exit_code == 0 and "SIMULATED" in text.output and "gpu-0" in text.output
    data = json.loads(CliRunner().invoke(cli, ["attest", "show", setup["evidence"], "--format", "json"]).output)
    assert data["simulated"] is True and data["device_id"] == "gpu-0" and "SIMULATED" in data["format"]


def test_show_bad_file_exit_2(setup: dict[str, str]) -> None:
    """show on a file that is not evidence exits 2 with the error code."""
    result = CliRunner().invoke(cli, ["attest", "show", setup["vendor"] + "/root.crt"])
    assert result.exit_code == 2 and "EVIDENCE_MALFORMED" in result.output


def test_make_evidence_bad_input_exit_2(setup: dict[str, str]) -> None:
    """make-evidence with a bad device id, SVN list or vendor exits 2."""
    base = [
        "attest",
        "make-evidence",
        "--vendor",
        setup["vendor"],
        "--key",
        setup["key"],
        "--nonce",
        setup["nonce"],
        "--measurement",
        MEASUREMENT,
        "--out",
        setup["tmp"] + "/x.bin",
    ]
    assert CliRunner().invoke(cli, [*base, "--device-id", "bad id!"]).exit_code == 2
    assert CliRunner().invoke(cli, [*base, "--device-id", "gpu-0", "--svn", "1,2"]).exit_code == 2
    assert (
        CliRunner().invoke(cli, [*base[:2], "--vendor", setup["tmp"], *base[4:], "--device-id", "gpu-0"]).exit_code == 2
    )


def test_init_vendor_refuses_existing(setup: dict[str, str]) -> None:
    """init-vendor on an existing vendor exits 2."""
    assert CliRunner().invoke(cli, ["attest", "init-vendor", setup["vendor"]]).exit_code == 2
