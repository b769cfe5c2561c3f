"""Fuzzing the run records that ``stagewarden report``, ``replay`` and ``conformance`` read: the event
log (``stagewarden/run_history.py read_events`` and ``reconstruct``) and a run directory as the
report reads it (``report/runs.py read_run``: summary, ``metrics.csv``, ``events.jsonl``,
attestation files, and the run's label and detections).

The base inputs are the recorded runs under ``docs/report-example`` (real ``stagewarden demo``
runs). Properties: reading an event log never raises (a bad line is a problem, not an error)
and every line is either an event or a problem; the history rebuilt from any events never
raises; a run directory is read or refused with ReportError, and what is read can be shown.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fuzzing import FOLDER_SECONDS, mutated_json_text, outcome
from hypothesis import example, given
from hypothesis import strategies as st
from receipt_fixtures import small_run
from record_fixtures import with_training
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.attest.run_record import RunRecord
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.report.errors import ReportError
from stagewarden.report.runs import RunData, read_run
from stagewarden.run_history import read_events, reconstruct

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "attacked"
EVENTS_TEXT = (RECORDED / "events.jsonl").read_bytes()
EVENTS: list[dict[str, Any]] = [json.loads(line) for line in EVENTS_TEXT.splitlines() if line.strip()]
METRICS_TEXT = (RECORDED / "metrics.csv").read_bytes()
RECORDED_SUMMARY = json.loads((RECORDED / "summary.json").read_text())
_EVENT_VALUES = st.one_of(
    json_values,
    st.sampled_from(["step", "detection", "response", "spot_check_reveal", "restored_checkpoint", "run_stopped"]),
    st.sampled_from([[{"stage": 0, "micro_batch": 0}], [{"stage": 0, "micro_batch": 0, "kind": None}], "zz", "00"]),
)


def _lines(events: list[Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run-records")


def _read_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    result, _ = outcome(read_events, path, errors=())
    assert result is not None
    events, problems = result
    assert all(isinstance(e, dict) and isinstance(e.get("event"), str) for e in events)
    assert all(p.startswith("events.jsonl line ") for p in problems)
    # the lines as read_events sees them: JSON Lines end at "\n" only (a "\r" is inside its line)
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    assert len(events) + len(problems) == sum(1 for line in lines if line.strip())
    return events, problems


@fuzz_settings()
@given(
    st.one_of(
        st.binary(max_size=600),
        mutated_bytes(EVENTS_TEXT),
        mutated_json_text(EVENTS_TEXT),
        mutated_tree(EVENTS, values=_EVENT_VALUES).map(_lines),
    )
)
@example(b"[" * 100_000 + b"\n")  # RecursionError escaped read_events (fixed)
@example(_lines([{"event": "spot_check_reveal", "step": 0, "secret": "00", "receipts_digest": "00", "sampled": [{}]}]))
def test_event_logs(workdir: Path, data: bytes) -> None:
    """Any events.jsonl reads as events and one problem per unreadable line, and any events that
    read rebuild a history without raising."""
    path = workdir / "events.jsonl"
    path.write_bytes(data)
    events, _ = _read_events(path)
    history, _ = outcome(reconstruct, events, errors=())
    assert history is not None
    assert all(isinstance(p, str) for p in history.problems)
    assert all(type(c.step) is int and c.step >= 0 and type(c.attempt) is int for c in history.computations)
    assert all(isinstance(s.secret, bytes) and isinstance(s.sampled, tuple) for s in history.samples)


def test_recorded_event_log_reads_without_problems(workdir: Path) -> None:
    """The base of the edits reads cleanly: every line is an event, and a detection is recorded."""
    path = workdir / "recorded.jsonl"
    path.write_bytes(EVENTS_TEXT)
    events, problems = _read_events(path)
    assert not problems and len(events) == len(EVENTS)
    history = reconstruct(events)
    assert history.detections and history.samples and not history.problems


@fuzz_settings()
@given(mutated_tree(EVENTS, values=_EVENT_VALUES, max_edits=5))
# A reveal whose sampled unit had a stage and micro-batch but no kind raised KeyError (fixed).
@example(
    [
        {
            "event": "spot_check_reveal",
            "step": 1,
            "secret": "ab",
            "receipts_digest": "cd",
            "sampled": [{"stage": 0, "micro_batch": 0}],
        }
    ]
)
def test_edited_events(events: Any) -> None:
    """The history of edited events (those with a string ``event``, as read_events keeps them) is
    rebuilt without raising; every sample it keeps names units by (stage, micro-batch, kind name)."""
    kept = [e for e in events if isinstance(e, dict) and isinstance(e.get("event"), str)]
    history, _ = outcome(reconstruct, kept, errors=())
    assert history is not None
    for sample in history.samples:
        assert all(type(s) is int and type(m) is int and isinstance(k, str) for s, m, k in sample.sampled)


# -- a run directory as the report reads it -------------------------------------------------------

RUN = small_run(stages=2, micro_batches=1, steps=1)
_RECORDED_TRAINING = RunRecord.from_data(RECORDED_SUMMARY).require_training()
_TRAINING = with_training(RUN.summary).require_training()
SUMMARY = RUN.summary.model_copy(
    update={
        "training": _TRAINING.model_copy(
            update={"detections": _RECORDED_TRAINING.detections, "responses": _RECORDED_TRAINING.responses}
        )
    }
).to_data()
_LONG_FIELD = b'step,loss\n0,"' + b"1" * 140_000 + b'"\n'  # past csv's field size limit


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run directory with the recorded run's configuration, metrics and events."""
    folder = RUN.write(tmp_path_factory.mktemp("report-run") / "run")
    (folder / "summary.json").write_text(json.dumps(SUMMARY, indent=2))
    (folder / "metrics.csv").write_bytes(METRICS_TEXT)
    (folder / "events.jsonl").write_bytes(EVENTS_TEXT)
    for worker in ("s0r0", "s1r0"):
        shutil.copy(RECORDED / "attestation" / f"{worker}.evidence", folder / "attestation" / f"{worker}.evidence")
    return folder


