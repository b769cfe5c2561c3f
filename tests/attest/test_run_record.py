"""summary.json from the attacker's side: every hostile record is refused with one line naming
the field (exit 2 at the CLI, never a traceback), within bounded time and memory, and every
real record reads back and writes back byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from receipt_fixtures import small_run, write_run
from record_fixtures import recorded_data

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.run_record import MAX_MICRO_BATCHES, MAX_RECOMPUTED_STEPS, MAX_RECORD_BYTES, RunRecord
from stagewarden.attest.rundir import RunDir, RunDirError
from stagewarden.cli import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "report-example"
SPEC = Path(__file__).resolve().parents[2] / "stagewarden" / "spec" / "examples" / "demo.yaml"


def _refused(source: str | bytes | Path) -> str:
    with pytest.raises(RunDirError) as info:
        RunRecord.from_json(source)
    assert info.value.code is ErrorCode.RUNDIR_MALFORMED
    message = info.value.message
    assert "\n" not in message and len(message) < 600, message
    return message


@pytest.mark.parametrize("name", ["clean", "attacked"])
def test_earlier_records_read_and_write_back_byte_for_byte(name: str) -> None:
    """A record of an earlier release (no faults, resumes, benched...) reads, and writes back
    unchanged: the keys added since are not invented."""
    path = Path(__file__).parent / "data" / f"summary_previous_release_{name}.json"
    record = RunRecord.from_json(path)
    assert record.to_json() == path.read_text(encoding="utf-8")
    training = record.require_training()
    assert training.faults == [] and training.pending_fault is None and "faults" not in record.to_data()
    assert record.format_version == 1 and record.steps == len(training.losses)


@pytest.mark.parametrize("name", ["clean", "attacked"])
def test_recorded_runs_read_and_write_back_byte_for_byte(name: str) -> None:
    """The recorded demo runs' records read and write back unchanged (their final step head signs
    these very bytes)."""
    path = EXAMPLES / name / "summary.json"
    record = RunRecord.from_json(path)
    assert record.to_json() == path.read_text(encoding="utf-8")
    assert record.format_version == 1 and record.steps == len(record.require_training().losses)


def test_a_synthetic_record_has_no_training_part(tmp_path: Path) -> None:
    """A synthetic run's record is identity only; asking it for training data is one clear error."""
    run = small_run()
    record = RunDir(write_run(tmp_path, run)).summary
    assert record.training is None and record == run.summary
    with pytest.raises(RunDirError, match="no training record"):
        record.require_training()


def test_the_written_file_is_atomic_and_reads_back(tmp_path: Path) -> None:
    """write() leaves the whole file (no temporary beside it) and it reads back equal."""
    record = RunRecord.from_json(EXAMPLES / "attacked" / "summary.json")
    record.write(tmp_path / "summary.json")
    assert os.listdir(tmp_path) == ["summary.json"]
    assert RunRecord.from_json(tmp_path / "summary.json") == record


def _edited(change: Callable[[dict[str, Any]], object]) -> str:
    data = recorded_data()
    change(data)
    return json.dumps(data)


def _detection(data: dict[str, Any]) -> dict[str, Any]:
    detection: dict[str, Any] = data["detections"][0]
    return detection


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(steps="5"), "steps: Input should be a valid integer"),
        (lambda d: d.update(steps=True), "steps: Input should be a valid integer"),
        (lambda d: d.update(steps=4294967295), "steps (4294967295), steps_completed (5)"),
        (lambda d: d.update(steps=2**64), "steps: Input should be less than or equal to 4294967295"),
        (lambda d: d.update(micro_batches=4294967295), "micro_batches: Input should be less than or equal to 1000000"),
        (lambda d: d.update(stages=65537), "stages: Input should be less than or equal to 65536"),
        (lambda d: d.update(steps_completed=-1), "steps_completed: Input should be greater than or equal to 0"),
        (lambda d: d["losses"].append("x"), "losses[5]: Input should be a valid number"),
        (lambda d: _detection(d).update(step=True), "detections[0].step: Input should be a valid integer"),
        (lambda d: _detection(d).update(unit_kind="sideways"), "detections[0].unit_kind: Input should be"),
        (lambda d: _detection(d).update(signature="00"), "detections[0].signature: String should match"),
        (lambda d: _detection(d).update(extra=1), "detections[0].extra: unknown field"),
        (lambda d: _detection(d).pop("worker"), "detections[0].worker: missing field"),
        (lambda d: d["responses"][0]["plan"].update(response="pray"), "responses[0].plan.response: Input should"),
        (lambda d: d["responses"][0]["plan"].update(redo_from_step=4), "redoes from step 4, after its step 3"),
        (lambda d: d.update(surprise=[1]), "surprise: unknown field"),
        (lambda d: d.pop("coordinator_key"), "coordinator_key: missing field"),
        (lambda d: d.update(status="victorious"), "status: Input should be"),
        (lambda d: d.update(stage_busy_seconds=[0.0]), "stage_busy_seconds must have one entry per stage (4)"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.update(version=1.0), "version 1.0 is not supported"),
        (lambda d: d.update(format="other"), "format must be 'stagewarden.run-summary'"),
        (lambda d: d["workers"].append(d["workers"][0]), "worker 's0r0' is listed twice"),
        (lambda d: d.update(run_id="../x"), "run_id: String should match"),
    ],
)
def test_a_hostile_field_is_refused_by_name(change: Callable[[dict[str, Any]], object], needle: str) -> None:
    """Wrong types, out-of-range or inconsistent counts, unknown and missing fields: one line
    that names the field."""
    assert needle in _refused(_edited(change))


