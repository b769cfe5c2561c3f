"""Every command on bad input and on Ctrl-C: a clear message naming the problem, no traceback, a
non-zero exit code (2 for bad input, 130 for an interrupt) and no partial output left behind.

The bad-input cases are one table (:data:`CASES`) run in-process with click's CliRunner; the
unreadable-file cases (:data:`PERMISSION_CASES`) need a user that chmod can stop, so as root they
run in a subprocess under a user namespace (``unshare``), and are skipped when that is not
available. Interrupts are simulated in-process (a ``KeyboardInterrupt`` raised inside the command)
and, for the real ``main()`` exit path, sent as SIGINT to a ``stagewarden report`` subprocess.
``train`` and ``demo`` are covered for argument errors only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from processes import sigint_default

from stagewarden.cli import cli
from stagewarden.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, os_error_message

NOW = "2026-03-01T12:00:00+00:00"
MEASUREMENT = "ab" * 32
NONCE = "11" * 32
#: A guarantee that the packaged example violates, so that ``replay`` gets past its planning.
REPLAY_EXAMPLE, REPLAY_GUARANTEE = "paper-adjacent-collusion", "integrity"
#: The marker an earlier report holds (``stagewarden.report.build.MARKER``).
REPORT_MARKER = ".stagewarden-report"
#: Generous: the machine running the tests may be busy with other work.
SUBPROCESS_TIMEOUT = 120


@dataclasses.dataclass(frozen=True)
class World:
    """The files the cases point at, all under ``root``."""

    root: Path
    spec: Path  # a valid spec file
    file: Path  # a regular file that is neither a spec nor evidence
    dir: Path  # an empty directory
    missing: Path  # a path that does not exist
    full: Path  # a non-empty directory that is not an output of stagewarden
    vendor: Path  # a simulated vendor
    evidence: Path  # evidence made by the vendor
    key: str  # the worker's receipt public key (hex)


def _make_world(root: Path) -> World:
    from stagewarden.spec import example_text

    runner = CliRunner()
    spec = root / "spec.yaml"
    spec.write_text(example_text(REPLAY_EXAMPLE), encoding="utf-8")
    (root / "notes.txt").write_text("neither a spec nor evidence\n", encoding="utf-8")
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("x\n", encoding="utf-8")
    vendor = root / "vendor"
    result = runner.invoke(cli, ["attest", "init-vendor", str(vendor), "--now", NOW])
    assert result.exit_code == 0, result.output
    key = runner.invoke(cli, ["attest", "keygen"]).output.strip()
    evidence = root / "evidence.bin"
    args = ["--device-id", "gpu-0", "--key", key, "--nonce", NONCE, "--measurement", MEASUREMENT, "--now", NOW]
    result = runner.invoke(cli, ["attest", "make-evidence", "--vendor", str(vendor), *args, "--out", str(evidence)])
    assert result.exit_code == 0, result.output
    return World(root, spec, root / "notes.txt", root / "empty", root / "missing", root / "full", vendor, evidence, key)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _make_world(tmp_path_factory.mktemp("robustness"))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (folders: 0, 0)."""
    found: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(root))] = (0, 0) if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return found


def _invoke(args: list[str]) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, args, prog_name="stagewarden")


def _check_failure(result: Result, code: int, expected: tuple[str, ...]) -> None:
    """Exit code ``code``, no traceback and no stray exception, and every ``expected`` text in the output."""
    output = result.output
    assert result.exit_code == code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    for text in expected:
        assert text.lower() in output.lower(), f"{text!r} not in {output!r}"


@dataclasses.dataclass(frozen=True)
class Case:
    """One command line that must fail with ``code`` and print every text in ``expected``."""

    id: str
    command: str  # the command path, such as "attest verify" (for the coverage check)
    args: Callable[[World], list[str]]
    expected: Callable[[World], tuple[str, ...]]
    code: int = EXIT_BAD_INPUT
    marks: tuple[Any, ...] = ()


def _ev(w: World, *extra: str) -> list[str]:
    """``attest make-evidence`` flags for a new piece of evidence, then ``extra``."""
    base = ["--device-id", "gpu-0", "--key", w.key, "--nonce", NONCE, "--measurement", MEASUREMENT, "--now", NOW]
    return ["attest", "make-evidence", *base, *extra]


def _av(w: World, *extra: str) -> list[str]:
    """``attest verify`` flags for the world's evidence, then ``extra``."""
    return ["attest", "verify", "--nonce", NONCE, "--key", w.key, "--reference", MEASUREMENT, "--now", NOW, *extra]


_IS_A_DIRECTORY = "is a directory"
_IS_A_FILE = "is a file"
_PRIOR = "--out {} exists and is not empty"

