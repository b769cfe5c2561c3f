"""Admission over a scripted transport (no processes, attestation off): what the coordinator sends
each worker, and that an evidence message the protocol refuses is a refused admission of that
worker, not a fault of the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from coordinator_parts import Parts
from distributed_helpers import tiny_config

from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.context import EventLog
from stagewarden.runtime.coordinator.errors import AdmissionRefused
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.protocol import Admitted, Evidence, Hello, Refused, Shutdown, parse_message

WORKERS = ("s0r0", "s1r0")
KEYS = {wid: bytes([i + 1]) * 32 for i, wid in enumerate(WORKERS)}


class _Scripted:
    """Records what is sent; answers each rank's ``evidence`` receive from a script."""

    def __init__(self, answers: dict[int, dict[str, Any]]) -> None:
        self.answers = answers
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def send_json(self, dst: int, message: dict[str, Any]) -> None:
        self.sent.append((dst, message))

    def recv_json(self, src: int, expect: str) -> dict[str, Any]:
        assert expect == "evidence"
        return self.answers[src]


def _evidence(rank: int) -> dict[str, Any]:
    wid = WORKERS[rank - 1]
    return Evidence(wid, KEYS[wid], pid=100 + rank, host="node").to_wire()


def _admission(tmp_path: Path, answers: dict[int, dict[str, Any]]) -> tuple[Admission, _Scripted, Parts]:
    transport = _Scripted(answers)
    parts = Parts(tiny_config(stages=2, attestation=False), transport)
    parts.ctx.run_dir = tmp_path
    parts.ctx.events = EventLog(tmp_path / "events.jsonl")
    faults = Faults(parts.ctx, parts.roster, parts.tally)
    return Admission(parts.ctx, parts.roster, parts.ledger, parts.tally, parts.reexec, faults), transport, parts


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_well_formed_evidence_admits_every_worker_with_typed_messages(tmp_path: Path) -> None:
    """Each worker gets a ``hello`` naming it and its stage, then ``admitted`` with every stage's
    key, worker id and rank: each message parses strictly as the worker will parse it."""
    admission, transport, parts = _admission(tmp_path, {1: _evidence(1), 2: _evidence(2)})
    admission.admit()
    messages = [(dst, parse_message(m)) for dst, m in transport.sent]
    hellos = [(dst, m) for dst, m in messages if isinstance(m, Hello)]
    assert [(dst, m.worker_id, m.slot, m.nonce) for dst, m in hellos] == [(1, "s0r0", 0, None), (2, "s1r0", 1, None)]
    admitted = [(dst, m) for dst, m in messages if isinstance(m, Admitted)]
    assert [dst for dst, _ in admitted] == [1, 2]
    assert admitted[0][1] == Admitted({0: KEYS["s0r0"], 1: KEYS["s1r0"]}, {0: "s0r0", 1: "s1r0"}, {0: 1, 1: 2})
    assert parts.roster.keys == KEYS
    assert parts.roster.processes["s1r0"]["pid"] == 102


@pytest.mark.parametrize(
    "change",
    [
        {"receipt_key": "zz" * 32},  # not hex
        {"receipt_key": "ab" * 16},  # too short
        {"pid": "102"},  # a string where a number belongs
        {"host": "h" * 300},  # longer than a host name
        {"verdict": "trust me"},  # a key the protocol does not know
        {"evidence": "ab", "evidence_error": "no TEE"},  # both evidence and its absence
    ],
)
def test_evidence_the_protocol_refuses_refuses_that_worker(tmp_path: Path, change: dict[str, Any]) -> None:
    """A malformed evidence message refuses its sender's admission (event ``refused`` with code
    ``MALFORMED``, the run refused naming the worker); the worker is told ``refused`` and the
    well-formed one ``shutdown``."""
    admission, transport, parts = _admission(tmp_path, {1: _evidence(1), 2: dict(_evidence(2), **change)})
    with pytest.raises(AdmissionRefused, match="worker s1r0 was refused admission"):
        admission.admit()
    refused = [e for e in _events(tmp_path) if e["event"] == "refused"]
    assert [(e["worker"], e["code"]) for e in refused] == [("s1r0", "MALFORMED")]
    last = {dst: parse_message(m) for dst, m in transport.sent}
    assert last == {1: Shutdown(), 2: Refused()}
    assert "s1r0" not in parts.roster.keys


def test_evidence_in_another_workers_name_is_refused(tmp_path: Path) -> None:
    """A well-formed answer in another worker's name is refused as well."""
    admission, _, _ = _admission(tmp_path, {1: _evidence(1), 2: _evidence(1)})
    with pytest.raises(AdmissionRefused, match="rank 2 answered as 's0r0', not 's1r0'"):
        admission.admit()
