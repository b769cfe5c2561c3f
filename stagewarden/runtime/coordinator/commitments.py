"""Collecting a step's commitments: every stage's receipts, the signed headers it received, the
last stage's losses and the checkers' reports, verified and logged."""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING

import torch

from stagewarden.attest.errors import AttestError
from stagewarden.attest.headers import SignedHeader, parse_header, verify_header
from stagewarden.attest.receipts import Receipt, UnitKind, parse_receipt, receipt_digest, verify_receipt
from stagewarden.attest.step_roots import StepRoot, leaf_hash, parse_root
from stagewarden.attest.tensor_digest import (
    last_forward_output_digest,
)
from stagewarden.runtime.coordinator.context import CONTENT_ERRORS, CurrentAttempt, RunContext
from stagewarden.runtime.coordinator.sealing import Sealer
from stagewarden.runtime.protocol import CheckReport, Commit, receive
from stagewarden.runtime.transport import (
    TransportError,
)
from stagewarden.runtime.units import loss_digest, step_loss

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


@dataclasses.dataclass
class StageCommitment:
    """One stage's verified commitment for a step (:meth:`Commitments.take`).

    Attributes:
        busy: The seconds its worker reports busy.
        receipts: Its forward and backward receipts, verified, in signing order.
        headers: The signed headers it received, verified.
        loss: On the last stage: the step's loss.
        microbatch_losses: On the last stage: each micro-batch's loss.
        checks: With ``redundant_neighbour`` (from stage 1 on): the failed checks it reports.
        checks_run: With ``redundant_neighbour``: how many units it checked.
        contribution: With replicas: the digest of the gradients it will send its stage's other
            replicas.
        root: With receipts: its signed step root, verified, which covers its receipts and the
            headers it sent.
        received: The encoded headers it received, parsed into ``headers`` only once every
            stage's root is known (:meth:`Commitments.collect`).
    """

    busy: float
    receipts: list[Receipt] = dataclasses.field(default_factory=list)
    headers: list[SignedHeader] = dataclasses.field(default_factory=list)
    root: StepRoot | None = None
    received: list[bytes] = dataclasses.field(default_factory=list)
    loss: float = float("nan")
    microbatch_losses: list[float] = dataclasses.field(default_factory=list)
    checks: list[CheckReport] | None = None
    checks_run: int = 0
    contribution: bytes | None = None


