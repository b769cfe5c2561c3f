"""The offline auditor finds every kind of tampering in a run directory and names the worker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from receipt_fixtures import header_index, lie, receipt_index, rechain, reroot, small_run, write_run

from stagewarden.attest.audit import AuditReport, Severity, audit_run_dir
from stagewarden.attest.clock import FixedClock
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.headers import SignedHeader, TransferKind, sign_header
from stagewarden.attest.receipt_log import RecordType, frame_record, read_log
from stagewarden.attest.receipts import Receipt, UnitKind, encode_receipt, receipt_digest, sign_receipt
from stagewarden.attest.rundir import RunDirError
from stagewarden.attest.synthetic import SyntheticRun, attestation_result

F, B = UnitKind.FORWARD, UnitKind.BACKWARD
ACT, GRAD = TransferKind.ACTIVATION, TransferKind.GRADIENT


def audit(tmp_path: Path, mutate=None, **kwargs) -> AuditReport:  # type: ignore[no-untyped-def]
    run = small_run(**kwargs)
    path = write_run(tmp_path, run, mutate)
    return audit_run_dir(path, run.verifier_key, coordinator_key=run.coordinator_key)


def codes(report: AuditReport) -> list[ErrorCode]:
    return [f.code for f in report.errors]


def only(report: AuditReport, code: ErrorCode):  # type: ignore[no-untyped-def]
    found = [f for f in report.findings if f.code is code]
    assert len(found) == 1, report.findings
    return found[0]


def test_clean_run(tmp_path: Path) -> None:
    """An untampered run with a pinned verifier key has no findings at all."""
    report = audit(tmp_path)
    assert report.clean and report.findings == ()
    assert report.receipts == 30 and report.headers == 16


def test_unpinned_verifier_key_is_a_warning(tmp_path: Path) -> None:
    """Without pinned keys the audit uses verifier.pub and coordinator.pub and warns, but the run stays clean."""
    run = small_run()
    report = audit_run_dir(write_run(tmp_path, run))
    assert report.clean
    assert {(f.code, f.severity) for f in report.findings} == {
        (ErrorCode.VERIFIER_KEY_UNPINNED, Severity.WARNING),
        (ErrorCode.COORDINATOR_KEY_UNPINNED, Severity.WARNING),
    }


def test_forged_receipt_signature(tmp_path: Path) -> None:
    """A receipt whose signature was altered is RECEIPT_SIGNATURE, naming the worker it claims to be from."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s1r0", 1, 0, F)
        r = run.entries[i]
        run.entries[i] = dataclasses.replace(r, signature=bytes(64))

    report = audit(tmp_path, mutate)
    f = only(report, ErrorCode.RECEIPT_SIGNATURE)
    assert f.workers == ("s1r0",) and f.step == 1 and f.micro_batch == 0 and f.unit == "forward"
    assert f.record is not None and f.offset is not None


def test_forged_header_signature(tmp_path: Path) -> None:
    """A header with a broken signature is HEADER_SIGNATURE."""

    def mutate(run: SyntheticRun) -> None:
        i = header_index(run, "s0r0", 0, 1, ACT)
        run.entries[i] = dataclasses.replace(run.entries[i], step=0, signature=bytes(64))

    assert ErrorCode.HEADER_SIGNATURE in codes(audit(tmp_path, mutate))


def test_wrong_key_unattested(tmp_path: Path) -> None:
    """Receipts signed with a key no result attests are KEY_UNATTESTED for that worker."""

    def mutate(run: SyntheticRun) -> None:
        run.keys["s2r0"] = SigningKey.generate()
        for i, e in enumerate(run.entries):
            if isinstance(e, Receipt) and e.worker_id == "s2r0":
                run.entries[i] = sign_receipt(e, run.keys["s2r0"])
        rechain(run)

    report = audit(tmp_path, mutate)
    f = only(report, ErrorCode.KEY_UNATTESTED)
    assert f.workers == ("s2r0",)
    assert "10 records" in f.message


