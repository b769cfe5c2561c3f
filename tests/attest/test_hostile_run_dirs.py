"""``stagewarden audit`` against hostile run directories, from the attacker's side: a real run
directory is copied, one file is made hostile (a FIFO, a device, a link out of the directory, a
folder, a huge or sparse file, an unreadable file, a count far beyond the run) and the audit runs in
a child process. Each attack must end in exit 2 with one line naming the file, within the CPU and
memory bounds of :mod:`hostile_fixtures`, never a traceback or a hang; the attacks that are valid
input (a huge step count of a synthetic run, a log of junk records at the record limit) must end
in findings (exit 1) within the same bounds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_fixtures import (
    audit_process,
    recorded_copy,
    replace_by_fifo,
    replace_by_folder,
    replace_by_link,
)
from receipt_fixtures import small_run

from stagewarden.attest.receipt_log import FILE_HEADER, LOG_GENESIS, RecordType, frame_record
from stagewarden.attest.run_limits import (
    MAX_EVENT_LINE_BYTES,
    MAX_EVENTS,
    MAX_EVENTS_BYTES,
    MAX_FINDINGS_PER_CODE,
    MAX_LOG_RECORDS,
    MAX_WORKERS,
    max_log_bytes,
)

SPEC = Path(__file__).resolve().parents[2] / "stagewarden" / "spec" / "examples" / "demo.yaml"
EAR = "attestation/s0r0.ear"
EVIDENCE = "attestation/s0r0.evidence"
KEY = "attestation/verifier.pub"


def _edit_summary(run: Path, **changes: object) -> None:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary.update(changes)
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _outside_copy(run: Path, name: str) -> Path:
    """A copy of ``run/name`` outside the run directory (what a link out of it points at)."""
    target = run.parent / f"outside-{Path(name).name}"
    target.write_bytes((run / name).read_bytes())
    return target


def _junk_log(records: int) -> bytes:
    """A receipt log of ``records`` well-framed, chained records whose payloads are no receipt."""
    out, prev = bytearray(FILE_HEADER), LOG_GENESIS
    for _ in range(records):
        frame = frame_record(RecordType.RECEIPT, b"x", prev)
        out += frame
        prev = frame[-32:]
    return bytes(out)


def _many_workers(run: Path, count: int) -> None:
    """``run``'s summary with workers added (at stages it has) up to ``count`` workers."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    more = count - len(summary["workers"])
    summary["workers"] += [{"id": f"w{i}", "stage": i % summary["stages"], "replica": 0} for i in range(more)]
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _repeated(run: Path, key: str, times: int) -> None:
    """``run``'s summary with its list ``key`` repeated ``times`` times."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary[key] = summary[key] * times
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _sparse(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def _long_event_line(run: Path) -> None:
    with open(run / "events.jsonl", "ab") as handle:
        handle.write(b'{"event": "x", "pad": "' + b"a" * (MAX_EVENT_LINE_BYTES + 1))


def _many_event_lines(run: Path) -> None:
    with open(run / "events.jsonl", "ab") as handle:
        handle.write(b"\n" * MAX_EVENTS)


Attack = Callable[[Path], object]

#: (attack, what it does to the run directory, extra audit arguments, words the one line must hold)
REFUSED: dict[str, tuple[Attack, tuple[str, ...], tuple[str, ...]]] = {
    # summary.json
    "summary FIFO": (lambda r: replace_by_fifo(r / "summary.json"), (), ("summary.json", "not a regular file")),
    "summary folder": (lambda r: replace_by_folder(r / "summary.json"), (), ("summary.json", "not a regular file")),
    "summary link out": (lambda r: replace_by_link(r / "summary.json", "/etc/passwd"), (), ("symbolic link",)),
    "summary steps 2**32-1": (lambda r: _edit_summary(r, steps=2**32 - 1), (), ("summary.json", "steps")),
    "summary stages 65537": (lambda r: _edit_summary(r, stages=65_537), (), ("summary.json", "stages")),
    "summary micro-batches 10**9": (lambda r: _edit_summary(r, micro_batches=10**9), (), ("micro_batches",)),
    "summary workers over the limit": (lambda r: _many_workers(r, MAX_WORKERS + 1), (), ("workers", "at most")),
    "summary key with a newline": (lambda r: _edit_summary(r, **{"a\nb": 1}), (), ("a\\nb", "unknown field")),
    "summary huge": (lambda r: _sparse(r / "summary.json", 1 << 40), (), ("summary.json", "larger than")),
    # receipts.log
    "log FIFO": (lambda r: replace_by_fifo(r / "receipts.log"), (), ("receipts.log", "not a regular file")),
    "log folder": (lambda r: replace_by_folder(r / "receipts.log"), (), ("receipts.log", "not a regular file")),
    "log link to /dev/zero": (lambda r: replace_by_link(r / "receipts.log", "/dev/zero"), (), ("symbolic link",)),
    "log link out": (
        lambda r: replace_by_link(r / "receipts.log", _outside_copy(r, "receipts.log")),
        (),
        ("receipts.log", "symbolic link"),
    ),
    "log sparse 1 TiB": (
        lambda r: _sparse(r / "receipts.log", 1 << 40),
        (),
        ("receipts.log", f"larger than {max_log_bytes(MAX_LOG_RECORDS)} bytes", "--max-records"),
    ),
    "log over the record limit": (
        lambda r: (r / "receipts.log").write_bytes(_junk_log(MAX_LOG_RECORDS + 1)),
        (),
        ("receipts.log", f"more than {MAX_LOG_RECORDS} records", "--max-records"),
    ),
    "log over a lowered record limit": (
        lambda r: None,
        ("--max-records", "10"),
        ("larger than 6416 bytes", "10 records"),
    ),
    # attestation/
    "key FIFO": (lambda r: replace_by_fifo(r / KEY), (), ("verifier.pub", "not a regular file")),
    "key folder": (lambda r: replace_by_folder(r / KEY), (), ("verifier.pub", "not a regular file")),
    "key link out": (lambda r: replace_by_link(r / KEY, _outside_copy(r, KEY)), (), ("verifier.pub", "symbolic")),
    "results FIFO": (lambda r: replace_by_fifo(r / EAR), (), ("s0r0.ear", "not a regular file")),
    "results folder": (lambda r: replace_by_folder(r / EAR), (), ("s0r0.ear", "not a regular file")),
    "results link out": (lambda r: replace_by_link(r / EAR, "/etc/passwd"), (), ("s0r0.ear", "symbolic link")),
    "results dangling link": (lambda r: replace_by_link(r / EAR, r / "nowhere"), (), ("s0r0.ear", "symbolic")),
    "results huge": (lambda r: _sparse(r / EAR, 1 << 40), (), ("s0r0.ear", "larger than")),
    "evidence FIFO": (lambda r: replace_by_fifo(r / EVIDENCE), (), ("s0r0.evidence", "not a regular file")),
    "evidence folder": (lambda r: replace_by_folder(r / EVIDENCE), (), ("s0r0.evidence", "not a regular file")),
    "evidence link to /dev/zero": (lambda r: replace_by_link(r / EVIDENCE, "/dev/zero"), (), ("s0r0.evidence",)),
    "attestation folder link out": (
        lambda r: replace_by_link(r / "attestation", _outside_folder(r)),
        (),
        ("attestation", "symbolic link"),
    ),
    # events.jsonl, read with --spec
    "events FIFO": (lambda r: replace_by_fifo(r / "events.jsonl"), ("--spec", str(SPEC)), ("events.jsonl",)),
    "events folder": (lambda r: replace_by_folder(r / "events.jsonl"), ("--spec", str(SPEC)), ("events.jsonl",)),
    "events link to /dev/zero": (
        lambda r: replace_by_link(r / "events.jsonl", "/dev/zero"),
        ("--spec", str(SPEC)),
        ("events.jsonl", "symbolic link"),
    ),
    "events dangling link": (
        lambda r: replace_by_link(r / "events.jsonl", r / "nowhere"),
        ("--spec", str(SPEC)),
        ("events.jsonl", "symbolic link"),
    ),
    "events 1 GiB without newline": (
        lambda r: _sparse(r / "events.jsonl", 1 << 30),
        ("--spec", str(SPEC)),
        ("events.jsonl", f"larger than {MAX_EVENTS_BYTES} bytes"),
    ),
    "events line over the limit": (
        _long_event_line,
        ("--spec", str(SPEC)),
        ("events.jsonl", f"longer than {MAX_EVENT_LINE_BYTES} bytes"),
    ),
    "events over the line count": (
        _many_event_lines,
        ("--spec", str(SPEC)),
        ("events.jsonl", f"more than {MAX_EVENTS} lines"),
    ),
}


def _outside_folder(run: Path) -> Path:
    target = run.parent / "outside-attestation"
    shutil.copytree(run / "attestation", target)
    return target


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_run_directory_is_refused(tmp_path: Path, name: str) -> None:
    """The attack ends in exit 2 with one line naming the file, within the bounds."""
    attack, args, words = REFUSED[name]
    run = recorded_copy(tmp_path)
    attack(run)
    audit_process(run, *args).check_refused(*words, spec="--spec" in args)


def test_the_recorded_run_audits_within_the_bounds(tmp_path: Path) -> None:
    """The base of every attack audits (exit 1: the recorded run was attacked and the audit names
    the attacker) within the bounds, with --spec too."""
    run = recorded_copy(tmp_path)
    for args in ((), ("--spec", str(SPEC))):
        outcome = audit_process(run, *args)
        outcome.check_bounded(spec=bool(args))
        assert outcome.code in (0, 1), outcome.output[-2000:]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
@pytest.mark.parametrize("name", ["summary.json", "receipts.log", EAR])
def test_unreadable_file_is_refused(tmp_path: Path, name: str) -> None:
    run = recorded_copy(tmp_path)
    (run / name).chmod(0)
    audit_process(run).check_refused(Path(name).name, "Permission denied")


def test_device_as_receipt_log_is_refused(tmp_path: Path) -> None:
    """A character device (here a copy of /dev/zero's) where the log belongs is not read."""
    run = recorded_copy(tmp_path)
    (run / "receipts.log").unlink()
    try:
        os.mknod(run / "receipts.log", 0o600 | 0o020000, os.stat("/dev/zero").st_rdev)
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    audit_process(run).check_refused("receipts.log", "not a regular file")


def _findings_within_bounds(run: Path) -> set[str]:
    """The codes of the findings of an audit of ``run`` that ends in findings within the bounds."""
    outcome = audit_process(run, "--format", "json")
    outcome.check_bounded()
    assert outcome.code == 1, outcome.output[-2000:]
    return {f["code"] for f in json.loads(outcome.output)["findings"]}


def test_huge_step_count_of_a_synthetic_run_is_counted_not_looped(tmp_path: Path) -> None:
    """A synthetic record (no training part ties ``steps`` to its losses) claiming 2**32 - 1
    steps of 1,000,000 micro-batches: the missing receipts are counted arithmetically, and the
    audit reports them (exit 1) within the bounds."""
    run = small_run(stages=2, micro_batches=1, steps=1).write(tmp_path / "run")
    _edit_summary(run, steps=2**32 - 1, micro_batches=1_000_000)
    assert "RECEIPT_MISSING" in _findings_within_bounds(run)


def test_sparse_log_within_the_limit_is_scanned_in_bounded_memory(tmp_path: Path) -> None:
    """The real log followed by zeros up to the byte limit (a sparse file): the scan streams it
    and reports the torn tail (exit 1), without holding the file in memory."""
    run = recorded_copy(tmp_path)
    _sparse(run / "receipts.log", max_log_bytes(MAX_LOG_RECORDS))
    assert "LOG_TORN" in _findings_within_bounds(run)


def test_junk_log_at_the_record_limit_stays_within_the_bounds(tmp_path: Path) -> None:
    """The worst log the limits let through: as many well-framed junk records as allowed, each a
    finding. The audit lists the first findings of the code, counts the rest, and stays within
    the bounds in both output formats."""
    run = recorded_copy(tmp_path)
    (run / "receipts.log").write_bytes(_junk_log(MAX_LOG_RECORDS))
    outcome = audit_process(run, "--format", "json")
    outcome.check_bounded()
    assert outcome.code == 1
    findings = json.loads(outcome.output)["findings"]
    malformed = [f for f in findings if f["code"] == "RECEIPT_MALFORMED"]
    assert len(malformed) == MAX_FINDINGS_PER_CODE + 1
    assert f"{MAX_LOG_RECORDS - MAX_FINDINGS_PER_CODE} more finding(s)" in malformed[-1]["message"]
    text = audit_process(run)
    text.check_bounded()
    assert text.code == 1 and "more finding(s) of RECEIPT_MALFORMED left out" in text.output


def test_the_help_states_the_record_limit() -> None:
    """``audit --help`` states the default record limit that the audit applies."""
    from click.testing import CliRunner

    from stagewarden.cli import cli

    assert f"(default {MAX_LOG_RECORDS:,})" in " ".join(CliRunner().invoke(cli, ["audit", "--help"]).output.split())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["events.jsonl", "metrics.csv"])