class _CommitmentThread(threading.Thread):
    """Takes one stage's commitment (:meth:`Commitments.take`) on its own thread.

    A daemon: when another stage's failure ends the run first, this one may still wait on a
    receive that never completes, and must not hold the process open."""

    def __init__(self, commitments: Commitments, stage: int, step: int) -> None:
        super().__init__(name=f"commitment-{stage}", daemon=True)
        self._commitments, self._stage, self._step = commitments, stage, step
        self._result: StageCommitment | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._commitments.take(self._stage, self._step)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the outcome
            self._error = exc

    def outcome(self) -> StageCommitment:
        """Wait for the commitment; raise what taking it raised."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@dataclasses.dataclass
class StepCommit:
    """Everything the workers committed for one step, as the coordinator received it.

    The maps are keyed by slot (:class:`~stagewarden.runtime.layout.Layout`; with one pipeline,
    the stage).

    Attributes:
        step: The step.
        receipts: Per slot, its forward and backward receipts in signing order.
        headers: Per receiving slot, the signed headers it received.
        loss: The step's loss: the mean of every replica's micro-batch losses.
        microbatch_losses: The micro-batch losses, replica after replica (from the last stage of
            each replica's first computing copy).
        checks: With ``redundant_neighbour``: per checking stage, the failed checks it reports.
        checks_run: With ``redundant_neighbour``: per checking stage, how many units it checked.
        contributions: With replicas: per slot, the digest of the gradients it committed to
            sending its group.
        last_losses: Per last-stage slot, its micro-batch losses.
    """

    step: int
    receipts: dict[int, list[Receipt]]
    headers: dict[int, list[SignedHeader]]
    loss: float
    microbatch_losses: list[float]
    checks: dict[int, list[CheckReport]] = dataclasses.field(default_factory=dict)
    checks_run: dict[int, int] = dataclasses.field(default_factory=dict)
    contributions: dict[int, bytes] = dataclasses.field(default_factory=dict)
    last_losses: dict[int, list[float]] = dataclasses.field(default_factory=dict)

    def receipt(self, stage: int, micro_batch: int, kind: UnitKind) -> Receipt | None:
        """The receipt of ``stage`` for one unit of this step, if committed."""
        return next((r for r in self.receipts.get(stage, []) if r.micro_batch == micro_batch and r.kind is kind), None)


class Commitments:
    """Receives and verifies the workers' commitments of a computation (see :class:`StepCommit`)."""

    def __init__(
        self, ctx: RunContext, roster: Roster, tally: RunTally, current: CurrentAttempt, sealer: Sealer
    ) -> None:
        self.ctx, self.roster, self.tally, self.current, self.sealer = ctx, roster, tally, current, sealer

    def collect(self, step: int) -> StepCommit:
        """Receive every stage's commitment for ``step``; verify and log its receipts and headers.

        The outcomes are taken in stage order: a stage that died mid-step is met as a closed
        connection (taking the last stage first left the verdict to the chain of waits, which
        blamed the next stage), and of two faulty commitments the lower stage's is the one
        reported. With gloo the work is not: the pipeline's stages finish from the last to the
        first, so while this thread waits for stage 0, one thread per other stage receives and
        verifies that stage's commitment as it arrives (:meth:`take`), and after
        stage 0's only its own verification is left. (NCCL point-to-point calls from several
        threads could interleave differently on each rank: with it the stages are taken one
        after the other.)

        Receipts and headers covered by a stage's signed step root are taken on that one
        signature. A header is checked against its sender's root, so the headers are accepted
        once every stage's commitment is in, stage by stage."""
        c, layout, bypass = self.ctx.config, self.roster.layout, self.current.bypass
        stages = [q for q in self.roster.slots if layout.stage(q) != bypass]
        taken: dict[int, StageCommitment] = {}
        if c.backend == "gloo" and len(stages) > 1:
            threads = {s: _CommitmentThread(self, s, step) for s in stages[1:]}
            for thread in threads.values():
                thread.start()
            taken[stages[0]] = self.take(stages[0], step)
            for s, thread in threads.items():
                taken[s] = thread.outcome()
        else:
            for s in stages:
                taken[s] = self.take(s, step)
        sent = {s: frozenset(t.root.header_leaves) for s, t in taken.items() if t.root is not None}
        for s in stages:
            wid = self.roster.slot_ids[s]
            taken[s].headers = [self.accept_header(wid, s, step, raw, sent) for raw in taken[s].received]
        receipts = {s: t.receipts for s, t in taken.items()}
        headers = {s: t.headers for s, t in taken.items()}
        last_losses = {s: t.microbatch_losses for s, t in taken.items() if layout.is_last(s)}
        firsts: dict[int, list[float]] = {}  # each replica's losses, from its first computing copy
        for s, losses in last_losses.items():
            firsts.setdefault(layout.replica(s), losses)
        microbatch_losses = [v for r in sorted(firsts) for v in firsts[r]]
        loss = step_loss([torch.tensor(v, dtype=torch.float32) for v in microbatch_losses])
        checks = {s: t.checks for s, t in taken.items() if t.checks is not None}
        checks_run = {s: t.checks_run for s, t in taken.items() if t.checks is not None}
        contributions = {s: t.contribution for s, t in taken.items() if t.contribution is not None}
        # a step's commitments enter the log together, so a crash mid-collection leaves none of them
        for s in stages:
            self.tally.busy[s] += taken[s].busy
            for r in receipts[s]:
                self.tally.counts[str(r.kind)] += 1
                if self.ctx.log is not None:
                    self.ctx.log.append_receipt(r)
                    self.tally.counts["receipts"] += 1
            root = taken[s].root
            if root is not None and self.ctx.log is not None:
                self.ctx.log.append_root(root)
            for header in headers[s]:
                if self.ctx.log is not None:
                    self.ctx.log.append_header(header)
                    self.tally.counts["headers"] += 1
        return StepCommit(
            step, receipts, headers, loss, microbatch_losses, checks, checks_run, contributions, last_losses
        )

    def take(self, s: int, step: int) -> StageCommitment:
        """Receive stage ``s``'s commitment for ``step`` and verify its receipts, headers, losses
        and check report. Touches nothing another stage's commitment touches (its worker's hash
        chain head is its own), so the stages can be taken on separate threads.

        Raises:
            TransportError: The receive failed or the commitment fails a check; its ``peer`` is
                stage ``s``'s rank (a receive on another thread may have come in since).
        """
        c, layout = self.ctx.config, self.roster.layout
        wid, rank = self.roster.slot_ids[s], self.roster.rank_of(s)
        try:
            msg = receive(self.ctx.transport, rank, Commit)
            if msg.step != step:
                raise TransportError(f"worker {wid} committed step {msg.step}, not {step}")
            self.sealer.take_cosignature(wid, rank, msg.cosignature, msg.dispute)
            out = StageCommitment(msg.busy_ns / 1e9)
            if c.receipts:
                out.root = self.accept_root(wid, s, step, msg)
            covered = out.root is not None
            out.receipts = [self.accept_receipt(wid, s, step, raw, log=False, covered=covered) for raw in msg.receipts]
            out.received = list(msg.headers)
            if len(self.roster.group(s)) > 1:
                if msg.contribution is None:
                    raise TransportError(f"worker {wid}'s commitment names no gradient contribution")
                out.contribution = msg.contribution
            if layout.is_last(s):
                out.microbatch_losses = self.reported_losses(wid, msg, out.receipts)
                out.loss = step_loss([torch.tensor(v, dtype=torch.float32) for v in out.microbatch_losses])
            if c.verification == "redundant_neighbour" and s >= 1:
                if msg.checks is None or msg.checks_run is None:
                    raise TransportError(f"worker {wid}'s commitment has no check report")
                out.checks, out.checks_run = list(msg.checks), msg.checks_run
            return out
        except TransportError as exc:
            if exc.peer is None:
                exc.peer = rank
            raise
        except CONTENT_ERRORS as exc:
            message = exc.message if isinstance(exc, AttestError) else str(exc)
            raise TransportError(
                f"worker {wid}'s commitment for step {step} is malformed: {message}", peer=rank
            ) from None

    def accept_root(self, wid: str, slot: int, step: int, msg: Commit) -> StepRoot:
        """The step root of slot ``slot``'s worker ``wid`` in its commitment ``msg``, verified:
        signed by its attested key, for this run, worker, slot and step, its receipt leaves
        those of the receipts the commitment carries (which it then covers).

        Raises:
            TransportError: The root is missing or does not hold.
            AttestError: The root is malformed or its signature does not verify.
        """
        layout = self.roster.layout
        if msg.root is None:
            raise TransportError(f"worker {wid}'s commitment for step {step} carries no step root")
        root = parse_root(msg.root)
        root.verify(self.roster.keys[wid])
        if (root.run_id, root.worker_id, root.stage, root.replica, root.step) != (
            self.ctx.run_id,
            wid,
            layout.stage(slot),
            layout.pipeline(slot),
            step,
        ):
            raise TransportError(f"worker {wid}'s step root is for another computation (step {root.step})")
        if root.receipt_leaves != tuple(leaf_hash(raw) for raw in msg.receipts):
            raise TransportError(f"worker {wid}'s step root does not cover the receipts it committed")
        return root

    def accept_header(
        self, wid: str, stage: int, step: int, raw: bytes, sent: dict[int, frozenset[bytes]]
    ) -> SignedHeader:
        """Take a signed header that stage ``stage``'s worker ``wid`` received in ``step`` and
        commits to. It must be genuine: signed by the attested key of the worker that runs its
        sender stage, for a transfer of this run and step to ``stage``. The link checks take a
        header as evidence against its sender (an equivocation), and the log keeps it, so one
        that its receiver forged or took from another transfer must not get that far. A header
        whose leaf hash is one its sender's verified step root lists (``sent``: per slot, the
        header leaves of its root) is its sender's on that signature; any other has its own
        signature checked.

        Raises:
            TransportError: The header is malformed, not genuine or of another transfer (the
                worker that committed it is at fault: it checked the header when it arrived).
        """
        c, layout = self.ctx.config, self.roster.layout
        slot, stage = stage, layout.stage(stage)
        try:
            header = parse_header(raw)
            sender = None
            if header.sender_stage < c.stages and header.sender_replica == layout.pipeline(slot):
                sender = self.roster.slot_ids[layout.at(slot, header.sender_stage)]
            if sender is None or header.sender != sender or sender not in self.roster.keys:
                raise TransportError(
                    f"worker {wid} committed a signed header from {header.sender!r}, which is not the worker of "
                    f"stage {header.sender_stage} of its pipeline",
                    peer=self.roster.rank_of(slot),
                )
            if leaf_hash(raw) not in sent.get(layout.at(slot, header.sender_stage), ()):
                verify_header(header, self.roster.keys[sender])
        except AttestError as exc:
            raise TransportError(
                f"worker {wid} committed a signed header that is not genuine: {exc.message}",
                peer=self.roster.rank_of(slot),
            ) from None
        if (header.run_id, header.receiver_stage, header.step) != (self.ctx.run_id, stage, step):
            raise TransportError(
                f"worker {wid} committed a signed header of another transfer (run {header.run_id!r}, to stage "
                f"{header.receiver_stage}, step {header.step})",
                peer=self.roster.rank_of(slot),
            )
        if header.sender_stage != self.current.route.neighbour(stage, header.kind, incoming=True):
            # a transfer that skips a stage is this computation's only when it bypasses that stage
            raise TransportError(
                f"worker {wid} committed a signed {header.kind} header from stage {header.sender_stage}, which "
                f"does not send to stage {stage} in this computation of step {step}",
                peer=self.roster.rank_of(slot),
            )
        return header

    def reported_losses(self, wid: str, msg: Commit, receipts: list[Receipt]) -> list[float]:
        """The micro-batch losses the last stage's commitment reports, in micro-batch order. With
        receipts each must be the one its forward receipt commits to with the logits
        (:func:`~stagewarden.attest.tensor_digest.last_forward_output_digest` of the reported
        logits digest and :func:`~stagewarden.runtime.units.loss_digest`): the run reports only
        signed losses, and a spot check of the unit re-executes the loss with the logits.

        Raises:
            TransportError: A loss is missing or malformed, or is not the one its receipt commits to.
        """
        c = self.ctx.config
        if msg.microbatch_losses is None or len(msg.microbatch_losses) != c.microbatches:
            raise TransportError(
                f"worker {wid}'s commitment does not report the loss of each of the {c.microbatches} micro-batches"
            )
        losses = list(msg.microbatch_losses)
        if c.receipts:
            logits = msg.logits
            if logits is None or len(logits) != c.microbatches:
                raise TransportError(f"worker {wid}'s commitment does not report the logits digest of each micro-batch")
            for r in receipts:
                m = r.micro_batch
                if r.kind is UnitKind.FORWARD and 0 <= m < c.microbatches:
                    if last_forward_output_digest(logits[m], loss_digest(losses[m])) != r.output_digest:
                        raise TransportError(
                            f"worker {wid} reported another loss of micro-batch {m} than its forward receipt commits to"
                        )
        return losses

    def accept_receipt(
        self, wid: str, stage: int, step: int, raw: bytes, log: bool = True, covered: bool = False
    ) -> Receipt:
        """Take a receipt of slot ``stage``'s worker ``wid`` for ``step``: signed by its key (on its
        own signature, or ``covered`` by the worker's verified step root), for this run, worker
        and slot, continuing the worker's hash chain; logged when ``log``.

        Raises:
            TransportError: The receipt is for another unit or breaks the chain.
            AttestError: The receipt is malformed or its signature does not verify.
        """
        layout = self.roster.layout
        receipt = parse_receipt(raw)
        if not covered:
            verify_receipt(receipt, self.roster.keys[wid])
        elif receipt.signer_key != self.roster.keys[wid]:
            raise TransportError(f"worker {wid} sent a receipt that names another key than its attested one")
        unit = (receipt.run_id, receipt.worker_id, receipt.stage, receipt.replica, receipt.step)
        if unit != (self.ctx.run_id, wid, layout.stage(stage), layout.pipeline(stage), step):
            raise TransportError(f"worker {wid} sent a receipt for another unit: {receipt.unit}")
        if receipt.prev_digest != self.roster.prev[wid]:
            raise TransportError(f"worker {wid}'s receipt does not continue its hash chain")
        self.roster.prev[wid] = receipt_digest(receipt)
        if log and self.ctx.log is not None:
            self.ctx.log.append_receipt(receipt)
            self.tally.counts["receipts"] += 1
        return receipt
