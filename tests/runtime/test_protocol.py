"""The control messages' wire contract: exact wire objects, round trips and strict parsing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from strategies import mutated_tree

from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.step_heads import RosterEntry, StepHead, cosign, sign_head
from stagewarden.attest.token import canonical_json, parse_canonical_json
from stagewarden.runtime import protocol as p
from stagewarden.runtime.redundant import CheckOutcome, InputVia

D = bytes(range(32))

steps = st.integers(0, 10**6)
digests = st.binary(min_size=32, max_size=32)
blobs = st.binary(max_size=64)
ids = st.text(min_size=1, max_size=20)
slot_maps = st.integers(0, 6)
kinds = st.sampled_from(p.UNIT_KINDS)
units = st.lists(st.tuples(st.integers(0, 9), kinds), max_size=4).map(tuple)
floats = st.floats(allow_nan=False)
tensor_metas = st.builds(
    p.TensorMeta,
    st.text(max_size=30),
    st.sampled_from(("float32", "int64", "float16", "bfloat16")),
    st.lists(st.integers(0, 1 << 20), max_size=4).map(tuple),
    digests,
)
tensor_lists = st.lists(tensor_metas, max_size=3).map(tuple)


def _maps(draw: st.DrawFn) -> tuple[dict[int, bytes], dict[int, str], dict[int, int]]:
    n = draw(slot_maps)
    keys = {s: draw(digests) for s in range(n)}
    return keys, {s: draw(ids) for s in range(n)}, {s: draw(st.integers(1, 99)) for s in range(n)}


@st.composite
def stage_maps_message(draw: st.DrawFn, cls: type[p.Admitted] | type[p.Ranks]) -> p.Message:
    return cls(*_maps(draw))


check_reports = st.builds(
    p.CheckReport,
    st.booleans(),
    st.integers(1, 8),
    st.integers(0, 7),
    st.none() | st.integers(0, 7),
    steps,
    st.integers(0, 9),
    st.sampled_from(("forward", "backward")),
    st.none() | st.sampled_from(p.INPUT_VIAS),
    st.floats(allow_nan=False) | st.just(math.inf),
    digests.map(bytes.hex),
    st.none() | blobs,
)


@st.composite
def commits(draw: st.DrawFn) -> p.Commit:
    checked = draw(st.booleans())
    losses = draw(st.none() | st.lists(floats, max_size=4).map(tuple))
    logits = None if losses is None else draw(st.none() | st.lists(digests, max_size=4).map(tuple))
    return p.Commit(
        draw(steps),
        tuple(draw(st.lists(blobs, max_size=4))),
        tuple(draw(st.lists(blobs, max_size=4))),
        draw(st.integers(0, 10**12)),
        tuple(draw(st.lists(check_reports, max_size=3))) if checked else None,
        draw(st.integers(0, 20)) if checked else None,
        losses,
        logits,
        *draw(st.sampled_from(((None, None), (b"\x01" * 8, None), (None, "that head is not mine")))),
        draw(st.none() | digests),
    )


HEAD_KEY = SigningKey(b"\x07" * 32)
id_like = st.sampled_from(("s0r0", "s1r0", "standby0", "run-1"))


@st.composite
def signed_heads(draw: st.DrawFn) -> StepHead:
    final = draw(st.booleans())
    return StepHead(
        run_id=draw(id_like),
        sequence=draw(steps),
        session=draw(st.integers(0, 5)),
        steps=draw(steps),
        records=draw(steps),
        log_digest=draw(digests).hex(),
        events=draw(steps),
        events_digest=draw(digests).hex(),
        roster_digest=draw(digests).hex(),
        chains_digest=draw(digests).hex(),
        final=final,
        status="completed" if final else None,
        summary_digest=draw(digests).hex() if final else None,
    )


@st.composite
def witness_heads(draw: st.DrawFn) -> p.WitnessHead:
    roster = tuple(
        RosterEntry(stage=i, worker=draw(id_like), key=draw(digests).hex(), replica=draw(st.integers(0, 3)))
        for i in range(draw(st.integers(0, 3)))
    )
    chains = {w: draw(digests) for w in draw(st.lists(id_like, max_size=3, unique=True))}
    return p.WitnessHead(sign_head(draw(signed_heads()), HEAD_KEY), roster, chains)


@st.composite
def cosigneds(draw: st.DrawFn) -> p.Cosigned:
    if draw(st.booleans()):
        return p.Cosigned(None, draw(st.text(max_size=40)))
    return p.Cosigned(cosign(draw(signed_heads()), draw(id_like), HEAD_KEY))


@st.composite
def evidences(draw: st.DrawFn) -> p.Evidence:
    form = draw(st.sampled_from(("none", "evidence", "error")))
    return p.Evidence(
        draw(ids),
        draw(digests),
        draw(st.integers(0, 1 << 22)),
        draw(st.text(max_size=20)),
        draw(blobs) if form == "evidence" else None,
        draw(st.text(max_size=40)) if form == "error" else None,
        draw(st.text(max_size=20)) if form == "error" else None,
    )


commitments = st.builds(p.UpdateCommitment, blobs, digests, digests, st.lists(digests, max_size=4).map(tuple))

STRATEGIES: dict[type[p.Message], st.SearchStrategy[Any]] = {
    p.Hello: st.builds(
        p.Hello, ids, ids, st.none() | slot_maps, st.none() | blobs, steps, digests, st.none() | digests
    ),
    p.Shutdown: st.just(p.Shutdown()),
    p.Refused: st.just(p.Refused()),
    p.Reattest: st.builds(p.Reattest, blobs),
    p.Admitted: stage_maps_message(p.Admitted),
    p.Release: st.just(p.Release()),
    p.Calibrate: st.builds(p.Calibrate, st.integers(1, 8)),
    p.SnapshotRequest: st.builds(p.SnapshotRequest, steps),
    p.Load: st.builds(p.Load, steps, tensor_lists, st.booleans()),
    p.Step: st.builds(p.Step, steps, st.integers(0, 3), st.none() | slot_maps),
    p.Idle: st.builds(p.Idle, steps),
    p.Discard: st.builds(p.Discard, steps, digests),
    p.Update: st.builds(p.Update, steps, st.none() | st.lists(digests, max_size=4).map(tuple)),
    p.Push: st.builds(p.Push, steps, units, st.booleans()),
    p.Restore: st.builds(p.Restore, steps),
    p.Assign: st.builds(p.Assign, slot_maps),
    p.Ranks: stage_maps_message(p.Ranks),
    p.Fetch: st.builds(p.Fetch, steps, st.integers(0, 9), kinds),
    p.Evidence: evidences(),
    p.Commit: commits(),
    p.WitnessHead: witness_heads(),
    p.Cosigned: cosigneds(),
    p.Updated: st.builds(p.Updated, steps, digests, st.integers(0, 10**12), st.none() | commitments),
    p.Pushed: st.builds(p.Pushed, steps, units, tensor_lists),
    p.Fetched: st.builds(p.Fetched, steps, st.integers(0, 9), kinds, tensor_lists),
    p.FetchUnavailable: st.builds(p.FetchUnavailable, st.text(max_size=80)),
    p.Snapshot: st.builds(p.Snapshot, steps, tensor_lists),
    p.Loaded: st.builds(p.Loaded, steps, digests),
    p.ReplicaLoaded: st.builds(p.ReplicaLoaded, steps),
    p.Restored: st.builds(p.Restored, steps, digests),
    p.Calibrated: st.builds(p.Calibrated, st.integers(1, 8), tensor_lists),
    p.ErrorReport: st.builds(
        p.ErrorReport, st.none() | st.integers(0, 9), st.sampled_from(p.FAILURE_CAUSES), st.text(max_size=80)
    ),
}
messages = st.one_of(*STRATEGIES.values())


def test_every_message_has_a_strategy() -> None:
    """The round-trip properties below cover every message class."""
    assert set(STRATEGIES) == set(p.MESSAGES)
    assert len(p.MESSAGES) == 32


@settings(max_examples=300)
@given(messages)
def test_round_trip(message: p.Message) -> None:
    """Every message survives to_wire, canonical JSON and parse_message unchanged, as its own class."""
    wire = message.to_wire()
    raw = canonical_json(wire)
    again = p.parse_message(parse_canonical_json(raw, ErrorCode.LOG_MALFORMED, "message"))
    assert type(again) is type(message)
    assert again == message
    assert canonical_json(again.to_wire()) == raw


@settings(max_examples=400)
@given(st.data())
def test_mutated_messages_are_rejected_or_exact(data: st.DataObject) -> None:
    """A mutated wire object raises ProtocolError or parses to a message that sends exactly it:
    never another exception, never a silently normalised message."""
    wire = data.draw(messages).to_wire()
    mutated = data.draw(mutated_tree(wire))
    try:
        parsed = p.parse_message(mutated)
    except p.ProtocolError as exc:
        assert "\n" not in str(exc)
        return
    assert parsed.to_wire() == mutated


def test_wire_objects_are_the_ones_sent() -> None:
    """The wire objects are exactly those the run sends (pinned, so the run's bytes stay put)."""
    assert p.Hello("run", "s0r0", 0, b"\x01", 2, D).to_wire() == {
        "type": "hello",
        "run_id": "run",
        "worker_id": "s0r0",
        "role": "stage",
        "slot": 0,
        "nonce": "01",
        "session": 2,
        "coordinator_key": D.hex(),
    }
    assert p.Hello("run", "standby0", None, None, 0, D, D).to_wire()["role"] == "standby"
    assert p.Hello("run", "standby0", None, None, 0, D, D).to_wire()["chain_head"] == D.hex()
    assert p.Step(3, 1).to_wire() == {"type": "step", "step": 3, "attempt": 1}
    assert p.Step(3, 1, 2).to_wire() == {"type": "step", "step": 3, "attempt": 1, "bypass": 2}
    assert p.Push(4, ((0, "forward"), (1, "update")), True).to_wire() == {
        "type": "push",
        "step": 4,
        "push": [[0, "forward"], [1, "update"]],
        "snapshot": True,
    }
    assert p.Admitted({0: D}, {0: "s0r0"}, {0: 1}).to_wire() == {
        "type": "admitted",
        "keys": {"0": D.hex()},
        "workers": {"0": "s0r0"},
        "ranks": {"0": 1},
    }
    meta = p.TensorMeta.of("weights.w", torch.zeros(2, 3))
    assert meta.to_wire()["shape"] == [2, 3] and meta.to_wire()["dtype"] == "float32"
    assert p.Load(1, (meta,), replica_only=True).to_wire()["replica_only"] is True
    assert "replica_only" not in p.Load(1, (meta,)).to_wire()
    assert p.Loaded(5, D).to_wire() == {"type": "loaded", "step": 5, "weights": D.hex()}
    assert p.ReplicaLoaded(5).to_wire() == {"type": "loaded", "step": 5, "replica": True}
    assert p.FetchUnavailable("gone").to_wire() == {"type": "fetched", "error": "gone"}
    assert p.Updated(2, D, 7).to_wire() == {"type": "updated", "step": 2, "weights": D.hex(), "busy_ns": 7}
    signed = p.Updated(2, D, 7, p.UpdateCommitment(b"\x05", D, D, (D,))).to_wire()
    assert signed["receipt"] == "05" and signed["grads_trace"] == [D.hex()]
    assert p.ErrorReport(3, "closed", "boom").to_wire() == {
        "type": "error",
        "peer": 3,
        "cause": "closed",
        "message": "boom",
    }


def test_check_report_is_the_outcome_with_a_hex_difference() -> None:
    """A check report carries a CheckOutcome's fields, its difference in float.hex."""
    outcome = CheckOutcome(False, 2, 1, 1, 3, 0, "forward", InputVia.UPSTREAM, 0.5, D.hex())
    report = p.CheckReport.from_outcome(outcome, b"\x07")
    expected = outcome.to_json() | {"max_abs_diff": (0.5).hex(), "input_header": "07"}
    assert report.to_wire() == expected
    commit = p.Commit(3, (), (), 0, (report,), 4, (1.5,), (D,))
    assert commit.to_wire()["checks"] == [expected]
    assert commit.to_wire()["microbatch_losses"] == [(1.5).hex()]


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        ([], "JSON object"),
        ({"type": 3}, "string 'type'"),
        ({"type": "teleport"}, "unknown control message type 'teleport'"),
        ({"type": "update"}, "lacks 'step'"),
        ({"type": "update", "step": 1, "extra": 0}, "unexpected 'extra'"),
        ({"type": "update", "step": True}, "update step must be an integer"),
        ({"type": "update", "step": -1}, "at least 0"),
        ({"type": "update", "step": 1 << 70}, "update step"),
        ({"type": "discard", "step": 1, "chain_head": D.hex().upper()}, "lower-case hex"),
        ({"type": "discard", "step": 1, "chain_head": "00"}, "32 bytes"),
        ({"type": "fetch", "step": 1, "micro_batch": 0, "kind": "sideways"}, "fetch kind must be one of"),
        ({"type": "load", "step": 1, "tensors": [], "replica_only": False}, "replica_only must be true"),
        ({"type": "loaded", "step": 1, "replica": 1}, "replica: true"),
        ({"type": "ranks", "keys": {"01": D.hex()}, "workers": {}, "ranks": {}}, "not a stage number"),
        (
            {
                "type": "hello",
                "run_id": "r",
                "worker_id": "w",
                "role": "stage",
                "slot": None,
                "nonce": None,
                "session": 0,
                "coordinator_key": "00" * 32,
            },
            "role must be 'standby'",
        ),
        (
            {"type": "commit", "step": 0, "receipts": [], "headers": [], "busy_ns": 0, "microbatch_losses": ["0x1p0"]},
            "float.hex",
        ),
        ({"type": "commit", "step": 0, "receipts": [], "headers": [], "busy_ns": 0, "checks": []}, "come together"),
        ({"type": "updated", "step": 0, "weights": D.hex(), "busy_ns": 0, "receipt": "00"}, "together or none"),
        ({"type": "snapshot", "step": 0, "tensors": [{"name": "w"}]}, "name, dtype, shape and digest"),
        (
            {"type": "snapshot", "step": 0, "tensors": [{"name": "w", "dtype": "f", "shape": [], "digest": D.hex()}]},
            "dtype must be one of",
        ),
        (
            {
                "type": "snapshot",
                "step": 0,
                "tensors": [{"name": "w", "dtype": "int64", "shape": [1] * 17, "digest": D.hex()}],
            },
            "at most 16",
        ),
        ({"type": "error", "peer": 1, "cause": "bored", "message": ""}, "error cause"),
        ({"type": "error", "peer": 1, "cause": "local", "message": "x" * 5000}, "at most 4096"),
        ({"type": "evidence", "worker_id": "w", "receipt_key": D.hex(), "pid": 1, "host": "h" * 256}, "host"),
        ({"type": "push", "step": 0, "push": [[0]], "snapshot": False}, "[micro_batch, kind] pair"),
    ],
)
def test_malformed_messages_are_refused_in_one_line(wire: Any, needle: str) -> None:
    """Each kind of malformed message raises ProtocolError, one line naming what is wrong."""
    with pytest.raises(p.ProtocolError) as info:
        p.parse_message(wire)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.cause == "malformed"


