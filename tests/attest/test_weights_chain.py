"""The weights chain, attacked on copies of real runs: every stage's weights followed from checkpoint
0 through each update receipt and checkpoint to ``final_weights`` (stagewarden.attest.audit_weights).

The holder of these attacks has the coordinator's key and re-signs every step head over what it
changed, so the seal alone says only that the final head's cosignatures no longer match; the
weights chain says what is wrong with the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sealed_record_fixtures import (  # noqa: F401  (attacked_run, honest_run, replaced_run: fixtures)
    LOG,
    SUMMARY,
    Trained,
    attacked_run,
    audit,
    caught,
    copy_run,
    event,
    honest_run,
    read_events,
    read_records,
    read_summary,
    replaced_run,
    reseal,
    write_events,
    write_records,
    write_summary,
)

from stagewarden.attest.audit_findings import FindingLog
from stagewarden.attest.audit_records import check_records
from stagewarden.attest.audit_weights import WeightsChain
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.receipt_log import read_log
from stagewarden.attest.receipts import Receipt
from stagewarden.attest.run_record import RunRecord

E = ErrorCode


def _flip(digest: str) -> str:
    return ("1" if digest[0] == "0" else "0") + digest[1:]


def _edit_event(run: Path, kind: str, change: object) -> list[bytes]:
    """Apply ``change`` (a function of the event) to the first ``kind`` event after step 0."""
    lines = read_events(run)
    at = next(i for i, line in enumerate(lines) if event(line)["event"] == kind and event(line)["step"] >= 1)
    edited = event(lines[at])
    change(edited)  # type: ignore[operator]
    lines[at] = json.dumps(edited, sort_keys=True).encode("utf-8")
    write_events(run, lines)
    return lines


def _resign(trained: Trained, run: Path, lines: list[bytes]) -> None:
    summary = (run / SUMMARY).read_bytes()
    write_records(run, reseal(read_records(run), lines, summary, trained.signing_key, lambda h: h.events))


def test_real_runs_chain_their_weights(honest: Trained, attacked: Trained, replaced: Trained) -> None:
    """Honest, attacked-and-restarted and replaced runs log an update event per computed step and
    audit clean: the chain holds through recomputations and a standby's restore."""
    for trained in (honest, attacked, replaced):
        kinds = [event(line)["event"] for line in read_events(trained.run)]
        assert kinds.count("updated") >= read_summary(trained.run)["steps"]
        report = audit(trained, trained.run)
        assert report.clean, [f.message for f in report.errors]


def test_final_weights_that_no_update_produced(honest: Trained, tmp_path: Path) -> None:
    """The summary's final weights of stage 1 are changed and every head re-signed over it."""
    run = copy_run(honest, tmp_path)
    summary = read_summary(run)
    summary["final_weights"]["stages"][1] = _flip(summary["final_weights"]["stages"][1])
    data = write_summary(run, summary)
    write_records(run, reseal(read_records(run), read_events(run), data, honest.signing_key, lambda h: h.events))
    caught(honest, run, E.WEIGHTS_CHAIN)


def test_update_event_not_what_the_receipt_commits_to(honest: Trained, tmp_path: Path) -> None:
    """An update event names other weights for stage 0 than its signed update receipt commits to."""
    run = copy_run(honest, tmp_path)

    def change(e: dict) -> None:  # type: ignore[type-arg]
        e["stages"]["0"]["weights"] = _flip(e["stages"]["0"]["weights"])

    _resign(honest, run, _edit_event(run, "updated", change))
    caught(honest, run, E.WEIGHTS_CHAIN)


def test_checkpoint_event_with_other_weights(honest: Trained, tmp_path: Path) -> None:
    """A checkpoint event names weights for stage 2 that no update of the step before produced."""
    run = copy_run(honest, tmp_path)

    def change(e: dict) -> None:  # type: ignore[type-arg]
        e["weights"]["2"] = _flip(e["weights"]["2"])

    _resign(honest, run, _edit_event(run, "checkpoint", change))
    caught(honest, run, E.WEIGHTS_CHAIN)


def test_checkpoint_swapped_on_disk(honest: Trained, tmp_path: Path) -> None:
    """The checkpoint folder of step 2 is replaced by that of step 1 (a resume would restore older
    weights): its manifest is not the one the run's signed event names. Nothing is re-signed."""
    run = copy_run(honest, tmp_path)
    root = run / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    assert len(steps) >= 2, steps
    older, newer = root / steps[-2], root / steps[-1]
    shutil.rmtree(newer)
    shutil.copytree(older, newer)
    caught(honest, run, E.WEIGHTS_CHAIN)


def test_an_update_that_ran_on_other_weights(honest: Trained, tmp_path: Path) -> None:
    """Replaying the events with the step-0 checkpoint's weights of stage 0 changed makes the first
    update look as if it ran on weights the stage never held."""
    lines = read_events(honest.run)
    at = next(i for i, line in enumerate(lines) if event(line)["event"] == "checkpoint")
    first = event(lines[at])
    first["weights"]["0"] = _flip(first["weights"]["0"])
    lines[at] = json.dumps(first, sort_keys=True).encode("utf-8")
    records = read_log(honest.run / LOG).records
    found = FindingLog()
    items = [i for i in check_records(records, 1, found) if isinstance(i.obj, Receipt)]
    WeightsChain(RunRecord.from_json(honest.run / SUMMARY), found).check(b"\n".join(lines) + b"\n", items)
    assert [f.code for f in found.findings] == [E.WEIGHTS_CHAIN]
    assert "ran on weights" in found.findings[0].message and found.findings[0].workers == ()


def test_an_event_nested_deeper_than_the_decoder_goes_is_a_finding_not_a_crash(honest: Trained, tmp_path: Path) -> None:
    """A line of 100000 nested arrays appended to events.jsonl and re-signed into every head: the
    weights chain skips it as not an event (it used to stop the audit with a RecursionError), and
    the audit still reports what was changed."""
    run = copy_run(honest, tmp_path)
    lines = [*read_events(run), b"[" * 100_000 + b"]" * 100_000]
    write_events(run, lines)
    _resign(honest, run, lines)
    caught(honest, run, E.EVENTS_REWRITTEN)
