"""The sealed run record's files beside the receipt log, attacked from the log holder's side:
``events.jsonl`` lines edited, deleted, inserted, reordered, re-drawn; ``summary.json`` fields
edited; both rewritten by a holder who also re-signs the step heads with the coordinator's key.

The runs and the tools are those of ``test_sealed_record.py`` (:mod:`sealed_record_fixtures`):
every case tampers with a copy of a real run and asserts that the audit with both keys pinned is
not clean, names the expected finding, and blames no worker the attack plan does not make malicious.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sealed_record_fixtures import (  # noqa: F401  (attacked_run, honest_run, replaced_run: fixtures)
    SUMMARY,
    Trained,
    attacked_run,
    caught,
    copy_run,
    event,
    hide_detections,
    honest_run,
    of_type,
    read_events,
    read_records,
    read_summary,
    replaced_run,
    reseal,
    without,
    write_events,
    write_records,
    write_summary,
)

from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.receipt_log import RecordType

E = ErrorCode


# -- events.jsonl ---------------------------------------------------------------------------------


def _edit_events(run: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    write_events(run, edit(read_events(run)))


def _step_line(lines: list[bytes]) -> int:
    return next(i for i, line in enumerate(lines) if event(line)["event"] == "step")


def test_event_loss_edited(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    lines = read_events(run)
    at = _step_line(lines)
    lines[at] = lines[at].replace(b'"loss": 5.', b'"loss": 4.')
    assert lines != read_events(run)
    write_events(run, lines)
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_line_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    _edit_events(run, lambda lines: lines[:5] + lines[6:])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_line_inserted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    _edit_events(run, lambda lines: [*lines[:6], lines[5], *lines[6:]])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_lines_reordered(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    _edit_events(run, lambda lines: [*lines[:5], lines[6], lines[5], *lines[7:]])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_last_event_line_deleted(honest: Trained, tmp_path: Path) -> None:
    """The run_completed line removed (the final head covers every line)."""
    run = copy_run(honest, tmp_path)
    _edit_events(run, lambda lines: lines[:-1])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_line_appended_after_the_seal(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    _edit_events(run, lambda lines: [*lines, b'{"event": "note", "text": "all fine"}'])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_log_emptied(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    write_events(run, [])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_log_deleted(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    (run / "events.jsonl").unlink()
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_log_last_newline_cut(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    path = run / "events.jsonl"
    path.write_bytes(path.read_bytes()[:-1])
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_event_line_reserialised_with_the_same_content(honest: Trained, tmp_path: Path) -> None:
    """Same JSON value, other bytes: the chain is over the lines as written."""
    run = copy_run(honest, tmp_path)
    lines = read_events(run)
    at = _step_line(lines)
    lines[at] = lines[at].replace(b'": ', b'":')
    assert event(lines[at]) == event(read_events(run)[at])
    write_events(run, lines)
    caught(honest, run, E.EVENTS_REWRITTEN)


def _redraw_first_reveal(run: Path, stage: int) -> list[bytes]:
    """Replace the sample of the first spot-check reveal by stage ``stage``'s update alone; return
    the event lines as written."""
    lines = read_events(run)
    at = next(i for i, line in enumerate(lines) if event(line)["event"] == "spot_check_reveal")
    prefix, _, rest = lines[at].partition(b'"sampled": [')
    _, _, suffix = rest.partition(b"]")
    drawn = {"kind": "update", "micro_batch": 0, "stage": stage}
    lines[at] = prefix + b'"sampled": [' + json.dumps(drawn, sort_keys=True).encode() + b"]" + suffix
    assert event(lines[at])["sampled"] == [drawn] != event(read_events(run)[at])["sampled"]
    write_events(run, lines)
    return lines


def test_spot_check_sample_redrawn(honest: Trained, tmp_path: Path) -> None:
    """A reveal's sampled units replaced by another draw (stage 2's update only)."""
    run = copy_run(honest, tmp_path)
    _redraw_first_reveal(run, 2)
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_spot_check_sample_redrawn_and_every_head_resigned(attacked: Trained, tmp_path: Path) -> None:
    """A holder with the coordinator key re-draws a reveal so that stage 1 seems never sampled, and
    re-signs every head over the edited event log and the final head over the same summary: the
    workers cosigned and kept other heads."""
    run = copy_run(attacked, tmp_path)
    lines = _redraw_first_reveal(run, 0)
    summary = (run / SUMMARY).read_bytes()
    write_records(run, reseal(read_records(run), lines, summary, attacked.signing_key, lambda h: h.events))
    caught(attacked, run, E.COSIGNATURE_INVALID)
    caught(attacked, run, E.HEAD_CONFLICT, witness=True)


def test_spot_check_commitment_replaced(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    lines = read_events(run)
    at = next(i for i, line in enumerate(lines) if event(line)["event"] == "spot_check_commitment")
    commitment = event(lines[at])["commitment"].encode()
    lines[at] = lines[at].replace(commitment, bytes(reversed(commitment)))
    write_events(run, lines)
    caught(honest, run, E.EVENTS_REWRITTEN)


def test_detection_event_deleted(attacked: Trained, tmp_path: Path) -> None:
    run = copy_run(attacked, tmp_path)
    lines = read_events(run)
    at = next(i for i, line in enumerate(lines) if event(line)["event"] == "detection")
    write_events(run, lines[:at] + lines[at + 1 :])
    caught(attacked, run, E.EVENTS_REWRITTEN)


def test_response_events_deleted(attacked: Trained, tmp_path: Path) -> None:
    run = copy_run(attacked, tmp_path)
    _edit_events(run, lambda lines: [line for line in lines if event(line)["event"] != "response"])
    caught(attacked, run, E.EVENTS_REWRITTEN)


def test_ejection_event_deleted(replaced: Trained, tmp_path: Path) -> None:
    run = copy_run(replaced, tmp_path)
    _edit_events(run, lambda lines: [line for line in lines if event(line)["event"] != "ejected"])
    caught(replaced, run, E.EVENTS_REWRITTEN)


# -- summary.json ---------------------------------------------------------------------------------


def _edit_summary(trained: Trained, tmp_path: Path, field: str, value: object) -> Path:
    run = copy_run(trained, tmp_path)
    summary = read_summary(run)
    assert summary[field] != value
    summary[field] = value
    write_summary(run, summary)
    return run


def test_summary_steps_raised(honest: Trained, tmp_path: Path) -> None:
    """One step more in every field that counts steps (the summary stays self-consistent)."""
    run = copy_run(honest, tmp_path)
    summary = read_summary(run)
    summary["steps"] = summary["steps_completed"] = summary["steps"] + 1
    summary["losses"] = [*summary["losses"], summary["losses"][-1]]
    write_summary(run, summary)
    caught(honest, run, E.SUMMARY_REWRITTEN)


def test_summary_status_set_to_stopped(honest: Trained, tmp_path: Path) -> None:
    run = _edit_summary(honest, tmp_path, "status", "stopped")
    caught(honest, run, E.SUMMARY_REWRITTEN)


def test_summary_losses_edited(honest: Trained, tmp_path: Path) -> None:
    losses = read_summary(honest.run)["losses"]
    caught(honest, _edit_summary(honest, tmp_path, "losses", [x / 2 for x in losses]), E.SUMMARY_REWRITTEN)


def test_summary_detections_removed(attacked: Trained, tmp_path: Path) -> None:
    caught(attacked, _edit_summary(attacked, tmp_path, "detections", []), E.SUMMARY_REWRITTEN)


def test_summary_replacements_removed(replaced: Trained, tmp_path: Path) -> None:
    caught(replaced, _edit_summary(replaced, tmp_path, "replacements", []), E.SUMMARY_REWRITTEN)


def test_summary_final_weights_edited(honest: Trained, tmp_path: Path) -> None:
    weights = dict(read_summary(honest.run)["final_weights"])
    weights["stages"] = list(reversed(weights["stages"]))
    caught(honest, _edit_summary(honest, tmp_path, "final_weights", weights), E.SUMMARY_REWRITTEN)


def test_summary_reformatted_without_changing_a_value(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    path = run / SUMMARY
    path.write_bytes(path.read_bytes().rstrip(b"\n") + b"\n\n")
    caught(honest, run, E.SUMMARY_REWRITTEN)


# -- a holder with the coordinator's key ----------------------------------------------------------


def test_detections_removed_from_summary_and_final_head_resigned(attacked: Trained, tmp_path: Path) -> None:
    """The holder drops the detections from summary.json and re-signs the final head over its new
    digest, keeping the workers' cosignatures: they cosigned another head."""
    run = copy_run(attacked, tmp_path)
    summary = read_summary(run)
    summary["detections"], summary["responses"] = [], []
    data = write_summary(run, summary)
    records = reseal(read_records(run), read_events(run), data, attacked.signing_key, lambda h: h.events)
    write_records(run, records)
    caught(attacked, run, E.COSIGNATURE_INVALID)
    caught(attacked, run, E.HEAD_CONFLICT, witness=True)


