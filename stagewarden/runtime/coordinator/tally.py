"""The run's account: losses, metrics, unit counts, detections, responses and faults, and the
``summary.json`` and ``metrics.csv`` built from them."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import blake3

from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.run_record import RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import SignedDetection, WorkerInfo
from stagewarden.runtime.coordinator.context import METRICS_FILE, RUNTIME_SUMMARY_VERSION, RunContext

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.checkpoints import CheckpointStore
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.roster import Roster


class RunTally:
    """What the run did, as ``summary.json`` reports it.

    Attributes:
        status: ``starting``, ``running``, ``completed``, ``stopped``, ``refused`` or ``failed``.
        stop_reason: Why the run stopped, was refused or failed.
        losses: Each completed step's loss.
        metrics: Each completed step's ``(step, loss, tokens_per_second, seconds)``.
        detections: Every detection, signed, as recorded.
        responses: Every response carried out.
        counts: Units, receipts and headers logged.
        busy: Each slot's busy seconds, as its workers report them.
        spot: The spot check's counters.
        neighbour: The redundant-neighbour check's counters.
        tolerances: With ``spot_check_compare = "tolerance"``: each slot's calibration record.
        faults: The worker faults met.
        pending_fault: The fault the run stopped on, for the session that resumes it.
        resumes: One record per resumed session.
    """

    def __init__(self, ctx: RunContext, roster: Roster, ledger: Ledger) -> None:
        self.ctx, self.roster, self.ledger = ctx, roster, ledger
        self.store: CheckpointStore  # set by the engine: the store and the tally read each other
        config = ctx.config
        self.status = "starting"
        self.stop_reason: str | None = None
        self.wall_seconds = 0.0
        self.train_seconds = 0.0
        self.losses: list[float] = []
        self.metrics: list[tuple[int, float, float, float]] = []
        self.detections: list[SignedDetection] = []
        self.responses: list[dict[str, Any]] = []
        self.counts = {"forward": 0, "backward": 0, "update": 0, "receipts": 0, "headers": 0}
        self.busy = [0.0] * config.layout.slots
        self.spot = {"rate": config.spot_check_rate, "units_sampled": 0, "units_checked": 0, "recomputations": 0}
        self.neighbour: dict[str, Any] = {
            "input_via": config.input_via,
            "units_checked": 0,
            "mismatches_reported": 0,
            "confirmed": 0,
            "false_accusations": 0,
            "unadjudicated": 0,
        }
        self.tolerances: list[dict[str, Any] | None] = [None] * config.layout.slots
        self.faults: list[dict[str, Any]] = []
        self.pending_fault: dict[str, Any] | None = None
        self.resumes: list[dict[str, Any]] = []
        self.sealed: RunRecord | None = None

    def summary(self) -> RunRecord:
        c = self.ctx.config
        tokens = c.tokens_per_step * len(self.losses)
        # every computing pipeline holds the same weights of a stage (the checks compare them)
        final = [self.ledger.final_weights.get(self.roster.stage_slots(s)[0]) for s in range(c.stages)]
        model_digest = blake3.blake3(b"".join(bytes.fromhex(d) for d in final if d)).hexdigest() if all(final) else None
        training = {
            "runtime_version": RUNTIME_SUMMARY_VERSION,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "config": c.to_json(),
            "steps_completed": len(self.losses),
            "losses": list(self.losses),
            "tokens_per_second": tokens / self.train_seconds
            if self.train_seconds > 0
            else (sum(m[2] for m in self.metrics) / len(self.metrics) if self.metrics else 0.0),
            "wall_seconds": self.wall_seconds,
            "units": {k: self.counts[k] for k in ("forward", "backward", "update")},
            "receipts": self.counts["receipts"],
            "headers": self.counts["headers"],
            "detections": list(self.detections),
            "false_alarms": self.false_alarms(),
            "responses": list(self.responses),
            "final_weights": {"stages": final, "digest": model_digest},
            "standby": list(self.roster.standby_ids),
            "replacements": list(self.roster.replacements),
            "checkpoints": list(self.store.steps),
            "stage_busy_seconds": [sum(self.busy[q] for q in c.layout.of_stage(s)) for s in range(c.stages)],
            "spot_check": dict(self.spot) if c.verification == "spot_check" else None,
            "spot_check_tolerance": list(self.tolerances) if c.spot_check_compare == "tolerance" else None,
            "redundant_neighbour": dict(self.neighbour) if c.verification == "redundant_neighbour" else None,
            "coordinator_key": bytes(self.ctx.signing_key.verify_key).hex(),
            "attestation": c.attestation,
            "faults": list(self.faults),
            "pending_fault": self.pending_fault,
            "resumes": list(self.resumes),
            "benched": list(self.roster.benched),
        }
        layout = c.layout
        workers = [WorkerInfo(layout.worker_id(q), layout.stage(q), layout.pipeline(q)) for q in range(layout.slots)]
        workers += [WorkerInfo(r["by"], r["stage"], r.get("replica", 0)) for r in self.roster.replacements]
        return RunRecord(
            run_id=self.ctx.run_id,
            stages=c.stages,
            replicas=layout.pipelines,
            micro_batches=c.microbatches,
            steps=len(self.losses),
            workers=workers,
            training=TrainingRecord.model_validate(training),
        )

    def false_alarms(self) -> int:
        """Detections that blame a worker the run's attack plan does not make malicious (the plan
        is the ground truth of a run with injected attacks; a standby never attacks)."""
        plan = self.ctx.config.attack
        malicious = set()
        if plan is not None:
            layout = self.ctx.config.layout
            malicious = {
                layout.worker_id(layout.slot(int(s), int(p)))
                for s in plan.get("stages", [])
                for p in plan.get("pipelines", [0])
            }
        return sum(1 for d in self.detections if d.worker not in malicious)

    def write_summary(self) -> None:
        """Write ``summary.json`` (once the run is sealed, the summary its final head signed)."""
        self.ctx.writer.write_summary(self.sealed or self.summary())

    def seal_summary(self) -> str:
        """Fix the summary as it is now, write it, and return its text (for the final head to
        sign): later writes keep it as it is."""
        self.sealed = self.summary()
        self.write_summary()
        return self.sealed.to_json()

    def write_metrics(self) -> None:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["step", "loss", "tokens_per_second", "wall_seconds"])
        for step, loss, tps, seconds in self.metrics:
            w.writerow([step, repr(loss), f"{tps:.1f}", f"{seconds:.4f}"])
        atomic_write_text(self.ctx.run_dir / METRICS_FILE, out.getvalue())
