"""``stagewarden demo`` end to end (a few steps, hidden ``--quick``) and a smoke test of the
runtime overhead benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stagewarden.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path: Path) -> None:
    """The demo proves the spec, trains, audits the clean run and prints the side-by-side table."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 holds" in result.output
    assert "predicted (prover) vs observed (runs)" in result.output
    for row in ("detections", "blamed worker", "response", "final loss", "audit"):
        assert row in result.output
    payload = json.loads((out / "demo.json").read_text())
    assert payload["seconds"] > 0 and f"the demo took {payload['seconds']:.0f} s" in " ".join(result.output.split())
    assert 0 < payload["disk_bytes"] < 20_000_000
    clean = payload["runs"]["clean"]
    assert clean["status"] == "completed" and clean["detections"] == 0
    assert clean["audit"]["clean"] is True
    assert payload["predicted"]["unit_detection_probability"] == pytest.approx(0.05)
    if "attacked" in payload["runs"]:
        assert set(payload["runs"]["attacked"]["blamed"]) <= {"s1r0"}
    else:
        assert "not available" in result.output
    # audit --spec on each of the demo's runs agrees with the proof: a tampered unit counts only
    # where the malicious worker computed it (not after the standby took its stage)
    spec = ROOT / "stagewarden" / "spec" / "examples" / "demo.yaml"
    for name in payload["runs"]:
        audited = CliRunner().invoke(cli, ["audit", str(out / name), "--spec", str(spec)])
        assert audited.exit_code == 0, audited.output
        assert "GUARANTEE_BROKEN" not in audited.output
    report = Path(payload["report"])
    assert report == out.absolute() / "report" / "index.html" and report.is_file()
    assert f"security report: {report}" in " ".join(result.output.split())
    assert (report.parent / "run-1.html").is_file() and (report.parent / "run-2.html").is_file()


def test_demo_refuses_non_empty_out(tmp_path: Path) -> None:
    """A non-empty --out is bad input (exit code 2), before anything runs."""
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output


@pytest.mark.slow
def test_overhead_benchmark_quick(tmp_path: Path) -> None:
    """One round of the baselines on a toy job: every trainer measured, the same losses, JSON written."""
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "runtime_overhead.py"),
            "--quick",
            "--parts",
            "baselines",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sw_none/pytorch_1f1b" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] is True
    rows = {row["key"]: row for row in data["baselines"]["rows"]}
    assert set(rows) == {"sw_none", "sw_none_ckpt0", "sw_default", "sw_default_ckpt0", "pytorch_1f1b", "one_process"}
    assert rows["sw_none"]["against_sw_none"]["median"] == 1.0
    assert data["baselines"]["losses_agree"] is True