def test_key_attested_for_another_worker(tmp_path: Path) -> None:
    """A worker signing with another worker's attested key is KEY_UNATTESTED implicating both."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s1r0", 0, 0, F)
        run.entries[i] = sign_receipt(run.entries[i], run.keys["s0r0"])
        rechain(run)

    f = only(audit(tmp_path, mutate), ErrorCode.KEY_UNATTESTED)
    assert set(f.workers) == {"s1r0", "s0r0"}


def test_unattested_worker_has_no_results(tmp_path: Path) -> None:
    """A worker without any result token is KEY_UNATTESTED."""
    f = only(audit(tmp_path, lambda run: run.results.update({"s0r0": []})), ErrorCode.KEY_UNATTESTED)
    assert f.workers == ("s0r0",)


def test_expired_attestation_at_use_time(tmp_path: Path) -> None:
    """Receipts signed after the worker's result expired are RESULT_EXPIRED."""

    def mutate(run: SyntheticRun) -> None:
        key = bytes(run.keys["s1r0"].verify_key)
        start = run.entries[0].signed_at
        run.results["s1r0"] = [
            attestation_result(run.verifier, key, "s1r0", start - dt.timedelta(hours=2), dt.timedelta(hours=1))
        ]

    f = only(audit(tmp_path, mutate), ErrorCode.RESULT_EXPIRED)
    assert f.workers == ("s1r0",) and "expired" in f.message


def test_result_from_another_verifier(tmp_path: Path) -> None:
    """A result token signed by a key other than the pinned verifier is rejected, leaving the key unattested."""

    def mutate(run: SyntheticRun) -> None:
        key = bytes(run.keys["s1r0"].verify_key)
        run.results["s1r0"] = [
            attestation_result(
                SigningKey.generate(),
                key,
                "s1r0",
                run.entries[0].signed_at - dt.timedelta(minutes=1),
                dt.timedelta(days=1),
            )
        ]

    report = audit(tmp_path, mutate)
    assert only(report, ErrorCode.RESULT_SIGNATURE).file == "attestation/s1r0.ear"
    # only the verifier issues results: one it did not sign shows the record altered, by nobody's
    # worker, so the unattested key is reported without blaming s1r0
    unattested = only(report, ErrorCode.KEY_UNATTESTED)
    assert unattested.workers == () and "s1r0" in unattested.message


def test_dropped_receipt(tmp_path: Path) -> None:
    """A receipt removed from the log breaks its worker's chain: RECEIPT_DROPPED, and the unit is missing."""
    report = audit(tmp_path, lambda run: run.entries.pop(receipt_index(run, "s1r0", 0, 1, B)))
    f = only(report, ErrorCode.RECEIPT_DROPPED)
    assert f.workers == ("s1r0",)
    missing = only(report, ErrorCode.RECEIPT_MISSING)
    assert (missing.step, missing.micro_batch, missing.unit) == (0, 1, "backward")


def test_broken_chain_link(tmp_path: Path) -> None:
    """A receipt that chains to a digest no receipt has (a broken link) is found and blamed on the worker."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s2r0", 1, 0, F)
        run.entries[i] = sign_receipt(dataclasses.replace(run.entries[i], prev_digest=bytes(32)), run.keys["s2r0"])
        reroot(run)  # the worker signs its step root over what it signed

    report = audit(tmp_path, mutate)
    assert {f.code for f in report.errors} >= {ErrorCode.RECEIPT_DROPPED}
    assert all("s2r0" in f.workers for f in report.errors)


def test_reordered_receipts(tmp_path: Path) -> None:
    """Two consecutive receipts of one worker swapped in the log give exactly one RECEIPT_REORDERED."""

    def mutate(run: SyntheticRun) -> None:
        i, j = receipt_index(run, "s0r0", 0, 0, F), receipt_index(run, "s0r0", 0, 0, B)
        run.entries[i], run.entries[j] = run.entries[j], run.entries[i]

    report = audit(tmp_path, mutate)
    assert codes(report) == [ErrorCode.RECEIPT_REORDERED]
    assert report.errors[0].workers == ("s0r0",) and report.errors[0].unit == "backward"


def test_reordered_far_apart(tmp_path: Path) -> None:
    """Receipts moved far apart are reported as reordered (each record whose predecessor comes later), nothing else."""

    def mutate(run: SyntheticRun) -> None:
        i, j = receipt_index(run, "s0r0", 0, 0, F), receipt_index(run, "s0r0", 1, 0, F)
        run.entries[i], run.entries[j] = run.entries[j], run.entries[i]

    report = audit(tmp_path, mutate)
    assert report.errors and set(codes(report)) == {ErrorCode.RECEIPT_REORDERED}
    assert all(f.workers == ("s0r0",) for f in report.errors)


def test_duplicated_receipt_replay(tmp_path: Path) -> None:
    """A receipt appended twice (replay) is LOG_DUPLICATE pointing at the original record."""

    def mutate(run: SyntheticRun) -> None:
        run.entries.append(run.entries[receipt_index(run, "s1r0", 0, 0, F)])

    report = audit(tmp_path, mutate)
    f = only(report, ErrorCode.LOG_DUPLICATE)
    assert codes(report) == [ErrorCode.LOG_DUPLICATE] and f.workers == ("s1r0",)


def test_replay_from_another_run(tmp_path: Path) -> None:
    """A validly signed receipt of another run is RUN_MISMATCH."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s0r0", 1, 1, F)
        run.entries.append(sign_receipt(dataclasses.replace(run.entries[i], run_id="other-run"), run.keys["s0r0"]))

    f = only(audit(tmp_path, mutate), ErrorCode.RUN_MISMATCH)
    assert f.workers == ("s0r0",)


