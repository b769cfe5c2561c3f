"""The weights chain: every stage's weights followed from its first checkpoint through every update
to ``final_weights``, offline.

An update receipt's output digest commits to the weights and the optimizer state after the update
together (``update_output_digest``). After each step's updates the coordinator logs an ``updated``
event with the two digests of every stage, and ``events.jsonl`` is signed line by line by the step
heads (:mod:`stagewarden.attest.audit_seal`). The audit replays the events in order and checks
(``WEIGHTS_CHAIN``):

- each ``updated`` pair is what the stage's update receipt for that step commits to (the k-th
  such event of a stage and step is matched with its k-th update receipt in the log: a recomputed
  step updates again);
- the update ran on the weights the stage held: those of its previous update, or of the
  checkpoint it was restored to (``restored_checkpoint``), or, at the start, of checkpoint 0; a
  response that recomputes a step from where it began (``response`` without a checkpoint) takes
  back that step's updates;
- every checkpoint of step ``k`` holds the weights of each stage's (last) update of step ``k - 1``;
- ``final_weights`` in ``summary.json`` (which the final head signs) are each stage's last weights;
- a checkpoint still on disk (``checkpoints/step-NNNNNNNNN/manifest.json``) is the one its
  ``checkpoint`` event names: its manifest's BLAKE3 digest is the event's ``manifest`` (the
  manifest lists the digest of every file of the checkpoint, which a resume checks on loading).

A run whose events hold no ``updated`` event (made by an earlier release, or without receipts) is
not checked here.

With several pipelines (data-parallel replicas or ``replicate`` copies) the chain is followed per
slot: an ``updated`` event is keyed by slot (``pipeline x stages + stage``; with one pipeline, the
stage), while a checkpoint holds one state per stage, which every pipeline's slot of the stage
must hold.

With data-parallel replicas each slot's entry also holds the optimizer state before the update and
the gradient trace it started from, whose last two entries are the commitment to the contributions
the replica aggregated and the aggregate's digest
(:func:`~stagewarden.attest.tensor_digest.aggregate_commitment`). The audit checks
(``AGGREGATE_MISMATCH``) that the trace and the state before are what the slot's signed update
receipt commits to, that every replica of a stage (the same copy of each) recomputes to the
commitment of the run's rule over the group's contributions (each member's own accumulated
gradients, the trace entry before the commitment) and that they applied the same aggregate.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import blake3

from .audit_findings import FindingLog, LogItem
from .audit_plans import retired_pipelines
from .errors import ErrorCode
from .receipts import Receipt, UnitKind
from .run_limits import MAX_FILE_BYTES
from .run_lines import event_objects
from .run_record import RunDirError, RunRecord, read_bounded
from .rundir import EVENTS_LOG_FILE
from .tensor_digest import aggregate_commitment, gradient_trace_digest, update_input_digest, update_output_digest

__all__ = ["CHECKPOINTS_DIR", "WeightsChain"]

#: Where the runtime keeps a run's checkpoints, in the run directory.
CHECKPOINTS_DIR = "checkpoints"


class WeightsChain:
    """Replays the weights of every stage (see the module docstring)."""

    def __init__(self, summary: RunRecord, log: FindingLog, run_dir: Path | None = None) -> None:
        self.summary, self.log, self.run_dir = summary, log, run_dir
        self.held: dict[int, list[tuple[int, str]]] = defaultdict(list)
        """The (step, weights) of each slot after each of its updates since its last restore, in order."""
        self.base: dict[int, str] = {}
        """The weights of the checkpoint each slot started from or was restored to."""
        self.stages = summary.stages
        self.pipelines = summary.replicas
        config = summary.training.config if summary.training is not None else {}
        self.rule = str(config.get("aggregation", "mean"))
        self.copies = int(config.get("replicate_factor", 3)) if config.get("verification") == "replicate" else 1

    def _slots(self, stage: int) -> list[int]:
        return [p * self.stages + stage for p in range(self.pipelines)]

    def check(self, events: bytes | None, receipts: list[LogItem]) -> None:
        """Replay ``events`` (``events.jsonl``'s bytes) against the log's update receipts."""
        parsed = event_objects(events or b"")
        if not any(e.get("event") == "updated" for e in parsed):
            return
        updates: dict[tuple[int, int], list[Receipt]] = defaultdict(list)
        for item in receipts:
            r = item.receipt
            if r.kind is UnitKind.UPDATE:
                updates[(r.replica * self.stages + r.stage, r.step)].append(r)
        used: dict[tuple[int, int], int] = defaultdict(int)
        for number, event in enumerate(parsed, start=1):
            kind = event.get("event")
            try:
                if kind == "updated":
                    self._updated(number, event, updates, used)
                elif kind == "checkpoint":
                    self._checkpoint(number, event)
                    self._manifest(number, int(event["step"]), str(event["manifest"]))
                elif kind == "restored_checkpoint":
                    for key, weights in dict(event["weights"]).items():
                        for slot in self._slots(int(key)):
                            self.held[slot] = []
                            self.base[slot] = str(weights)
                elif kind == "response" and event["plan"].get("checkpoint_step") is None:
                    step = int(event["step"])
                    for slot in list(self.held):
                        self.held[slot] = [(t, w) for t, w in self.held[slot] if t < step]
            except (KeyError, TypeError, ValueError, AttributeError):
                self._add(f"event {number}: a {kind} event is malformed")
        self._final()

    def _current(self, stage: int) -> str | None:
        held = self.held.get(stage)
        return held[-1][1] if held else self.base.get(stage)

    def _updated(
        self, number: int, event: dict[str, Any], updates: dict[tuple[int, int], list[Receipt]], used: dict[Any, int]
    ) -> None:
        step = int(event["step"])
        traces: dict[int, list[bytes]] = {}
        for key, pair in dict(event["stages"]).items():
            stage = int(key)  # the slot: with one pipeline, the stage
            weights, optimizer = str(pair["weights"]), str(pair["optimizer"])
            k = used[(stage, step)]
            used[(stage, step)] += 1
            logged = updates.get((stage, step), [])
            if k >= len(logged):
                self._add(f"event {number}: stage {stage}'s update of step {step} has no update receipt in the log")
                continue
            receipt = logged[k]
            if receipt.output_digest != update_output_digest(bytes.fromhex(weights), bytes.fromhex(optimizer)):
                self._add(
                    f"event {number}: stage {stage}'s update receipt of step {step} ({receipt.worker_id}) does not "
                    "commit to the weights and optimizer state the coordinator logged"
                )
            if "trace" in pair:
                trace = [bytes.fromhex(str(d)) for d in pair["trace"]]
                committed = update_input_digest(
                    gradient_trace_digest(trace), bytes.fromhex(str(pair["optimizer_before"]))
                )
                if committed != receipt.input_digest:
                    self._aggregate(
                        f"event {number}: the gradient trace logged for {receipt.worker_id}'s update of step {step} is "
                        "not the one its update receipt commits to"
                    )
                else:
                    traces[stage] = trace
            before = self._current(stage)
            if before is not None and receipt.weights_digest.hex() != before:
                self._add(
                    f"event {number}: stage {stage}'s update of step {step} ({receipt.worker_id}) ran on weights "
                    f"{receipt.weights_digest.hex()[:16]}, not on the {before[:16]} the stage held"
                )
            self.held[stage].append((step, weights))
        self._aggregates(number, step, traces)

    def _aggregates(self, number: int, step: int, traces: dict[int, list[bytes]]) -> None:
        """Each replica's aggregate of ``step`` recomputed from the logged traces of its group:
        itself for its own replica and each other replica's first updated copy of the stage, as
        the runtime's layout forms it; and one aggregate applied per stage."""
        mbs = self.summary.micro_batches
        if any(len(trace) != mbs + 2 for trace in traces.values()):
            self._aggregate(
                f"event {number}: an aggregated update of step {step} is not {mbs} gradient entries, a "
                "commitment and an aggregate"
            )
            return
        firsts: dict[tuple[int, int], int] = {}
        for slot in sorted(traces):
            firsts.setdefault((slot % self.stages, slot // self.stages // self.copies), slot)
        applied: dict[int, set[bytes]] = defaultdict(set)
        for slot, trace in sorted(traces.items()):
            stage, own = slot % self.stages, slot // self.stages // self.copies
            group = [slot if r == own else firsts[(stage, r)] for r in range(self.pipelines) if (stage, r) in firsts]
            if trace[mbs] != aggregate_commitment(self.rule, [traces[q][mbs - 1] for q in group]):
                self._aggregate(
                    f"event {number}: stage {stage}'s update of step {step} in pipeline {slot // self.stages} "
                    f"commits to aggregating other contributions than the {self.rule} of its group's"
                )
            applied[stage].add(trace[mbs + 1])
        for stage, aggregates in sorted(applied.items()):
            if len(aggregates) > 1:
                self._aggregate(
                    f"event {number}: the replicas of stage {stage} applied different aggregates at step {step}"
                )

    def _aggregate(self, message: str) -> None:
        self.log.add(ErrorCode.AGGREGATE_MISMATCH, message, file=EVENTS_LOG_FILE)

    def _checkpoint(self, number: int, event: dict[str, Any]) -> None:
        # a checkpoint of step k holds the weights after the update of step k - 1; its checks may
        # settle while step k computes, so the update of step k can be logged before it
        step = int(event["step"])
        for key, weights in dict(event["weights"]).items():
            for slot in self._slots(int(key)):
                if self._current(slot) is None:
                    self.base[slot] = str(weights)
                    continue
                after = [w for t, w in self.held.get(slot, []) if t == step - 1]
                if after and after[-1] != weights:
                    self._add(
                        f"event {number}: the checkpoint of step {step} holds weights {str(weights)[:16]} for stage "
                        f"{key}, not those of its update of step {step - 1} ({after[-1][:16]})"
                    )

    def _manifest(self, number: int, step: int, digest: str) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / CHECKPOINTS_DIR / f"step-{step:09d}" / "manifest.json"
        if not os.path.lexists(path):  # pruned, or never kept (a checkpoint is not evidence the audit needs)
            return
        try:
            raw = read_bounded(path, "checkpoint manifest", MAX_FILE_BYTES)
        except RunDirError as exc:
            self._add(f"event {number}: {exc.message}", file=str(path.relative_to(self.run_dir)))
            return
        if blake3.blake3(raw).hexdigest() != digest:
            self._add(
                f"event {number}: the manifest of the checkpoint of step {step} on disk is not the one the run "
                "recorded (a swapped or edited checkpoint)",
                file=str(path.relative_to(self.run_dir)),
            )

    def _final(self) -> None:
        training = self.summary.training
        if training is None:
            return
        retired = retired_pipelines(training)
        for stage, weights in enumerate(training.final_weights.stages):
            for slot in self._slots(stage):
                if slot // self.stages in retired:  # its pipeline left the run
                    continue
                current = self._current(slot)
                if weights is not None and current is not None and weights != current:
                    self._add(
                        f"final_weights of stage {stage} ({weights[:16]}) are not the weights of its last update "
                        f"({current[:16]})",
                        file="summary.json",
                    )

    def _add(self, message: str, file: str = EVENTS_LOG_FILE) -> None:
        self.log.add(ErrorCode.WEIGHTS_CHAIN, message, file=file)
