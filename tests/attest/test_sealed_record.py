"""The sealed run record, attacked from the log holder's side (docs/receipts.rst, "The sealed record").

Three real runs are trained once per test process (:mod:`sealed_record_fixtures`): an honest one (3
stages and a standby, 4 steps, spot checks), one where stage 1 tampers on several steps and is
caught each time (``restart``), and one where stage 1 is caught and replaced by the standby.
Every negative case tampers with a copy of one of them the way a holder of the directory can
(delete, insert, reorder or rewrite records, events and summary fields; cut the log; re-frame it
so that the log's own hash chain stays intact; with the coordinator's private key, re-sign the
step heads) and asserts that the audit, with the verifier and coordinator keys pinned, is not
clean, names the finding that shows the attack, and blames no worker the attack plan does not
make malicious. Cases that need a witness say so; the others audit the directory alone. The
receipt log, step heads and cosignatures are attacked here; events.jsonl and summary.json in
``test_sealed_record_files.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from nacl.signing import SigningKey
from sealed_record_fixtures import (  # noqa: F401  (attacked_run, honest_run, replaced_run: fixtures)
    LOG,
    Record,
    Trained,
    assert_caught,
    attacked_run,
    audit,
    author,
    caught,
    copy_run,
    event,
    forge_truncated_seal,
    head_at,
    head_positions,
    honest_run,
    of_type,
    read_events,
    read_records,
    read_summary,
    replaced_run,
    step_of,
    without,
    witnesses,
    write_events,
    write_records,
    write_summary,
)

from stagewarden.attest.audit import Severity
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.receipt_log import RecordType
from stagewarden.attest.step_heads import Cosignature, SignedStepHead, cosign, sign_head
from stagewarden.cli import cli

E = ErrorCode


@pytest.fixture(params=["honest", "attacked", "replaced"])
def any_run(request: pytest.FixtureRequest) -> Trained:
    trained: Trained = request.getfixturevalue(request.param)
    return trained


SEAL_CODES = {
    E.RECORD_UNSEALED,
    E.RECORD_REWRITTEN,
    E.RECORD_TRUNCATED,
    E.RECORD_AFTER_SEAL,
    E.HEAD_CONFLICT,
    E.HEAD_SIGNATURE,
    E.HEAD_SEQUENCE,
    E.HEAD_MALFORMED,
    E.EVENTS_REWRITTEN,
    E.SUMMARY_REWRITTEN,
    E.COSIGNATURE_MISSING,
    E.COSIGNATURE_INVALID,
    E.WITNESS_MALFORMED,
}


# -- the intact runs ------------------------------------------------------------------------------


def test_intact_runs_audit_clean_with_both_keys_pinned_and_every_witness(any_run: Trained) -> None:
    """Honest, attacked and replaced runs: sealed, every witness head compared, no seal finding."""
    run = any_run.run
    report = audit(any_run, run, witnesses(run))
    assert report.clean, [(f.code, f.message) for f in report.errors]
    assert report.sealed and report.coordinator_key_pinned and report.verifier_key_pinned
    assert report.step_heads == len(head_positions(read_records(run)))
    assert report.witness_heads >= report.step_heads
    assert not [f for f in report.findings if f.code in SEAL_CODES]


def test_the_reframing_helper_reproduces_the_log_byte_for_byte(honest: Trained, tmp_path: Path) -> None:
    """The tool the negative cases re-frame logs with writes exactly what the runtime wrote."""
    run = copy_run(honest, tmp_path)
    original = (run / LOG).read_bytes()
    write_records(run, read_records(run))
    assert (run / LOG).read_bytes() == original


def test_cli_exit_codes_and_seal_line(honest: Trained, tmp_path: Path) -> None:
    """``stagewarden audit`` with both keys and a witness: 0 and "sealed by a final step head" for the
    intact run; 1 and "not sealed" once the final head and its cosignatures are cut."""
    run = copy_run(honest, tmp_path)
    args = ["audit", str(run), "--verifier-key", honest.verifier_key.hex()]
    args += ["--coordinator-key", honest.coordinator_key.hex(), "--witness", str(witnesses(run)[0])]
    intact = CliRunner().invoke(cli, args)
    assert intact.exit_code == 0, intact.output
    assert "sealed by a final step head" in intact.output and "(pinned)" in intact.output
    assert "witness head(s) compared" in intact.output
    records = read_records(run)
    write_records(run, records[: head_positions(records)[-1]])
    cut = CliRunner().invoke(cli, args)
    assert cut.exit_code == 1, cut.output
    assert "not sealed" in cut.output and "RECORD_UNSEALED" in cut.output and "RECORD_TRUNCATED" in cut.output


# -- records deleted, inserted, reordered ---------------------------------------------------------


def test_last_step_dropped_and_summary_steps_lowered(honest: Trained, tmp_path: Path) -> None:
    """The last step's receipts and headers deleted, summary.json says one step fewer; nothing re-signed."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    last = max(s for s in map(step_of, records) if s is not None)
    write_records(run, without(records, lambda r: step_of(r) == last))
    summary = read_summary(run)
    summary["steps"] = summary["steps_completed"] = last
    summary["losses"] = summary["losses"][:last]
    write_summary(run, summary)
    caught(honest, run, E.RECORD_REWRITTEN)
    caught(honest, run, E.SUMMARY_REWRITTEN)


