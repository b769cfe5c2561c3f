"""Liveness: signed heartbeats through the rendezvous store, and the coordinator's watchdog.

Every admitted worker runs a :class:`Heartbeat` thread that writes, every ``heartbeat_timeout / 4``
seconds, one signed record under its rank's key in the run's c10d store (the store every process
already reaches at ``MASTER_ADDR:MASTER_PORT``; a separate client connection, so the heartbeat
never waits on a tensor transfer). A record says which peer, if any, the worker is blocked on
and for how long (the coordinator counts as a peer here), or else for how long it has not been
blocked, and carries a sequence number that grows with every write.

The coordinator's :class:`Watchdog` reads the records of every live worker and names a fault:

* a worker whose record has not advanced for ``heartbeat_timeout`` seconds (by the
  coordinator's own clock) is **unresponsive**: its process died, was stopped, or hangs;
* when every heartbeat is fresh but some worker has waited on a peer for ``silence_timeout``
  seconds, the watchdog follows the chain of waits from it (A waits on B, B waits on C, ...) to
  the first worker that waits on no worker. That worker **withholds** (it is alive, it owes a
  transfer, and it is not blocked by anyone) when its own record agrees: it has not been
  blocked for ``silence_timeout`` seconds either. One that waits on the coordinator has sent
  everything its step owes (a worker completes its sends before it reports to the coordinator),
  so the claim against it and its record contradict each other: a *dispute*, as is a chain that
  closes on itself (two workers each claim to wait on the other). One of them lies and nothing
  outside them says which, so a dispute names nobody. A worker that is merely busy (blocked
  less than ``silence_timeout`` ago) is not named yet.

A record is signed with the worker's attested Ed25519 key and bound to the run, the session and
the rank, so no worker can write another's heartbeat. A worker can delete another's record
(the store is not access-controlled); a missing record reads as "no progress", so deleting an
honest worker's record for ``heartbeat_timeout`` seconds would frame it. That is why the store
must only be reachable by the run's processes, as ``torchrun`` and ``stagewarden train``
arrange it; see the reliability page of the documentation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

HEARTBEAT_DOMAIN = b"stagewarden/runtime/heartbeat/v1\x00"
#: The coordinator's rank: a worker waiting on it is between steps, its sends done.
COORDINATOR_RANK = 0
#: Largest heartbeat record read from the store.
MAX_RECORD_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Fault:
    """A worker the coordinator stops trusting to make progress.

    Attributes:
        rank: The worker's rank.
        cause: ``unresponsive`` (no heartbeat), ``withholding`` (alive, owes a transfer, waits on
            nobody), ``malformed`` (sent a message that fails parsing or the protocol's checks) or
            ``crashed`` (its connection closed).
        reason: One sentence for the operator.
    """

    rank: int
    cause: str
    reason: str


def connect_store(timeout: float) -> Any:
    """A new client connection to the run's c10d store (``MASTER_ADDR:MASTER_PORT``)."""
    import torch.distributed as dist

    return dist.TCPStore(  # type: ignore[attr-defined]
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout),
        wait_for_workers=False,
    )


def record_key(run_id: str, session: int, rank: int) -> str:
    """The store key of ``rank``'s heartbeat in ``session`` of run ``run_id``."""
    return f"stagewarden/{run_id}/{session}/heartbeat/{rank}"


