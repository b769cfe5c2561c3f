"""Tests of the SWSIMTEE evidence format, report data and stage measurements."""

from __future__ import annotations

import hashlib

import pytest
from attest_fixtures import DEVICE_ID, MEASUREMENT, MODEL, SVNS, AttestWorld

from stagewarden.attest.errors import ErrorCode, FormatError
from stagewarden.attest.evidence import FORMAT_NAME, MAGIC, measure_stage, parse_evidence, report_data


def test_round_trip(attest_world: AttestWorld) -> None:
    """Evidence built by the simulated TEE parses back to the same fields."""
    nonce = bytes(range(32))
    evidence = parse_evidence(attest_world.evidence(nonce))
    assert (evidence.hardware_model, evidence.device_id, evidence.svns) == (MODEL, DEVICE_ID, SVNS)
    assert evidence.measurement == MEASUREMENT and not evidence.debug and evidence.reserved_attributes == 0
    assert evidence.report_data == report_data(nonce, attest_world.worker_pub)
    assert [c.serial_number for c in evidence.chain] == [
        attest_world.device.cert.serial_number,
        attest_world.intermediate.cert.serial_number,
    ]


def test_magic_names_the_simulation() -> None:
    """The magic and the format name say that the evidence comes from the simulated TEE."""
    assert MAGIC == b"SWSIMTEE" and "SIMULATED" in FORMAT_NAME


def test_debug_flag_is_bit_zero(attest_world: AttestWorld) -> None:
    """The debug flag sets attribute bit 0 and nothing else."""
    evidence = parse_evidence(attest_world.evidence(bytes(32), debug=True))
    assert evidence.attributes == 1 and evidence.debug


def test_report_data_binds_nonce_and_key() -> None:
    """Report data is SHA-512 over the domain tag, the nonce and the key, and changes with either."""
    nonce, key = b"\x01" * 32, b"\x02" * 32
    assert (
        report_data(nonce, key)
        == hashlib.sha512(b"stagewarden/simulated-tee/report-data/v1\x00" + nonce + key).digest()
    )
    assert report_data(nonce, key) != report_data(key, nonce)


def test_report_data_rejects_wrong_sizes() -> None:
    """Nonces and keys must be exactly 32 bytes."""
    with pytest.raises(ValueError):
        report_data(b"\x00" * 31, b"\x00" * 32)
    with pytest.raises(ValueError):
        report_data(b"\x00" * 32, b"\x00" * 33)


def test_measure_stage_is_an_ordered_extend_chain() -> None:
    """The measurement depends on every component and on their order."""
    base = measure_stage(b"code", b"config", b"weights")
    assert len(base) == 32
    assert base != measure_stage(b"config", b"code", b"weights")
    assert base != measure_stage(b"code", b"config", b"weights!")
    step = bytes(32)
    for label, part in ((b"code", b"code"), (b"config", b"config"), (b"weights", b"weights")):
        step = hashlib.sha256(
            step + hashlib.sha256(b"stagewarden/simulated-tee/measure/v1/" + label + b"\x00" + part).digest()
        ).digest()
    assert base == step


@pytest.mark.parametrize("data", [b"", b"SWSIMTE", b"SWSIMTEE\x00", b"XXXXXXXX\x00\x01" + bytes(200)])
def test_short_or_foreign_bytes_are_malformed(data: bytes) -> None:
    """Bytes too short or without the magic raise EVIDENCE_MALFORMED."""
    with pytest.raises(FormatError) as caught:
        parse_evidence(data)
    assert caught.value.code is ErrorCode.EVIDENCE_MALFORMED


def test_unknown_version(attest_world: AttestWorld) -> None:
    """A version other than 1 raises EVIDENCE_VERSION."""
    data = bytearray(attest_world.evidence(bytes(32)))
    data[8:10] = b"\x00\x02"
    with pytest.raises(FormatError) as caught:
        parse_evidence(bytes(data))
    assert caught.value.code is ErrorCode.EVIDENCE_VERSION


def test_nul_inside_device_id_is_malformed(attest_world: AttestWorld) -> None:
    """A device id with a NUL before its padding ends is malformed."""
    data = bytearray(attest_world.evidence(bytes(32)))
    data[27] = 0
    with pytest.raises(FormatError) as caught:
        parse_evidence(bytes(data))
    assert caught.value.code is ErrorCode.EVIDENCE_MALFORMED


def test_to_json_says_simulated(attest_world: AttestWorld) -> None:
    """The JSON view of evidence says it is simulated and lists the SVN components by name."""
    info = parse_evidence(attest_world.evidence(bytes(32))).to_json()
    assert info["simulated"] is True and set(info["svns"]) == {"bootloader", "firmware", "security_monitor", "tee_os"}  # type: ignore[arg-type]