def test_last_step_dropped_with_its_heads_and_seal(honest: Trained, tmp_path: Path) -> None:
    """Everything from the last step's first record on is cut (its heads, the final head, the
    cosignatures), the summary lowered: unsealed; a witness shows the heads that were cut."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    last = max(s for s in map(step_of, records) if s is not None)
    first = next(i for i, r in enumerate(records) if step_of(r) == last)
    write_records(run, records[:first])
    summary = read_summary(run)
    summary["steps"] = summary["steps_completed"] = last
    summary["losses"] = summary["losses"][:last]
    write_summary(run, summary)
    caught(honest, run, E.RECORD_UNSEALED)
    caught(honest, run, E.RECORD_TRUNCATED, witness=True)


def test_every_receipt_of_one_worker_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, without(records, lambda r: r[0] is RecordType.RECEIPT and author(r) == "s2r0"))
    caught(honest, run, E.RECORD_REWRITTEN)


def test_every_record_of_one_worker_deleted(honest: Trained, tmp_path: Path) -> None:
    """s0r0's receipts and signed headers all gone."""
    run = copy_run(honest, tmp_path)
    write_records(run, without(read_records(run), lambda r: author(r) == "s0r0"))
    caught(honest, run, E.RECORD_REWRITTEN)


def test_attacked_step_deleted_with_its_detection_and_response_events(attacked: Trained, tmp_path: Path) -> None:
    """The first attacked step's receipts and headers deleted, and its detection and response events
    (and the summary's) with them: the log and the event log no longer hold what the heads signed."""
    run = copy_run(attacked, tmp_path)
    summary = read_summary(run)
    step = summary["detections"][0]["step"]
    write_records(run, without(read_records(run), lambda r: step_of(r) == step))
    hidden = ("detection", "response")
    lines = read_events(run)
    kept = [line for line in lines if not (event(line)["event"] in hidden and event(line).get("step") == step)]
    assert len(kept) < len(lines)
    write_events(run, kept)
    summary["detections"] = [d for d in summary["detections"] if d["step"] != step]
    summary["responses"] = [r for r in summary["responses"] if r["detection"]["step"] != step]
    write_summary(run, summary)
    caught(attacked, run, E.RECORD_REWRITTEN)
    caught(attacked, run, E.EVENTS_REWRITTEN)


def test_two_signed_headers_of_an_honest_worker_swapped(honest: Trained, tmp_path: Path) -> None:
    """Two genuine headers of s0r0 trade places, the frames recomputed so the log's chain holds."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    a, b = [i for i, r in enumerate(records) if r[0] is RecordType.HEADER and author(r) == "s0r0"][:2]
    records[a], records[b] = records[b], records[a]
    write_records(run, records)
    report = audit(honest, run)
    assert E.LOG_CHAIN not in {f.code for f in report.findings}
    assert_caught(report, E.RECORD_REWRITTEN, honest.malicious)


def test_two_receipts_of_an_honest_worker_swapped(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    a, b = [i for i, r in enumerate(records) if r[0] is RecordType.RECEIPT and author(r) == "s2r0"][1:3]
    records[a], records[b] = records[b], records[a]
    write_records(run, records)
    caught(honest, run, E.RECORD_REWRITTEN)


def test_genuine_receipt_replayed_inside_the_log(honest: Trained, tmp_path: Path) -> None:
    """A copy of a genuine receipt of s1r0 inserted right after it."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = next(i for i, r in enumerate(records) if r[0] is RecordType.RECEIPT and author(r) == "s1r0")
    records.insert(at + 1, records[at])
    write_records(run, records)
    caught(honest, run, E.RECORD_REWRITTEN)


