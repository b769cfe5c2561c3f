"""What the coordinator checks across pipelines: the gradient contributions each worker must
aggregate, and that the pipelines of a stage hold the same state after every update.

Every computing pipeline of a stage applies the same aggregated update from the same state, so
honest workers of one stage report bit-identical weights and optimizer-state digests after it (on
identical hardware with deterministic algorithms, as bitwise comparison assumes everywhere). A
worker whose state differs from that of a strict majority of its stage's slots is blamed
(``replica_state``); when no value holds a strict majority, nobody can be told apart and every slot
of the stage whose state differs from another's is blamed, as a ``replicate`` tie is. Under
``replicate`` with a ``referee``, the coordinator re-executes the update of every slot of a stage
whose states disagree instead, and blames the slots whose update does not re-execute to what they
committed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from stagewarden.attest.receipts import Receipt, receipt_digest
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import RunContext
from stagewarden.runtime.protocol import Update, UpdateCommitment

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.accusations import DetectionSigner
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.reexecution import Reexecution
    from stagewarden.runtime.coordinator.roster import Roster


def outvoted(values: Mapping[int, Hashable]) -> list[int]:
    """The keys whose value differs from what a strict majority of ``values`` holds; every key when
    the values differ and none holds a strict majority (a tie); none when all agree."""
    counts = Counter(values.values())
    if len(counts) <= 1:
        return []
    value, count = counts.most_common(1)[0]
    if 2 * count > len(values):
        return sorted(k for k, v in values.items() if v != value)
    return sorted(values)


class ReplicaChecks:
    """The cross-pipeline part of a step: the ``update`` messages and the state agreement."""

    def __init__(
        self, ctx: RunContext, roster: Roster, ledger: Ledger, signer: DetectionSigner, reexec: Reexecution
    ) -> None:
        self.ctx, self.roster, self.ledger, self.signer, self.reexec = ctx, roster, ledger, signer, reexec

    def update_message(self, step: int, slot: int, commit: StepCommit) -> Update:
        """The ``update`` for ``slot``: with replicas, the contributions its group committed to, in
        replica order."""
        group = self.roster.group(slot)
        if len(group) == 1:
            return Update(step)
        return Update(step, tuple(commit.contributions[q] for q in group))

    def updated_entry(self, slot: int, optimizer: str, reported: UpdateCommitment) -> dict[str, Any]:
        """What the ``updated`` event records of ``slot``'s update: the weights and optimizer state
        after it and, with replicas, the optimizer state before it and the gradient trace it
        started from (the contributions' commitment and the aggregate among it), which with the
        update receipt let the audit recompute the aggregate's commitment from the group's
        contributions."""
        entry: dict[str, Any] = {"weights": self.ledger.final_weights[slot], "optimizer": optimizer}
        if len(self.roster.group(slot)) > 1:
            entry["optimizer_before"] = reported.optimizer_before.hex()
            entry["trace"] = [d.hex() for d in reported.grads_trace]
        return entry

    def _refereed(self) -> bool:
        c = self.ctx.config
        return c.verification == "replicate" and c.replicate_resolve == "referee" and c.receipts

    def _referee_update(self, q: int, step: int, receipt: Receipt, commit: StepCommit) -> list[SignedDetection]:
        """Re-execute ``q``'s update of ``step`` and, when it gives what the update committed to,
        the backward units along the gradient trace it started from."""
        found = self.reexec.check_update(q, step, receipt)
        for m in range(self.ctx.config.microbatches):
            if found:
                break
            found = self.reexec.check_unit(commit, q, m, "backward")
        return found

    def check_state(
        self, step: int, slots: list[int], receipts: Mapping[int, Receipt], commit: StepCommit
    ) -> list[SignedDetection]:
        """After the update of ``step`` (of ``commit``): every updated slot of a stage must report
        the state the others do (weights and, with receipts, optimizer-state digests); one detection per slot
        outvoted (see the module docstring)."""
        layout, found = self.roster.layout, []
        by_stage: dict[int, list[int]] = {}
        for q in slots:
            by_stage.setdefault(layout.stage(q), []).append(q)
        for stage, members in sorted(by_stage.items()):
            if len(members) < 2:
                continue
            states = {q: (self.ledger.final_weights.get(q), self.ledger.optimizer.get(q)) for q in members}
            if self._refereed() and len(set(states.values())) > 1:
                for q in members:
                    if q in receipts:
                        found += self._referee_update(q, step, receipts[q], commit)
                continue
            for q in outvoted(states):
                receipt = receipts.get(q)
                message = (
                    f"worker {self.roster.slot_ids[q]} (stage {stage}, {layout.name(q)}) holds another state after its "
                    f"update of step {step} than the other pipelines of its stage"
                )
                evidence = receipt_digest(receipt) if receipt is not None else b""
                found.append(self.signer.detection(step, 0, "update", q, "replica_state", message, evidence))
        return found