def _message(run_id: str, session: int, rank: int, body: dict[str, Any]) -> bytes:
    payload = {"run_id": run_id, "session": session, "rank": rank, **body}
    return HEARTBEAT_DOMAIN + json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Heartbeat:
    """A worker's heartbeat thread.

    Args:
        store: A store client (see :func:`connect_store`); used by this thread only.
        run_id: The run.
        session: The coordinator's session (0, then one more per resume).
        rank: This worker's rank.
        key: The worker's attested signing key.
        interval: Seconds between writes.
        waiting: Returns the rank this worker is blocked on (``None``: on nobody; 0 is the
            coordinator) and since when (``time.monotonic()``): the start of the wait, or when
            not blocked the end of its last one.
    """

    def __init__(
        self,
        store: Any,
        run_id: str,
        session: int,
        rank: int,
        key: SigningKey,
        interval: float,
        waiting: Callable[[], tuple[int | None, float]],
    ) -> None:
        self.store = store
        self.run_id, self.session, self.rank = run_id, session, rank
        self.key = key
        self.interval = interval
        self.waiting = waiting
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def start(self) -> None:
        """Write the first record now, then keep writing in the background."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Write one record."""
        self.seq += 1
        peer, since = self.waiting()
        elapsed = round(max(0.0, time.monotonic() - since), 3)
        body = {
            "seq": self.seq,
            "waiting_on": peer,
            "waited": elapsed if peer is not None else 0.0,
            "free": 0.0 if peer is not None else elapsed,
        }
        message = _message(self.run_id, self.session, self.rank, body)
        signed = self.key.sign(message)
        self.store.set(record_key(self.run_id, self.session, self.rank), bytes(signed))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the store is gone: the run is over; stop beating
                return

    def stop(self) -> None:
        """Stop writing and wait for the thread (it must not be inside a store call at exit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


@dataclasses.dataclass
class _Seen:
    seq: int = 0
    changed: float = 0.0
    waiting_on: int | None = None  # a watched worker it waits on
    waited: float = 0.0
    on_coordinator: bool = False  # it waits on the coordinator
    free: float = 0.0  # seconds it has not been blocked, by its own account


class Watchdog:
    """The coordinator's view of every worker's heartbeat.

    Args:
        store: A store client used by the watchdog only.
        run_id, session: As for :class:`Heartbeat`.
        members: Returns the ranks to watch and each one's attested key (it changes as workers
            are released and standbys take stages).
        heartbeat_timeout: Seconds without a new record after which a worker is unresponsive.
        silence_timeout: Seconds a worker may be waited on while it waits on nobody.
        clock: ``time.monotonic`` (tests pass a fake).
    """

    def __init__(
        self,
        store: Any,
        run_id: str,
        session: int,
        members: Callable[[], dict[int, bytes]],
        heartbeat_timeout: float,
        silence_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.run_id, self.session = run_id, session
        self.members = members
        self.heartbeat_timeout = heartbeat_timeout
        self.silence_timeout = silence_timeout
        self.clock = clock
        self.seen: dict[int, _Seen] = {}
        self.disputes: list[tuple[int, ...]] = []

    def _read(self, rank: int, key: bytes) -> dict[str, Any] | None:
        name = record_key(self.run_id, self.session, rank)
        if not self.store.check([name]):
            return None
        raw = self.store.get(name)
        if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_RECORD_BYTES:
            return None
        try:
            message = VerifyKey(key).verify(bytes(raw))
        except (BadSignatureError, ValueError, TypeError):
            return None
        if not message.startswith(HEARTBEAT_DOMAIN):
            return None
        try:
            body = json.loads(message[len(HEARTBEAT_DOMAIN) :])
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(body, dict) or (body.get("run_id"), body.get("session"), body.get("rank")) != (
            self.run_id,
            self.session,
            rank,
        ):
            return None
        return body

    def observe(self) -> None:
        """Read every member's record once."""
        now = self.clock()
        members = self.members()
        for rank in list(self.seen):
            if rank not in members:
                del self.seen[rank]
        for rank, key in members.items():
            seen = self.seen.setdefault(rank, _Seen(changed=now))
            body = self._read(rank, key)
            if body is None:
                continue
            seq, peer, waited, free = body.get("seq"), body.get("waiting_on"), body.get("waited"), body.get("free")
            if type(seq) is not int or seq <= seen.seq:
                continue
            seen.seq, seen.changed = seq, now
            seen.waiting_on = peer if type(peer) is int and peer in members and peer != rank else None
            seen.waited = _seconds(waited)
            seen.on_coordinator = type(peer) is int and peer == COORDINATOR_RANK
            seen.free = _seconds(free) if peer is None else 0.0

    def assess(self) -> Fault | None:
        """The fault the records show now, if any (see the module docstring)."""
        now = self.clock()
        for rank, seen in sorted(self.seen.items()):
            quiet = now - seen.changed
            if quiet > self.heartbeat_timeout:
                return Fault(rank, "unresponsive", f"rank {rank} sent no heartbeat for {quiet:.1f} s")
        for rank, seen in sorted(self.seen.items()):
            if seen.waiting_on is None or seen.waited < self.silence_timeout:
                continue
            chain = [rank]
            current = seen.waiting_on
            while current in self.seen and self.seen[current].waiting_on is not None:
                if current in chain:
                    cycle = tuple(chain[chain.index(current) :])
                    first = cycle.index(min(cycle))
                    cycle = cycle[first:] + cycle[:first]  # one name per cycle, whoever is seen first
                    if cycle not in self.disputes:
                        self.disputes.append(cycle)
                    break
                chain.append(current)
                current = self.seen[current].waiting_on  # type: ignore[assignment]
            else:
                accused = self.seen[current]
                if accused.on_coordinator:  # it owes nothing: the claim or its record is a lie
                    claim = (chain[-1], current)
                    if claim not in self.disputes:
                        self.disputes.append(claim)
                    continue
                if accused.free < self.silence_timeout:  # busy, by its own account: not yet
                    continue
                waits = " -> ".join(str(r) for r in chain)
                return Fault(
                    current,
                    "withholding",
                    f"rank {rank} waited {seen.waited:.1f} s on a transfer (waits: {waits} -> {current}); "
                    f"rank {current} is alive and has waited on nobody for {accused.free:.1f} s",
                )
        return None


class WatchdogThread:
    """Runs a :class:`Watchdog` in the background and calls ``on_fault`` with each fault it finds;
    it stops watching after the first call that returns ``False``."""

    def __init__(self, watchdog: Watchdog, interval: float, on_fault: Callable[[Fault], bool]) -> None:
        self.watchdog = watchdog
        self.interval = interval
        self.on_fault = on_fault
        self.fault: Fault | None = None
        self.found = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watchdog")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.watchdog.observe()
                fault = self.watchdog.assess()
            except Exception:  # noqa: BLE001 - the store is gone: the run is over
                return
            if fault is not None and not self._stop.is_set():
                self.fault = fault
                self.found.set()
                if not self.on_fault(fault):
                    return
                self.fault = None
                self.found.clear()

    def wait(self, seconds: float) -> Fault | None:
        """Wait up to ``seconds`` for a fault; return it, or ``None``."""
        self.found.wait(seconds)
        return self.fault

    def stop(self) -> None:
        """Stop watching and wait for the thread (unless called from it)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)


def _seconds(value: Any) -> float:
    """A duration from a record: a non-negative number, else 0."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0.0
