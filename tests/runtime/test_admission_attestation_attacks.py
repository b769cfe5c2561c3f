"""Attacks on the coordinator's admission with simulated attestation, over a scripted transport: each
worker answers its ``hello`` with real SIMULATED TEE evidence from a vendor folder, made for the
nonce the coordinator sent it (issued by a real verifier service, which appraises it), and the
attacker chooses the measurement, device and receipt key.

* a worker presents another stage's measurement (valid evidence, a genuine measurement of the run);
* two workers answer from one device, or with one receipt key.

Each is refused with its own code and nothing is admitted; honest workers are admitted with results
bound to the run, the worker and the stage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coordinator_parts import Parts
from distributed_helpers import tiny_config
from verifier_helpers import serving_verifier

from stagewarden.attest.result import parse_result_unverified
from stagewarden.attest.vendor import init_vendor, load_vendor, make_evidence
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.context import EventLog
from stagewarden.runtime.coordinator.errors import AdmissionRefused
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.protocol import Evidence, Hello, parse_message
from stagewarden.runtime.verifier_process import reference_measurements

WORKERS = ("s0r0", "s1r0")
CONFIG = tiny_config(stages=2, attestation=True)
KEYS = {wid: bytes([i + 1]) * 32 for i, wid in enumerate(WORKERS)}


class _Recorder:
    """Stands in for the run directory's writer: keeps what admission writes."""

    def __init__(self) -> None:
        self.evidence: dict[str, bytes] = {}
        self.results: dict[str, list[bytes]] = {}

    def write_verifier_key(self, key: bytes) -> None:
        pass

    def write_evidence(self, worker: str, evidence: bytes) -> None:
        self.evidence[worker] = evidence

    def write_results(self, worker: str, tokens: list[bytes]) -> None:
        self.results[worker] = tokens


class _Workers:
    """A transport whose workers answer ``evidence`` with SIMULATED TEE evidence for the nonce of their hello."""

    def __init__(self, vendor: Path, plan: dict[str, dict[str, Any]]) -> None:
        self.vendor = load_vendor(vendor)
        self.plan = plan
        self.hellos: dict[int, Hello] = {}
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def send_json(self, dst: int, message: dict[str, Any]) -> None:
        self.sent.append((dst, message))
        parsed = parse_message(message)
        if isinstance(parsed, Hello):
            self.hellos[dst] = parsed

    def recv_json(self, src: int, expect: str) -> dict[str, Any]:
        assert expect == "evidence"
        hello = self.hellos[src]
        assert hello.nonce is not None
        how = self.plan[hello.worker_id]
        evidence = make_evidence(self.vendor, how["device"], how["key"], hello.nonce, how["measurement"])
        return Evidence(hello.worker_id, how["key"], pid=100 + src, host="node", evidence=evidence).to_wire()


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[VerifierClient]:
    """The run's verifier service, trusting the vendor in ``tmp_path/vendor``."""
    vendor = tmp_path / "vendor"
    init_vendor(vendor)
    with serving_verifier(CONFIG, vendor) as client:
        yield client


def _admission(tmp_path: Path, verifier: VerifierClient) -> tuple[Admission, Parts, _Recorder, Path]:
    vendor = tmp_path / "vendor"
    parts = Parts(CONFIG, None)
    parts.ctx.run_dir = tmp_path
    parts.ctx.keys_dir = tmp_path / "keys"
    parts.ctx.vendor_dir = vendor
    parts.ctx.verifier = verifier
    parts.ctx.events = EventLog(tmp_path / "events.jsonl")
    recorder = _Recorder()
    parts.ctx.writer = recorder  # type: ignore[assignment]
    faults = Faults(parts.ctx, parts.roster, parts.tally)
    admission = Admission(parts.ctx, parts.roster, parts.ledger, parts.tally, parts.reexec, faults)
    return admission, parts, recorder, vendor


def _run(
    tmp_path: Path, verifier: VerifierClient, change: dict[str, dict[str, Any]]
) -> tuple[Admission, Parts, _Recorder]:
    admission, parts, recorder, vendor = _admission(tmp_path, verifier)
    references = reference_measurements(CONFIG)
    measurements = {wid: references[str(stage)] for stage, wid in enumerate(WORKERS)}
    plan = {wid: {"device": f"dev-{wid}", "key": KEYS[wid], "measurement": measurements[wid]} for wid in WORKERS}
    for wid, fields in change.items():
        plan[wid].update({k: (measurements[v] if k == "measurement" else v) for k, v in fields.items()})
    parts.ctx.transport = _Workers(vendor, plan)
    return admission, parts, recorder


def _refusals(tmp_path: Path) -> list[tuple[str, str]]:
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [(e["worker"], e["code"]) for e in map(json.loads, lines) if e["event"] == "refused"]


def test_honest_workers_get_results_bound_to_run_worker_and_stage(tmp_path: Path, verifier: VerifierClient) -> None:
    """Both workers are admitted; each result names the run, the worker and its stage."""
    admission, parts, recorder = _run(tmp_path, verifier, {})
    admission.admit()
    assert parts.roster.keys == KEYS
    for stage, wid in enumerate(WORKERS):
        result = parse_result_unverified(recorder.results[wid][0])
        assert (result.run_id, result.worker, result.stage) == (parts.ctx.run_id, wid, str(stage))


def test_stage_zero_worker_with_stage_one_measurement_is_refused(tmp_path: Path, verifier: VerifierClient) -> None:
    """The stage-0 worker presents stage 1's measurement (a genuine reference value of the run, on a
    genuine device): MEASUREMENT_WRONG_STAGE, not admitted."""
    admission, parts, _ = _run(tmp_path, verifier, {"s0r0": {"measurement": "s1r0"}})
    with pytest.raises(AdmissionRefused, match="s0r0 .*MEASUREMENT_WRONG_STAGE"):
        admission.admit()
    assert _refusals(tmp_path) == [("s0r0", "MEASUREMENT_WRONG_STAGE")]
    assert "s0r0" not in parts.roster.keys


def test_two_workers_on_one_device_are_refused(tmp_path: Path, verifier: VerifierClient) -> None:
    """Both workers answer from device ``dev-s0r0``: the second is refused with DEVICE_SHARED."""
    admission, _, _ = _run(tmp_path, verifier, {"s1r0": {"device": "dev-s0r0"}})
    with pytest.raises(AdmissionRefused, match="s1r0 .*DEVICE_SHARED"):
        admission.admit()
    assert _refusals(tmp_path) == [("s1r0", "DEVICE_SHARED")]


def test_two_workers_with_one_receipt_key_are_refused(tmp_path: Path, verifier: VerifierClient) -> None:
    """Both workers present s0r0's receipt key (each with evidence binding it): KEY_SHARED."""
    admission, _, _ = _run(tmp_path, verifier, {"s1r0": {"key": KEYS["s0r0"]}})
    with pytest.raises(AdmissionRefused, match="s1r0 .*KEY_SHARED"):
        admission.admit()
    assert _refusals(tmp_path) == [("s1r0", "KEY_SHARED")]
