"""A report on run directories the runtime writes now (not the recorded ones): a tiny spot-checked
run and a tiny run without security, so that the overhead column has its baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagewarden.report import build_report
from stagewarden.spec import load_example


@pytest.fixture(scope="session")
def fresh_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny runs of two stages, three steps: spot-checked with receipts and attestation, and bare."""
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.launch import launch_local
    from stagewarden.runtime.model import GPTConfig

    model = GPTConfig(n_layer=2, n_embd=16, n_head=2, block_size=8)
    base = {"stages": 2, "microbatches": 2, "steps": 3, "model": model, "batch_size": 2, "max_bytes": 16 * 1024}
    configs = {
        "checked": RunConfig(**base, verification="spot_check", spot_check_rate=0.5),  # type: ignore[arg-type]
        "bare": RunConfig(**base, receipts=False, attestation=False),  # type: ignore[arg-type]
    }
    root = tmp_path_factory.mktemp("fresh-runs")
    for name, config in configs.items():
        launch_local(config, root / name, timeout=600.0)
    return [root / name for name in configs]


@pytest.mark.slow
def test_report_on_fresh_runs(fresh_runs: list[Path], tmp_path: Path) -> None:
    """Both runs appear; the bare one is the overhead baseline; the checked one audits clean."""
    index = build_report(load_example("demo"), fresh_runs, tmp_path / "report")
    runs = (index.parent / "runs.html").read_text(encoding="utf-8")
    assert "baseline" in runs and "no security" in runs
    checked = (index.parent / "run-1.html").read_text(encoding="utf-8")
    assert "is clean" in checked and "signature valid" in checked
    bare = (index.parent / "run-2.html").read_text(encoding="utf-8")
    # a run without attestation or receipts is audited for what it has and says what it lacks
    assert "The audit could not run" not in bare
    assert "of a run trained without attestation" in bare
    assert "ATTESTATION_ABSENT" in bare and "RECEIPTS_ABSENT" in bare
