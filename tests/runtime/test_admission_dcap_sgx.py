"""Admission with ``attestation_kind = "dcap"`` over a scripted transport, the workers answering with
the real Intel SGX sample quote (tests/attest/data/sgx_quote): a genuine quote whose REPORTDATA binds
no key of theirs, so each worker is refused with KEY_BINDING and nothing is admitted.

The clocks of the coordinator and of the verifier service (a real one, serving from a thread) are set
inside the sample collateral's validity; the run directory writer is a recorder (no run record is
needed to admit)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from coordinator_parts import Parts
from distributed_helpers import tiny_config
from test_admission_messages import _Scripted
from verifier_helpers import serving_verifier

from stagewarden.attest.clock import FixedClock
from stagewarden.runtime.coordinator import admission as admission_module
from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.context import EventLog
from stagewarden.runtime.coordinator.errors import AdmissionRefused
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.protocol import Evidence, Hello, Refused, parse_message

SAMPLES = Path(__file__).parents[1] / "attest" / "data"
SGX_QUOTE = (SAMPLES / "sgx_quote").read_bytes()
SGX_COLLATERAL = SAMPLES / "sgx_quote_collateral.json"
#: Inside every validity window of the SGX sample collateral (its TCB info's issueDate).
SGX_AT = dt.datetime.fromtimestamp(1750330571, dt.UTC)
WORKERS = ("s0r0", "s1r0")
KEYS = {wid: bytes([i + 1]) * 32 for i, wid in enumerate(WORKERS)}


class _RecordingWriter:
    """Stands in for the run directory's writer: keeps what admission writes."""

    def __init__(self) -> None:
        self.evidence: dict[str, bytes] = {}
        self.verifier_key: bytes | None = None
        self.results: dict[str, list[bytes]] = {}

    def write_verifier_key(self, key: bytes) -> None:
        self.verifier_key = key

    def write_evidence(self, worker: str, evidence: bytes) -> None:
        self.evidence[worker] = evidence

    def write_results(self, worker: str, tokens: list[bytes]) -> None:
        self.results[worker] = tokens


def _admit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path | None) -> tuple[_Scripted, Any, Parts]:
    monkeypatch.setattr(admission_module, "SystemClock", lambda: FixedClock(SGX_AT))
    answers = {
        rank: Evidence(wid, KEYS[wid], pid=100 + rank, host="node", evidence=SGX_QUOTE).to_wire()
        for rank, wid in enumerate(WORKERS, start=1)
    }
    transport = _Scripted(answers)
    config = tiny_config(
        stages=2,
        attestation=True,
        attestation_kind="dcap",
        dcap_collateral=str(SGX_COLLATERAL),
        dcap_policy=str(policy) if policy else None,
    )
    parts = Parts(config, transport)
    parts.ctx.run_dir, parts.ctx.keys_dir = tmp_path, tmp_path / "keys"
    parts.ctx.events = EventLog(tmp_path / "events.jsonl")
    writer = _RecordingWriter()
    parts.ctx.writer = writer
    faults = Faults(parts.ctx, parts.roster, parts.tally)
    admission = Admission(parts.ctx, parts.roster, parts.ledger, parts.tally, parts.reexec, faults)
    with serving_verifier(config, None, FixedClock(SGX_AT)) as verifier, pytest.raises(AdmissionRefused) as info:
        parts.ctx.verifier = verifier
        admission.admit()
    assert "KEY_BINDING" in str(info.value)
    return transport, writer, parts


@pytest.mark.parametrize("allow_status", [False, True])
def test_sgx_quote_is_refused_on_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_status: bool) -> None:
    """Each worker's SGX quote is appraised (its evidence kept, a nonce sent), refused with KEY_BINDING whether
    or not the policy allows its TCB status; each worker is told ``refused`` and none is admitted."""
    policy = None
    if allow_status:
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps({"version": 1, "allow_status": ["ConfigurationAndSWHardeningNeeded"]}))
    transport, writer, parts = _admit(tmp_path, monkeypatch, policy)
    hellos = [parse_message(m) for _, m in transport.sent if m["type"] == Hello.TYPE]
    assert len(hellos) == 2 and all(isinstance(h, Hello) and h.nonce is not None for h in hellos)
    assert writer.evidence == {wid: SGX_QUOTE for wid in WORKERS} and writer.verifier_key is not None
    assert writer.results == {}
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    refused = [(e["worker"], e["code"]) for e in events if e["event"] == "refused"]
    assert refused == [(wid, "KEY_BINDING") for wid in WORKERS]
    assert not any(e["event"] == "admitted" for e in events)
    last = {dst: parse_message(m) for dst, m in transport.sent}
    assert last == {1: Refused(), 2: Refused()}
    assert parts.roster.keys == {}
