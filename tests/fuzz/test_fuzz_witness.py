"""Fuzzing witness files as ``stagewarden audit --witness`` reads them (``attest/witness.py`` and the
seal audit, ``attest/audit_seal.py``), from the witness files a recorded demo run's workers kept.

Properties: a mutated witness file is read or refused with one FormatError, never another
exception; and a witness cannot frame an intact record: whatever its bytes, the audit of the
untouched run it is passed with has no error finding (a line that does not verify is a warning).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from strategies import fuzz_settings, mutated_bytes

from stagewarden.attest import audit_run_dir
from stagewarden.attest.errors import AttestError
from stagewarden.attest.witness import read_witness

RUN = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "attacked"
WITNESSES = sorted((RUN / "witness").glob("*.jsonl"))
BASE = WITNESSES[0].read_bytes()
OTHERS = [w.read_bytes() for w in WITNESSES[1:]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("witness-fuzz")


def test_the_recorded_witnesses_agree_with_their_run() -> None:
    """The base of every mutation: every recorded witness head is in the run's log, unchanged."""
    report = audit_run_dir(RUN, witnesses=[str(w) for w in WITNESSES])
    assert report.clean and report.sealed and report.witness_heads == sum(len(read_witness(w)[0]) for w in WITNESSES)


@fuzz_settings(share=0.5)
@given(mutated_bytes(BASE, OTHERS))
def test_a_mutated_witness_is_read_or_refused_and_frames_nobody(workdir: Path, data: bytes) -> None:
    path = workdir / "witness.jsonl"
    path.write_bytes(data)
    try:
        read_witness(path)
    except AttestError as exc:
        assert "\n" not in exc.message
    report = audit_run_dir(RUN, witnesses=[str(path)])
    assert report.errors == (), [(f.code, f.message) for f in report.errors]
