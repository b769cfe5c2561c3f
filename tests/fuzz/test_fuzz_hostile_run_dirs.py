"""Fuzzing ``stagewarden audit`` with hostile run directories: a real run directory (the recorded
demo run, with events, metrics, results and evidence) with one file truncated, extended, its bytes
edited, a JSON number in it made huge, or the file replaced by a FIFO, a symbolic link or a folder.

Property: the audit exits 0, 1 or 2, never with a traceback, within its wall-clock limit; exit 2
prints one line. The event log is read the way ``audit --spec`` reads it (``read_events``), under
the same property. Examples are derandomized (the same every run) and few: the attack corpus of
``tests/attest/test_hostile_run_dirs.py`` measures CPU and memory in a child process; this test
looks for the mutations nobody thought of.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fuzzing import FOLDER_SECONDS, bounded, outcome
from hostile_fixtures import RECORDED, replace_by_fifo, replace_by_folder, replace_by_link
from hypothesis import given
from hypothesis import strategies as st
from strategies import fuzz_settings, mutated_bytes

from stagewarden.cli import cli
from stagewarden.run_history import read_events

FILES = sorted(str(p.relative_to(RECORDED)) for p in RECORDED.rglob("*") if p.is_file())
_HUGE = ["4294967295", "4294967296", "18446744073709551616", "1" + "0" * 40, "-1", "1e308", "0"]
_NUMBER = re.compile(rb"(?<![\w.\"])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.\"])")
_LINK_TARGETS = ["/dev/zero", "/etc/passwd", "nowhere", "../outside"]


@st.composite
def hostile_edits(draw: st.DrawFn) -> tuple[str, str, object]:
    """(file, edit, argument): what to do to one file of the run directory."""
    name = draw(st.sampled_from(FILES))
    edit = draw(st.sampled_from(["truncate", "extend", "bytes", "number", "fifo", "link", "folder"]))
    original = (RECORDED / name).read_bytes()
    if edit == "truncate":
        return name, edit, draw(st.integers(0, max(0, len(original) - 1)))
    if edit == "extend":  # zeros (a sparse tail), or random bytes
        return name, edit, draw(st.one_of(st.integers(1, 1 << 26), st.binary(min_size=1, max_size=200)))
    if edit == "bytes":
        return name, edit, draw(mutated_bytes(original, max_ops=3))
    if edit == "number":
        spans = [m.span() for m in _NUMBER.finditer(original)]
        if not spans:
            return name, "bytes", draw(mutated_bytes(original, max_ops=1))
        start, end = draw(st.sampled_from(spans))
        return name, edit, original[:start] + draw(st.sampled_from(_HUGE)).encode() + original[end:]
    if edit == "link":
        return name, edit, draw(st.sampled_from(_LINK_TARGETS))
    return name, edit, None


def _apply(run: Path, name: str, edit: str, argument: object) -> None:
    target = run / name
    if edit == "truncate":
        assert isinstance(argument, int)
        os.truncate(target, argument)
    elif edit == "extend":
        if isinstance(argument, int):
            os.truncate(target, target.stat().st_size + argument)
        else:
            assert isinstance(argument, bytes)
            with open(target, "ab") as handle:
                handle.write(argument)
    elif edit in ("bytes", "number"):
        assert isinstance(argument, bytes)
        target.write_bytes(argument)
    elif edit == "fifo":
        replace_by_fifo(target)
    elif edit == "folder":
        replace_by_folder(target)
    else:
        destination = str(argument)
        if destination == "../outside":
            (run.parent / "outside").write_bytes((RECORDED / name).read_bytes())
            destination = str(run.parent / "outside")
        replace_by_link(target, destination)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-fuzz")


@fuzz_settings(0.5, derandomize=True)
@given(hostile_edits())
def test_audit_of_hostile_run_dirs(workdir: Path, case: tuple[str, str, object]) -> None:
    """The audit of a run directory with one file made hostile exits 0, 1 or 2 within its limit,
    without a traceback; a refusal is one line."""
    name, edit, argument = case
    run = workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(RECORDED, run)
    _apply(run, name, edit, argument)
    result = bounded(CliRunner().invoke, cli, ["audit", str(run), "--format", "json"], limit=FOLDER_SECONDS)
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output[-2000:])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-2000:]
    if name == "events.jsonl":
        outcome(read_events, run / name, errors=OSError, limit=FOLDER_SECONDS)
