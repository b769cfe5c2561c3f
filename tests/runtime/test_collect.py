"""How the coordinator takes a step's commitments (a coordinator without a run, on a scripted
transport): with gloo the stages after the first are received and verified while stage 0 is
still awaited, and the outcomes still count in stage order."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Any

import pytest
import torch
from coordinator_parts import Parts
from distributed_helpers import tiny_config
from nacl.signing import SigningKey

from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    receipt_digest,
    sign_receipt,
)
from stagewarden.attest.step_roots import StepRoot, leaf_hash, parse_root, sign_root
from stagewarden.runtime.coordinator.commitments import Commitments
from stagewarden.runtime.transport import TransportError

STAGES = 3
WORKERS = [f"s{s}r0" for s in range(STAGES)]
KEYS = {wid: SigningKey(bytes([i + 1]) * 32) for i, wid in enumerate(WORKERS)}


def _receipt(wid: str, stage: int, micro_batch: int) -> bytes:
    receipt = Receipt(
        run_id="run",
        worker_id=wid,
        stage=stage,
        replica=0,
        step=0,
        micro_batch=micro_batch,
        kind=UnitKind.FORWARD if stage < STAGES - 1 else UnitKind.BACKWARD,
        input_digest=bytes(32),
        output_digest=bytes(32),
        weights_digest=bytes(32),
        env=ExecutionEnv(torch_version=torch.__version__, device="cpu", dtype="float32"),
        signed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        prev_digest=chain_genesis("run", wid),
    )
    return encode_receipt(sign_receipt(receipt, KEYS[wid]))


def _commitment(stage: int) -> dict[str, Any]:
    """A well-formed commitment of ``stage`` for step 0: one signed receipt under the worker's
    step root, no headers (and on the last stage, the micro-batch losses its receipts, here none
    of a forward unit, sign)."""
    wid = WORKERS[stage]
    receipt = _receipt(wid, stage, 0)
    root = sign_root(StepRoot("run", wid, stage, 0, 0, 1, (leaf_hash(receipt),)), KEYS[wid])
    message: dict[str, Any] = {
        "type": "commit",
        "step": 0,
        "receipts": [receipt.hex()],
        "headers": [],
        "busy_ns": 0,
        "root": root.encode().hex(),
    }
    if stage == STAGES - 1:
        message["microbatch_losses"] = [(1.0).hex(), (3.0).hex()]
        message["logits"] = [bytes(32).hex(), bytes(32).hex()]
    return message


class _Scripted:
    """Answers ``recv_json`` from each rank with its scripted message. Stage 0's (rank 1) comes
    last: it waits until every other rank's has been taken, as a pipeline's first stage finishes
    last; a coordinator that waited for stage 0 before taking the others would time out here."""

    def __init__(self, messages: dict[int, dict[str, Any]], stage0_waits: bool) -> None:
        self.messages = messages
        self.taken: list[int] = []
        self._lock = threading.Lock()
        self._others = threading.Event()
        self.stage0_waits = stage0_waits
        self.last_src: int | None = None

    def recv_json(self, src: int, expect: tuple[str, ...]) -> dict[str, Any]:
        assert expect == ("commit",)
        if src == 1 and self.stage0_waits and not self._others.wait(10.0):
            raise TransportError("stage 0's commitment was awaited before the others were taken", peer=src)
        with self._lock:
            self.taken.append(src)
            if len(self.taken) == len(self.messages) - 1 and 1 not in self.taken:
                self._others.set()
        self.last_src = src
        return self.messages[src]


def _coordinator(messages: dict[int, dict[str, Any]], backend: str = "gloo") -> tuple[Commitments, _Scripted, Parts]:
    config = tiny_config(stages=STAGES, microbatches=2)
    object.__setattr__(config, "backend", backend)  # a scripted transport: no process group to match
    transport = _Scripted(messages, stage0_waits=backend == "gloo")
    parts = Parts(config, transport)
    parts.roster.slot_ids = list(WORKERS)
    parts.roster.keys = {wid: bytes(k.verify_key) for wid, k in KEYS.items()}
    parts.roster.prev = {wid: chain_genesis("run", wid) for wid in WORKERS}
    return Commitments(parts.ctx, parts.roster, parts.tally, parts.current, parts.sealer), transport, parts


def test_later_stages_are_taken_while_stage_0_is_awaited() -> None:
    """The stages finish from the last to the first: with gloo, stages 1 and 2 are received and
    their receipts verified before stage 0's commitment arrives, and the step comes out whole."""
    commitments, transport, parts = _coordinator({s + 1: _commitment(s) for s in range(STAGES)})
    commit = commitments.collect(0)
    assert transport.taken[-1] == 1  # stage 0's rank, after the others
    assert sorted(commit.receipts) == [0, 1, 2]
    assert [r.worker_id for s in range(STAGES) for r in commit.receipts[s]] == WORKERS
    assert commit.microbatch_losses == [1.0, 3.0] and commit.loss == pytest.approx(2.0)
    for wid in WORKERS:  # each worker's hash chain moved on by its receipt
        assert parts.roster.prev[wid] == receipt_digest(commit.receipts[WORKERS.index(wid)][0])
    assert parts.tally.counts["forward"] == 2 and parts.tally.counts["backward"] == 1


