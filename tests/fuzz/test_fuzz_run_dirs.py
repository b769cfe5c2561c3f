"""Fuzzing run directories as ``stagewarden audit`` reads them: the run summary (``attest/rundir.py``
``RunRecord.from_data`` and ``RunDir``) and the whole offline audit (``attest.audit_run_dir``) of a
directory with one file edited, removed or replaced by a folder.

Properties: a summary is refused with RunDirError or read back exactly as written; the audit of
any directory returns a report or raises AttestError (RunDirError), within its time limit; a run
whose receipt log was changed is never audited clean.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from fuzzing import FOLDER_SECONDS, mutated_json_text, outcome
from hypothesis import example, given
from hypothesis import strategies as st
from receipt_fixtures import small_run
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.attest import audit_run_dir
from stagewarden.attest.clock import FixedClock
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.run_record import RunRecord
from stagewarden.attest.rundir import RunDir, RunDirError
from stagewarden.attest.step_roots import StepRoot

RUN = small_run(stages=2, micro_batches=1, steps=1)
SUMMARY = RUN.summary.to_data()
SUMMARY_TEXT = RUN.summary.to_json().encode()
CLOCK = FixedClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))  # after every signing time of the run
_SUMMARY_VALUES = st.one_of(
    json_values,
    st.sampled_from(["s0r0", "s1r0", ".hidden", "a/b", "x" * 129, 0, 1, 2, 2**32, -1, True]),
    st.fixed_dictionaries({"id": st.sampled_from(["s0r0", "s9", ""]), "stage": st.integers(-1, 3)}),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory as written, once."""
    return RUN.write(tmp_path_factory.mktemp("run-dir") / "pristine")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run-dir-fuzz")


def test_the_pristine_run_audits_clean(pristine: Path) -> None:
    """The base of every edit: its audit has no errors (so a finding below comes from the edit)."""
    report = audit_run_dir(pristine, RUN.verifier_key, CLOCK)
    signed = [e for e in RUN.entries if not isinstance(e, StepRoot)]  # receipts and headers; the roots cover them
    assert not report.errors and report.receipts + report.headers == len(signed) and report.sealed


@fuzz_settings()
@given(mutated_tree(SUMMARY, values=_SUMMARY_VALUES))
@example({**SUMMARY, "workers": [{"id": "s0r0", "stage": 0, "replica": 0}] * 2})
def test_edited_summaries(document: Any) -> None:
    """An edited summary is refused with RUNDIR_MALFORMED or read; what is read writes back unchanged."""
    summary, error = outcome(RunRecord.from_data, document, errors=RunDirError)
    if error is not None:
        assert isinstance(error, RunDirError) and error.code is ErrorCode.RUNDIR_MALFORMED and error.message
        assert "\n" not in error.message
        return
    assert summary is not None and summary.to_data() == document
    assert RunRecord.from_json(summary.to_json()) == summary


@fuzz_settings()
@given(st.one_of(st.binary(max_size=400), mutated_bytes(SUMMARY_TEXT), mutated_json_text(SUMMARY_TEXT)))
@example(b"[" * 100_000)
def test_summary_files(workdir: Path, data: bytes) -> None:
    """Any summary.json opens as a run directory or raises RunDirError."""
    folder = workdir / "summary-only"
    folder.mkdir(exist_ok=True)
    (folder / "summary.json").write_bytes(data)
    run, error = outcome(RunDir, folder, errors=RunDirError)
    if run is not None:
        assert isinstance(run.summary, RunRecord)


_FILES = ["summary.json", "receipts.log", "attestation/verifier.pub", "attestation/s0r0.ear", "attestation/s1r0.ear"]


@st.composite
def edited_run_dirs(draw: st.DrawFn, pristine: Path) -> tuple[str, str, bytes | None]:
    """(file, edit, new bytes or None): one file of the run rewritten, removed or replaced by a folder."""
    name = draw(st.sampled_from(_FILES))
    edit = draw(st.sampled_from(["bytes", "bytes", "bytes", "lines", "remove", "folder"]))
    original = (pristine / name).read_bytes()
    if edit == "bytes":
        donors = tuple((pristine / other).read_bytes() for other in _FILES if other != name)
        return name, edit, draw(mutated_bytes(original, donors))
    if edit == "lines":  # reorder, drop or repeat lines (result tokens, summary lines)
        lines = original.splitlines(keepends=True)
        return name, edit, b"".join(draw(st.lists(st.sampled_from(lines), max_size=len(lines) + 2)))
    return name, edit, None


@fuzz_settings(0.5)
@given(st.data())
def test_audit_of_edited_run_dirs(pristine: Path, workdir: Path, data: st.DataObject) -> None:
    """The audit of a run directory with one file edited returns a report or raises AttestError; an
    edited receipt log is never audited clean."""
    name, edit, content = data.draw(edited_run_dirs(pristine))
    run_dir = workdir / "audited"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(pristine, run_dir)
    target = run_dir / name
    target.unlink()
    if edit == "folder":
        target.mkdir()
    elif content is not None:
        target.write_bytes(content)
    pinned = data.draw(st.booleans())
    report, error = outcome(
        audit_run_dir,
        run_dir,
        RUN.verifier_key if pinned else None,
        CLOCK,
        threads=1,
        errors=AttestError,
        limit=FOLDER_SECONDS,
    )
    if error is not None:
        assert isinstance(error, AttestError) and error.message
        return
    assert report is not None
    for finding in report.findings:
        assert isinstance(finding.code, ErrorCode) and finding.message
    if name == "receipts.log" and content != (pristine / name).read_bytes():
        assert report.errors, "a changed receipt log was audited clean"