def _show(run: RunData) -> None:
    """Everything the report pages take from a run, which must not raise either."""
    assert isinstance(run.label, str) and run.label
    assert all(isinstance(d, SignedDetection) for d in run.detections)
    assert isinstance(run.secured, bool)
    assert run.attack is None or isinstance(run.attack, dict)
    assert all(isinstance(row, dict) and all(isinstance(v, float) for v in row.values()) for row in run.metrics)


@st.composite
def edited_report_runs(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file, new content): one of the files the report reads, edited."""
    name = draw(st.sampled_from(["summary.json", "metrics.csv", "events.jsonl", "attestation/s0r0.evidence"]))
    if name == "summary.json":
        document = draw(mutated_tree(SUMMARY, values=_EVENT_VALUES, max_edits=2))
        return name, json.dumps(document).encode()
    if name == "metrics.csv":
        return name, draw(st.one_of(mutated_bytes(METRICS_TEXT), st.just(_LONG_FIELD), st.binary(max_size=200)))
    if name == "events.jsonl":
        return name, draw(st.one_of(mutated_json_text(EVENTS_TEXT), mutated_bytes(EVENTS_TEXT)))
    return name, draw(mutated_bytes((RECORDED / "attestation" / "s0r0.evidence").read_bytes()))


@fuzz_settings(0.5)
@given(edited_report_runs())
@example(("metrics.csv", _LONG_FIELD))  # csv.Error escaped read_run (fixed)
@example(("events.jsonl", b"[" * 100_000 + b"\n"))  # RecursionError escaped read_run (fixed)
@example(("summary.json", json.dumps({**SUMMARY, "standby": ["x" * 300]}).encode()))  # OSError: name too long (fixed)
@example(("summary.json", json.dumps({**SUMMARY, "detections": 3}).encode()))  # TypeError in .detections (fixed)
@example(("summary.json", json.dumps({**SUMMARY, "config": {**SUMMARY["config"], "attack": {"stages": 1}}}).encode()))
def test_report_reads_edited_runs(pristine: Path, workdir: Path, case: tuple[str, bytes]) -> None:
    """A run directory with one file edited is read, and can be shown, or is refused with ReportError."""
    name, content = case
    folder = workdir / "report-run"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pristine, folder)
    (folder / name).write_bytes(content)
    run, error = outcome(read_run, folder, errors=ReportError, limit=FOLDER_SECONDS)
    if error is not None:
        assert str(error)
        return
    assert run is not None
    _show(run)
    if name == "metrics.csv":  # every value of the table as read is a number of the file
        rows = list(csv.DictReader(io.StringIO(content.decode("utf-8"), newline="")))
        assert len(run.metrics) == len(rows)
