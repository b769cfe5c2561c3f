"""The offline audit's unit and link checks: every unit computed as often as its step's declared
computations allow, signed headers against their senders' receipts, and the links between adjacent
stages, each past the stage a response bypassed or froze."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .audit_findings import FindingLog, LogItem
from .audit_plans import (
    bypasses,
    frozen_stages,
    recorded_attempts,
    recorded_plans,
    retired_pipelines,
    route_neighbour,
    served_steps,
)
from .errors import ErrorCode
from .headers import SignedHeader, TransferKind
from .receipts import Receipt, UnitKind
from .run_record import RunRecord

#: (stage, replica, step, attempt, micro-batch, unit kind)
UnitKey = tuple[int, int, int, int, int, UnitKind]
#: (sender stage, sender replica, step, attempt, micro-batch, transfer kind)
TransferKey = tuple[int, int, int, int, int, TransferKind]


class LinkAudit:
    """Checks units, headers and links against the responses the run record declares."""

    def __init__(self, summary: RunRecord, log: FindingLog) -> None:
        self.summary = summary
        self.log = log
        training = summary.training
        self.attempts = recorded_attempts(training)
        self.frozen = frozen_stages(recorded_plans(training))
        self.bypassed = bypasses(recorded_plans(training))
        self.replacements = training.replacements if training is not None else []
        self.retired = retired_pipelines(training)

    def allowed(self, step: int) -> int:
        """How many computations of ``step`` the summary's responses declare (1 when none)."""
        return self.attempts.get(step, 1)

    def check_units(self, receipts: list[LogItem]) -> dict[UnitKey, Receipt]:
        """Conflicts and completeness; return the receipts to link, one per unit and attempt.

        A unit may be computed once per attempt at its step: a step that a response recomputed
        (declared in the summary's ``responses``) has several attempts, and the k-th receipt of a
        stage's unit in log order belongs to attempt k. More receipts than attempts for one worker
        and unit is a conflict.
        """
        units: dict[tuple[str, int, int, UnitKind], list[LogItem]] = defaultdict(list)
        for item in receipts:
            r = item.receipt
            units[(r.worker_id, r.step, r.micro_batch, r.kind)].append(item)
        conflicted: set[tuple[str, int, int, UnitKind]] = set()
        for key, group in units.items():
            allowed = self.allowed(key[1])
            if len(group) > allowed:
                worker = key[0]
                records = ", ".join(str(g.record.index) for g in group)
                beyond = f", more than the {allowed} computations of its step" if allowed > 1 else ""
                self.log.add(
                    ErrorCode.RECEIPT_CONFLICT,
                    f"worker {worker} signed {len(group)} different receipts for the same unit (records {records})"
                    + beyond,
                    workers=[worker],
                    item=group[1],
                )
                conflicted.add(key)
        linkable: dict[UnitKey, Receipt] = {}
        attempt: dict[tuple[int, int, int, int, UnitKind], int] = defaultdict(int)
        for item in receipts:
            r = item.receipt
            if (r.worker_id, r.step, r.micro_batch, r.kind) in conflicted:
                continue
            position = (r.stage, r.replica, r.step, r.micro_batch, r.kind)
            while self.bypassed.get((r.step, attempt[position])) == r.stage:  # it computed nothing then
                attempt[position] += 1
            linkable[(r.stage, r.replica, r.step, attempt[position], r.micro_batch, r.kind)] = r
            attempt[position] += 1
        s = self.summary
        spans = served_steps(self.replacements, s.steps)
        logged: dict[str, list[tuple[int, int, UnitKind]]] = defaultdict(list)
        for worker, step, mb, kind in units:
            logged[worker].append((step, mb, kind))
        for w in s.workers:
            begin, end = spans.get(w.id, (0, s.steps))
            if w.replica in self.retired:  # its pipeline left the run: nothing is expected after that
                end = min(end, self.retired[w.replica])
            count, first = self._missing(w.id, (begin, end), self.frozen.get(w.stage), logged[w.id])
            if first is not None:
                step, mb, kind = first
                self.log.add(
                    ErrorCode.RECEIPT_MISSING,
                    f"worker {w.id} has no receipt for {count} unit(s) of the "
                    f"{s.steps} step(s) the summary reports; the first is step {step} micro-batch {mb} {kind}",
                    workers=[w.id],
                    file=self.log.log_name,
                    stage=w.stage,
                    step=step,
                    micro_batch=mb,
                    unit=str(kind),
                )
        return linkable

    def _missing(
        self, worker: str, span: tuple[int, int], frozen_from: int | None, logged: list[tuple[int, int, UnitKind]]
    ) -> tuple[int, tuple[int, int, UnitKind] | None]:
        """How many of ``worker``'s expected units in the steps ``span`` have no receipt among its
        ``logged`` units (distinct), and the first of them: ``micro_batches`` forward and backward
        units per step and an update per step before ``frozen_from``. The count is arithmetic and
        the search for the first stops after as many units as the worker logged, so the work is
        bounded by the log, not by the summary's step count."""
        begin, end = span
        mbs = self.summary.micro_batches
        updates_end = end if frozen_from is None else max(begin, min(end, frozen_from))
        present = 0
        for step, mb, kind in logged:
            if not begin <= step < end:
                continue
            if kind is UnitKind.UPDATE:
                present += mb == 0 and step < updates_end
            else:
                present += mb < mbs
        expected = max(0, end - begin) * mbs * 2 + max(0, updates_end - begin)
        if present == expected:
            return 0, None
        have = set(logged)
        for step in range(begin, end):
            for mb in range(mbs):
                for kind in (UnitKind.FORWARD, UnitKind.BACKWARD):
                    if (step, mb, kind) not in have:
                        return expected - present, (step, mb, kind)
            if step < updates_end and (step, 0, UnitKind.UPDATE) not in have:
                return expected - present, (step, 0, UnitKind.UPDATE)
        raise AssertionError("a unit counted missing was not found")  # pragma: no cover

    def check_headers(
        self, headers: list[LogItem], linkable: dict[UnitKey, Receipt]
    ) -> dict[TransferKey, SignedHeader]:
        """Duplicates, equivocation and agreement with the sender's receipt; return one header per transfer.

        Headers are grouped by transfer and attempt like receipts (see :meth:`check_units`):
        different headers for one transfer beyond the attempts declared for its step are
        equivocation.
        """
        transfers: dict[tuple[int, int, int, int, TransferKind], list[LogItem]] = defaultdict(list)
        seen: dict[bytes, LogItem] = {}
        for item in headers:
            h = item.header
            first = seen.get(item.body_digest)
            if first is not None:
                self.log.add(
                    ErrorCode.LOG_DUPLICATE,
                    f"signed header replayed: identical to record {first.record.index}",
                    workers=[h.sender],
                    item=item,
                )
                continue
            seen[item.body_digest] = item
            transfers[(h.sender_stage, h.sender_replica, h.step, h.micro_batch, h.kind)].append(item)
        agreed: dict[TransferKey, SignedHeader] = {}
        for key, group in transfers.items():
            sender = group[0].header.sender
            if len(group) > self.allowed(key[2]):
                digests = {g.header.tensor for g in group}
                records = ", ".join(str(g.record.index) for g in group)
                self.log.add(
                    ErrorCode.HEADER_EQUIVOCATION,
                    f"worker {sender} signed {len(digests)} different headers for "
                    f"the same {key[4]} transfer (records {records}): it sent different tensors for one transfer",
                    workers=sorted({g.header.sender for g in group}),
                    item=group[1],
                )
                continue
            unit = UnitKind.FORWARD if key[4] is TransferKind.ACTIVATION else UnitKind.BACKWARD
            for attempt, item in enumerate(group):
                h = item.header
                bypassed = self.bypassed.get((h.step, attempt))
                if h.receiver_stage != route_neighbour(h.sender_stage, h.kind, bypassed):
                    past = f" past bypassed stage {bypassed}" if bypassed is not None else ""
                    self.log.add(
                        ErrorCode.LINK_MISMATCH,
                        f"worker {h.sender} signed a {h.kind} header to stage {h.receiver_stage}, which stage "
                        f"{h.sender_stage} does not send to in computation {attempt} of step {h.step}{past}: "
                        "no response of the run bypasses the stage between them",
                        workers=[h.sender],
                        item=item,
                    )
                agreed[(key[0], key[1], key[2], attempt, key[3], key[4])] = h
                receipt = linkable.get((key[0], key[1], key[2], attempt, key[3], unit))
                if receipt is not None and receipt.output_digest != h.tensor.digest:
                    self.log.add(
                        ErrorCode.HEADER_MISMATCH,
                        f"worker {h.sender} signed a {key[4]} header whose tensor digest "
                        f"differs from the output digest of its own {unit} receipt",
                        workers=[h.sender],
                        item=item,
                    )
        return agreed

    def check_links(
        self,
        linkable: dict[UnitKey, Receipt],
        headers: dict[TransferKey, SignedHeader],
    ) -> None:
        """Adjacent stages must agree on the tensors they exchanged, attempt by attempt."""
        s = self.summary
        for (stage, replica, step, attempt, mb, kind), receipt in linkable.items():
            bypassed = self.bypassed.get((step, attempt))
            if (
                kind is UnitKind.FORWARD
                and (to := route_neighbour(stage, TransferKind.ACTIVATION, bypassed)) < s.stages
            ):
                sender, receiver = receipt, linkable.get((to, replica, step, attempt, mb, UnitKind.FORWARD))
                transfer = TransferKind.ACTIVATION
            elif kind is UnitKind.BACKWARD and (to := route_neighbour(stage, TransferKind.GRADIENT, bypassed)) >= 0:
                sender, receiver = receipt, linkable.get((to, replica, step, attempt, mb, UnitKind.BACKWARD))
                transfer = TransferKind.GRADIENT
            else:
                continue
            if receiver is None or sender.output_digest == receiver.input_digest:
                continue
            header = headers.get((stage, replica, step, attempt, mb, transfer))
            where: dict[str, Any] = dict(file=self.log.log_name, step=step, micro_batch=mb, unit=str(kind), stage=stage)
            if header is not None and header.tensor.digest == sender.output_digest:
                self.log.add(
                    ErrorCode.LINK_MISMATCH,
                    f"worker {receiver.worker_id} (stage {receiver.stage}) claims a "
                    f"{kind} input that differs from the {transfer} worker {sender.worker_id} sent with a signed "
                    f"header: the receiver's receipt is false",
                    workers=[receiver.worker_id],
                    **where,
                )
            elif header is not None and header.tensor.digest == receiver.input_digest:
                self.log.add(
                    ErrorCode.LINK_MISMATCH,
                    f"worker {sender.worker_id} (stage {stage}) sent a {transfer} that "
                    f"differs from the output its own {kind} receipt claims: the sender's receipt is false",
                    workers=[sender.worker_id],
                    **where,
                )
            else:
                self.log.add(
                    ErrorCode.LINK_MISMATCH,
                    f"the {kind} output of worker {sender.worker_id} (stage {stage}) "
                    f"differs from the input of worker {receiver.worker_id} (stage {receiver.stage}); no signed "
                    f"header settles which one is false",
                    workers=[sender.worker_id, receiver.worker_id],
                    **where,
                )
