"""Worker faults: the heartbeat watchdog, blaming a failed receive on its worker, benching a
failed standby and recording the fault that interrupts a run."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from stagewarden.attest.errors import AttestError
from stagewarden.runtime.coordinator.context import EXIT_RESUMABLE, RunContext
from stagewarden.runtime.coordinator.errors import RunInterrupted
from stagewarden.runtime.liveness import Fault, Watchdog, WatchdogThread
from stagewarden.runtime.transport import (
    TransportError,
)

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


class Faults:
    """Watches the workers and records their faults.

    Attributes:
        lock: Held while a fault is handled (the watchdog's thread and the main one race for it).
    """

    def __init__(self, ctx: RunContext, roster: Roster, tally: RunTally) -> None:
        self.ctx, self.roster, self.tally = ctx, roster, tally
        self._watchdog: WatchdogThread | None = None
        self.lock = threading.Lock()
        self._main_handles_fault = False
        self._watchdog_exits = False

    def start_watchdog(self) -> None:
        c = self.ctx.config
        silence = min(c.silence_timeout, c.timeout / 2)
        watchdog = Watchdog(
            self.ctx.heartbeats, self.ctx.run_id, self.ctx.session, self.roster.members, c.heartbeat_timeout, silence
        )
        self._watchdog = WatchdogThread(watchdog, c.heartbeat_timeout / 4, self._watchdog_fault)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def _watchdog_fault(self, fault: Fault) -> bool:
        """The watchdog found a fault. A free standby's is survived (:meth:`bench_standby`; keep
        watching). Otherwise the main thread may be blocked in a receive that only the fault would
        end: record it and end this process (the run directory is resumable)."""
        with self.lock:
            if self._main_handles_fault:
                return False  # the main thread is waiting for this verdict
            index = fault.rank - self.roster.layout.slots - 1
            if index in self.roster.free_standbys:
                self.bench_standby(index, fault)
                return True
            self._watchdog_exits = True
        try:
            message = self.record_fault(fault)
            print(f"stagewarden rank 0: error: {message}", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_RESUMABLE)

    def bench_standby(self, index: int, fault: Fault) -> None:
        """Stop counting on free standby ``index``, which failed; the run goes on without it."""
        wid, rank = self.roster.standby_ids[index], self.roster.standby_rank(index)
        self.roster.free_standbys.remove(index)
        self.roster.released.add(rank)
        self.roster.benched.append(wid)
        record = {"worker": wid, "stage": None, "rank": rank, "cause": fault.cause, "reason": fault.reason}
        record.update(step=len(self.tally.losses), session=self.ctx.session, standby=None)
        self.tally.faults.append(record)
        self.ctx.events.write("worker_fault", **record)

    def on_error(self, exc: BaseException) -> None:
        """A receive or a worker's message failed during training: find the faulty worker and stop
        with a resumable run directory (:class:`~stagewarden.runtime.coordinator.errors.RunInterrupted`)."""
        self._take_over_faults()
        self._interrupt(self._attribute(exc), str(exc))

    def refuse(self, rank: int, code: str, reason: str) -> NoReturn:
        """The worker of ``rank`` was refused when re-attested (a revoked device, say): record it
        as a fault with cause ``attestation_refused`` and stop with a resumable run directory, so
        that a standby takes its stage as after a crash."""
        self._take_over_faults()
        self._interrupt(Fault(rank, "attestation_refused", f"re-attestation refused ({code}): {reason}"))

    def _take_over_faults(self) -> None:
        """From now on the main thread records the fault; if the watchdog is already recording one,
        wait for it to end the process."""
        with self.lock:
            if self._watchdog_exits:
                threading.Event().wait()
            self._main_handles_fault = True

    def _interrupt(self, fault: Fault | None, detail: str = "") -> NoReturn:
        """Record ``fault`` and stop with a resumable run directory."""
        raise RunInterrupted(
            self.record_fault(fault, detail),
            self.tally.pending_fault is not None and bool(self.tally.pending_fault.get("standby")),
        )

    def _attribute(self, exc: BaseException) -> Fault | None:
        """The faulty worker behind ``exc``: a malformed message is its sender's fault; a closed
        connection to the coordinator is that worker's (its process is gone); otherwise (a peer's
        failure reported by a worker, a timeout) the watchdog's verdict, waited for up to a
        heartbeat timeout. ``None``: nobody can be blamed (a dispute)."""
        workers = {self.roster.rank_of(s) for s in self.roster.slots} | {
            self.roster.standby_rank(k) for k in range(self.ctx.config.standby)
        }
        if isinstance(exc, TransportError):
            rank, cause = exc.peer, exc.cause
            if rank is None and cause == "malformed":  # raised on the content of the last message
                rank = self.ctx.transport.last_src
        else:
            rank, cause = self.ctx.transport.last_src, "malformed"
        text = exc.message if isinstance(exc, AttestError) else str(exc)
        if rank in workers and cause == "malformed":
            return Fault(rank, "malformed", f"rank {rank} sent a malformed message: {text}")
        if rank in workers and cause == "closed":
            return Fault(rank, "crashed", f"rank {rank}'s connection closed (its process is gone): {text}")
        assert self._watchdog is not None
        return self._watchdog.wait(self.ctx.config.heartbeat_timeout * 1.5 + 1.0)

    def record_fault(self, fault: Fault | None, detail: str = "") -> str:
        """Record ``fault`` (or an unattributed failure) in the events, the summary's ``faults``
        and ``pending_fault``, and return the operator's message."""
        step = len(self.tally.losses)
        standby = None
        if fault is None:
            record: dict[str, Any] = {"worker": None, "stage": None, "rank": None, "cause": "unattributed"}
            record["reason"] = f"a failure no worker can be blamed for: {detail}"
        else:
            wid, slot = self.roster.worker_at(fault.rank)
            stage = None if slot is None else self.roster.layout.stage(slot)
            free = [self.roster.standby_ids[k] for k in self.roster.free_standbys if self.roster.standby_ids[k] != wid]
            if stage is not None and free:
                standby = free[0]
            record = {"worker": wid, "stage": stage, "rank": fault.rank, "cause": fault.cause, "reason": fault.reason}
        record.update(step=step, session=self.ctx.session, standby=standby)
        self.tally.faults.append(record)
        self.tally.pending_fault = record
        self.tally.status = "interrupted"
        self.ctx.events.write("worker_fault", **record)
        self.tally.write_summary()
        self.ctx.events.close()
        if standby is not None:
            return (
                f"worker {record['worker']} (stage {record['stage']}) failed at step {step} ({record['cause']}): "
                f"{record['reason']}; standby {standby} takes its stage when the run resumes"
            )
        who = "" if fault is None else f"worker {record['worker']} failed at step {step} ({record['cause']}): "
        return (
            f"{who}{record['reason']}; no standby can take over: the run stopped and can be resumed with "
            f"'stagewarden train --resume {self.ctx.run_dir}'"
        )