def test_receipt_byte_edited_and_reframed(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = next(i for i, r in enumerate(records) if r[0] is RecordType.RECEIPT and author(r) == "s1r0")
    payload = bytearray(records[at][1])
    payload[-1] ^= 0x01
    records[at] = (RecordType.RECEIPT, bytes(payload))
    write_records(run, records)
    caught(honest, run, E.RECORD_REWRITTEN)


def test_replaced_workers_records_deleted(replaced: Trained, tmp_path: Path) -> None:
    """The ejected worker's records deleted, to hide that it was ever caught."""
    run = copy_run(replaced, tmp_path)
    write_records(run, without(read_records(run), lambda r: author(r) == "s1r0"))
    caught(replaced, run, E.RECORD_REWRITTEN)


def test_receipt_appended_after_the_seal(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    records.append(next(r for r in records if r[0] is RecordType.RECEIPT))
    write_records(run, records)
    caught(honest, run, E.RECORD_AFTER_SEAL)


def test_genuine_step_head_appended_after_the_seal(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    records.append(records[head_positions(records)[0]])
    write_records(run, records)
    caught(honest, run, E.RECORD_AFTER_SEAL)


# -- step heads -----------------------------------------------------------------------------------


def test_every_step_head_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    write_records(run, without(read_records(run), of_type(RecordType.STEP_HEAD)))
    caught(honest, run, E.RECORD_UNSEALED)


def test_every_step_head_and_cosignature_deleted_is_found_by_a_witness(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, [r for r in records if r[0] in (RecordType.RECEIPT, RecordType.HEADER)])
    caught(honest, run, E.RECORD_UNSEALED)
    caught(honest, run, E.RECORD_TRUNCATED, witness=True)


def test_final_head_and_its_cosignatures_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, records[: head_positions(records)[-1]])
    caught(honest, run, E.RECORD_UNSEALED)
    caught(honest, run, E.RECORD_TRUNCATED, witness=True)


HEADS = 5  # the honest run's step heads: one per step, then the final one
BOUNDARIES = [(head, where) for head in range(HEADS) for where in ("before", "after")]


def _cut_at(honest: Trained, tmp_path: Path, head: int, where: str) -> Path:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    positions = head_positions(records)
    assert len(positions) == HEADS
    write_records(run, records[: positions[head] + (1 if where == "after" else 0)])
    return run


@pytest.mark.parametrize(("head", "where"), BOUNDARIES)
def test_log_truncated_at_a_head_boundary_is_found_by_a_witness(
    honest: Trained, tmp_path: Path, head: int, where: str
) -> None:
    """The log cut just before or just after each step head, audited with the workers' witness
    files: they hold heads the log lacks; cut after the final head, only the cosignatures are gone."""
    run = _cut_at(honest, tmp_path, head, where)
    if (head, where) == (HEADS - 1, "after"):
        caught(honest, run, E.COSIGNATURE_MISSING, witness=True)
    else:
        caught(honest, run, E.RECORD_TRUNCATED, witness=True)


@pytest.mark.parametrize(("head", "where"), [b for b in BOUNDARIES if b[0] >= HEADS - 2])
def test_log_truncated_after_its_last_receipt(honest: Trained, tmp_path: Path, head: int, where: str) -> None:
    """The cuts that keep every receipt (from the last step's head on), from the directory alone:
    unsealed, or the final head without its cosignatures."""
    run = _cut_at(honest, tmp_path, head, where)
    code = E.COSIGNATURE_MISSING if (head, where) == (HEADS - 1, "after") else E.RECORD_UNSEALED
    caught(honest, run, code)


def test_log_emptied_to_its_file_header_is_found_by_a_witness(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    write_records(run, [])
    caught(honest, run, E.RECORD_TRUNCATED, witness=True)


def test_middle_step_head_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    del records[head_positions(records)[1]]
    write_records(run, records)
    caught(honest, run, E.HEAD_SEQUENCE)
    caught(honest, run, E.RECORD_REWRITTEN)


def test_two_step_heads_swapped(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    a, b = head_positions(records)[1:3]
    records[a], records[b] = records[b], records[a]
    write_records(run, records)
    caught(honest, run, E.HEAD_SEQUENCE)


def test_earlier_step_head_replayed_in_place_of_a_later_one(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    positions = head_positions(records)
    records[positions[2]] = records[positions[1]]
    write_records(run, records)
    caught(honest, run, E.HEAD_SEQUENCE)


def test_step_head_signature_flipped(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = head_positions(records)[1]
    signed = SignedStepHead.parse(records[at][1])
    flipped = format(int(signed.signature[0], 16) ^ 1, "x") + signed.signature[1:]
    records[at] = (RecordType.STEP_HEAD, signed.model_copy(update={"signature": flipped}).encode())
    write_records(run, records)
    caught(honest, run, E.HEAD_SIGNATURE)


def test_step_head_reencoded_with_spaces(honest: Trained, tmp_path: Path) -> None:
    """The same head, signature intact, in a non-canonical encoding."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = head_positions(records)[0]
    records[at] = (RecordType.STEP_HEAD, records[at][1].replace(b",", b", "))
    write_records(run, records)
    caught(honest, run, E.HEAD_MALFORMED)


def test_step_heads_resigned_with_the_holders_own_key(honest: Trained, tmp_path: Path) -> None:
    """The holder signs every head with a key of its own and ships it as coordinator.pub: the
    pinned key rejects them."""
    run = copy_run(honest, tmp_path)
    rogue = SigningKey.generate()
    records = [
        (t, sign_head(SignedStepHead.parse(p).head, rogue).encode() if t is RecordType.STEP_HEAD else p)
        for t, p in read_records(run)
    ]
    write_records(run, records)
    (run / "coordinator.pub").write_text(bytes(rogue.verify_key).hex() + "\n")
    caught(honest, run, E.HEAD_SIGNATURE)


# -- a holder with the coordinator's key ----------------------------------------------------------


def test_truncated_log_resealed_with_the_coordinator_key_is_found_by_a_witness(honest: Trained, tmp_path: Path) -> None:
    """The holder cuts the last step and signs a final head over the cut log: the workers' witness
    files hold a different head of that number (HEAD_CONFLICT) and heads the log lacks."""
    run = copy_run(honest, tmp_path)
    forge_truncated_seal(honest, run, "none")
    caught(honest, run, E.HEAD_CONFLICT, witness=True)
    caught(honest, run, E.RECORD_TRUNCATED, witness=True)


def test_truncated_log_resealed_with_the_coordinator_key_lacks_cosignatures(honest: Trained, tmp_path: Path) -> None:
    """The same forgery from the directory alone: no worker cosigned the forged final head."""
    run = copy_run(honest, tmp_path)
    forged = forge_truncated_seal(honest, run, "none")
    report = audit(honest, run)
    assert report.sealed and forged.final
    assert_caught(report, E.COSIGNATURE_MISSING, honest.malicious)


def test_truncated_log_resealed_keeping_the_genuine_cosignatures(honest: Trained, tmp_path: Path) -> None:
    """The genuine cosignatures name the genuine final head, not the forged one."""
    run = copy_run(honest, tmp_path)
    forge_truncated_seal(honest, run, "genuine")
    caught(honest, run, E.COSIGNATURE_INVALID)


def test_truncated_log_resealed_with_ghost_cosigners_is_found_by_a_witness(honest: Trained, tmp_path: Path) -> None:
    """The holder also names workers of its own invention as the stage holders at the end and
    cosigns the forged head in their names with keys of its own: the witnesses still conflict."""
    run = copy_run(honest, tmp_path)
    forge_truncated_seal(honest, run, "ghosts")
    caught(honest, run, E.HEAD_CONFLICT, witness=True)


# -- cosignatures ---------------------------------------------------------------------------------


def _cosignatures(records: list[Record]) -> list[int]:
    return [i for i, r in enumerate(records) if r[0] is RecordType.COSIGNATURE]


def test_every_cosignature_removed(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    write_records(run, without(read_records(run), of_type(RecordType.COSIGNATURE)))
    caught(honest, run, E.COSIGNATURE_MISSING)


def _cosigned_by(worker: str) -> Callable[[Record], bool]:
    return lambda r: r[0] is RecordType.COSIGNATURE and Cosignature.parse(r[1]).worker == worker


@pytest.mark.parametrize(("name", "worker"), [("honest", "s1r0"), ("replaced", "standby0")])
def test_stage_holders_cosignature_removed(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, worker: str
) -> None:
    """One stage holder's cosignature gone: s1r0's, or that of the standby that took stage 1."""
    trained: Trained = request.getfixturevalue(name)
    run = copy_run(trained, tmp_path)
    records = read_records(run)
    assert any(map(_cosigned_by(worker), records))
    write_records(run, without(records, _cosigned_by(worker)))
    caught(trained, run, E.COSIGNATURE_MISSING)


def test_cosignature_duplicated_in_place_of_another(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    first, second = _cosignatures(records)[:2]
    records[second] = records[first]
    write_records(run, records)
    caught(honest, run, E.COSIGNATURE_MISSING)


def test_cosignature_forged_under_another_key(honest: Trained, tmp_path: Path) -> None:
    """A cosignature of the final head in s1r0's name, made with a key that is not s1r0's."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    final = head_at(records, head_positions(records)[-1])
    at = next(i for i in _cosignatures(records) if Cosignature.parse(records[i][1]).worker == "s1r0")
    records[at] = (RecordType.COSIGNATURE, cosign(final, "s1r0", SigningKey.generate()).encode())
    write_records(run, records)
    caught(honest, run, E.COSIGNATURE_INVALID)


def test_cosignature_signature_flipped(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = _cosignatures(records)[0]
    genuine = Cosignature.parse(records[at][1])
    flipped = format(int(genuine.signature[-1], 16) ^ 1, "x")
    records[at] = (
        RecordType.COSIGNATURE,
        genuine.model_copy(update={"signature": genuine.signature[:-1] + flipped}).encode(),
    )
    write_records(run, records)
    caught(honest, run, E.COSIGNATURE_INVALID)


def test_cosignatures_of_another_run_spliced_in(honest: Trained, attacked: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    foreign = [r for r in read_records(attacked.run) if r[0] is RecordType.COSIGNATURE]
    write_records(run, without(read_records(run), of_type(RecordType.COSIGNATURE)) + foreign)
    caught(honest, run, E.COSIGNATURE_INVALID)


def test_cosignature_moved_before_the_final_head(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = _cosignatures(records)[0]
    moved = records.pop(at)
    records.insert(head_positions(records)[-1], moved)
    write_records(run, records)
    caught(honest, run, E.RECORD_REWRITTEN)


# -- witness files --------------------------------------------------------------------------------


def test_witness_files_of_another_run_do_not_hide_a_cut(honest: Trained, attacked: Trained, tmp_path: Path) -> None:
    """The final head cut, and the auditor handed the attacked run's witness files in place of this
    run's: they are not evidence for this run (warnings), and the cut is still found."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    write_records(run, records[: head_positions(records)[-1]])
    report = audit(honest, run, witnesses(attacked.run))
    assert_caught(report, E.RECORD_UNSEALED, honest.malicious)
    assert {f.severity for f in report.findings if f.code is E.WITNESS_MALFORMED} == {Severity.WARNING}


def test_witness_file_of_another_run_is_a_warning_on_an_intact_run(
    honest: Trained, attacked: Trained, tmp_path: Path
) -> None:
    report = audit(honest, honest.run, witnesses(attacked.run)[:1])
    assert report.clean, [(f.code, f.message) for f in report.errors]
    assert [f.severity for f in report.findings if f.code is E.WITNESS_MALFORMED] != []
    assert report.witness_heads == 0


def test_malformed_witness_file_is_a_warning_only(honest: Trained, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"head": "not a head"}\n')
    report = audit(honest, honest.run, [bad, *witnesses(honest.run)])
    assert report.clean, [(f.code, f.message) for f in report.errors]
    [finding] = [f for f in report.findings if f.code is E.WITNESS_MALFORMED]
    assert finding.severity is Severity.WARNING
    assert CliRunner().invoke(cli, _cli_args(honest, honest.run, bad)).exit_code == 0


def test_torn_last_witness_line_is_a_warning_only(honest: Trained, tmp_path: Path) -> None:
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(witnesses(honest.run)[0].read_bytes()[:-40])
    report = audit(honest, honest.run, [torn])
    assert report.clean, [(f.code, f.message) for f in report.errors]
    [finding] = [f for f in report.findings if f.code is E.WITNESS_MALFORMED]
    assert finding.severity is Severity.WARNING and "incomplete" in finding.message
    assert report.witness_heads == HEADS - 1


def _cli_args(trained: Trained, run: Path, witness: Path) -> list[str]:
    return [
        "audit",
        str(run),
        "--verifier-key",
        trained.verifier_key.hex(),
        "--coordinator-key",
        trained.coordinator_key.hex(),
        "--witness",
        str(witness),
    ]
