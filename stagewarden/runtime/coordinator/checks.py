"""The checks of a step's commitments: links between adjacent stages, the weights and optimizer
chain of every stage, the redundant-neighbour reports (adjudicated by re-execution) and the draw of
the spot-check sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stagewarden.attest.errors import AttestError
from stagewarden.attest.headers import TransferKind, parse_header, verify_header
from stagewarden.attest.receipts import Receipt, UnitKind, receipt_digest
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.attest.tensor_digest import (
    aggregate_commitment,
    gradient_trace_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import CurrentAttempt, RunContext
from stagewarden.runtime.coordinator.copies import CopyComparison
from stagewarden.runtime.protocol import CheckReport, UpdateCommitment
from stagewarden.runtime.spotcheck import (
    receipts_digest,
    sample_units,
)
from stagewarden.runtime.transport import (
    TransportError,
)

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.accusations import DetectionSigner
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.reexecution import Reexecution
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


class Checks:
    """Turns a step's commitments into detections."""

    def __init__(
        self,
        ctx: RunContext,
        roster: Roster,
        ledger: Ledger,
        tally: RunTally,
        signer: DetectionSigner,
        reexec: Reexecution,
        current: CurrentAttempt,
    ) -> None:
        self.ctx, self.roster, self.ledger, self.tally = ctx, roster, ledger, tally
        self.signer, self.reexec, self.current = signer, reexec, current
        self.copies = CopyComparison(ctx, roster, signer, reexec)

    def accept_update(
        self, s: int, step: int, receipt: Receipt, weights: bytes, reported: UpdateCommitment, commit: StepCommit
    ) -> list[SignedDetection]:
        """Take stage ``s``'s update receipt of ``step``: the digests its message reports (the
        gradient trace, the optimizer state before and after, the weights after) must be the ones
        the receipt commits to, and the optimizer state before must be the one the stage's previous
        update receipt committed to after it (or that of the checkpoint it loaded), as must the
        weights before (see ``check_weights_chain``); return a detection when they are not: a
        state changed between updates is not the optimizer's work.
        Stage 0's backward receipts commit to its accumulated gradients themselves, so its
        gradient trace must be theirs, in micro-batch order."""
        c, wid, layout = self.ctx.config, self.roster.slot_ids[s], self.roster.layout
        trace, before, after = list(reported.grads_trace), reported.optimizer_before, reported.optimizer
        group = self.roster.group(s)
        aggregated = len(group) > 1  # the trace ends with the aggregate's commitment and digest
        if len(trace) != c.microbatches + 2 * aggregated:
            raise TransportError(f"worker {wid}'s update reports a gradient trace of {len(trace)} entries")
        if (
            update_input_digest(gradient_trace_digest(trace), before) != receipt.input_digest
            or update_output_digest(weights, after) != receipt.output_digest
        ):
            raise TransportError(f"worker {wid}'s update report does not match the digests of its update receipt")
        expected = self.ledger.optimizer[s]
        found = []

        def detection(check: str, message: str) -> None:
            found.append(self.signer.detection(step, 0, "update", s, check, message, receipt_digest(receipt)))

        if before.hex() != expected:
            detection(
                "optimizer_state",
                f"stage {s}'s update of step {step} starts from another optimizer state than its last update "
                "or checkpoint left",
            )
        if receipt.weights_digest.hex() != self.ledger.expected_weights(s):
            detection(
                "weights",
                f"stage {s}'s update of step {step} starts from other weights than its last update or checkpoint left",
            )
        if layout.stage(s) == 0 and self.ledger.backward_outputs(commit, s) != trace[: c.microbatches]:
            detection(
                "gradient_trace",
                f"stage 0's update of step {step} commits to other accumulated gradients than its backward receipts",
            )
        if aggregated and commit.contributions.get(s) != trace[c.microbatches - 1]:
            detection(
                "contribution",
                f"worker {wid} sent its stage's other replicas another gradient contribution in step {step} than "
                "the accumulated gradients its update receipt commits to",
            )
        if aggregated and trace[c.microbatches] != aggregate_commitment(
            c.aggregation, [commit.contributions.get(q, b"") or bytes(32) for q in group]
        ):
            detection(
                "aggregate",
                f"worker {wid}'s update of step {step} commits to aggregating other contributions (or under "
                f"another rule) than the {c.aggregation} of those its group committed to",
            )
        self.ledger.undo[s] = (step, expected, self.ledger.expected_weights(s))
        self.ledger.optimizer[s], self.ledger.weights[s] = after.hex(), weights.hex()
        self.ledger.last_updates[s] = (receipt, weights)
        self.ledger.traces.setdefault(step, {})[s] = trace
        return found

    def check_links(self, commit: StepCommit) -> list[SignedDetection]:
        """Check that adjacent stages agree on the tensors they exchanged and that the received
        signed headers match the senders' receipts, and that every stage computed with the weights
        it was left with (``check_weights_chain``); return one detection per disagreement.

        The sender is blamed: its signed header (checked by ``Commitments.accept_header`` when the
        commitment arrived) proves what it sent, so a sender whose receipt
        commits to another tensor than the one it signed and sent (an equivocation) is caught
        here, and a receiver whose receipt commits to another input than the signed header it
        holds is blamed for that."""
        c = self.ctx.config
        if not c.receipts:
            return []
        found: list[SignedDetection] = []
        layout = self.roster.layout
        pipelines: dict[int, list[int]] = {}
        for q in sorted(commit.receipts):
            pipelines.setdefault(layout.pipeline(q), []).append(q)
        pairs = [pair for slots in pipelines.values() for pair in zip(slots, slots[1:], strict=False)]
        for s, r in pairs:
            for m in range(c.microbatches):
                for kind, sender, receiver, transfer in (
                    (UnitKind.FORWARD, s, r, TransferKind.ACTIVATION),
                    (UnitKind.BACKWARD, r, s, TransferKind.GRADIENT),
                ):
                    out = commit.receipt(sender, m, kind)
                    inp = commit.receipt(receiver, m, kind)
                    header = next(
                        (h for h in commit.headers.get(receiver, []) if h.micro_batch == m and h.kind is transfer), None
                    )
                    unit = str(kind)
                    if out is None or inp is None:
                        culprit = sender if out is None else receiver
                        found.append(
                            self.signer.detection(
                                commit.step, m, unit, culprit, "missing_receipt", "a committed receipt is missing", b""
                            )
                        )
                        continue
                    if header is None or header.tensor.digest != out.output_digest:
                        found.append(
                            self.signer.detection(
                                commit.step,
                                m,
                                unit,
                                sender,
                                "header",
                                f"stage {sender} signed and sent a {transfer} to stage {receiver} that differs "
                                f"from the one its receipt commits to (equivocation)",
                                receipt_digest(out),
                            )
                        )
                    elif out.output_digest != inp.input_digest:
                        found.append(
                            self.signer.detection(
                                commit.step,
                                m,
                                unit,
                                receiver,
                                "link",
                                f"stage {receiver}'s receipt commits to another {kind} input than the signed "
                                f"{transfer} stage {sender} sent",
                                receipt_digest(inp),
                            )
                        )
        return found + self.check_weights_chain(commit)

    def check_weights_chain(self, commit: StepCommit) -> list[SignedDetection]:
        """Every receipt of a step must commit to the weights the stage's last update receipt
        committed to (or its checkpoint's, or its initial weights): one detection (check
        ``weights``) per stage whose receipts name others (a bypassed stage's weights are unused).
        A worker that changed its weights between steps computes honestly with them, so
        re-executing its units cannot see it."""
        found: list[SignedDetection] = []
        for s in sorted(commit.receipts):
            if self.roster.layout.stage(s) == self.current.bypass:  # its blocks act as the identity
                continue
            expected = self.ledger.expected_weights(s)
            other = next((r for r in commit.receipts[s] if r.weights_digest.hex() != expected), None)
            if other is not None:
                message = (
                    f"stage {s} computed step {commit.step} with other weights than its last update or checkpoint left"
                )
                found.append(
                    self.signer.detection(
                        commit.step, other.micro_batch, str(other.kind), s, "weights", message, receipt_digest(other)
                    )
                )
        return found

    def verify_step(
        self, step: int, commit: StepCommit, already: list[SignedDetection] | None = None
    ) -> list[SignedDetection]:
        """The verification hook, called after every commitment and before the update.

        ``already`` are the detections the link checks made for this commitment. With
        ``verification = "none"`` it checks nothing. With ``redundant_neighbour`` it adjudicates
        the failed checks the checking stages report (:meth:`adjudicate`). With ``spot_check`` the
        sample is drawn after the update receipts (:meth:`draw_sample`). A bypassed stage must
        pass every tensor on unchanged. Returns the detections.
        """
        if self.ctx.config.verification == "redundant_neighbour":
            return self.adjudicate(commit, already or [])
        if self.ctx.config.verification == "replicate":
            return self.copies.compare(commit, already or [])
        return []

    def draw_sample(self, commit: StepCommit, updates: dict[int, Receipt]) -> list[tuple[int, int, str]]:
        """With ``spot_check``: reveal the secret committed before the step, derive the sampling
        randomness from it and every receipt of the step (forward and backward in ``commit``,
        the update receipts in ``updates``), sample the units (forward, backward and update of
        every running stage and micro-batch, each with probability ``spot_check_rate``) and
        return the sample: the workers push the sampled units, and :meth:`~.Reexecution.check_unit` and
        :meth:`~.Reexecution.check_update` check them. Otherwise nothing is sampled."""
        c, step, bypass = self.ctx.config, commit.step, self.current.bypass
        if c.verification != "spot_check" or self.current.seed is None:
            return []
        seed = self.current.seed
        digests = [receipt_digest(r) for s in sorted(commit.receipts) for r in commit.receipts[s]]
        digests += [receipt_digest(updates[s]) for s in sorted(updates)]
        committed = receipts_digest(digests)
        units = [
            (s, m, kind)
            for s in sorted(commit.receipts)
            if self.roster.layout.stage(s) != bypass
            for m in range(c.microbatches)
            for kind in ("forward", "backward", "update")
            if kind != "update" or m == 0
        ]
        sampled = sample_units(units, c.spot_check_rate, seed.randomness(committed))
        self.ctx.events.write(
            "spot_check_reveal",
            step=step,
            secret=seed.secret.hex(),
            receipts_digest=committed.hex(),
            sampled=[self._sampled(s, m, k) for s, m, k in sampled],
        )
        self.tally.spot["units_sampled"] += len(sampled)
        return sampled

    def _sampled(self, slot: int, micro_batch: int, kind: str) -> dict[str, int | str]:
        """A sampled unit as the reveal event records it (its pipeline too when there are several)."""
        layout = self.roster.layout
        unit: dict[str, int | str] = {"stage": layout.stage(slot), "micro_batch": micro_batch, "kind": kind}
        if layout.pipelines > 1:
            unit["replica"] = layout.pipeline(slot)
        return unit

    def adjudicate(self, commit: StepCommit, already: list[SignedDetection]) -> list[SignedDetection]:
        """Turn the failed redundant-neighbour checks of a step into detections.

        A report is about the unit of stage ``s`` that its checker ``s + 1`` recomputed. With
        receipts on, the coordinator is the referee: it re-executes the accused unit from its
        committed inputs and weights (:meth:`~.Reexecution.check_unit`); a unit whose re-execution gives its
        receipt's output was computed honestly (and the link checks tie the receipt to what was
        sent) with the weights it committed to; if those weights are the output of the stage's
        previous update, the coordinator re-executes that update too, and
        only when both agree is the accuser blamed (``false_accusation``). Without receipts nothing can be
        re-executed and the checker is believed, as in the paper's defence. A report on a unit the
        link checks already blamed is not adjudicated again.
        """
        c, step, found = self.ctx.config, commit.step, []
        blamed: set[tuple[int, int, str]] = {(d.stage, d.microbatch, d.unit_kind) for d in already}
        for checker, reports in sorted(commit.checks.items()):
            self.tally.neighbour["units_checked"] += commit.checks_run.get(checker, 0)
            for report in reports:
                s, m, kind, diff = report.checked, report.microbatch, report.unit_kind, report.max_abs_diff
                if (
                    s != checker - 1
                    or not self.current.route.checked(s)
                    or report.step != step
                    or not 0 <= m < c.microbatches
                ):
                    raise TransportError(
                        f"stage {checker} reported a check of a unit it does not check: {report.to_wire()}"
                    )
                self.tally.neighbour["mismatches_reported"] += 1
                if (s, m, kind) in blamed or (self.current.route.before(s), m, "forward") in blamed:
                    # already convicted, or explained by the upstream stage's conviction (the
                    # replica's backward of a micro-batch follows from its forward)
                    continue
                claim = (
                    f"stage {checker} recomputed stage {s}'s {kind} unit and got another result (max |diff| {diff:g})"
                )
                receipt = commit.receipt(s, m, UnitKind(kind))
                if not c.receipts or receipt is None:
                    self.tally.neighbour["unadjudicated"] += 1
                    evidence = bytes.fromhex(report.evidence_digest)
                    found.append(self.signer.detection(step, m, kind, s, "redundant_neighbour", claim, evidence))
                    continue
                equivocation = self._relayed_equivocation(report, s, m, step, receipt)
                if equivocation is not None:
                    found.append(equivocation)
                    blamed.add((self.current.route.before(s), m, "forward"))
                    continue
                confirmed = self.reexec.check_unit(commit, s, m, kind)
                settled = True
                if not confirmed:  # the unit follows from its weights: were those weights honest?
                    confirmed, settled = self._check_weights(s, step, receipt)
                if not settled:
                    self.tally.neighbour["unadjudicated"] += 1
                    found.append(
                        self.signer.detection(step, m, kind, s, "redundant_neighbour", claim, receipt_digest(receipt))
                    )
                elif confirmed:
                    self.tally.neighbour["confirmed"] += 1
                    found.append(
                        self.signer.detection(
                            step,
                            m,
                            kind,
                            s,
                            "redundant_neighbour",
                            f"{claim}; the coordinator's re-execution confirms it: {confirmed[0].message}",
                            receipt_digest(receipt),
                        )
                    )
                else:
                    self.tally.neighbour["false_accusations"] += 1
                    found.append(
                        self.signer.detection(
                            step,
                            m,
                            kind,
                            checker,
                            "false_accusation",
                            f"{claim}, but the coordinator's re-execution of the unit from its committed inputs "
                            f"and weights gives the output stage {s}'s receipt commits to: the accusation is false",
                            receipt_digest(receipt),
                        )
                    )
                blamed.add((s, m, kind))
        return found

    def _relayed_equivocation(
        self, report: CheckReport, s: int, m: int, step: int, receipt: Receipt
    ) -> SignedDetection | None:
        """A detection of stage ``s - 1`` when the input copy its checker recomputed from (the
        ``input_header`` of the report, signed by ``s - 1``) commits to another activation than
        the one ``s``'s receipt says it received: ``s - 1`` signed two activations for one transfer."""
        raw = report.input_header
        if raw is None or s < 1:
            return None
        before = self.current.route.before(s)
        upstream = self.roster.slot_ids[before]
        try:
            header = parse_header(raw)
            verify_header(header, self.roster.keys[upstream])
        except (ValueError, AttestError):
            return None  # not evidence against s - 1: the report is judged on its own
        if (header.sender, header.receiver_stage, header.step, header.micro_batch, header.kind) != (
            upstream,
            s,
            step,
            m,
            TransferKind.ACTIVATION,
        ) or header.tensor.digest == receipt.input_digest:
            return None
        message = (
            f"stage {before} signed two activations for micro-batch {m}: the one stage {s} computed on and "
            f"another relayed to stage {s + 1}, stage {s}'s checker (equivocation)"
        )
        return self.signer.detection(step, m, "forward", before, "equivocation", message, receipt_digest(receipt))

    def _check_weights(self, s: int, step: int, receipt: Receipt) -> tuple[list[SignedDetection], bool]:
        """Whether the weights stage ``s`` committed to at ``step`` are honest: the detections, and
        whether the question could be settled. Weights never updated since the measured initial
        weights or the last verified checkpoint are honest; otherwise they must be the output of
        the update receipt of ``step - 1``, whose re-execution (:meth:`~.Reexecution.check_update`) must agree,
        and the gradients that update started from must be honest: every backward unit of
        ``step - 1`` is re-executed along the stage's gradient trace (:meth:`~.Reexecution.check_unit`, with
        FETCH). After a recomputation that went back past an update, the question cannot be settled."""
        latest = self.ledger.last_updates.get(s)
        if latest is None:
            return [], True
        last, weights = latest
        if last.step != step - 1:
            return [], False
        if weights != receipt.weights_digest:
            message = f"stage {s} computed step {step} with other weights than its update of step {step - 1} produced"
            return [self.signer.detection(step, 0, "update", s, "weights", message, receipt_digest(last))], True
        found = self.reexec.check_update(s, step - 1, last)
        if found:
            return found, True
        previous = self.ledger.updated_commits.get(step - 1)
        if previous is None:
            return [], False
        for m in range(self.ctx.config.microbatches):
            found = self.reexec.check_unit(previous, s, m, "backward")
            if found:
                return found, True
        return [], True
