"""Attestation renewed during a run: a run longer than a result's lifetime still audits clean, a
record cut back to the admission results does not, and a device revoked mid-run is refused at
its next renewal and replaced like a crashed worker (gloo, tiny model, 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from distributed_helpers import tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.vendor import init_vendor, load_vendor, revoke_device
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.worker.hooks import STEP_DELAY_ENV

LIFETIME = 2
#: Every step takes at least this long, so that 40 steps outlive a result on any machine.
SLOW_STEPS = {STEP_DELAY_ENV: "0.1"}


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def _codes(run: Path) -> set[str]:
    return {str(f.code) for f in audit_run_dir(run).errors}


def test_a_run_longer_than_a_result_lifetime_is_renewed_and_audits_clean(tmp_path: Path) -> None:
    """With results valid for 2 s, every worker is re-attested while the run goes on; each renewal
    adds a result, and the audit finds a valid result for every receipt. Cutting each worker's
    results back to the one of its admission (what a log holder could do) leaves receipts signed
    after it expired, which the audit reports."""
    run = tmp_path / "run"
    result = launch_local(tiny_config(stages=2, steps=40, result_lifetime=LIFETIME), run, env=SLOW_STEPS)
    assert result.summary["status"] == "completed"
    assert result.summary["wall_seconds"] > LIFETIME, "the run ended before a result could expire"
    renewed = [e for e in _events(run) if e["event"] == "reattested"]
    assert {e["worker"] for e in renewed} == {"s0r0", "s1r0"}
    for worker in ("s0r0", "s1r0"):
        tokens = (run / "attestation" / f"{worker}.ear").read_bytes().splitlines()
        assert len(tokens) == 1 + sum(e["worker"] == worker for e in renewed)
    assert audit_run_dir(run).errors == ()

    for worker in ("s0r0", "s1r0"):
        ear = run / "attestation" / f"{worker}.ear"
        ear.write_bytes(ear.read_bytes().splitlines(keepends=True)[0])
    assert str(ErrorCode.RESULT_EXPIRED) in _codes(run)


def test_a_device_revoked_mid_run_is_refused_at_renewal_and_replaced(tmp_path: Path) -> None:
    """Stage 1's device is revoked after step 2: its next re-attestation is refused (the verifier
    reads the vendor's CRL afresh), the worker is recorded as failed with cause
    ``attestation_refused``, the standby takes stage 1 from the newest verified checkpoint and the
    run completes and audits clean."""
    vendor = init_vendor(tmp_path / "vendor")
    run = tmp_path / "run"
    revoked = threading.Event()

    def revoke_after_step_2() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not revoked.is_set():
            events = run / "events.jsonl"
            if events.exists() and any(e["event"] == "step" and e["step"] >= 2 for e in _events(events.parent)):
                revoke_device(load_vendor(vendor.path), "sim-device-2")
                revoked.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=revoke_after_step_2, daemon=True)
    watcher.start()
    config = tiny_config(stages=2, steps=40, standby=1, result_lifetime=LIFETIME)
    result = launch_local(config, run, vendor_dir=vendor.path, env=SLOW_STEPS)
    revoked.set()
    watcher.join(5)
    summary = result.summary
    assert summary["status"] == "completed"
    faults = summary["faults"]
    assert [(f["worker"], f["stage"], f["cause"]) for f in faults] == [("s1r0", 1, "attestation_refused")]
    assert "CERT_REVOKED" in faults[0]["reason"] or "REVOKED" in faults[0]["reason"], faults[0]["reason"]
    assert [(r["worker"], r["by"], r["stage"]) for r in summary["replacements"]] == [("s1r0", "standby0", 1)]
    refusals = [e for e in _events(run) if e["event"] == "reattest_refused"]
    assert [e["worker"] for e in refusals] == ["s1r0"]
    assert audit_run_dir(run).errors == ()
