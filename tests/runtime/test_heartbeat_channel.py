"""The heartbeat channel without processes: frames, the coordinator's inbox, and heartbeats that
reach the watchdog through it (each worker's frames on a queue of its own, as on its own gloo
connection)."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import pytest
import torch
from nacl.signing import SigningKey

from stagewarden.runtime.liveness import (
    FRAME_BYTES,
    MAX_NAME_BYTES,
    MAX_RECORD_BYTES,
    Heartbeat,
    HeartbeatInbox,
    HeartbeatSender,
    Watchdog,
    decode_frame,
    encode_frame,
    record_key,
)


def test_a_frame_round_trips_at_a_fixed_size() -> None:
    frame = encode_frame(record_key("run-x", 0, 3), b"\x00record\xff")
    assert len(frame) == FRAME_BYTES
    assert decode_frame(frame) == ("stagewarden/run-x/0/heartbeat/3", b"\x00record\xff")
    longest = encode_frame("n" * MAX_NAME_BYTES, b"r" * MAX_RECORD_BYTES)
    assert decode_frame(longest) == ("n" * MAX_NAME_BYTES, b"r" * MAX_RECORD_BYTES)


def test_oversized_names_and_records_are_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat frame"):
        encode_frame("n" * (MAX_NAME_BYTES + 1), b"")
    with pytest.raises(ValueError, match="heartbeat frame"):
        encode_frame("name", b"r" * (MAX_RECORD_BYTES + 1))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes(FRAME_BYTES - 1),
        (MAX_NAME_BYTES + 1).to_bytes(2, "big") + bytes(FRAME_BYTES - 2),  # name longer than its field
        bytes(2 + MAX_NAME_BYTES) + (MAX_RECORD_BYTES + 1).to_bytes(4, "big") + bytes(MAX_RECORD_BYTES),
        (2).to_bytes(2, "big") + b"\xff\xfe" + bytes(FRAME_BYTES - 4),  # name not UTF-8
    ],
)
def test_malformed_frames_decode_to_nothing(frame: bytes) -> None:
    assert decode_frame(frame) is None


def test_the_inbox_keeps_each_ranks_newest_record_under_its_own_name() -> None:
    inbox = HeartbeatInbox([1, 2])
    name1, name2 = record_key("run-x", 0, 1), record_key("run-x", 0, 2)
    assert not inbox.check([name1])
    with pytest.raises(KeyError):
        inbox.get(name1)
    inbox.take(1, encode_frame(name1, b"first"))
    inbox.take(1, encode_frame(name1, b"second"))
    inbox.take(2, encode_frame(name2, b"two"))
    assert inbox.check([name1, name2])
    assert inbox.get(name1) == b"second" and inbox.get(name2) == b"two"
    assert not inbox.check([record_key("run-x", 1, 1)])  # another session's name: not held
    assert inbox.dropped == 0


def test_a_worker_cannot_publish_or_erase_another_ranks_record() -> None:
    inbox = HeartbeatInbox([1, 2])
    victim = record_key("run-x", 0, 2)
    inbox.take(2, encode_frame(victim, b"honest"))
    inbox.take(1, encode_frame(victim, b"forged"))  # rank 1 names rank 2's record on its own connection
    inbox.take(1, encode_frame("stagewarden/run-x/0/heartbeat/x2", b"odd"))
    inbox.take(1, b"garbage")
    assert inbox.get(victim) == b"honest"
    assert inbox.dropped == 3
    # a worker that sends records under other names of its own rank replaces its one record
    for session in range(50):
        inbox.take(1, encode_frame(record_key("run-x", session, 1), b"spam"))
    assert inbox.check([record_key("run-x", 49, 1)]) and not inbox.check([record_key("run-x", 0, 1)])
    assert len(inbox._latest) == 2


class Wires:
    """One queue per worker rank, standing for its connection to the coordinator; a closed wire
    raises in the receive, as a closed gloo connection does."""

    CLOSED = object()

    def __init__(self, ranks: tuple[int, ...]) -> None:
        self.queues: dict[int, queue.Queue[Any]] = {r: queue.Queue() for r in ranks}

    def sender(self, rank: int) -> HeartbeatSender:
        return HeartbeatSender(None, send=lambda frame: self.queues[rank].put(frame.clone()))

    def recv(self, frame: torch.Tensor, rank: int) -> None:
        got = self.queues[rank].get()
        if got is Wires.CLOSED:
            raise RuntimeError("Connection closed by peer")
        frame.copy_(got)


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_heartbeats_reach_the_watchdog_through_the_inbox() -> None:
    ranks = (1, 2)
    wires = Wires(ranks)
    keys = {r: SigningKey.generate() for r in ranks}
    inbox = HeartbeatInbox(ranks, recv=wires.recv)
    inbox.start()
    now = [100.0]
    watchdog = Watchdog(
        inbox,
        "run-x",
        0,
        lambda: {r: bytes(k.verify_key) for r, k in keys.items()},
        heartbeat_timeout=5.0,
        silence_timeout=20.0,
        clock=lambda: now[0],
    )
    beats = {r: Heartbeat(wires.sender(r), "run-x", 0, r, keys[r], 60.0, lambda: (None, 0.0)) for r in ranks}
    for beat in beats.values():
        beat.beat()
    _wait_for(lambda: inbox.check([record_key("run-x", 0, r) for r in ranks]))
    watchdog.observe()
    assert {r: watchdog.seen[r].seq for r in ranks} == {1: 1, 2: 1}
    # rank 1 pushes a record it signed under rank 2's name down its own wire: it is dropped,
    # so rank 2's record stays its own and keeps advancing
    forged = Heartbeat(wires.sender(1), "run-x", 0, 2, keys[1], 60.0, lambda: (None, 0.0))
    forged.seq = 99
    forged.beat()
    now[0] += 4.0
    beats[2].beat()
    beats[1].beat()
    _wait_for(lambda: inbox.dropped == 1 and _seq(inbox, keys, 1) == 2 and _seq(inbox, keys, 2) == 2)
    watchdog.observe()
    assert watchdog.seen[2].seq == 2
    now[0] += 4.0  # 8 s after the first records: both advanced 4 s ago, so nobody is unresponsive
    watchdog.observe()
    assert watchdog.assess() is None
    # rank 2 stops beating; rank 1 goes on: rank 2, and only it, is unresponsive
    for _ in range(3):
        now[0] += 2.0
        beats[1].beat()
        _wait_for(lambda: _seq(inbox, keys, 1) == beats[1].seq)
        watchdog.observe()
    fault = watchdog.assess()
    assert fault is not None and (fault.rank, fault.cause) == (2, "unresponsive")
    wires.queues[1].put(Wires.CLOSED)
    _wait_for(lambda: 1 in inbox.closed)
    assert 2 not in inbox.closed
    wires.queues[2].put(Wires.CLOSED)
    _wait_for(lambda: inbox.closed == {1, 2})


def _seq(inbox: HeartbeatInbox, keys: dict[int, SigningKey], rank: int) -> int:
    name = record_key("run-x", 0, rank)
    if not inbox.check([name]):
        return 0
    message = keys[rank].verify_key.verify(inbox.get(name))
    return int(json.loads(message[message.index(b"{") :])["seq"])


def test_a_heartbeat_thread_stops_when_the_coordinator_is_gone() -> None:
    failures = []

    def send(frame: torch.Tensor) -> None:
        failures.append(frame)
        raise RuntimeError("Connection closed by peer")

    beat = Heartbeat(HeartbeatSender(None, send=send), "run-x", 0, 1, SigningKey.generate(), 0.01, lambda: (None, 0.0))
    with pytest.raises(RuntimeError):
        beat.start()  # the first record goes out on the caller's thread, and its failure is the caller's
    beat._thread.start()
    beat._thread.join(timeout=5.0)
    assert not beat._thread.is_alive() and len(failures) == 2