CASES = [
    # schema
    Case("schema-out-dir", "schema", lambda w: ["schema", "--out", str(w.dir)], lambda w: (_IS_A_DIRECTORY,)),
    Case(
        "schema-out-missing-folder",
        "schema",
        lambda w: ["schema", "--out", str(w.missing / "s.json")],
        lambda w: (f"cannot write {w.missing / 's.json'}", "no such file"),
    ),
    Case(
        "schema-out-under-file",
        "schema",
        lambda w: ["schema", "--out", str(w.file / "s.json")],
        lambda w: (f"cannot write {w.file / 's.json'}", "not a directory"),
    ),
    Case("schema-bad-flag", "schema", lambda w: ["schema", "--indent", "2"], lambda w: ("no such option",)),
    # examples
    Case("examples-list-extra", "examples list", lambda w: ["examples", "list", "x"], lambda w: ("unexpected extra",)),
    Case("examples-show-unknown", "examples show", lambda w: ["examples", "show", "nope"], lambda w: ("nope",)),
    # verify, synthesize, diff
    Case("verify-missing", "verify", lambda w: ["verify", str(w.missing)], lambda w: (f"{w.missing}:1:1: no such",)),
    Case("verify-dir", "verify", lambda w: ["verify", str(w.dir)], lambda w: (f"{w.dir}:1:1: is a directory",)),
    Case(
        "verify-missing-json",
        "verify",
        lambda w: ["verify", str(w.missing), "--format", "json"],
        lambda w: ('"error": "bad spec"', "no such file"),
    ),
    Case("verify-not-a-spec", "verify", lambda w: ["verify", str(w.file)], lambda w: (str(w.file),)),
    Case(
        "verify-bad-timeout",
        "verify",
        lambda w: ["verify", str(w.spec), "--timeout", "abc"],
        lambda w: ("--timeout", "abc"),
    ),
    Case("verify-bad-rlimit", "verify", lambda w: ["verify", str(w.spec), "--rlimit", "0"], lambda w: ("--rlimit",)),
    Case("verify-bad-format", "verify", lambda w: ["verify", str(w.spec), "--format", "xml"], lambda w: ("--format",)),
    Case(
        "verify-bad-guarantee",
        "verify",
        lambda w: ["verify", str(w.spec), "--guarantee", "nope"],
        lambda w: ("no guarantee 'nope'",),
    ),
    Case("verify-no-spec", "verify", lambda w: ["verify"], lambda w: ("give exactly one of SPEC or --example",)),
    Case("synthesize-missing", "synthesize", lambda w: ["synthesize", str(w.missing)], lambda w: ("no such file",)),
    Case("synthesize-dir", "synthesize", lambda w: ["synthesize", str(w.dir)], lambda w: (_IS_A_DIRECTORY,)),
    Case(
        "synthesize-bad-timeout",
        "synthesize",
        lambda w: ["synthesize", str(w.spec), "--timeout", "-1"],
        lambda w: ("--timeout",),
    ),
    Case("diff-old-missing", "diff", lambda w: ["diff", str(w.missing), str(w.spec)], lambda w: (str(w.missing),)),
    Case("diff-new-dir", "diff", lambda w: ["diff", str(w.spec), str(w.dir)], lambda w: (_IS_A_DIRECTORY,)),
    Case(
        "diff-bad-timeout",
        "diff",
        lambda w: ["diff", str(w.spec), str(w.spec), "--timeout", "0"],
        lambda w: ("--timeout",),
    ),
    # attest
    Case(
        "keygen-out-dir",
        "attest keygen",
        lambda w: ["attest", "keygen", "--out", str(w.dir)],
        lambda w: ("is a directory",),
    ),
    Case(
        "keygen-out-missing-folder",
        "attest keygen",
        lambda w: ["attest", "keygen", "--out", str(w.missing / "k")],
        lambda w: (f"cannot write {w.missing / 'k'}",),
    ),
    Case("nonce-extra", "attest nonce", lambda w: ["attest", "nonce", "x"], lambda w: ("unexpected extra",)),
    Case(
        "init-vendor-on-file",
        "attest init-vendor",
        lambda w: ["attest", "init-vendor", str(w.file), "--now", NOW],
        lambda w: (_IS_A_FILE,),
    ),
    Case(
        "init-vendor-under-file",
        "attest init-vendor",
        lambda w: ["attest", "init-vendor", str(w.file / "v"), "--now", NOW],
        lambda w: (f"{w.file} is not a folder",),
    ),
    Case(
        "init-vendor-under-missing",
        "attest init-vendor",
        lambda w: ["attest", "init-vendor", str(w.missing / "v"), "--now", NOW],
        lambda w: (f"folder {w.missing} does not exist",),
    ),
    Case(
        "init-vendor-not-empty",
        "attest init-vendor",
        lambda w: ["attest", "init-vendor", str(w.full), "--now", NOW],
        lambda w: ("not an empty folder",),
    ),
    Case(
        "init-vendor-bad-now",
        "attest init-vendor",
        lambda w: ["attest", "init-vendor", str(w.missing), "--now", "yesterday"],
        lambda w: ("--now",),
    ),
    Case(
        "make-evidence-vendor-missing",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.missing), "--out", str(w.root / "e.bin")),
        lambda w: (f"vendor folder {w.missing} does not exist",),
    ),
    Case(
        "make-evidence-vendor-file",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.file), "--out", str(w.root / "e.bin")),
        lambda w: (_IS_A_FILE,),
    ),
    Case(
        "make-evidence-vendor-empty",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.dir), "--out", str(w.root / "e.bin")),
        lambda w: ("vendor.json is missing",),
    ),
    Case(
        "make-evidence-out-dir",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.vendor), "--out", str(w.dir)),
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "make-evidence-out-missing-folder",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.vendor), "--out", str(w.missing / "e.bin")),
        lambda w: (f"cannot write {w.missing / 'e.bin'}",),
    ),
    Case(
        "make-evidence-bad-svn",
        "attest make-evidence",
        lambda w: _ev(w, "--vendor", str(w.vendor), "--out", str(w.root / "e.bin"), "--svn", "1,2"),
        lambda w: ("--svn",),
    ),
    Case("show-missing", "attest show", lambda w: ["attest", "show", str(w.missing)], lambda w: ("cannot read",)),
    Case("show-dir", "attest show", lambda w: ["attest", "show", str(w.dir)], lambda w: (_IS_A_DIRECTORY,)),
    Case(
        "show-not-evidence", "attest show", lambda w: ["attest", "show", str(w.file)], lambda w: ("EVIDENCE_MALFORMED",)
    ),
    Case(
        "show-bad-format",
        "attest show",
        lambda w: ["attest", "show", str(w.evidence), "--format", "xml"],
        lambda w: ("--format",),
    ),
    Case(
        "attest-verify-evidence-missing",
        "attest verify",
        lambda w: _av(w, str(w.missing), "--vendor", str(w.vendor)),
        lambda w: (f"cannot read evidence {w.missing}",),
    ),
    Case(
        "attest-verify-evidence-dir",
        "attest verify",
        lambda w: _av(w, str(w.dir), "--vendor", str(w.vendor)),
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "attest-verify-vendor-missing",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.missing)),
        lambda w: (f"vendor folder {w.missing} does not exist",),
    ),
    Case(
        "attest-verify-vendor-file",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.file)),
        lambda w: (_IS_A_FILE,),
    ),
    Case(
        "attest-verify-policy-missing",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.vendor), "--policy", str(w.missing)),
        lambda w: (f"cannot read policy {w.missing}",),
    ),
    Case(
        "attest-verify-policy-dir",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.vendor), "--policy", str(w.dir)),
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "attest-verify-verifier-key-missing",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.vendor), "--verifier-key", str(w.missing)),
        lambda w: (f"cannot read verifier key {w.missing}",),
    ),
    Case(
        "verifier-public-key-file",
        "verifier public-key",
        lambda w: ["verifier", "public-key", "--verifier-dir", str(w.file)],
        lambda w: (f"verifier folder {w.file} is not a directory",),
    ),
    Case(
        "verifier-serve-config-missing",
        "verifier serve",
        lambda w: ["verifier", "serve", "--config", str(w.missing), "--socket", str(w.dir / "v.sock")],
        lambda w: (f"cannot read the run configuration {w.missing}",),
    ),
    Case(
        "attest-verify-result-out-dir",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.vendor), "--result-out", str(w.dir)),
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "attest-verify-result-out-missing-folder",
        "attest verify",
        lambda w: _av(w, str(w.evidence), "--vendor", str(w.vendor), "--result-out", str(w.missing / "t")),
        lambda w: (f"cannot write {w.missing / 't'}",),
    ),
    Case(
        "attest-verify-bad-nonce",
        "attest verify",
        lambda w: [
            "attest",
            "verify",
            str(w.evidence),
            "--vendor",
            str(w.vendor),
            "--nonce",
            "zz",
            "--key",
            w.key,
            "--reference",
            MEASUREMENT,
        ],
        lambda w: ("--nonce must be hex",),
    ),
    Case(
        "revoke-vendor-missing",
        "attest revoke",
        lambda w: ["attest", "revoke", "--vendor", str(w.missing), "--device-id", "gpu-0"],
        lambda w: ("does not exist",),
    ),
    Case(
        "revoke-vendor-file",
        "attest revoke",
        lambda w: ["attest", "revoke", "--vendor", str(w.file), "--device-id", "gpu-0"],
        lambda w: (_IS_A_FILE,),
    ),
    Case(
        "revoke-unknown-device",
        "attest revoke",
        lambda w: ["attest", "revoke", "--vendor", str(w.vendor), "--device-id", "gpu-9"],
        lambda w: ("gpu-9",),
    ),
    # audit
    Case("audit-missing", "audit", lambda w: ["audit", str(w.missing)], lambda w: (f"{w.missing} does not exist",)),
    Case("audit-file", "audit", lambda w: ["audit", str(w.file)], lambda w: (f"{w.file} is a file",)),
    Case("audit-empty-dir", "audit", lambda w: ["audit", str(w.dir)], lambda w: ("summary.json does not exist",)),
    Case(
        "audit-bad-key",
        "audit",
        lambda w: ["audit", str(w.dir), "--verifier-key", "zz"],
        lambda w: ("--verifier-key must be 64 hex digits",),
    ),
    Case(
        "audit-spec-missing",
        "audit",
        lambda w: ["audit", str(w.dir), "--spec", str(w.missing)],
        lambda w: (f"{w.missing}:1:1: no such file",),
    ),
    Case(
        "audit-spec-dir", "audit", lambda w: ["audit", str(w.dir), "--spec", str(w.dir)], lambda w: (_IS_A_DIRECTORY,)
    ),
    Case("audit-bad-format", "audit", lambda w: ["audit", str(w.dir), "--format", "xml"], lambda w: ("--format",)),
    # report
    Case(
        "report-spec-missing",
        "report",
        lambda w: ["report", str(w.missing), "--out", str(w.root / "r")],
        lambda w: ("no such file",),
    ),
    Case(
        "report-spec-dir",
        "report",
        lambda w: ["report", str(w.dir), "--out", str(w.root / "r")],
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "report-run-missing",
        "report",
        lambda w: ["report", str(w.spec), "--run", str(w.missing), "--out", str(w.root / "r")],
        lambda w: ("no such run directory",),
    ),
    Case(
        "report-run-file",
        "report",
        lambda w: ["report", str(w.spec), "--run", str(w.file), "--out", str(w.root / "r")],
        lambda w: ("is a file, not a run directory",),
    ),
    Case(
        "report-run-empty",
        "report",
        lambda w: ["report", str(w.spec), "--run", str(w.dir), "--out", str(w.root / "r")],
        lambda w: ("summary.json does not exist",),
    ),
    Case(
        "report-replay-missing",
        "report",
        lambda w: ["report", str(w.spec), "--replay", str(w.missing), "--out", str(w.root / "r")],
        lambda w: (f"--replay {w.missing}: no such file",),
    ),
    Case(
        "report-replay-file",
        "report",
        lambda w: ["report", str(w.spec), "--replay", str(w.file), "--out", str(w.root / "r")],
        lambda w: ("not JSON",),
    ),
    Case(
        "report-calibration-missing",
        "report",
        lambda w: ["report", str(w.spec), "--calibration", str(w.missing), "--out", str(w.root / "r")],
        lambda w: (f"--calibration {w.missing}: no such file",),
    ),
    Case(
        "report-calibration-dir",
        "report",
        lambda w: ["report", str(w.spec), "--calibration", str(w.dir), "--out", str(w.root / "r")],
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case("report-out-file", "report", lambda w: ["report", str(w.spec), "--out", str(w.file)], lambda w: (_IS_A_FILE,)),
    Case(
        "report-out-under-file",
        "report",
        lambda w: ["report", str(w.spec), "--out", str(w.file / "r")],
        lambda w: (f"{w.file} is a file, not a directory",),
    ),
    Case(
        "report-out-foreign",
        "report",
        lambda w: ["report", str(w.spec), "--out", str(w.full)],
        lambda w: ("holds no earlier report",),
    ),
    Case("report-bad-format", "report", lambda w: ["report", str(w.spec), "--format", "pdf"], lambda w: ("--format",)),
    # replay
    Case(
        "replay-spec-missing",
        "replay",
        lambda w: ["replay", str(w.missing), "--guarantee", "g", "--out", str(w.root / "r")],
        lambda w: ("no such file",),
    ),
    Case(
        "replay-spec-dir",
        "replay",
        lambda w: ["replay", str(w.dir), "--guarantee", "g", "--out", str(w.root / "r")],
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "replay-out-file",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", "g", "--out", str(w.file)],
        lambda w: (_IS_A_FILE,),
    ),
    Case(
        "replay-out-not-empty",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", REPLAY_GUARANTEE, "--out", str(w.full)],
        lambda w: (_PRIOR.format(w.full), "--force"),
    ),
    Case(
        "replay-out-under-file",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", REPLAY_GUARANTEE, "--out", str(w.file / "r")],
        lambda w: (f"--out {w.file / 'r'}: cannot create it",),
    ),
    Case(
        "replay-unknown-guarantee",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", "nope", "--out", str(w.root / "r")],
        lambda w: ("no guarantee 'nope'",),
    ),
    Case(
        "replay-bad-steps",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", "g", "--out", str(w.root / "r"), "--steps", "1"],
        lambda w: ("--steps",),
    ),
    Case(
        "replay-bad-timeout",
        "replay",
        lambda w: ["replay", str(w.spec), "--guarantee", "g", "--out", str(w.root / "r"), "--timeout", "x"],
        lambda w: ("--timeout",),
    ),
    # train and demo: argument errors only (nothing is trained)
    Case(
        "train-spec-missing",
        "train",
        lambda w: ["train", "--spec", str(w.missing), "--out", str(w.root / "t")],
        lambda w: ("no such file",),
    ),
    Case(
        "train-spec-dir",
        "train",
        lambda w: ["train", "--spec", str(w.dir), "--out", str(w.root / "t")],
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "train-data-missing",
        "train",
        lambda w: ["train", "--data", str(w.missing), "--out", str(w.root / "t")],
        lambda w: (f"--data {w.missing} does not exist",),
    ),
    Case(
        "train-out-file", "train", lambda w: ["train", "--out", str(w.file)], lambda w: (f"--out {w.file} is a file",)
    ),
    Case("train-out-not-empty", "train", lambda w: ["train", "--out", str(w.full)], lambda w: (_PRIOR.format(w.full),)),
    Case(
        "train-bad-stages",
        "train",
        lambda w: ["train", "--stages", "x", "--out", str(w.root / "t")],
        lambda w: ("--stages",),
    ),
    Case(
        "train-zero-stages",
        "train",
        lambda w: ["train", "--stages", "0", "--out", str(w.root / "t")],
        lambda w: ("stages",),
    ),
    Case(
        "train-bad-schedule",
        "train",
        lambda w: ["train", "--schedule", "zigzag", "--out", str(w.root / "t")],
        lambda w: ("--schedule",),
    ),
    Case(
        "train-prepare-on-file",
        "train",
        lambda w: ["train", "--out", str(w.root / "t"), "--prepare", str(w.file)],
        lambda w: (f"--prepare: {w.file}",),
    ),
    Case(
        "train-prepare-vendor-missing",
        "train",
        lambda w: ["train", "--out", str(w.root / "t"), "--prepare", str(w.root / "p"), "--vendor", str(w.missing)],
        lambda w: (f"vendor folder {w.missing} does not exist",),
    ),
    Case("demo-out-file", "demo", lambda w: ["demo", "--out", str(w.file)], lambda w: (_IS_A_FILE,)),
    Case("demo-out-not-empty", "demo", lambda w: ["demo", "--out", str(w.full)], lambda w: (f"--out {w.full} exists",)),
    Case("demo-bad-format", "demo", lambda w: ["demo", "--format", "xml"], lambda w: ("--format",)),
    Case(
        "verify-quote-missing",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.missing), "--collateral", str(w.file)],
        lambda w: (f"cannot read quote {w.missing}",),
    ),
    Case(
        "verify-quote-dir",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.dir), "--collateral", str(w.file)],
        lambda w: (_IS_A_DIRECTORY,),
    ),
    Case(
        "verify-quote-collateral-not-json",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.evidence), "--collateral", str(w.file)],
        lambda w: ("COLLATERAL_MALFORMED",),
    ),
    Case(
        "verify-quote-no-collateral",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.evidence)],
        lambda w: ("--collateral",),
    ),
    Case(
        "verify-quote-unknown-status",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.evidence), "--collateral", str(w.file), "--allow-status", "Sunny"],
        lambda w: ("unknown TCB status Sunny",),
    ),
    Case(
        "verify-quote-short-nonce",
        "attest verify-quote",
        lambda w: ["attest", "verify-quote", str(w.evidence), "--cache", str(w.dir), "--nonce", "11", "--key", w.key],
        lambda w: ("--nonce",),
    ),
    Case(
        "fetch-collateral-no-target",
        "attest fetch-collateral",
        lambda w: ["attest", "fetch-collateral", str(w.evidence)],
        lambda w: ("--cache",),
    ),
    Case(
        "fetch-collateral-not-a-quote",
        "attest fetch-collateral",
        lambda w: [
            "attest",
            "fetch-collateral",
            str(w.file),
            "--out",
            str(w.root / "c.json"),
            "--pccs-url",
            "http://127.0.0.1:9",
        ],
        lambda w: ("DCAP_QUOTE_MALFORMED",),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_fails_cleanly(case: Case, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit code 2, a message naming the problem, no traceback, and nothing written or changed."""
    monkeypatch.chdir(world.root)  # outputs with a default path would land in the compared tree
    before = _tree(world.root)
    result = _invoke(case.args(world))
    _check_failure(result, case.code, case.expected(world))
    assert _tree(world.root) == before, "the command left files behind or changed some"


def _leaf_commands(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


def test_every_command_is_covered() -> None:
    """Each command has bad-input cases: a new command must join the table."""
    assert set(_leaf_commands(cli)) == {c.command for c in CASES}


@pytest.mark.parametrize("command", sorted(_leaf_commands(cli)))
def test_unknown_option_is_bad_input(command: str) -> None:
    """An unknown flag: exit code 2 and click's usage message, on every command."""
    result = _invoke([*command.split(), "--no-such-flag"])
    _check_failure(result, EXIT_BAD_INPUT, ("no such option", "--no-such-flag", f"Usage: stagewarden {command}"))


# --- unreadable and unwritable paths -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PermissionWorld:
    root: Path
    unreadable: Path  # a spec with mode 000
    unreadable_dir: Path  # a folder with mode 000
    read_only: Path  # an empty folder with mode 555
    vendor: Path  # a vendor whose folders and files are read-only
    key: str


def _permission_world(root: Path) -> PermissionWorld:
    from stagewarden.spec import example_text

    w = _make_world(root)
    unreadable = root / "unreadable.yaml"
    unreadable.write_text(example_text(REPLAY_EXAMPLE), encoding="utf-8")
    unreadable.chmod(0)
    unreadable_dir = root / "unreadable-dir"
    unreadable_dir.mkdir()
    (unreadable_dir / "summary.json").write_text("{}", encoding="utf-8")
    unreadable_dir.chmod(0)
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    for path in [*w.vendor.rglob("*"), w.vendor]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return PermissionWorld(root, unreadable, unreadable_dir, read_only, w.vendor, w.key)


PERMISSION_CASES: dict[
    str, tuple[Callable[[PermissionWorld], list[str]], Callable[[PermissionWorld], tuple[str, ...]]]
] = {
    "verify-unreadable": (lambda p: ["verify", str(p.unreadable)], lambda p: ("is not readable",)),
    "train-spec-unreadable": (
        lambda p: ["train", "--spec", str(p.unreadable), "--out", str(p.root / "t")],
        lambda p: ("is not readable",),
    ),
    "attest-show-unreadable": (lambda p: ["attest", "show", str(p.unreadable)], lambda p: ("is not readable",)),
    "report-calibration-unreadable": (
        lambda p: ["report", "--example", "demo", "--calibration", str(p.unreadable), "--out", str(p.root / "r")],
        lambda p: ("is not readable",),
    ),
    "audit-unreadable-dir": (lambda p: ["audit", str(p.unreadable_dir)], lambda p: ("is not readable",)),
    "schema-out-read-only": (
        lambda p: ["schema", "--out", str(p.read_only / "s.json")],
        lambda p: (f"cannot write {p.read_only / 's.json'}: permission denied",),
    ),
    "keygen-out-read-only": (
        lambda p: ["attest", "keygen", "--out", str(p.read_only / "k")],
        lambda p: (f"cannot write {p.read_only / 'k'}: permission denied",),
    ),
    "init-vendor-read-only": (
        lambda p: ["attest", "init-vendor", str(p.read_only / "v"), "--now", NOW],
        lambda p: (f"cannot create {p.read_only / 'v'}: permission denied",),
    ),
    "make-evidence-read-only-vendor": (
        lambda p: [
            "attest",
            "make-evidence",
            "--vendor",
            str(p.vendor),
            "--device-id",
            "gpu-9",
            "--key",
            p.key,
            "--nonce",
            NONCE,
            "--measurement",
            MEASUREMENT,
            "--now",
            NOW,
            "--out",
            str(p.root / "e.bin"),
        ],
        lambda p: (f"cannot update the vendor folder {p.vendor}", "gpu-9.key: permission denied"),
    ),
    "revoke-read-only-vendor": (
        lambda p: ["attest", "revoke", "--vendor", str(p.vendor), "--device-id", "gpu-0", "--now", NOW],
        lambda p: (f"cannot update the vendor folder {p.vendor}", "intermediate.crl: permission denied"),
    ),
    "report-out-read-only": (
        lambda p: ["report", "--example", "demo", "--out", str(p.read_only / "r")],
        lambda p: (f"--out {p.read_only / 'r'}: cannot create it: permission denied",),
    ),
    "replay-out-read-only": (
        lambda p: [
            "replay",
            "--example",
            REPLAY_EXAMPLE,
            "--guarantee",
            REPLAY_GUARANTEE,
            "--out",
            str(p.read_only / "r"),
        ],
        lambda p: (f"--out {p.read_only / 'r'}: cannot create it: permission denied",),
    ),
}


def permission_results(root: str) -> dict[str, dict[str, Any]]:
    """Run :data:`PERMISSION_CASES` against a fresh world in ``root``: each one's exit code, output,
    stray exception, expected texts and whether the tree changed."""
    p = _permission_world(Path(root))
    results: dict[str, dict[str, Any]] = {}
    for name, (args, expected) in PERMISSION_CASES.items():
        before = _tree(p.root)
        result = _invoke(args(p))
        stray = None if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
        results[name] = {
            "code": result.exit_code,
            "output": result.output,
            "stray": stray,
            "expected": list(expected(p)),
            "unchanged": _tree(p.root) == before,
        }
    return results


def _user_namespace_prefix() -> list[str] | None:
    """A command prefix that runs a program as an unprivileged user (mapped to this one), or ``None``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def permission_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("permissions")
    try:
        if os.geteuid() != 0:
            return permission_results(str(root))
        # As root, chmod stops nothing: run the cases as an unprivileged user of a user namespace.
        prefix = _user_namespace_prefix()
        if prefix is None:
            pytest.skip("running as root, where chmod does not stop reads, and user namespaces are unavailable")
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import test_cli_robustness as t; "
            "print(json.dumps(t.permission_results(sys.argv[2])))"
        )
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code, str(Path(__file__).parent), str(root)],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        for path in root.rglob("*"):  # let pytest remove the tree later
            if path.is_dir():
                path.chmod(0o755)


@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_unreadable_or_unwritable_path_fails_cleanly(name: str, permission_outcomes: dict[str, dict[str, Any]]) -> None:
    """chmod 000 inputs and read-only output folders: exit code 2, the path and the reason, nothing left behind."""
    outcome = permission_outcomes[name]
    assert outcome["code"] == EXIT_BAD_INPUT, outcome["output"]
    assert outcome["stray"] is None, outcome["stray"]
    assert "Traceback" not in outcome["output"]
    for text in outcome["expected"]:
        assert text.lower() in outcome["output"].lower(), f"{text!r} not in {outcome['output']!r}"
    assert outcome["unchanged"], "the command left files behind or changed some"


# --- file-system errors the commands do not handle themselves -------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(2, "No such file or directory", "/x/a"), "/x/a: no such file or directory"),
        (IsADirectoryError(21, "Is a directory", "/x/a"), "/x/a: is a directory, not a file"),
        (
            NotADirectoryError(20, "Not a directory", "/x/a/b"),
            "/x/a/b: not a directory (a part of the path is a file)",
        ),
        (PermissionError(13, "Permission denied", "/x/a"), "/x/a: permission denied"),
        (FileExistsError(17, "File exists", "/x/a"), "/x/a: already exists"),
        (OSError(28, "No space left on device", "/x/a"), "/x/a: no space left on device"),
        (OSError(18, "Invalid cross-device link", "/x/a", None, "/y/b"), "/x/a -> /y/b: invalid cross-device link"),
        (OSError(5, "Input/output error"), "file system error: Input/output error"),
    ],
)
def test_os_error_message(error: OSError, expected: str) -> None:
    assert os_error_message(error) == expected


def test_an_unhandled_os_error_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError that escapes a command is one line naming the path, exit code 2."""

    def fail() -> list[str]:
        raise PermissionError(13, "Permission denied", "/somewhere/examples")

    monkeypatch.setattr("stagewarden.cli.examples.example_names", fail)
    result = _invoke(["examples", "list"])
    _check_failure(result, EXIT_BAD_INPUT, ("error: /somewhere/examples: permission denied",))
    assert len(result.output.strip().splitlines()) == 1


# --- Ctrl-C -----------------------------------------------------------------------------------


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def _interrupt_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while an output file is being written (its temporary file exists)."""
    monkeypatch.setattr(os, "fsync", _interrupt)


def _interrupt_report_build(source: Path, *args: Any) -> None:
    """Ctrl-C while the report's Sphinx project is being written (its hidden folder holds files)."""
    source.mkdir(parents=True)
    (source / "index.rst").write_text("partial\n", encoding="utf-8")
    raise KeyboardInterrupt


def _fake_interrupted_launch(config: Any, run_dir: Any, **kwargs: Any) -> Any:
    """What launch_local does on Ctrl-C: the run directory is partly written, then LaunchInterrupted."""
    from stagewarden.runtime.launch import LaunchInterrupted

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "events.jsonl").write_text("{}\n", encoding="utf-8")
    raise LaunchInterrupted("interrupted; every process of the run was stopped", ())


@dataclasses.dataclass(frozen=True)
class Interrupt:
    id: str
    args: Callable[[Path], list[str]]
    patch: Callable[[pytest.MonkeyPatch], None]


INTERRUPTS = [
    Interrupt(
        "verify",
        lambda d: ["verify", "--example", "demo"],
        lambda m: m.setattr("stagewarden.prover.verify", _interrupt),
    ),
    Interrupt(
        "synthesize",
        lambda d: ["synthesize", "--example", "demo"],
        lambda m: m.setattr("stagewarden.prover.synthesis.synthesize", _interrupt),
    ),
    Interrupt(
        "diff",
        lambda d: ["diff", "example:demo", "example:spot-check-eject"],
        lambda m: m.setattr("stagewarden.prover.diff.diff_specs", _interrupt),
    ),
    Interrupt(
        "examples-list",
        lambda d: ["examples", "list"],
        lambda m: m.setattr("stagewarden.cli.examples.example_names", _interrupt),
    ),
    Interrupt("schema-out", lambda d: ["schema", "--out", str(d / "schema.json")], _interrupt_fsync),
    Interrupt("keygen-out", lambda d: ["attest", "keygen", "--out", str(d / "worker.key")], _interrupt_fsync),
    Interrupt("init-vendor", lambda d: ["attest", "init-vendor", str(d / "vendor"), "--now", NOW], _interrupt_fsync),
    Interrupt(
        "audit",
        lambda d: ["audit", str(d)],
        lambda m: m.setattr("stagewarden.attest.audit.audit_run_dir", _interrupt),
    ),
    Interrupt(
        "report",
        lambda d: ["report", "--example", "demo", "--out", str(d / "report")],
        lambda m: m.setattr("stagewarden.report.build.write_project", _interrupt_report_build),
    ),
    Interrupt(
        "replay",
        lambda d: ["replay", "--example", REPLAY_EXAMPLE, "--guarantee", REPLAY_GUARANTEE, "--out", str(d / "a" / "r")],
        lambda m: m.setattr("stagewarden.runtime.launch.launch_local", _fake_interrupted_launch),
    ),
]


@pytest.mark.parametrize("case", INTERRUPTS, ids=[c.id for c in INTERRUPTS])
def test_ctrl_c_exits_130_and_leaves_nothing(case: Interrupt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside a command: 'interrupted', exit code 130, no traceback, no file or folder left."""
    monkeypatch.chdir(tmp_path)
    case.patch(monkeypatch)
    result = _invoke(case.args(tmp_path))
    monkeypatch.undo()
    _check_failure(result, EXIT_INTERRUPTED, ("error: interrupted (Ctrl-C)",))
    assert "Aborted" not in result.output
    assert list(tmp_path.iterdir()) == [], "an interrupted command left output behind"


def test_ctrl_c_keeps_an_earlier_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted rebuild leaves the earlier report as it was."""
    out = tmp_path / "report"
    out.mkdir()
    (out / REPORT_MARKER).write_text("earlier\n", encoding="utf-8")
    (out / "index.html").write_text("earlier\n", encoding="utf-8")
    before = _tree(tmp_path)
    monkeypatch.setattr("stagewarden.report.build.write_project", _interrupt_report_build)
    result = _invoke(["report", "--example", "demo", "--out", str(out)])
    _check_failure(result, EXIT_INTERRUPTED, ("interrupted",))
    assert _tree(tmp_path) == before


def test_ctrl_c_keeps_an_earlier_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted ``replay --force`` leaves the earlier --out as it was."""
    out = tmp_path / "replay"
    out.mkdir()
    (out / "replay.json").write_text("{}\n", encoding="utf-8")
    before = _tree(tmp_path)
    monkeypatch.setattr("stagewarden.runtime.launch.launch_local", _fake_interrupted_launch)
    args = ["replay", "--example", REPLAY_EXAMPLE, "--guarantee", REPLAY_GUARANTEE, "--out", str(out), "--force"]
    result = _invoke(args)
    _check_failure(result, EXIT_INTERRUPTED, ("interrupted",))
    assert _tree(tmp_path) == before


# --- the real entry point, in a subprocess ----------------------------------------------------


def _stagewarden(*args: str) -> list[str]:
    return [sys.executable, "-c", "from stagewarden.cli import main; main()", *args]


def test_main_bad_input_exit_path(tmp_path: Path) -> None:
    """The console script's main(): a bad path and a bad flag exit 2 with one message, no traceback."""
    done = subprocess.run(
        _stagewarden("schema", "--out", str(tmp_path / "missing" / "s.json")),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=tmp_path,
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert done.stderr.strip() == f"error: cannot write {tmp_path / 'missing' / 's.json'}: No such file or directory"
    assert done.stdout == "" and list(tmp_path.iterdir()) == []
    done = subprocess.run(
        _stagewarden("verify", "--example", "demo", "--timeout", "soon"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == EXIT_BAD_INPUT
    assert "Usage: stagewarden verify" in done.stderr and "'soon' is not a valid float" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "replacing-an-earlier-report"])
def test_sigint_stops_report_cleanly(tmp_path: Path, earlier: bool) -> None:
    """SIGINT while ``report`` builds: exit code 130, 'interrupted', no traceback, no partial report
    (and an earlier report left as it was); or, if the signal lands as the build completes, the
    complete new report and exit code 0, never anything in between."""
    out = tmp_path / "report"
    if earlier:
        out.mkdir()
        (out / REPORT_MARKER).write_text("earlier\n", encoding="utf-8")
        (out / "index.html").write_text("earlier\n", encoding="utf-8")
    before = _tree(tmp_path)
    process = subprocess.Popen(
        _stagewarden("report", "--example", "demo", "--out", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=sigint_default,  # noqa: PLW1509 - a test's process, no threads to race
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        # The report is written into a hidden sibling of --out: interrupt once that exists.
        while not any(p.name.startswith(".report-") for p in tmp_path.iterdir()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the report build did not start"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in stderr and "Aborted" not in stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".report-")]
    assert leftovers == []
    if process.returncode == 0:
        # On a loaded machine the signal can come as the finished report is being moved into
        # place; then the report must be the whole new one.
        assert (out / "index.html").is_file() and "earlier" not in (out / "index.html").read_text()
        return
    assert process.returncode == EXIT_INTERRUPTED, (stdout, stderr)
    assert "error: interrupted (Ctrl-C)" in stderr
    assert _tree(tmp_path) == before