def test_responses_cannot_declare_unbounded_recomputation() -> None:
    """Many responses each redoing a long run of steps are refused before any reader counts
    attempts step by step."""
    data = recorded_data()
    steps = MAX_RECOMPUTED_STEPS // 4
    data.update(steps=steps, steps_completed=steps, losses=[1.0] * steps)
    response = data["responses"][0]
    response["step"] = steps - 1
    response["plan"]["redo_from_step"] = 0
    data["responses"] = [response] * 5
    assert f"redo more than {MAX_RECOMPUTED_STEPS} steps" in _refused(json.dumps(data))


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        json.dumps(recorded_data())[:-20].encode(),  # truncated
        b"\xff\xfe{}",
        b"[" * 100_000,
        b'{"format": "stagewarden.run-summary", "format": "x"}',
        b"[]",
        b'{"steps": ' + b"9" * 5000 + b"}",
    ],
    ids=["empty", "brace", "truncated", "not-utf8", "deep", "duplicate-key", "array", "huge-literal"],
)
def test_unreadable_json_is_one_line(text: bytes) -> None:
    """Truncated, non-UTF-8, deeply nested, duplicate-keyed or non-object text: one line."""
    _refused(text)


def test_an_oversized_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A sparse file over the limit is refused from its size."""
    path = tmp_path / "summary.json"
    with open(path, "wb") as handle:
        handle.truncate(MAX_RECORD_BYTES + 1)
    assert "larger than" in _refused(path)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO in place of summary.json is refused at once, not waited on."""
    path = tmp_path / "summary.json"
    os.mkfifo(path)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_refused(path)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert outcome and "not a regular file" in outcome[0]


def test_a_link_to_dev_zero_is_refused(tmp_path: Path) -> None:
    """A symbolic link (here to /dev/zero, endless) is not followed."""
    path = tmp_path / "summary.json"
    path.symlink_to("/dev/zero")
    assert "symbolic link" in _refused(path)


def test_a_huge_step_count_without_a_training_part_audits_in_bounded_time(tmp_path: Path) -> None:
    """steps = 2**32 - 1 in a record without losses to tie it to, with the most micro-batches a
    record may declare: the audit reports the missing receipts by count, without visiting every
    step."""
    run = small_run()
    path = write_run(tmp_path, run)
    data = json.loads((path / "summary.json").read_text())
    data["steps"] = 4294967295
    data["micro_batches"] = MAX_MICRO_BATCHES
    (path / "summary.json").write_text(json.dumps(data))
    started = time.monotonic()
    report = audit_run_dir(path, run.verifier_key)
    assert time.monotonic() - started < 30
    missing = [f for f in report.errors if f.code is ErrorCode.RECEIPT_MISSING]
    assert missing and all("4294967295 step(s)" in f.message for f in missing)


def _run_copy(tmp_path: Path, text: str | None = None, special: str | None = None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES / "clean", run)
    target = run / "summary.json"
    if text is not None:
        target.write_text(text, encoding="utf-8")
    if special == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif special == "dev-zero":
        target.unlink()
        target.symlink_to("/dev/zero")
    return run


HOSTILE = [
    ("wrong-type", {"text": _edited(lambda d: d.update(steps="5"))}),
    ("huge-steps", {"text": _edited(lambda d: d.update(steps=4294967295))}),
    ("extra-field", {"text": _edited(lambda d: d.update(zz=1))}),
    ("truncated", {"text": json.dumps(recorded_data())[:100]}),
    ("fifo", {"special": "fifo"}),
    ("dev-zero", {"special": "dev-zero"}),
]


@pytest.mark.parametrize(("name", "how"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_audit_cli_refuses_a_hostile_record_with_exit_2(tmp_path: Path, name: str, how: dict[str, str]) -> None:
    """``stagewarden audit`` on a hostile summary.json: exit 2, one line, no traceback."""
    run = _run_copy(tmp_path, **how)
    result = CliRunner().invoke(cli, ["audit", str(run)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "summary.json" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(("name", "how"), HOSTILE[:2] + HOSTILE[4:], ids=[h[0] for h in HOSTILE[:2] + HOSTILE[4:]])
def test_report_cli_refuses_a_hostile_record_with_exit_2(tmp_path: Path, name: str, how: dict[str, str]) -> None:
    """``stagewarden report --run`` on a hostile summary.json: exit 2, one line, no traceback."""
    run = _run_copy(tmp_path, **how)
    result = CliRunner().invoke(cli, ["report", str(SPEC), "--run", str(run), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "summary.json" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(("name", "how"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_train_resume_refuses_a_hostile_record_with_exit_2(tmp_path: Path, name: str, how: dict[str, str]) -> None:
    """``stagewarden train --resume`` on a hostile summary.json: exit 2, one line, nothing started."""
    run = _run_copy(tmp_path, **how)
    result = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "summary.json" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