def test_forked_chain_and_conflicting_receipts(tmp_path: Path) -> None:
    """A worker signing a second, different receipt for a unit after the same predecessor is caught twice:
    RECEIPT_FORK (two histories) and RECEIPT_CONFLICT (two receipts for one unit)."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s1r0", 1, 0, F)
        other = sign_receipt(dataclasses.replace(run.entries[i], output_digest=bytes(32)), run.keys["s1r0"])
        run.entries.insert(i + 1, other)

    report = audit(tmp_path, mutate)
    assert only(report, ErrorCode.RECEIPT_FORK).workers == ("s1r0",)
    assert only(report, ErrorCode.RECEIPT_CONFLICT).workers == ("s1r0",)


def test_torn_final_record(tmp_path: Path) -> None:
    """A run directory whose log ends in half a record reports LOG_TORN with the offset."""
    run = small_run()
    path = write_run(tmp_path, run)
    log = path / "receipts.log"
    size = log.stat().st_size
    frame = frame_record(RecordType.RECEIPT, encode_receipt(run.entries[0]), read_log(log).records[-1].digest)
    with open(log, "ab") as handle:
        handle.write(frame[:100])
    f = only(audit_run_dir(path, run.verifier_key), ErrorCode.LOG_TORN)
    assert f.offset == size and f.file == "receipts.log"


def test_conflicting_signed_headers_convict_sender(tmp_path: Path) -> None:
    """Two validly signed headers for one transfer with different digests: HEADER_EQUIVOCATION by the sender."""

    def mutate(run: SyntheticRun) -> None:
        i = header_index(run, "s1r0", 1, 1, ACT)
        h = run.entries[i]
        other = dataclasses.replace(h, tensor=dataclasses.replace(h.tensor, digest=bytes(32)))
        run.entries.insert(i + 1, sign_header(other, run.keys["s1r0"]))

    report = audit(tmp_path, mutate)
    f = only(report, ErrorCode.HEADER_EQUIVOCATION)
    assert f.workers == ("s1r0",) and (f.step, f.micro_batch, f.unit) == (1, 1, "activation")


def test_header_disagrees_with_sender_receipt(tmp_path: Path) -> None:
    """A sender whose signed header differs from its own receipt is HEADER_MISMATCH; the link blames it too."""

    def mutate(run: SyntheticRun) -> None:
        i = header_index(run, "s0r0", 0, 0, ACT)
        h = run.entries[i]
        lie(run, i, tensor=dataclasses.replace(h.tensor, digest=bytes(32)))
        j = receipt_index(run, "s1r0", 0, 0, F)
        lie(run, j, input_digest=bytes(32))

    report = audit(tmp_path, mutate)
    assert only(report, ErrorCode.HEADER_MISMATCH).workers == ("s0r0",)
    assert only(report, ErrorCode.LINK_MISMATCH).workers == ("s0r0",)


def test_cross_stage_mismatch_without_headers(tmp_path: Path) -> None:
    """Forward output of stage 1 differing from stage 2's input, no headers logged: both are implicated."""

    def mutate(run: SyntheticRun) -> None:
        lie(run, receipt_index(run, "s1r0", 1, 0, F), output_digest=bytes(32))

    report = audit(tmp_path, mutate, headers=False)
    f = only(report, ErrorCode.LINK_MISMATCH)
    assert set(f.workers) == {"s1r0", "s2r0"} and (f.step, f.micro_batch, f.stage) == (1, 0, 1)