@pytest.mark.parametrize("hostile", ["FIFO", "link", "folder"])
def test_report_refuses_hostile_tables(tmp_path: Path, name: str, hostile: str) -> None:
    """``report --run`` reads events and metrics under the same rules: a FIFO, a link or a folder
    is a ReportError (the CLI's exit 2) of one line naming the file, never a hang."""
    from stagewarden.report.errors import ReportError
    from stagewarden.report.runs import read_run

    run = recorded_copy(tmp_path)
    {"FIFO": replace_by_fifo, "folder": replace_by_folder}.get(hostile, lambda p: replace_by_link(p, "/dev/zero"))(
        run / name
    )
    with pytest.raises(ReportError) as refused:
        read_run(run)
    assert name in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["receipts.log", EVIDENCE])
def test_report_shows_a_hostile_log_or_evidence_as_unreadable(tmp_path: Path, name: str) -> None:
    """A FIFO as the receipt log or as a worker's evidence: the report still reads the run, with
    the audit's one-line refusal naming the file, and never blocks."""
    from stagewarden.report.runs import read_run

    run = recorded_copy(tmp_path)
    replace_by_fifo(run / name)
    data = read_run(run)
    assert data.audit.report is None and data.audit.error is not None
    assert Path(name).name in data.audit.error and "not a regular file" in data.audit.error


#: Counts a summary.json of at most 16 MiB can hold, each within the record's limits.
LARGE_COUNTS: dict[str, Attack] = {
    f"{MAX_WORKERS} workers": lambda r: _many_workers(r, MAX_WORKERS),
    "35,000 detections": lambda r: _repeated(r, "detections", 35_000),
    "19,000 responses": lambda r: _repeated(r, "responses", 19_000),
}


@pytest.mark.parametrize("name", sorted(LARGE_COUNTS))
def test_large_counts_within_the_limits_stay_within_the_bounds(tmp_path: Path, name: str) -> None:
    """The largest lists a summary can hold within its limits: the audit reads them (exit 0 or 1)
    within the bounds."""
    run = recorded_copy(tmp_path)
    LARGE_COUNTS[name](run)
    outcome = audit_process(run, "--format", "json")
    outcome.check_bounded()
    assert outcome.code in (0, 1), outcome.output[-2000:]
