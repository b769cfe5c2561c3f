"""The ``replicate`` check: the copies of a replica compute every unit of every stage, and the
coordinator compares their receipts unit by unit.

Honest copies of one replica read the same data, start from the same weights and apply the same
update, so they commit to bit-identical outputs (bitwise comparison assumes identical hardware
with deterministic algorithms, as everywhere in this runtime). For each unit the copies that
received from other workers what most copies received (the activation, and for a backward unit the
gradient) are compared on what they answer for themselves: the weights they computed with, the data
they read (stage 0's token ids, the last stage's targets) and the output. A copy that received
something else computed on what a tampering copy in its own pipeline sent it, so it is neither
compared nor blamed for that unit (the sender's unit is). When the compared copies disagree:

* ``majority``: a copy whose output differs from the one a strict majority of the compared copies
  holds is blamed; with no strict majority (two copies that disagree, say) every compared copy is
  blamed, as the prover assumes of a tie;
* ``referee``: the coordinator re-executes the unit of every compared copy from its committed
  inputs and weights (:meth:`~stagewarden.runtime.coordinator.reexecution.Reexecution.check_unit`)
  and blames each copy whose re-execution does not give its receipt's output.

One detection is made per blamed copy (its first blamed unit, forward units in stage order, then
backward units from the last stage down). A copy's update is compared after the update, with the
state the pipelines of its stage hold (:mod:`~stagewarden.runtime.coordinator.replicas`).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from stagewarden.attest.receipts import Receipt, UnitKind, receipt_digest
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import RunContext
from stagewarden.runtime.coordinator.replicas import outvoted

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.accusations import DetectionSigner
    from stagewarden.runtime.coordinator.reexecution import Reexecution
    from stagewarden.runtime.coordinator.roster import Roster


class CopyComparison:
    """Compares the copies' receipts of a step (see the module docstring)."""

    def __init__(self, ctx: RunContext, roster: Roster, signer: DetectionSigner, reexec: Reexecution) -> None:
        self.ctx, self.roster, self.signer, self.reexec = ctx, roster, signer, reexec

    def compare(self, commit: StepCommit, already: list[SignedDetection]) -> list[SignedDetection]:
        """The detections of one step's comparison; ``already`` are the link checks' (a worker
        they blamed is not blamed again)."""
        c, layout = self.ctx.config, self.roster.layout
        blamed = {d.worker for d in already}
        found: list[SignedDetection] = []
        order = [(UnitKind.FORWARD, s) for s in range(c.stages)]
        order += [(UnitKind.BACKWARD, s) for s in reversed(range(c.stages))]
        for replica in range(layout.replicas):
            for kind, stage in order:
                copies = [
                    q
                    for q in layout.copies_of(layout.slot(stage, replica * layout.copies))
                    if q in commit.receipts and self.roster.slot_ids[q] not in blamed
                ]
                if len(copies) < 2:  # one copy left: nothing to compare it with
                    continue
                for m in range(c.microbatches):
                    for q, why, receipt in self._unit(commit, copies, m, kind):
                        worker = self.roster.slot_ids[q]
                        if worker in blamed:
                            continue
                        blamed.add(worker)
                        evidence = receipt_digest(receipt)
                        found.append(self.signer.detection(commit.step, m, str(kind), q, "replicate", why, evidence))
        return found

    def _inputs(self, commit: StepCommit, q: int, m: int, kind: UnitKind) -> tuple[bytes, ...]:
        """What ``q``'s unit received from other workers, as its receipts commit to it: the
        activation of the micro-batch (after stage 0) and, for a backward unit, the gradient
        (before the last stage). Stage 0's backward output is the gradients accumulated over the
        micro-batches so far, so for it what every micro-batch up to ``m`` received."""
        layout = self.roster.layout
        stage = layout.stage(q)
        first = [m] if kind is UnitKind.FORWARD or stage > 0 else list(range(m + 1))
        parts: list[bytes] = []
        for n in first:
            forward = commit.receipt(q, n, UnitKind.FORWARD)
            if stage > 0:
                parts.append(forward.input_digest if forward is not None else b"")
            if kind is UnitKind.BACKWARD and not layout.is_last(q):
                backward = commit.receipt(q, n, UnitKind.BACKWARD)
                parts.append(backward.input_digest if backward is not None else b"")
        return tuple(parts)

    def _value(self, receipt: Receipt) -> tuple[bytes, ...]:
        """What the copies of a unit must agree on once they received the same: the weights they
        computed with, the data they read themselves (stage 0's token ids, the last stage's
        targets) and the output."""
        return (receipt.weights_digest, receipt.input_digest, receipt.output_digest)

    def _unit(self, commit: StepCommit, copies: list[int], m: int, kind: UnitKind) -> list[tuple[int, str, Receipt]]:
        """The copies blamed for one unit, each with why and its receipt."""
        layout = self.roster.layout
        receipts = {q: r for q in copies if (r := commit.receipt(q, m, kind)) is not None}
        received = {q: self._inputs(commit, q, m, kind) for q in receipts}
        inputs = Counter(received.values())
        if not inputs:
            return []
        consensus, holders = inputs.most_common(1)[0]
        if holders < 2:
            return []  # every copy computed on another input: the units upstream disagree
        compared = {q: r for q, r in receipts.items() if received[q] == consensus}
        outputs = {q: self._value(r) for q, r in compared.items()}
        if len(set(outputs.values())) <= 1:
            return []
        stage = layout.stage(copies[0])
        what = f"stage {stage}'s {kind} unit of micro-batch {m} (replica {layout.replica(copies[0])})"
        if self.ctx.config.replicate_resolve == "referee":
            out = []
            for q, receipt in sorted(compared.items()):
                wrong = self.reexec.check_unit(commit, q, m, str(kind))
                if wrong:
                    why = (
                        f"copy {layout.copy(q)} committed another output of {what} than its copies; the coordinator's "
                        f"re-execution (referee) does not give it: {wrong[0].message}"
                    )
                    out.append((q, why, receipt))
            return out
        losers = outvoted(outputs)
        tie = len(losers) == len(outputs)
        out = []
        for q in losers:
            if tie:
                why = (
                    f"the {len(outputs)} copies that computed {what} on the same input disagree and no output holds "
                    f"a majority: every one of them is blamed (copy {layout.copy(q)})"
                )
            else:
                why = (
                    f"copy {layout.copy(q)} committed another output of {what} than the majority of the "
                    f"{len(outputs)} copies that computed it on the same input"
                )
            out.append((q, why, compared[q]))
        return out