def test_detection_events_removed_and_every_head_resigned(attacked: Trained, tmp_path: Path) -> None:
    """The holder deletes every detection and response event, re-chains events.jsonl and re-signs
    every head (and the summary without them); the genuine cosignatures are dropped."""
    run = copy_run(attacked, tmp_path)
    kept, events_at, summary = hide_detections(run)
    data = write_summary(run, summary)
    records = without(read_records(run), of_type(RecordType.COSIGNATURE))
    write_records(run, reseal(records, kept, data, attacked.signing_key, events_at))
    caught(attacked, run, E.COSIGNATURE_MISSING)
    caught(attacked, run, E.HEAD_CONFLICT, witness=True)


def test_replacement_hidden_and_every_head_resigned(replaced: Trained, tmp_path: Path) -> None:
    """The ejection and its response hidden from the event log, the summary and its workers list (so
    the ejected worker seems to hold stage 1 to the end); every head re-signed."""
    run = copy_run(replaced, tmp_path)
    lines = read_events(run)
    gone = [i for i, line in enumerate(lines) if event(line)["event"] in ("ejected", "response", "detection")]
    kept = [line for i, line in enumerate(lines) if i not in gone]
    write_events(run, kept)
    summary = read_summary(run)
    summary["replacements"], summary["detections"], summary["responses"] = [], [], []
    summary["workers"] = [w for w in summary["workers"] if w["id"] != "standby0"]
    data = write_summary(run, summary)
    records = reseal(
        read_records(run), kept, data, replaced.signing_key, lambda h: h.events - sum(i < h.events for i in gone)
    )
    write_records(run, records)
    caught(replaced, run, E.COSIGNATURE_INVALID)
    caught(replaced, run, E.HEAD_CONFLICT, witness=True)
