"""The report of a run whose workers were admitted with Intel quotes: EAR results are read, checked and named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from record_fixtures import with_training
from test_ear import _ear

from stagewarden.attest.ear import sign_ear
from stagewarden.attest.result import parse_result_unverified
from stagewarden.attest.synthetic import synthetic_run
from stagewarden.report.run_pages import _evidence_source
from stagewarden.report.runs import read_run


def _write(tmp_path: Path, dcap: bool, tamper: bool = False) -> Path:
    run = synthetic_run("ear-report", stages=2, micro_batches=2)
    run.summary = with_training(run.summary, attestation_kind="dcap" if dcap else "simulated")
    if dcap:
        for worker, tokens in run.results.items():
            simulated = parse_result_unverified(tokens[0])
            key = bytes(run.keys[worker].verify_key)
            result, _ = _ear(key=key)
            result = dataclasses.replace(result, issued_at=simulated.issued_at, expires_at=simulated.expires_at)
            token = sign_ear(result, run.verifier if not tamper else run.keys[worker])
            run.results[worker] = [token]
    return run.write(tmp_path / "run")


def test_ear_results_are_shown_as_dcap_and_checked(tmp_path: Path) -> None:
    """Every worker's EAR is read (TCB status, MRENCLAVE), its signature checked against the run's key."""
    data = read_run(_write(tmp_path, dcap=True))
    assert [(a.kind, a.signature, a.tcb_status, a.status) for a in data.attestations] == [
        ("dcap", "valid", "UpToDate", "affirming")
    ] * len(data.attestations)
    assert data.attestations[0].measurement == "aa" * 32
    assert "Intel TDX/SGX quotes" in _evidence_source(data) and "simulated" not in _evidence_source(data)


def test_forged_ear_is_flagged(tmp_path: Path) -> None:
    """An EAR signed by another key than the run's verifier shows an invalid signature."""
    data = read_run(_write(tmp_path, dcap=True, tamper=True))
    assert all(a.signature.startswith("invalid: RESULT_SIGNATURE") for a in data.attestations)


def test_simulated_runs_still_say_simulated(tmp_path: Path) -> None:
    """A run of the simulated kind keeps its rows and its wording."""
    data = read_run(_write(tmp_path, dcap=False))
    assert {a.kind for a in data.attestations} == {"simulated"}
    assert "simulated TEE" in _evidence_source(data)
