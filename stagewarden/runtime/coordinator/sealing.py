"""Sealing the run's record: after every step the coordinator signs a step head over the receipt
log, the event log, the roster and every worker's chain head, logs it and has every worker it
serves check and cosign it; the run's last head (final) also signs ``summary.json`` and is logged
with every cosignature (:mod:`stagewarden.attest.step_heads`)."""

from __future__ import annotations

from pathlib import Path

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.receipt_log import RecordType, read_log
from stagewarden.attest.step_heads import (
    Cosignature,
    EndStatus,
    EventsChain,
    RosterEntry,
    SignedStepHead,
    StepHead,
    chains_digest,
    roster_digest,
    sign_head,
)
from stagewarden.runtime.coordinator.context import RunContext
from stagewarden.runtime.coordinator.errors import ResumeError, RunFailed
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.protocol import Cosigned, WitnessHead, receive, send_message
from stagewarden.runtime.transport import TransportError


class Sealer:
    """Signs, logs and has the workers cosign the run's step heads.

    A step's head goes to every worker served; a stage's worker answers it in its next commit
    (:meth:`take_cosignature`), so that the head adds no round trip to a step and no reply can
    overtake one the coordinator still waits for. The final head is answered at once, by every
    worker served, standbys too.

    Attributes:
        sequence: The next head's sequence number (heads are numbered over every session).
    """

    def __init__(self, ctx: RunContext, roster: Roster) -> None:
        self.ctx, self.roster = ctx, roster
        self.sequence = 0
        self._pending: dict[int, StepHead] = {}
        """The head each stage's rank has yet to answer in a commit."""

    def take_up(self, events_path: Path) -> None:
        """Continue the heads of an interrupted run: the next sequence follows the log's last head,
        whose events digest ``events.jsonl`` must still give.

        Raises:
            ResumeError: The event log no longer matches the last head that signed it.
        """
        if self.ctx.log is None:
            return
        last = None
        for record in read_log(self.ctx.log.path).records:
            if record.type is RecordType.STEP_HEAD:
                last = SignedStepHead.parse(record.payload).head
        if last is None:
            return
        self.sequence = last.sequence + 1
        chain = EventsChain()
        lines = events_path.read_bytes().split(b"\n")[:-1] if events_path.exists() else []
        for line in lines[: last.events]:
            chain.add(line)
        if chain.count != last.events or chain.digest.hex() != last.events_digest:
            raise ResumeError(
                f"cannot resume {self.ctx.run_dir}: events.jsonl no longer holds the {last.events} lines "
                f"that step head {last.sequence} signed"
            )

    def seal_step(self, steps: int) -> None:
        """Sign and log the head after ``steps`` completed steps, and send it to every worker."""
        signed, message = self._head(steps, final=False)
        if signed is None or message is None:
            return
        slot_ranks = {self.roster.rank_of(q) for q in self.roster.slots}
        for rank in sorted(self.roster.members()):
            send_message(self.ctx.transport, rank, message)
            if rank in slot_ranks:
                self._pending[rank] = signed.head

    def take_cosignature(self, worker: str, rank: int, cosignature: bytes | None, dispute: str | None) -> None:
        """Check the answer to the last head that a stage's commit carries.

        Raises:
            TransportError: The worker disputes the head, leaves it unanswered or answers it with a
                cosignature that does not verify under its attested key (``peer`` is ``rank``).
        """
        head = self._pending.pop(rank, None)
        if head is None:
            if cosignature is not None or dispute is not None:
                raise TransportError(f"worker {worker} answered a step head it was not sent", peer=rank)
            return
        if dispute is not None:
            raise TransportError(f"worker {worker} disputes step head {head.sequence}: {dispute[:500]}", peer=rank)
        if cosignature is None:
            raise TransportError(f"worker {worker} did not cosign step head {head.sequence}", peer=rank)
        try:
            self._check(worker, Cosignature.parse(cosignature), head)
        except AttestError as exc:
            raise TransportError(f"worker {worker}: {exc.message}", peer=rank) from None

    def seal_run(self, steps: int, status: EndStatus, summary_digest: bytes) -> None:
        """The run's final head: it also signs how the run ended and ``summary.json``'s digest, and
        it is logged with every served worker's cosignature.

        Raises:
            RunFailed: A worker disputes the final head or answers it with a cosignature that does
                not verify.
        """
        self._pending.clear()  # the final head supersedes a step's head still unanswered
        signed, message = self._head(steps, final=True, status=status, summary_digest=summary_digest.hex())
        if signed is None or message is None or self.ctx.log is None:
            return
        ranks = sorted(self.roster.members())
        for rank in ranks:
            send_message(self.ctx.transport, rank, message)
        cosignatures = []
        for rank in ranks:
            reply = receive(self.ctx.transport, rank, Cosigned)
            worker, _ = self.roster.worker_at(rank)
            if reply.cosignature is None:
                raise RunFailed(f"the run's record cannot be sealed: {reply.dispute}")
            try:
                self._check(worker, reply.cosignature, signed.head)
            except AttestError as exc:
                raise RunFailed(f"the run's record cannot be sealed: worker {worker}: {exc.message}") from None
            cosignatures.append(reply.cosignature)
        for cosignature in cosignatures:
            self.ctx.log.append_cosignature(cosignature)
        self.ctx.log.sync()

    def _check(self, worker: str, cosignature: Cosignature, head: StepHead) -> None:
        if cosignature.worker != worker or cosignature.key != self.roster.keys[worker].hex():
            raise AttestError(
                ErrorCode.COSIGNATURE_INVALID, f"the cosignature of head {head.sequence} is not under its attested key"
            )
        cosignature.verify(head)

    def _head(
        self, steps: int, *, final: bool, status: EndStatus | None = None, summary_digest: str | None = None
    ) -> tuple[SignedStepHead | None, WitnessHead | None]:
        ctx, log = self.ctx, self.ctx.log
        if log is None:  # a run without receipts keeps no log to seal
            return None, None
        ctx.events.sync()
        layout = self.roster.layout
        roster = tuple(
            RosterEntry(
                stage=layout.stage(q),
                worker=self.roster.slot_ids[q],
                key=self.roster.keys[self.roster.slot_ids[q]].hex(),
                replica=layout.pipeline(q),
            )
            for q in self.roster.slots
        )
        chains = dict(self.roster.prev)
        head = StepHead(
            run_id=ctx.run_id,
            sequence=self.sequence,
            session=ctx.session,
            steps=steps,
            records=len(log),
            log_digest=log.head.hex(),
            events=ctx.events.chain.count,
            events_digest=ctx.events.chain.digest.hex(),
            roster_digest=roster_digest(list(roster)).hex(),
            chains_digest=chains_digest(chains).hex(),
            final=final,
            status=status,
            summary_digest=summary_digest,
        )
        signed = sign_head(head, ctx.signing_key)
        log.append_head(signed)
        log.sync()
        self.sequence += 1
        return signed, WitnessHead(signed, roster, chains)
