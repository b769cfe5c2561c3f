"""Multi-process runs of the distributed engine on 127.0.0.1 (gloo, tiny model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.runtime.coordinator import FETCH_CHECK_ENV
from stagewarden.runtime.launch import LaunchError, LaunchResult, launch_local
from stagewarden.runtime.worker import CRASH_ENV, TAMPER_MEASUREMENT_ENV


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _gone(pids: tuple[int, ...]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> LaunchResult:
    """S=2 GPipe with one standby and the FETCH self-check on."""
    run_dir = tmp_path_factory.mktemp("honest") / "run"
    return launch_local(tiny_config(standby=1), run_dir, env={FETCH_CHECK_ENV: "1"})


def test_gpipe_two_stages_equals_reference(honest: LaunchResult) -> None:
    """Two stages with GPipe reproduce the single-process losses and final weights bitwise."""
    losses, weights = reference(tiny_config())
    assert honest.summary["losses"] == losses
    assert honest.summary["final_weights"]["stages"] == weights


def test_honest_run_passes_audit(honest: LaunchResult) -> None:
    """The offline auditor finds no error in an honest run directory."""
    report = audit_run_dir(honest.run_dir)
    assert report.clean, [f.message for f in report.errors]
    assert report.receipts == 2 * 2 * (2 + 2 + 1) and report.headers == 2 * (2 + 2)


def test_run_directory_contents(honest: LaunchResult) -> None:
    """The run directory holds the summary, metrics, events and attestation, and no private key."""
    run = honest.run_dir
    s = honest.summary
    assert s["status"] == "completed" and s["steps_completed"] == 2 and s["detections"] == []
    assert s["units"] == {"forward": 8, "backward": 8, "update": 4} and s["tokens_per_second"] > 0
    assert s["standby"] == ["standby0"] and s["config"]["standby"] == 1
    assert (run / "metrics.csv").read_text().splitlines()[0] == "step,loss,tokens_per_second,wall_seconds"
    kinds = [e["event"] for e in _events(run)]
    assert kinds.count("admitted") == 3 and kinds.count("step") == 2 and kinds[-1] == "run_completed"
    assert {p.name for p in (run / "attestation").iterdir()} >= {"verifier.pub", "s0r0.ear", "s1r0.ear", "standby0.ear"}
    for path in run.rglob("*"):
        assert path.suffix != ".key" and b"PRIVATE KEY" not in (path.read_bytes() if path.is_file() else b"")


def test_fetch_returns_committed_tensors(honest: LaunchResult) -> None:
    """FETCH returns unit inputs and weights whose digests equal the committed receipt's."""
    checks = [e for e in _events(honest.run_dir) if e["event"] == "fetch_check"]
    assert len(checks) == 2 * 2 * 2
    assert all(e["input_ok"] and e["weights_ok"] for e in checks)


def test_one_f_one_b_three_stages_equals_reference_and_audits(tmp_path: Path) -> None:
    """Three stages with 1F1B (non-blocking sends) reproduce the reference bitwise and audit clean."""
    config = tiny_config(stages=3, schedule="1f1b", microbatches=3)
    result = launch_local(config, tmp_path / "run")
    losses, weights = reference(config)
    assert result.summary["losses"] == losses
    assert result.summary["final_weights"]["stages"] == weights
    assert audit_run_dir(result.run_dir).clean


def test_without_receipts_unsigned_transfers_equal_the_reference(tmp_path: Path) -> None:
    """With receipts off the tensors travel without signed headers (the transport is not
    ``signed``); the run still reproduces the reference bitwise."""
    config = tiny_config(stages=3, schedule="1f1b", microbatches=3, receipts=False)
    result = launch_local(config, tmp_path / "run")
    losses, weights = reference(config)
    assert result.summary["losses"] == losses
    assert result.summary["final_weights"]["stages"] == weights
    assert result.summary["receipts"] == 0 and result.summary["status"] == "completed"


def test_tampered_worker_is_refused(tmp_path: Path) -> None:
    """A worker whose initial weights differ is refused with MEASUREMENT_MISMATCH and the run stops."""
    run = tmp_path / "run"
    with pytest.raises(LaunchError, match="s1r0 .*refused admission: MEASUREMENT_MISMATCH") as info:
        launch_local(tiny_config(), run, env={TAMPER_MEASUREMENT_ENV: "1"})
    refused = [e for e in _events(run) if e["event"] == "refused"]
    assert [(e["worker"], e["code"]) for e in refused] == [("s1r0", "MEASUREMENT_MISMATCH")]
    assert json.loads((run / "summary.json").read_text())["status"] == "refused"
    assert _gone(info.value.pids)


def test_crashed_worker_fails_the_run_and_leaves_no_process(tmp_path: Path) -> None:
    """A worker dying mid-run fails the run with a clear message, keeps the finished step, and no child survives."""
    config = tiny_config(stages=3)
    run = tmp_path / "run"
    with pytest.raises(LaunchError, match="failed|rank") as info:
        launch_local(config, run, env={CRASH_ENV: "2:1"})
    assert _gone(info.value.pids)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_completed"] == 1  # resumable
    assert info.value.resumable and summary["pending_fault"]["worker"] == "s2r0"
    assert summary["losses"] == reference(tiny_config(stages=3, steps=1))[0]  # S=3 GPipe, step 0
