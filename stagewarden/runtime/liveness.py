"""Liveness: signed heartbeats on a channel of their own, and the coordinator's watchdog.

Every admitted worker runs a :class:`Heartbeat` thread that sends, every ``heartbeat_timeout / 4``
seconds, one signed record to the coordinator over the run's heartbeat channel: a gloo process
group that every rank creates right after joining the run (:func:`heartbeat_group`), so that a
heartbeat never waits behind a tensor transfer. A record says which peer, if any, the worker is
blocked on and for how long (the coordinator counts as a peer here), or else for how long it has
not been blocked, and carries a sequence number that grows with every record.

On the coordinator a :class:`HeartbeatInbox` receives each worker's records on a thread of its
own (one per worker rank) and keeps the newest; the coordinator's :class:`Watchdog` reads them and
names a fault:

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
the rank, so no worker can forge another's heartbeat. Each worker's records travel on its own
connection to the coordinator (gloo connects every pair of ranks directly), and the inbox keeps
a record only under the rank it arrived from, so no worker can delete, overwrite or hold back
another's records either: that would take subverting the rendezvous through which the
connections are set up, the same trust the tensors' connections rest on. (Records once went
through the rendezvous store, where any process of the run could delete another's record and
so get an honest worker named unresponsive.)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

HEARTBEAT_DOMAIN = b"stagewarden/runtime/heartbeat/v1\x00"
#: The coordinator's rank: a worker waiting on it is between steps, its sends done.
COORDINATOR_RANK = 0
#: Largest heartbeat record.
MAX_RECORD_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Fault:
    """A worker the coordinator stops trusting to make progress.

    Attributes:
        rank: The worker's rank.
        cause: ``unresponsive`` (no heartbeat), ``withholding`` (alive, owes a transfer, waits on
            nobody), ``malformed`` (sent a message that fails parsing or the protocol's checks) or
            ``crashed`` (its connection closed); the coordinator also records ``attestation_refused``
            (refused when re-attested during the run).
        reason: One sentence for the operator.
    """

    rank: int
    cause: str
    reason: str


#: Largest record name (:func:`record_key`) a heartbeat frame carries.
MAX_NAME_BYTES = 256
#: The size in bytes of every heartbeat frame (a ``u16`` name length, the name, a ``u32`` record
#: length, the record, then zero padding), fixed so that the receiver knows what to receive.
FRAME_BYTES = 2 + MAX_NAME_BYTES + 4 + MAX_RECORD_BYTES
#: Timeout of the heartbeat group. A gloo receive that times out closes its connection for good,
#: so the inbox's receives must never time out: the watchdog judges staleness by its own clock.
CHANNEL_TIMEOUT = timedelta(days=7)


def heartbeat_group() -> Any:
    """Create the run's heartbeat channel: a gloo process group of every rank. Every rank calls
    it once, right after ``init_process_group`` (group creation is collective)."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=CHANNEL_TIMEOUT)


def record_key(run_id: str, session: int, rank: int) -> str:
    """The name of ``rank``'s heartbeat in ``session`` of run ``run_id``."""
    return f"stagewarden/{run_id}/{session}/heartbeat/{rank}"


def encode_frame(name: str, record: bytes) -> bytes:
    """One heartbeat frame (:data:`FRAME_BYTES`) carrying ``record`` under ``name``.

    Raises:
        ValueError: The name or the record is too long for a frame.
    """
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES or len(record) > MAX_RECORD_BYTES:
        raise ValueError(
            f"a heartbeat frame holds a name of at most {MAX_NAME_BYTES} bytes and a record of at most "
            f"{MAX_RECORD_BYTES} bytes, not {len(encoded)} and {len(record)}"
        )
    frame = bytearray(FRAME_BYTES)
    frame[:2] = len(encoded).to_bytes(2, "big")
    frame[2 : 2 + len(encoded)] = encoded
    at = 2 + MAX_NAME_BYTES
    frame[at : at + 4] = len(record).to_bytes(4, "big")
    frame[at + 4 : at + 4 + len(record)] = record
    return bytes(frame)


def decode_frame(frame: bytes) -> tuple[str, bytes] | None:
    """The name and record of a heartbeat frame; ``None`` when it is not a well-formed frame."""
    if len(frame) != FRAME_BYTES:
        return None
    size = int.from_bytes(frame[:2], "big")
    at = 2 + MAX_NAME_BYTES
    length = int.from_bytes(frame[at : at + 4], "big")
    if size > MAX_NAME_BYTES or length > MAX_RECORD_BYTES:
        return None
    try:
        name = frame[2 : 2 + size].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name, bytes(frame[at + 4 : at + 4 + length])


def _rank_of(name: str) -> int | None:
    """The rank a record name (:func:`record_key`) is for; ``None`` when it is no heartbeat name."""
    head, _, tail = name.rpartition("/heartbeat/")
    return int(tail) if head and tail.isascii() and tail.isdigit() and len(tail) <= 9 else None


class HeartbeatSender:
    """A worker's end of the heartbeat channel, what :class:`Heartbeat` writes its records to.

    Args:
        group: The heartbeat group (:func:`heartbeat_group`).
        send: ``send(frame)`` sends one frame (a ``uint8`` tensor) to the coordinator; the default
            is ``torch.distributed.send`` on ``group`` (it returns once the coordinator has taken it).
    """

    def __init__(self, group: Any, send: Callable[[Any], None] | None = None) -> None:
        self.group = group
        self._send = send or self._send_on_group

    def _send_on_group(self, frame: Any) -> None:
        import torch.distributed as dist

        dist.send(frame, COORDINATOR_RANK, group=self.group)

    def set(self, name: str, record: bytes) -> None:
        """Send ``record`` under ``name`` to the coordinator."""
        import torch

        self._send(torch.frombuffer(bytearray(encode_frame(name, record)), dtype=torch.uint8))


class HeartbeatInbox:
    """The coordinator's end of the heartbeat channel: one daemon thread per worker rank receives
    that rank's frames and keeps its newest record, which the :class:`Watchdog` reads
    (``check``/``get``, as from a key-value store).

    A frame whose name is for another rank than the one it came from is dropped: a worker can
    publish its own record only. Each rank keeps one record, so a worker cannot make the inbox
    grow either. A thread ends when its connection closes (the worker exited or crashed).

    Args:
        ranks: The worker ranks to receive from.
        group: The heartbeat group (:func:`heartbeat_group`).
        recv: ``recv(frame, rank)`` fills a ``uint8`` tensor of :data:`FRAME_BYTES` with the next
            frame from ``rank``; the default is ``torch.distributed.recv`` on ``group``.
    """

    def __init__(self, ranks: Iterable[int], group: Any = None, recv: Callable[[Any, int], None] | None = None) -> None:
        self.ranks = tuple(ranks)
        self.group = group
        self._recv = recv or self._recv_on_group
        self._latest: dict[int, tuple[str, bytes]] = {}
        self._lock = threading.Lock()
        self.closed: set[int] = set()
        """Ranks whose connection closed."""

        self.dropped = 0
        """Frames dropped as malformed or for another rank."""

    def _recv_on_group(self, frame: Any, rank: int) -> None:
        import torch.distributed as dist

        dist.recv(frame, rank, group=self.group)

    def start(self) -> None:
        """Start receiving (a worker's first heartbeat waits until its thread takes it)."""
        for rank in self.ranks:
            threading.Thread(target=self._run, args=(rank,), daemon=True, name=f"heartbeats-{rank}").start()

    def _run(self, rank: int) -> None:
        import torch

        while True:
            frame = torch.zeros(FRAME_BYTES, dtype=torch.uint8)
            try:
                self._recv(frame, rank)
            except Exception:  # noqa: BLE001 - the connection closed: the worker is gone
                with self._lock:
                    self.closed.add(rank)
                return
            self.take(rank, frame.numpy().tobytes())

    def take(self, rank: int, frame: bytes) -> None:
        """Keep the record of a frame that arrived from ``rank``, if it is well formed and its
        name is for ``rank``."""
        decoded = decode_frame(frame)
        with self._lock:
            if decoded is None or _rank_of(decoded[0]) != rank:
                self.dropped += 1
                return
            self._latest[rank] = decoded

    def _entry(self, name: str) -> bytes | None:
        rank = _rank_of(name)
        with self._lock:
            entry = self._latest.get(rank) if rank is not None else None
        return entry[1] if entry is not None and entry[0] == name else None

    def check(self, names: Sequence[str]) -> bool:
        """Whether a record is held under every one of ``names``."""
        return all(self._entry(name) is not None for name in names)

    def get(self, name: str) -> bytes:
        """The record held under ``name``.

        Raises:
            KeyError: None is.
        """
        record = self._entry(name)
        if record is None:
            raise KeyError(name)
        return record


def _message(run_id: str, session: int, rank: int, body: dict[str, Any]) -> bytes:
    payload = {"run_id": run_id, "session": session, "rank": rank, **body}
    return HEARTBEAT_DOMAIN + json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Heartbeat:
    """A worker's heartbeat thread.

    Args:
        channel: Where the records go: the worker's :class:`HeartbeatSender` (anything with
            ``set(name, record)``); used by this thread only.
        run_id: The run.
        session: The coordinator's session (0, then one more per resume).
        rank: This worker's rank.
        key: The worker's attested signing key.
        interval: Seconds between records.
        waiting: Returns the rank this worker is blocked on (``None``: on nobody; 0 is the
            coordinator) and since when (``time.monotonic()``): the start of the wait, or when
            not blocked the end of its last one.
    """

    def __init__(
        self,
        channel: Any,
        run_id: str,
        session: int,
        rank: int,
        key: SigningKey,
        interval: float,
        waiting: Callable[[], tuple[int | None, float]],
    ) -> None:
        self.channel = channel
        self.run_id, self.session, self.rank = run_id, session, rank
        self.key = key
        self.interval = interval
        self.waiting = waiting
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def start(self) -> None:
        """Send the first record now, then keep sending in the background."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Send one record."""
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
        self.channel.set(record_key(self.run_id, self.session, self.rank), bytes(signed))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the coordinator is gone: the run is over; stop beating
                return

    def stop(self) -> None:
        """Stop sending and wait for the thread (it must not be inside a send at exit)."""
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
        channel: Where the records are read: the coordinator's :class:`HeartbeatInbox`
            (anything with ``check([name])`` and ``get(name)``).
        run_id, session: As for :class:`Heartbeat`.
        members: Returns the ranks to watch and each one's attested key (it changes as workers
            are released and standbys take stages).
        heartbeat_timeout: Seconds without a new record after which a worker is unresponsive.
        silence_timeout: Seconds a worker may be waited on while it waits on nobody.
        clock: ``time.monotonic`` (tests pass a fake).
    """

    def __init__(
        self,
        channel: Any,
        run_id: str,
        session: int,
        members: Callable[[], dict[int, bytes]],
        heartbeat_timeout: float,
        silence_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.run_id, self.session = run_id, session
        self.members = members
        self.heartbeat_timeout = heartbeat_timeout
        self.silence_timeout = silence_timeout
        self.clock = clock
        self.seen: dict[int, _Seen] = {}
        self.disputes: list[tuple[int, ...]] = []

    def _read(self, rank: int, key: bytes) -> dict[str, Any] | None:
        name = record_key(self.run_id, self.session, rank)
        if not self.channel.check([name]):
            return None
        raw = self.channel.get(name)
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
            while current in self.seen and (waits_on := self.seen[current].waiting_on) is not None:
                if current in chain:
                    cycle = tuple(chain[chain.index(current) :])
                    first = cycle.index(min(cycle))
                    cycle = cycle[first:] + cycle[:first]  # one name per cycle, whoever is seen first
                    if cycle not in self.disputes:
                        self.disputes.append(cycle)
                    break
                chain.append(current)
                current = waits_on
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
            except Exception:  # noqa: BLE001 - defensive: a watchdog that fails stops watching
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