def test_lists_are_bounded() -> None:
    """A list longer than MAX_ITEMS is refused before its items are looked at."""
    wire = {"type": "commit", "step": 0, "receipts": [None] * (p.MAX_ITEMS + 1), "headers": [], "busy_ns": 0}
    with pytest.raises(p.ProtocolError, match="at most"):
        p.parse_message(wire)


class _Inbox:
    """A transport stand-in whose receives return queued objects."""

    def __init__(self, *queued: dict[str, Any]) -> None:
        self.queued = list(queued)
        self.asked: list[Any] = []

    def recv_json(self, src: int, expect: Any = None) -> dict[str, Any]:
        self.asked.append(expect)
        return self.queued.pop(0)


def test_receive_checks_the_kind_and_names_the_sender() -> None:
    """receive() asks the transport for the kinds' types and refuses a variant of another kind."""
    inbox = _Inbox(p.Loaded(1, D).to_wire(), p.ReplicaLoaded(1).to_wire(), {"type": "loaded", "step": "x"})
    assert p.receive(inbox, 4, p.Loaded) == p.Loaded(1, D)  # type: ignore[arg-type]
    assert inbox.asked == [("loaded",)]
    with pytest.raises(p.ProtocolError, match="rank 4 sent a ReplicaLoaded where Loaded was expected") as info:
        p.receive(inbox, 4, p.Loaded)  # type: ignore[arg-type]
    assert info.value.peer == 4
    with pytest.raises(p.ProtocolError, match="rank 4: ") as info:
        p.receive(inbox, 4, p.Loaded, p.ReplicaLoaded)  # type: ignore[arg-type]
    assert info.value.peer == 4
