"""Shared fixtures of the report tests: reports built once per session from packaged specs and
from the two run directories recorded under docs/report-example (real ``stagewarden demo
--quick`` runs, checkpoints removed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagewarden.report import build_report
from stagewarden.spec import load_example

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "docs" / "report-example"
RECORDED_RUNS = [RECORDED / "clean", RECORDED / "attacked"]


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the demo spec with the recorded clean and attacked runs; its index page."""
    out = tmp_path_factory.mktemp("demo-report") / "report"
    return build_report(load_example("demo"), RECORDED_RUNS, out)


@pytest.fixture(scope="session")
def collusion_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a spec with violated guarantees (adjacent collusion), spec only; its index page."""
    out = tmp_path_factory.mktemp("collusion-report") / "report"
    return build_report(load_example("paper-adjacent-collusion"), [], out)
