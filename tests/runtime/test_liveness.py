"""The watchdog's rules on signed heartbeats, without processes: a fake store and a fake clock."""

from __future__ import annotations

import time
from typing import Any

import pytest
from nacl.signing import SigningKey

from stagewarden.attest.audit import declared_attempts
from stagewarden.runtime.liveness import Heartbeat, Watchdog, record_key


class FakeStore:
    """The two calls the watchdog makes and the one a heartbeat makes, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        return self.data[key]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class World:
    """Three workers (ranks 1, 2, 3) with their keys, beating into one store."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.clock = Clock()
        self.keys = {r: SigningKey.generate() for r in (1, 2, 3)}
        self.waits: dict[int, tuple[int | None, float]] = {r: (None, 0.0) for r in self.keys}
        self.beats = {
            r: Heartbeat(self.store, "run-x", 0, r, k, 1.0, lambda r=r: self.waits[r]) for r, k in self.keys.items()
        }
        self.watchdog = Watchdog(
            self.store,
            "run-x",
            0,
            lambda: {r: bytes(k.verify_key) for r, k in self.keys.items()},
            heartbeat_timeout=5.0,
            silence_timeout=20.0,
            clock=self.clock,
        )

    def tick(self, seconds: float, beating: tuple[int, ...] = (1, 2, 3)) -> Any:
        self.clock.now += seconds
        for r in beating:
            self.beats[r].beat()
        self.watchdog.observe()
        return self.watchdog.assess()


def test_workers_that_beat_and_wait_on_nobody_are_fine() -> None:
    world = World()
    for _ in range(10):
        assert world.tick(2.0) is None


def test_a_worker_whose_heartbeat_stops_is_unresponsive_after_the_timeout() -> None:
    world = World()
    assert world.tick(1.0) is None
    assert world.tick(3.0, beating=(1, 3)) is None  # 3 s quiet: within the 5 s timeout
    fault = world.tick(3.0, beating=(1, 3))
    assert (fault.rank, fault.cause) == (2, "unresponsive")


def test_the_chain_of_waits_ends_on_the_withholder() -> None:
    """1 waits on 2, 2 waits on 3, 3 waits on nobody: 3 withholds once 1 has waited 20 s (the
    workers measure their waits on their own monotonic clocks)."""
    world = World()
    world.waits[1] = (2, time.monotonic() - 10)
    world.waits[2] = (3, time.monotonic() - 5)
    assert world.tick(1.0) is None
    world.waits[1] = (2, time.monotonic() - 22)
    fault = world.tick(1.0)
    assert (fault.rank, fault.cause) == (3, "withholding")
    assert "1 -> 2 -> 3" in fault.reason


def test_two_workers_each_claiming_to_wait_on_the_other_is_a_dispute_that_blames_nobody() -> None:
    world = World()
    world.waits[1] = (2, time.monotonic() - 25)
    world.waits[2] = (1, time.monotonic() - 25)
    assert world.tick(1.0) is None
    assert {tuple(sorted(cycle)) for cycle in world.watchdog.disputes} == {(1, 2)}


def test_a_claim_against_a_worker_that_waits_on_the_coordinator_is_a_dispute() -> None:
    """1 claims to have waited 25 s on 2, but 2 waits on the coordinator, which a worker does
    only once its step's sends are done: one of them lies, so nobody is named (before, the idle
    worker 2 was named ``withholding``, and a malicious 1 could get it replaced)."""
    world = World()
    world.waits[1] = (2, time.monotonic() - 25)
    world.waits[2] = (0, time.monotonic() - 30)
    for _ in range(3):
        assert world.tick(1.0) is None
    assert world.watchdog.disputes == [(1, 2)]


def test_a_busy_worker_is_named_only_once_it_has_been_unblocked_for_the_silence_timeout() -> None:
    """The accused's own record must agree that it has not been blocked for ``silence_timeout``
    seconds (20 s here): a worker that received 3 s ago is working, not withholding."""
    world = World()
    world.waits[1] = (2, time.monotonic() - 25)
    world.waits[2] = (None, time.monotonic() - 3)
    assert world.tick(1.0) is None and world.watchdog.disputes == []
    world.waits[2] = (None, time.monotonic() - 21)
    fault = world.tick(1.0)
    assert (fault.rank, fault.cause) == (2, "withholding")
    assert "waited on nobody for 21" in fault.reason


def test_a_record_signed_by_another_worker_does_not_count_as_a_heartbeat() -> None:
    """Worker 3 keeps writing worker 2's record under its own key: worker 2 still goes quiet."""
    world = World()
    assert world.tick(1.0) is None
    forger = Heartbeat(world.store, "run-x", 0, 2, world.keys[3], 1.0, lambda: (None, 0.0))
    for _ in range(4):
        forger.seq = world.beats[2].seq + 100
        forger.beat()
        fault = world.tick(2.0, beating=(1, 3))
    assert (fault.rank, fault.cause) == (2, "unresponsive")


def test_a_record_of_another_session_or_rank_is_ignored() -> None:
    world = World()
    other = Heartbeat(world.store, "run-x", 1, 2, world.keys[2], 1.0, lambda: (None, 0.0))
    other.beat()  # session 1 is not the watched session 0
    world.store.data[record_key("run-x", 0, 2)] = world.store.data[record_key("run-x", 1, 2)]
    world.watchdog.observe()
    assert world.watchdog.seen[2].seq == 0


@pytest.mark.parametrize(
    ("responses", "resumes", "expected"),
    [
        (None, None, {}),
        (None, [{"from_step": 2, "redo_to_step": 3}], {2: 2, 3: 2}),
        ([{"step": 3, "plan": {"redo_from_step": 3}}], [{"from_step": 3, "redo_to_step": 4}], {3: 3, 4: 2}),
        (None, [{"from_step": 4, "redo_to_step": 3}, {"from_step": "x"}, 7], {}),
    ],
)
def test_the_audit_allows_one_more_computation_for_every_step_a_resume_redid(
    responses: Any, resumes: Any, expected: dict[int, int]
) -> None:
    assert declared_attempts(responses, resumes) == expected
