"""``stagewarden train --attestation-kind dcap``: the coordinator appraises Intel quotes from the
workers' configfs-tsm, and refuses workers that have none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dcap_samples import COLLATERAL

from stagewarden.cli import cli
from stagewarden.runtime.config import ConfigError, RunConfig

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
TINY = ["--stages", "2", "--microbatches", "2", "--steps", "1", "--n-layer", "2", "--n-embd", "32"]


def test_config_needs_collateral_and_keeps_paths_out_of_the_measurement() -> None:
    """The dcap kind needs a collateral source; the coordinator's file paths are not part of a worker's measurement."""
    with pytest.raises(ConfigError):
        RunConfig(attestation_kind="dcap")
    with pytest.raises(ConfigError):
        RunConfig(attestation_kind="sev")
    config = RunConfig(attestation_kind="dcap", dcap_collateral="/x/bundle.json", dcap_policy="/x/policy.yaml")
    measured = config.measured_json()
    assert measured["attestation_kind"] == "dcap"
    assert "dcap_collateral" not in measured and "dcap_policy" not in measured
    assert RunConfig.from_json(config.to_json()) == config


def test_train_dcap_without_collateral_is_bad_input(tmp_path: Path) -> None:
    """--attestation-kind dcap without --dcap-collateral exits 2 before anything starts."""
    result = CliRunner().invoke(cli, ["train", *TINY, "--attestation-kind", "dcap", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "dcap_collateral" in result.output


@pytest.mark.slow
@pytest.mark.skipif(TSM_ROOT.exists(), reason="this machine is a TEE guest with configfs-tsm")
def test_workers_without_a_tee_are_refused(tmp_path: Path) -> None:
    """On a machine with no configfs-tsm, every worker is refused with PROVIDER_UNAVAILABLE and the run exits 1."""
    out = tmp_path / "run"
    args = ["train", *TINY, "--attestation-kind", "dcap", "--dcap-collateral", str(COLLATERAL), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "PROVIDER_UNAVAILABLE" in result.output
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    refused = [e for e in events if e.get("event") == "refused"]
    assert len(refused) == 2 and all(e["code"] == "PROVIDER_UNAVAILABLE" for e in refused)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["attestation_kind"] == "dcap"
