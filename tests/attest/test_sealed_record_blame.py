"""Record tampering whose traces could be pinned on honest workers, or that tries to pass by
removing the record itself: a cut log's missing receipts blame nobody, a deleted log is a finding
once a coordinator key or witness is given, and cosignatures in the names of invented workers
do not seal a re-signed log."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sealed_record_fixtures import (
    LOG,
    Trained,
    assert_caught,
    audit,
    copy_run,
    forge_truncated_seal,
    ghost_holders,
    head_positions,
    hide_detections,
    of_type,
    read_records,
    read_summary,
    reseal,
    trained_run,
    without,
    witnesses,
    write_records,
    write_summary,
)

from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.receipt_log import RecordType
from stagewarden.attest.step_heads import SignedStepHead, cosign

E = ErrorCode


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained_run("honest", tmp_path_factory)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained_run("attacked", tmp_path_factory)


# -- 1. an unsealed record blames honest workers for the receipts that were cut ------------------


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("head", range(3))
def test_log_truncated_at_a_head_boundary(honest: Trained, tmp_path: Path, head: int, where: str) -> None:
    """The log cut just before or just after step head 0, 1 or 2 (cuts that remove receipts),
    audited from the directory alone: RECORD_UNSEALED, but RECEIPT_MISSING names s0r0, s1r0, s2r0."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, records[: head_positions(records)[head] + (1 if where == "after" else 0)])
    assert_caught(audit(honest, run), E.RECORD_UNSEALED, honest.malicious)


def test_log_emptied_to_its_file_header(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    write_records(run, [])
    assert_caught(audit(honest, run), E.RECORD_UNSEALED, honest.malicious)


def test_final_head_cut_and_summary_steps_raised(honest: Trained, tmp_path: Path) -> None:
    """The holder deletes the final head and its cosignatures and adds a step to summary.json:
    every honest worker is blamed (RECEIPT_MISSING) for a step that never ran."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, records[: head_positions(records)[-1]])
    summary = read_summary(run)
    summary["steps"] = summary["steps_completed"] = summary["steps"] + 1
    summary["losses"] = [*summary["losses"], summary["losses"][-1]]
    write_summary(run, summary)
    assert_caught(audit(honest, run), E.RECORD_UNSEALED, honest.malicious)


# -- 2. a run "without receipts": the seal is not checked at all ---------------------------------


def test_log_deleted_and_receipts_switched_off_in_summary(honest: Trained, tmp_path: Path) -> None:
    """The holder deletes receipts.log and sets config.receipts to false in summary.json. With both
    keys pinned and every witness file passed, the audit is clean (RECEIPTS_ABSENT warning only)."""
    run = copy_run(honest, tmp_path)
    (run / LOG).unlink()
    summary = read_summary(run)
    summary["config"]["receipts"] = False
    write_summary(run, summary)
    assert_caught(audit(honest, run, witnesses(run)), E.RECORD_UNSEALED, honest.malicious)


# -- 3. cosignatures of workers that signed no receipt are taken under any key -------------------


def test_truncated_log_resealed_with_ghost_cosigners(honest: Trained, tmp_path: Path) -> None:
    """A holder with the coordinator key cuts the last step, names ghost workers (no receipts, no
    attestation) as every stage's holder from the cut on, signs a final head over the cut log and
    cosigns it with fresh keys in the ghosts' names: no worker key was needed. From the directory
    alone, with both keys pinned, the audit is clean and sealed."""
    run = copy_run(honest, tmp_path)
    forge_truncated_seal(honest, run, "ghosts")
    assert_caught(audit(honest, run), E.COSIGNATURE_INVALID, honest.malicious)


def test_responses_hidden_and_resealed_with_ghost_cosigners(attacked: Trained, tmp_path: Path) -> None:
    """The same holder hides every detection and response of the attacked run (events, summary),
    re-signs every head and has ghosts cosign the final one: no seal finding, and the recomputed
    steps now read as honest workers s0r0 and s2r0 signing conflicting receipts (RECEIPT_CONFLICT,
    HEADER_EQUIVOCATION blamed on them)."""
    run = copy_run(attacked, tmp_path)
    kept, events_at, summary = hide_detections(run)
    ghosts = ghost_holders(summary, summary["steps"])
    data = write_summary(run, summary)
    records = without(read_records(run), of_type(RecordType.COSIGNATURE))
    records = reseal(records, kept, data, attacked.signing_key, events_at)
    final = SignedStepHead.parse(records[-1][1]).head
    records += [(RecordType.COSIGNATURE, cosign(final, g, SigningKey.generate()).encode()) for g in ghosts]
    write_records(run, records)
    assert_caught(audit(attacked, run), E.COSIGNATURE_INVALID, attacked.malicious)