def test_receiver_lie_proved_by_header(tmp_path: Path) -> None:
    """A receiver claiming another input than the signed header it got is the only one implicated."""
    report = audit(tmp_path, lambda run: lie(run, receipt_index(run, "s2r0", 0, 1, F), input_digest=bytes(32)))
    f = only(report, ErrorCode.LINK_MISMATCH)
    assert f.workers == ("s2r0",)


def test_backward_gradient_mismatch(tmp_path: Path) -> None:
    """A stage that claims a gradient input other than what the next stage sent is found."""
    report = audit(tmp_path, lambda run: lie(run, receipt_index(run, "s0r0", 1, 1, B), input_digest=bytes(32)))
    f = only(report, ErrorCode.LINK_MISMATCH)
    assert f.workers == ("s0r0",) and f.unit == "backward"


def test_worker_at_wrong_position(tmp_path: Path) -> None:
    """A receipt claiming a stage the worker was not admitted for is WORKER_UNKNOWN."""
    report = audit(tmp_path, lambda run: lie(run, receipt_index(run, "s0r0", 0, 0, UnitKind.UPDATE), stage=2))
    assert only(report, ErrorCode.WORKER_UNKNOWN).workers == ("s0r0",)


def test_backdated_receipt(tmp_path: Path) -> None:
    """A receipt signed earlier than its predecessor in the worker's chain (backdated) is RECEIPT_CHAIN."""

    def mutate(run: SyntheticRun) -> None:
        i = receipt_index(run, "s1r0", 1, 1, B)
        lie(run, i, signed_at=run.entries[0].signed_at - dt.timedelta(seconds=1))

    f = only(audit(tmp_path, mutate), ErrorCode.RECEIPT_CHAIN)
    assert f.workers == ("s1r0",) and "backwards" in f.message


def test_signing_time_in_the_future(tmp_path: Path) -> None:
    """A receipt signed later than the auditor's clock (beyond the skew) is RECEIPT_FUTURE."""
    run = small_run()
    path = write_run(tmp_path, run)
    clock = FixedClock(run.entries[5].signed_at - dt.timedelta(hours=1))
    report = audit_run_dir(path, run.verifier_key, clock)
    assert ErrorCode.RECEIPT_FUTURE in codes(report)


def test_audit_single_thread_matches(tmp_path: Path) -> None:
    """Verifying signatures with one thread or several gives the same findings."""
    run = small_run(steps=8)
    i = receipt_index(run, "s1r0", 7, 1, B)
    run.entries[i] = dataclasses.replace(run.entries[i], signature=bytes(64))
    path = write_run(tmp_path, run)
    one = audit_run_dir(path, run.verifier_key, threads=1)
    many = audit_run_dir(path, run.verifier_key, threads=2)
    assert one.findings == many.findings and ErrorCode.RECEIPT_SIGNATURE in codes(one)


def test_receipt_digests_chain(tmp_path: Path) -> None:
    """The synthetic run's receipts chain per worker (the fixture the other tests rely on)."""
    run = small_run()
    last = {}
    for e in run.entries:
        if isinstance(e, Receipt):
            if e.worker_id in last:
                assert e.prev_digest == last[e.worker_id]
            last[e.worker_id] = receipt_digest(e)
    assert isinstance(run.entries[1], SignedHeader)


