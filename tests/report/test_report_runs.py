"""Reading run directories for the report, and the detection latency against its prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import RECORDED_RUNS  # type: ignore[import-not-found]

from stagewarden.prover import verify
from stagewarden.report import ReportError, read_run
from stagewarden.report.latency import geometric_pmf, observed_latency
from stagewarden.report.taxonomy import classify
from stagewarden.spec import load_example


def test_recorded_run_reads_and_audits_clean() -> None:
    """The recorded attacked run: its attestation rows verify and its receipt audit is clean."""
    run = read_run(RECORDED_RUNS[1])
    assert run.attack is not None and run.secured
    assert {a.worker for a in run.attestations} == {"s0r0", "s1r0", "s2r0", "s3r0", "standby0"}
    assert all(a.signature == "valid" and a.status == "affirming" for a in run.attestations)
    assert run.audit.report is not None and run.audit.report.clean
    assert [d.worker for d in run.detections] == ["s1r0"]
    assert run.metrics and run.metrics[0]["step"] == 0.0


def test_observed_latency_counts_tampered_units() -> None:
    """Caught at step 3, micro-batch 2, with the attack from step 2 (4 micro-batches a step): the
    7th tampered unit."""
    run = read_run(RECORDED_RUNS[1])
    latency = observed_latency(run, 0.05)
    assert not isinstance(latency, str)
    assert latency.observed == 7
    assert latency.cdf == pytest.approx(1 - 0.95**7)
    assert latency.mean == pytest.approx(20)


def test_clean_run_has_no_latency() -> None:
    """A run without an attack has nothing to measure."""
    assert observed_latency(read_run(RECORDED_RUNS[0]), 0.05) == "the run has no attack"


def test_uncaught_attack_is_censored(tmp_path: Path) -> None:
    """An attacked run without a detection is censored at the units it tampered with."""
    copy = tmp_path / "attacked"
    shutil.copytree(RECORDED_RUNS[1], copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["detections"] = []
    (copy / "summary.json").write_text(json.dumps(summary))
    latency = observed_latency(read_run(copy), 0.05)
    assert not isinstance(latency, str)
    assert latency.observed is None and latency.tampered == 3 * 4  # steps 2..4, 4 micro-batches
    assert latency.cdf == pytest.approx(0.95**12)


def test_geometric_pmf_sums_to_one() -> None:
    """The predicted law is a distribution."""
    assert sum(geometric_pmf(0.05, 2000)) == pytest.approx(1.0)


def test_refused_run_is_reported_not_rejected(tmp_path: Path) -> None:
    """A run whose summary exists but whose receipt log is missing still reads; the audit says why."""
    copy = tmp_path / "run"
    shutil.copytree(RECORDED_RUNS[0], copy)
    (copy / "receipts.log").unlink()
    run = read_run(copy)
    assert run.audit.report is None and "receipt log" in str(run.audit.error)


def test_missing_summary_is_an_error(tmp_path: Path) -> None:
    """A directory that is not a run directory is refused."""
    with pytest.raises(ReportError, match="summary"):
        read_run(tmp_path)


def test_taxonomy_of_the_demo() -> None:
    """The demo's adversary tampers with the model and equivocates; it cannot poison data."""
    loaded = load_example("demo")
    threats = {t.name: t for t in classify(loaded.spec, verify(loaded))}
    assert threats["tamper_activations"].family == "model" and threats["tamper_activations"].in_spec
    assert threats["poison_data"].family == "data" and not threats["poison_data"].in_spec
    assert ("integrity", "holds") in threats["tamper_weights"].guarantees
    assert "spot_check" in threats["tamper_gradients"].defences
