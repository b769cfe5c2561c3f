"""``stagewarden audit`` driven in-process: exit codes 0 / 1 / 2, text and JSON output, no tracebacks."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from receipt_fixtures import header_index, lie, receipt_index, small_run, write_run

from stagewarden.attest.headers import TransferKind, sign_header
from stagewarden.attest.receipts import UnitKind
from stagewarden.attest.synthetic import SyntheticRun
from stagewarden.cli import cli
from stagewarden.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_VIOLATED


def run_cli(*args: str) -> Result:
    """Invoke ``stagewarden ARGS`` in-process (wide terminal, so table cells are not wrapped)."""
    return CliRunner(env={"COLUMNS": "250"}).invoke(cli, list(args), prog_name="stagewarden")


def make(tmp_path: Path, mutate=None) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    run = small_run()
    return write_run(tmp_path, run, mutate), run.verifier_key.hex()


def test_clean_run_exits_0(tmp_path: Path) -> None:
    """A clean run with a pinned key exits 0 and says clean."""
    path, key = make(tmp_path)
    result = run_cli("audit", str(path), "--verifier-key", key)
    assert result.exit_code == EXIT_OK, result.output
    assert "clean" in result.stdout and "30 receipts" in result.stdout


def test_unpinned_key_warns_but_exits_0(tmp_path: Path) -> None:
    """Without --verifier-key the audit says once that the key was not pinned, and how to pin it,
    and still exits 0."""
    path, _ = make(tmp_path)
    result = run_cli("audit", str(path))
    assert result.exit_code == EXIT_OK
    assert result.stdout.count("VERIFIER_KEY_UNPINNED") == 1
    assert f"stagewarden audit {path} --verifier-key <64 hex digits>" in result.stdout


def _forge(run: SyntheticRun) -> None:
    i = receipt_index(run, "s1r0", 0, 1, UnitKind.FORWARD)
    run.entries[i] = dataclasses.replace(run.entries[i], signature=bytes(64))


def _drop(run: SyntheticRun) -> None:
    run.entries.pop(receipt_index(run, "s2r0", 1, 0, UnitKind.BACKWARD))


def _replay(run: SyntheticRun) -> None:
    run.entries.append(run.entries[receipt_index(run, "s0r0", 1, 1, UnitKind.FORWARD)])


def _reorder(run: SyntheticRun) -> None:
    i, j = receipt_index(run, "s1r0", 1, 0, UnitKind.FORWARD), receipt_index(run, "s1r0", 1, 0, UnitKind.BACKWARD)
    run.entries[i], run.entries[j] = run.entries[j], run.entries[i]


def _equivocate(run: SyntheticRun) -> None:
    i = header_index(run, "s2r0", 0, 0, TransferKind.GRADIENT)
    h = run.entries[i]
    run.entries.append(
        sign_header(dataclasses.replace(h, tensor=dataclasses.replace(h.tensor, digest=bytes(32))), run.keys["s2r0"])
    )


def _link(run: SyntheticRun) -> None:
    lie(run, receipt_index(run, "s1r0", 1, 1, UnitKind.FORWARD), input_digest=bytes(32))


def _unattested(run: SyntheticRun) -> None:
    run.results["s2r0"] = []


@pytest.mark.parametrize(
    ("mutate", "code", "worker"),
    [
        (_forge, "RECEIPT_SIGNATURE", "s1r0"),
        (_drop, "RECEIPT_DROPPED", "s2r0"),
        (_replay, "LOG_DUPLICATE", "s0r0"),
        (_reorder, "RECEIPT_REORDERED", "s1r0"),
        (_equivocate, "HEADER_EQUIVOCATION", "s2r0"),
        (_link, "LINK_MISMATCH", "s1r0"),
        (_unattested, "KEY_UNATTESTED", "s2r0"),
    ],
    ids=["forged", "dropped", "replayed", "reordered", "equivocation", "link", "unattested"],
)
def test_tampering_exits_1_and_names_worker(tmp_path: Path, mutate, code: str, worker: str) -> None:  # type: ignore[no-untyped-def]
    """Each kind of tampering makes the audit exit 1 with a finding of the right code naming the worker."""
    path, key = make(tmp_path, mutate)
    result = run_cli("audit", str(path), "--verifier-key", key)
    assert result.exit_code == EXIT_VIOLATED, result.output
    assert code in result.stdout and worker in result.stdout
    data = json.loads(run_cli("audit", str(path), "--verifier-key", key, "--format", "json").stdout)
    assert any(f["code"] == code and worker in f["workers"] for f in data["findings"])


def test_torn_log_exits_1(tmp_path: Path) -> None:
    """A torn final record is reported (LOG_TORN) with exit code 1."""
    path, key = make(tmp_path)
    with open(path / "receipts.log", "ab") as handle:
        handle.write(b"\x00\x00\x01\x2c\x01partial")
    result = run_cli("audit", str(path), "--verifier-key", key)
    assert result.exit_code == EXIT_VIOLATED and "LOG_TORN" in result.stdout


def test_json_output(tmp_path: Path) -> None:
    """--format json prints the versioned report and nothing else."""
    path, key = make(tmp_path)
    coordinator = (path / "coordinator.pub").read_text().strip()
    result = run_cli("audit", str(path), "--verifier-key", key, "--coordinator-key", coordinator, "--format", "json")
    data = json.loads(result.stdout)
    assert result.exit_code == EXIT_OK
    assert data["format"] == "stagewarden.audit" and data["version"] == 1 and data["clean"] is True
    assert data["counts"]["receipts"] == 30 and data["findings"] == []
    assert data["sealed"] is True and data["coordinator_key_pinned"] is True and data["counts"]["step_heads"] == 1


@pytest.mark.parametrize("case", ["missing", "file", "bad-summary", "bad-key", "short-key"])
def test_bad_input_exits_2(tmp_path: Path, case: str) -> None:
    """Missing directory, a file instead of a directory, a malformed summary or a bad key: exit 2, no traceback."""
    path, key = make(tmp_path)
    args = ["audit", str(path), "--verifier-key", key]
    if case == "missing":
        args[1] = str(tmp_path / "missing")
    elif case == "file":
        args[1] = str(path / "summary.json")
    elif case == "bad-summary":
        (path / "summary.json").write_text('{"format": "stagewarden.run-summary", "version": 7}')
    elif case == "bad-key":
        args[3] = "zz" * 32
    else:
        args[3] = key[:10]
    result = run_cli(*args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "error:" in result.stderr and "Traceback" not in result.output


def test_help(tmp_path: Path) -> None:
    """audit --help documents the flags and exit codes."""
    result = run_cli("audit", "--help")
    assert result.exit_code == 0 and "--verifier-key" in result.stdout and "Exit codes" in result.stdout


GOLDEN = Path(__file__).parent / "golden" / "audit-dropped-receipt.txt"


def test_text_output_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text report of a run with one dropped receipt matches the golden file at 120 columns
    (regenerate with STAGEWARDEN_REGOLD=1 after a deliberate change)."""
    monkeypatch.chdir(tmp_path)
    run = small_run()
    write_run(tmp_path, run, _drop)
    result = CliRunner(env={"COLUMNS": "120"}).invoke(
        cli,
        ["audit", "run", "--verifier-key", run.verifier_key.hex(), "--coordinator-key", run.coordinator_key.hex()],
        prog_name="stagewarden",
    )
    assert result.exit_code == EXIT_VIOLATED
    if os.environ.get("STAGEWARDEN_REGOLD"):
        GOLDEN.write_text(result.stdout)
    assert result.stdout == GOLDEN.read_text()