@pytest.mark.parametrize(
    "damage", ["missing-dir", "no-summary", "bad-json", "bad-summary", "no-log", "no-verifier-key"]
)
def test_unreadable_run_dir(tmp_path: Path, damage: str) -> None:
    """An unreadable or malformed run directory raises RunDirError (the CLI's exit code 2)."""
    run = small_run()
    path = write_run(tmp_path, run)
    key: bytes | None = run.verifier_key
    if damage == "missing-dir":
        path = tmp_path / "nope"
    elif damage == "no-summary":
        (path / "summary.json").unlink()
    elif damage == "bad-json":
        (path / "summary.json").write_text("{")
    elif damage == "bad-summary":
        data = json.loads((path / "summary.json").read_text())
        data["stages"] = "three"
        (path / "summary.json").write_text(json.dumps(data))
    elif damage == "no-log":
        (path / "receipts.log").unlink()
    else:
        (path / "attestation" / "verifier.pub").unlink()
        key = None
    with pytest.raises(RunDirError):
        audit_run_dir(path, key)


def test_report_json_is_versioned(tmp_path: Path) -> None:
    """The JSON report carries format, version, counts and every finding field."""
    report = audit(tmp_path, lambda run: run.entries.append(run.entries[0]))
    data = report.to_json()
    assert data["format"] == "stagewarden.audit" and data["version"] == 1 and data["clean"] is False
    assert set(data["findings"][0]) == {
        "code",
        "severity",
        "message",
        "workers",
        "file",
        "record",
        "offset",
        "step",
        "micro_batch",
        "unit",
        "stage",
    }
    json.dumps(data)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["workers"].append(dict(d["workers"][0])), "listed twice"),
        (lambda d: d["workers"][0].update(stage=9), "stage must be"),
        (lambda d: d.update(run_id="../etc"), "run_id"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.pop("steps"), "steps"),
    ],
    ids=["duplicate-worker", "stage-out-of-range", "bad-run-id", "version", "missing-steps"],
)
def test_summary_validation(tmp_path: Path, change, needle: str) -> None:  # type: ignore[no-untyped-def]
    """A malformed summary.json is RunDirError with a message naming the problem."""
    run = small_run()
    path = write_run(tmp_path, run)
    data = json.loads((path / "summary.json").read_text())
    change(data)
    (path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(RunDirError) as info:
        audit_run_dir(path, run.verifier_key)
    assert needle in info.value.message


def test_summary_refuses_unknown_keys(tmp_path: Path) -> None:
    """A key the record does not define is refused by name: nothing in summary.json goes unread."""
    run = small_run()
    path = write_run(tmp_path, run)
    data = json.loads((path / "summary.json").read_text())
    data["loss"] = [3, 2]
    (path / "summary.json").write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="loss: unknown field"):
        audit_run_dir(path, run.verifier_key)


def test_declared_attempts_from_responses() -> None:
    """Each response that redoes steps adds one computation to every step it redoes; malformed entries count nothing."""
    from stagewarden.attest.audit import declared_attempts

    responses = [
        {"step": 4, "plan": {"redo_from_step": 4}},
        {"step": 4, "plan": {"redo_from_step": 4}},
        {"step": 7, "plan": {"redo_from_step": 5}},
        {"step": 9, "plan": {"redo_from_step": None}},
        {"step": "9", "plan": {"redo_from_step": 9}},
        {"step": 3, "plan": {"redo_from_step": 8}},
        "restart",
    ]
    assert declared_attempts(responses) == {4: 3, 5: 2, 6: 2, 7: 2}
    assert declared_attempts(None) == {} and declared_attempts({"step": 1}) == {}


def test_declared_frozen_from_responses() -> None:
    """Stages frozen by a response are known from the first step that froze them; malformed entries are ignored."""
    from stagewarden.attest.audit import declared_frozen

    responses = [
        {"step": 6, "plan": {"frozen_stages": [1]}},
        {"step": 3, "plan": {"frozen_stages": [1, 2]}},
        {"step": 2, "plan": {"frozen_stages": ["1"]}},
        {"step": -1, "plan": {"frozen_stages": [0]}},
        {"step": 5, "plan": {"frozen_stages": None}},
    ]
    assert declared_frozen(responses) == {1: 3, 2: 3}
    assert declared_frozen("x") == {}
