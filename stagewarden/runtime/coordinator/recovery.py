"""Responses to a detection: planning one and carrying it out (eject, rollback with the
convict's receipt audit, restart, skip_stage)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from stagewarden.attest.audit_plans import declared_bypasses, route_neighbour
from stagewarden.attest.errors import AttestError
from stagewarden.attest.headers import TransferKind
from stagewarden.attest.receipt_log import RecordType, read_log
from stagewarden.attest.receipts import Receipt, UnitKind, chain_genesis, parse_receipt, receipt_digest, verify_receipt
from stagewarden.attest.run_record_parts import SignedDetection, UnitKindName
from stagewarden.attest.rundir import LOG_FILE
from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.checkpoints import CheckpointStore
from stagewarden.runtime.coordinator.context import CARRIED_OUT, RunContext
from stagewarden.runtime.coordinator.errors import RunFailed, TrainingStopped
from stagewarden.runtime.coordinator.ledger import Ledger
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.coordinator.tally import RunTally
from stagewarden.runtime.protocol import Restore, Restored, receive, send_message
from stagewarden.runtime.responses import (
    ReceiptRef,
    Response,
    ResponseError,
    ResponsePlan,
    RunState,
    can_skip,
    plan_response,
)
from stagewarden.runtime.transport import (
    TransportError,
)


class Recovery:
    """Carries out the configured response to a detection."""

    def __init__(
        self,
        ctx: RunContext,
        roster: Roster,
        ledger: Ledger,
        tally: RunTally,
        store: CheckpointStore,
        admission: Admission,
    ) -> None:
        self.ctx, self.roster, self.ledger, self.tally = ctx, roster, ledger, tally
        self.store, self.admission = store, admission
        self._rollbacks: dict[int, int] = {}

    def respond(self, step: int, attempt: int, detection: SignedDetection) -> ResponsePlan:
        """Answer a detection: plan the response and carry it out. ``restart`` and ``skip_stage``
        restore every stage to the state before ``step`` (the plan's ``bypass_stage`` runs as the
        identity in the recomputation); ``eject`` hands the convict's stage to a standby and
        restores every stage to the plan's checkpoint (:meth:`eject`); ``rollback`` audits the
        convict's receipts and returns every stage to the checkpoint before its first tampered step
        (:meth:`rollback`).

        Raises:
            RunFailed: The response cannot be carried out.
        """
        c = self.ctx.config
        self.store.finish()  # a response plans with the checkpoints written so far
        if c.response == Response.ROLLBACK:
            return self.rollback(step, attempt, detection)
        state = RunState(
            num_stages=c.stages,
            step=step,
            workers=self._pipeline_of(detection.worker),
            standbys=tuple(self.roster.standby_ids[k] for k in self.roster.free_standbys),
            checkpoints=tuple(self.store.steps),
        )
        try:
            plan = plan_response(c.response, detection, state)
        except ResponseError as exc:
            raise RunFailed(f"cannot respond to the detection at step {step}: {exc}") from None
        if self._retires(state):
            checkpoint = max((t for t in state.checkpoints if t <= detection.step), default=0)
            plan = self._retirement(plan, detection, checkpoint)
        if plan.response not in CARRIED_OUT:
            raise TrainingStopped(f"the {plan.response} response is not carried out by this runtime; training stops")
        record = {"step": step, "attempt": attempt, "plan": plan.to_json(), "detection": detection.to_json()}
        self.tally.responses.append(record)
        self.ctx.events.write("response", **record)
        if plan.retired_pipeline is not None:
            self.retire(plan)
            self.tally.spot["recomputations"] += 1
            return plan
        if plan.response is Response.EJECT:
            self.eject(plan, step)
            return plan
        for s in self.roster.slots:
            send_message(self.ctx.transport, self.roster.rank_of(s), Restore(step))
        for s in self.roster.slots:
            restored = receive(self.ctx.transport, self.roster.rank_of(s), Restored)
            if restored.step != step:
                raise TransportError(f"worker {self.roster.slot_ids[s]} restored step {restored.step}, not {step}")
            self.ledger.final_weights[s] = restored.weights.hex()
            undo = self.ledger.undo.pop(s, None)
            if undo is not None and undo[0] == step:  # the stage's update of the step is taken back
                _, self.ledger.optimizer[s], self.ledger.weights[s] = undo
        self.tally.spot["recomputations"] += 1
        return plan

    def eject(self, plan: ResponsePlan, step: int) -> None:
        """Carry out an eject: release the convict, hand its stage to the standby (which builds it),
        tell every stage the new rank map and the standby's attested key, restore every stage to
        the plan's checkpoint and record the replacement (the standby's receipts chain under its
        own worker id from the checkpoint's step on)."""
        assert plan.standby is not None and plan.checkpoint_step is not None
        self._replace(plan, step, plan.standby, plan.checkpoint_step)
        self.tally.spot["recomputations"] += 1

    def _replace(self, plan: ResponsePlan, step: int, standby: str, checkpoint: int) -> None:
        """Hand the convict's slot to ``standby``, restore every slot to ``checkpoint``, record the
        replacement and calibrate the standby."""
        slot = self.roster.slot_ids.index(plan.convict)
        rank = self.roster.hand_over(slot, standby)
        self.store.restore(checkpoint)
        self.roster.record_replacement(plan, step, rank)
        self.admission.calibrate([slot])

    def _pipeline_of(self, worker: str) -> dict[int, str]:
        """The workers of the pipeline ``worker`` serves in, by stage (what a plan is made from)."""
        if worker not in self.roster.slot_ids:
            return {}
        slot = self.roster.slot_ids.index(worker)
        layout = self.roster.layout
        return {layout.stage(q): self.roster.slot_ids[q] for q in layout.of_pipeline(layout.pipeline(slot))}

    def _retires(self, state: RunState) -> bool:
        """Whether a convict leaves the run with its pipeline: several pipelines compute, the
        response removes the convict (eject, rollback) and no standby is free to replace it."""
        removes = self.ctx.config.response in (Response.EJECT, Response.ROLLBACK)
        return removes and self.roster.layout.pipelines > 1 and not state.standbys

    def _retirement(self, plan: ResponsePlan, detection: SignedDetection, checkpoint: int) -> ResponsePlan:
        """``plan`` turned into taking the convict's pipeline out of the run, every other pipeline
        restoring ``checkpoint``.

        Raises:
            TrainingStopped: No other pipeline is left to compute.
        """
        layout = self.roster.layout
        pipeline = layout.pipeline(self.roster.slot_ids.index(detection.worker))
        left = [p for p in range(layout.pipelines) if p != pipeline and p not in self.roster.retired]
        if not left:
            raise TrainingStopped(
                f"worker {detection.worker} is convicted ({detection.check} at step {detection.step}), no standby "
                "is left to take its slot and no other pipeline is left to compute; training stops"
            )
        what = f"replica {layout.replica(layout.slot(0, pipeline))}"
        if layout.copies > 1:
            what += f" copy {layout.copy(layout.slot(0, pipeline))}"
        return dataclasses.replace(
            plan,
            response=Response(self.ctx.config.response),
            redo_from_step=checkpoint,
            checkpoint_step=checkpoint,
            standby=None,
            ejected=detection.worker,
            bypass_stage=None,
            frozen_stages=(),
            fallback_from=None,
            retired_pipeline=pipeline,
            reason=f"no standby to take its slot: its pipeline ({what}) leaves the run and the other "
            f"{len(left)} restore step {checkpoint}",
        )

    def retire(self, plan: ResponsePlan) -> None:
        """Carry out a retirement: send the convict's pipeline home and restore every other
        pipeline to the plan's checkpoint."""
        assert plan.retired_pipeline is not None and plan.checkpoint_step is not None
        self.roster.retire(plan.retired_pipeline)
        self.ctx.events.write("pipeline_retired", pipeline=plan.retired_pipeline, worker=plan.convict)
        self.store.restore(plan.checkpoint_step)

    def rollback(self, step: int, attempt: int, detection: SignedDetection) -> ResponsePlan:
        """Carry out a rollback: audit the convict's logged receipts (:meth:`audit_receipts`), plan
        the return to the latest verified checkpoint at or before its first tampered step (the
        detected step, or an earlier one the audit found), drop the checkpoints after it, then
        hand the convict's stage to a free standby as :meth:`eject` does, or else bypass the stage
        for the first recomputed step as ``skip_stage`` does (a middle stage only), and restore
        every stage to the checkpoint.

        Raises:
            RunFailed: The rollback cannot be planned or carried out.
        """
        c = self.ctx.config
        count = self._rollbacks.get(step, 0) + 1
        if count > c.max_recomputations:
            raise TrainingStopped(
                f"step {step} was tampered with after each of its {c.max_recomputations} rollbacks (last: stage "
                f"{detection.stage}, {detection.check}); the rollback response does not remove this attacker"
            )
        self._rollbacks[step] = count
        try:
            receipts, findings = self.audit_receipts(detection.worker)
            state = RunState(
                num_stages=c.stages,
                step=step,
                workers=self._pipeline_of(detection.worker),
                standbys=tuple(self.roster.standby_ids[k] for k in self.roster.free_standbys),
                checkpoints=tuple(self.store.steps),
                receipts=tuple(
                    ReceiptRef(r.worker_id, r.stage, r.step, r.micro_batch, cast(UnitKindName, str(r.kind)))
                    for r in receipts
                ),
            )
            plan = plan_response(Response.ROLLBACK, detection, state)
            first = min((f["step"] for f in findings), default=step)
            replanned_from = None
            if first < step:  # the audit found an earlier tampered step: go back before it
                replanned_from = plan.checkpoint_step
                plan = plan_response(Response.ROLLBACK, detection, state, first_tampered_step=first)
        except ResponseError as exc:
            raise RunFailed(f"cannot respond to the detection at step {step}: {exc}") from None
        assert plan.checkpoint_step is not None
        back = plan.checkpoint_step
        standby = state.standbys[0] if state.standbys else None
        if self._retires(state):
            plan = self._retirement(plan, detection, back)
        elif standby is not None:
            plan = dataclasses.replace(
                plan,
                standby=standby,
                ejected=plan.convict,
                reason=f"{plan.reason}; standby {standby} takes stage {plan.stage}",
            )
        elif can_skip(plan.stage, c.stages):
            plan = dataclasses.replace(
                plan,
                bypass_stage=plan.stage,
                frozen_stages=(plan.stage,),
                reason=f"{plan.reason}; no standby: step {back} is recomputed with stage {plan.stage} bypassed",
            )
        audit = {
            "window": [
                {
                    "step": r.step,
                    "micro_batch": r.micro_batch,
                    "unit_kind": str(r.kind),
                    "digest": receipt_digest(r).hex(),
                }
                for r in receipts
                if back <= r.step <= step
            ],
            "receipts_checked": len(receipts),
            "findings": findings,
            "first_tampered_step": min(first, step),
            "replanned_from": replanned_from,
        }
        record = {
            "step": step,
            "attempt": attempt,
            "plan": plan.to_json(),
            "detection": detection.to_json(),
            "audit": audit,
        }
        self.tally.responses.append(record)
        self.ctx.events.write("response", **record)
        self.store.discard_after(back)
        if plan.retired_pipeline is not None:
            self.retire(plan)
        elif standby is not None:
            self._replace(plan, step, standby, back)
        else:  # the engine bypasses plan.bypass_stage in the first recomputed step
            self.store.restore(back)
        self.tally.spot["recomputations"] += 1
        return plan

    def audit_receipts(self, worker: str) -> tuple[list[Receipt], list[dict[str, Any]]]:
        """Audit ``worker``'s receipts in the receipt log as the offline auditor would: the signature
        of each under the worker's attested key, its hash chain from its genesis, and the links
        of the receipts that count (the last computation of each unit) with the adjacent stages'.

        Returns:
            The worker's receipts in log order, and one finding (``step``, ``micro_batch``,
            ``unit``, ``check``, ``message``) per problem.
        """
        if self.ctx.log is None:
            return [], []
        self.ctx.log.sync()
        scan = read_log(self.ctx.run_dir / LOG_FILE)
        findings: list[dict[str, Any]] = []

        def finding(r: Receipt, check: str, message: str) -> None:
            findings.append(
                {"step": r.step, "micro_batch": r.micro_batch, "unit": str(r.kind), "check": check, "message": message}
            )

        mine: list[Receipt] = []
        # the k-th receipt of a stage's unit belongs to the k-th computation of its step that the
        # stage took part in (a bypassed stage takes no part), as the offline audit counts them
        bypassed = declared_bypasses(self.tally.responses)
        seen: dict[tuple[int, int, int, int, UnitKind], int] = {}
        units: dict[tuple[int, int, int, int, UnitKind, int], Receipt] = {}
        last: dict[int, int] = {}
        prev = chain_genesis(self.ctx.run_id, worker)
        for record in scan.records:
            if record.type is not RecordType.RECEIPT:
                continue
            r = parse_receipt(record.payload)
            key = (r.stage, r.replica, r.step, r.micro_batch, r.kind)
            attempt = seen.get(key, 0)
            while bypassed.get((r.step, attempt)) == r.stage:
                attempt += 1
            seen[key] = attempt + 1
            units[(*key, attempt)] = r
            last[r.step] = max(last.get(r.step, 0), attempt)
            if r.worker_id != worker:
                continue
            mine.append(r)
            try:
                verify_receipt(r, self.roster.keys[worker])
            except AttestError as exc:
                finding(r, "signature", exc.message)
            if r.prev_digest != prev:
                finding(r, "chain", f"worker {worker}'s receipt does not continue its hash chain")
            prev = receipt_digest(r)
        for (stage, pipeline, t, m, kind, attempt), r in units.items():
            # the receipts that count: the worker's of the last computation of each step
            if r.worker_id != worker or kind is UnitKind.UPDATE or attempt != last[t]:
                continue
            route = bypassed.get((t, attempt))
            downstream = route_neighbour(stage, TransferKind.ACTIVATION, route)
            upstream = route_neighbour(stage, TransferKind.GRADIENT, route)
            before, after = (upstream, downstream) if kind is UnitKind.FORWARD else (downstream, upstream)
            source = units.get((before, pipeline, t, m, kind, attempt))
            sink = units.get((after, pipeline, t, m, kind, attempt))
            if source is not None and source.output_digest != r.input_digest:
                finding(r, "link", f"its {kind} input differs from the output of stage {before}")
            if sink is not None and sink.input_digest != r.output_digest:
                finding(r, "link", f"its {kind} output differs from the input of stage {after}")
        return mine, findings
