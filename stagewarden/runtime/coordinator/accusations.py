"""Detections as the coordinator records them: typed, and signed with its key."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.runtime.coordinator.context import DETECTION_DOMAIN, RunContext

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.roster import Roster


class DetectionSigner:
    """Builds and signs detections against the worker now serving a stage."""

    def __init__(self, ctx: RunContext, roster: Roster) -> None:
        self.ctx, self.roster = ctx, roster

    def detection(
        self, step: int, micro_batch: int, unit: str, slot: int, check: str, message: str, evidence: bytes
    ) -> SignedDetection:
        """A detection as recorded against the worker now serving ``slot`` (with one pipeline, the
        stage): the unit, the worker blamed, its stage, the check, the evidence digest (the
        offending signed receipt's digest) and the coordinator's Ed25519 signature over all of it
        (``signature``, over the canonical JSON of the other fields; the public key is
        ``coordinator_key`` in ``summary.json``)."""
        body: dict[str, Any] = {
            "step": step,
            "microbatch": micro_batch,
            "unit_kind": unit,
            "worker": self.roster.slot_ids[slot],
            "stage": self.roster.layout.stage(slot),
            "check": check,
            "evidence_digest": evidence.hex(),
            "message": message,
        }
        signed = DETECTION_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return SignedDetection(**body, signature=self.ctx.signing_key.sign(signed).signature.hex())