def test_outcomes_count_in_stage_order() -> None:
    """Of two faulty commitments the lower stage's is reported, whichever was verified first, and
    the error names that stage's rank (not the rank a receive on another thread last took)."""
    messages = {s + 1: _commitment(s) for s in range(STAGES)}
    messages[2] = dict(messages[2], step=5)
    messages[3] = dict(messages[3], receipts=["zz"])
    commitments, _, _ = _coordinator(messages)
    with pytest.raises(TransportError, match="committed step 5, not 0") as caught:
        commitments.collect(0)
    assert caught.value.peer == 2


def test_a_malformed_commitment_names_its_stage() -> None:
    """A receipt that fails to verify on a later stage's thread is that stage's worker's fault,
    raised once stage 0's commitment has been taken."""
    messages = {s + 1: _commitment(s) for s in range(STAGES)}
    forged = bytearray(bytes.fromhex(messages[3]["receipts"][0]))
    forged[-1] ^= 1  # the signature's last byte
    messages[3] = dict(messages[3], receipts=[forged.hex()])
    commitments, _, _ = _coordinator(messages)
    with pytest.raises(TransportError) as caught:
        commitments.collect(0)
    assert caught.value.peer == 3 and caught.value.cause == "malformed"
    assert "s2r0" in str(caught.value)


def _resigned(message: dict[str, Any], stage: int, key: SigningKey, **changes: Any) -> str:
    root = parse_root(bytes.fromhex(message["root"]))
    return sign_root(dataclasses.replace(root, **changes), key).encode().hex()


@pytest.mark.parametrize(
    ("alter", "needle"),
    [
        (lambda m, s: {k: v for k, v in m.items() if k != "root"}, "carries no step root"),
        (lambda m, s: dict(m, root=_resigned(m, s, SigningKey.generate())), "not by the expected key"),
        (lambda m, s: dict(m, root=_resigned(m, s, KEYS[WORKERS[s]], step=1)), "another computation"),
        (lambda m, s: dict(m, root=_resigned(m, s, KEYS[WORKERS[s]], leaves=(bytes(32),))), "does not cover"),
        (lambda m, s: dict(m, root=m["root"][:-2]), "step root: truncated"),
    ],
    ids=["missing", "another_key", "another_step", "other_leaves", "malformed"],
)
def test_a_step_root_that_does_not_hold_is_blamed_on_its_worker(alter: Any, needle: str) -> None:
    """The one signature the coordinator checks for a stage's receipts must be that worker's, over
    exactly those receipts, for that step: otherwise the worker is at fault, whatever its receipts'
    own signatures say."""
    messages = {s + 1: _commitment(s) for s in range(STAGES)}
    messages[2] = alter(messages[2], 1)
    commitments, _, _ = _coordinator(messages)
    with pytest.raises(TransportError) as caught:
        commitments.collect(0)
    assert caught.value.peer == 2 and caught.value.cause == "malformed"
    assert "s1r0" in str(caught.value) and needle in str(caught.value)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"busy_ns": -1}, "busy_ns"),
        ({"receipts": "00"}, "receipts"),
        ({"microbatch_losses": [1.5, 3.0]}, "microbatch_losses"),
        ({"verdict": "honest"}, "unexpected 'verdict'"),
        ({"logits": ["zz", "zz"]}, "logits"),
    ],
)
def test_a_commitment_the_protocol_refuses_is_blamed_on_its_sender(change: dict[str, Any], needle: str) -> None:
    """A commitment that is not exactly a ``commit`` message (a negative count, a receipt list
    that is not a list, a loss not in ``float.hex``, a key the protocol does not know, a digest
    that is not hex) is refused by the strict parser, and the fault is its sender's: the last
    stage's rank, with cause ``malformed``."""
    messages = {s + 1: _commitment(s) for s in range(STAGES)}
    messages[3] = dict(messages[3], **change)
    commitments, _, _ = _coordinator(messages)
    with pytest.raises(TransportError, match=needle) as caught:
        commitments.collect(0)
    assert caught.value.peer == 3 and caught.value.cause == "malformed"


def test_nccl_takes_the_stages_one_after_the_other() -> None:
    """NCCL point-to-point calls from several threads could be matched differently on each rank:
    with it the commitments are received in stage order on one thread."""
    commitments, transport, parts = _coordinator({s + 1: _commitment(s) for s in range(STAGES)}, backend="nccl")
    commit = commitments.collect(0)
    assert transport.taken == [1, 2, 3]
    assert commit.loss == pytest.approx(2.0)
