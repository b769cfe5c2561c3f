"""Admitting the workers: attestation by the run's verifier service (simulated vendor or Intel
DCAP; :mod:`stagewarden.attest.verifier_service`, which holds the verifier's key and computes the
measurement each stage must present), and the calibration of the spot check's tolerance."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from nacl.signing import VerifyKey

from stagewarden.attest import relying_party
from stagewarden.attest.binding import stage_label
from stagewarden.attest.clock import SystemClock
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.receipts import chain_genesis
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.rundir import RunDir, RunDirError
from stagewarden.attest.verifier_client import VerifierClient, VerifierUnavailable
from stagewarden.runtime.calibration import CALIBRATION_UNITS, MAX_TOLERANCE, calibrate_stage, tolerance_record
from stagewarden.runtime.compare import SpotCheckError
from stagewarden.runtime.coordinator.context import RunContext
from stagewarden.runtime.coordinator.errors import AdmissionRefused, RunFailed
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.coordinator.ledger import Ledger
from stagewarden.runtime.coordinator.reexecution import Reexecution
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.coordinator.tally import RunTally
from stagewarden.runtime.coordinator.wire import digest_of_weights
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.protocol import (
    Admitted,
    Calibrate,
    Calibrated,
    Evidence,
    Hello,
    ProtocolError,
    Refused,
    Release,
    Shutdown,
    receive,
    send_message,
)
from stagewarden.runtime.transport import (
    TransportError,
)
from stagewarden.runtime.units import deterministic


class Admission:
    """Attests and admits the workers, and calibrates the stages' tolerances."""

    def __init__(
        self,
        ctx: RunContext,
        roster: Roster,
        ledger: Ledger,
        tally: RunTally,
        reexec: Reexecution,
        faults: Faults,
    ) -> None:
        self.ctx, self.roster, self.ledger, self.tally = ctx, roster, ledger, tally
        self.reexec, self.faults = reexec, faults
        self.windows: dict[str, tuple[dt.datetime, dt.datetime]] = {}
        """The issue and expiry times of each attested worker's newest result."""
        self.admitted_stage: dict[str, int | None] = {}
        """The stage each worker was admitted for (``None``: as a standby), which its results bind."""

    def verifier(self) -> tuple[VerifierClient, RelyingParty] | None:
        """The run's attestation verifier service and a relying party that pins its key; ``None``
        without attestation.

        Raises:
            AdmissionRefused: There is no verifier, it cannot be reached, or it appraises another
                kind of evidence than the run's ``attestation_kind``.
        """
        c = self.ctx.config
        if not c.attestation:
            return None
        client = self.ctx.verifier
        if client is None:
            raise AdmissionRefused("attestation is on but the coordinator was given no attestation verifier")
        try:
            key = client.public_key()
        except VerifierUnavailable as exc:
            raise AdmissionRefused(str(exc)) from None
        if client.kind != c.attestation_kind:
            raise AdmissionRefused(
                f"the attestation verifier appraises {client.kind} evidence, but the run's attestation_kind is "
                f"{c.attestation_kind}: start the verifier with this run's configuration"
            )
        return client, RelyingParty(key, SystemClock())

    def _verifier_failed(self, message: str) -> RuntimeSetupError:
        """The error that ends admission when the verifier, not a worker, failed: a new run is
        refused; a resumed one fails and stays resumable (the workers did nothing wrong)."""
        return AdmissionRefused(message) if self.ctx.session == 0 else RunFailed(message)

    def _check_same_verifier(self, key: VerifyKey) -> None:
        """A resumed run's verifier must sign under the key its earlier results verify with."""
        try:
            recorded = RunDir(self.ctx.run_dir).verifier_key()
        except RunDirError:
            return  # the earlier session was not attested
        if recorded != bytes(key):
            raise AdmissionRefused(
                f"the attestation verifier's key {bytes(key).hex()[:16]}... is not the key {recorded.hex()[:16]}... "
                "that signed this run's earlier results: resume with the verifier (its key folder) the run began with"
            )

    def appraise(
        self,
        verifier: VerifierClient,
        rp: RelyingParty,
        wid: str,
        stage: int | None,
        msg: Evidence,
        nonce: bytes,
        renewal: bool,
    ) -> relying_party.Admission:
        """Have the verifier appraise ``msg``, the evidence of worker ``wid`` admitted for ``stage``,
        against ``nonce``; check the signed result as a relying party, store the evidence and the
        result and remember the result's window. At admission the evidence is stored before it is
        appraised (a refused worker's too), and the result replaces those of earlier sessions only
        in a new run; a renewal (``renewal``) stores the evidence only once accepted, so that the
        stored evidence always belongs to a stored result, and adds the result to the worker's
        earlier ones.

        Raises:
            AttestError: The evidence is refused (the code says why).
            VerifierUnavailable: The verifier cannot be reached or broke its protocol.
            ValueError: The message carries no evidence.
        """
        key = msg.receipt_key
        if msg.evidence_error is not None:  # the worker's TEE gave it no quote
            unavailable = msg.evidence_error_code == ErrorCode.PROVIDER_UNAVAILABLE
            code = ErrorCode.PROVIDER_UNAVAILABLE if unavailable else ErrorCode.PROVIDER_FAILED
            raise AttestError(code, msg.evidence_error[:500])
        if msg.evidence is None:
            raise ValueError("evidence must be a hex string")
        evidence = msg.evidence
        if not renewal:
            self.ctx.writer.write_evidence(wid, evidence)
        token = verifier.appraise(self.ctx.run_id, wid, stage, key, nonce, evidence)
        if self.ctx.config.attestation_kind == "dcap":
            at_stage = str(stage) if stage is not None else None
            admitted = rp.admit(wid, token, key, expected_nonce=nonce, stage=at_stage)
        else:
            admitted = rp.admit(wid, token, key, expected_nonce=nonce, stage=stage_label(stage), run_id=self.ctx.run_id)
        if renewal:
            self.ctx.writer.write_evidence(wid, evidence)
        earlier = RunDir(self.ctx.run_dir).results(wid) if renewal or self.ctx.session > 0 else []
        self.ctx.writer.write_results(wid, [*earlier, admitted.token])
        self.windows[wid] = (admitted.result.issued_at, admitted.result.expires_at)
        self.admitted_stage[wid] = stage
        return admitted

    def admit(self) -> None:
        """Send every worker its assignment and a nonce, appraise the evidence, admit or refuse.

        A resumed run sends each worker the head of its identity's receipt chain (the last receipt
        the log holds for it) and tells a worker whose identity was benched to go home.
        """
        c, layout = self.ctx.config, self.roster.layout
        workers = [(self.roster.rank_of(q), self.roster.slot_ids[q], q) for q in self.roster.slots] + [
            (self.roster.standby_rank(k), self.roster.standby_ids[k], None) for k in self.roster.free_standbys
        ]
        serving = {rank for rank, _, _ in workers}
        for rank in range(1, c.world_size):
            if rank not in serving:
                send_message(self.ctx.transport, rank, Shutdown())
                self.roster.released.add(rank)
        try:
            attesting = self.verifier()
            if attesting is not None:
                if self.ctx.session > 0:
                    self._check_same_verifier(attesting[1].verifier_key)
                self.ctx.writer.write_verifier_key(bytes(attesting[1].verifier_key))
            nonces = {wid: attesting[0].issue_nonce() for _, wid, _ in workers} if attesting is not None else {}
        except (AdmissionRefused, VerifierUnavailable) as exc:
            for rank, _, _ in workers:
                send_message(self.ctx.transport, rank, Shutdown())
            raise self._verifier_failed(str(exc)) from None
        unavailable: str | None = None
        for rank, wid, slot in workers:
            nonce = nonces.get(wid)
            hello = Hello(
                self.ctx.run_id,
                wid,
                slot,
                nonce,
                self.ctx.session,
                bytes(self.ctx.signing_key.verify_key),
                self.roster.chain_heads.get(wid),
            )
            send_message(self.ctx.transport, rank, hello)
        refusals: list[str] = []
        for rank, wid, slot in workers:
            stage = None if slot is None else layout.stage(slot)
            raw = self.ctx.transport.recv_json(rank, "evidence")
            if unavailable is not None:
                continue  # every answer is read, so that no worker's message is left behind
            try:
                msg = Evidence.parse(raw)
                key = msg.receipt_key
                if msg.worker_id != wid:
                    raise ValueError(f"rank {rank} answered as {msg.worker_id!r}, not {wid!r}")
                if attesting is not None:
                    appraisal = self.appraise(*attesting, wid, stage, msg, nonces[wid], renewal=False)
                    self.ctx.events.write(
                        "admitted",
                        worker=wid,
                        stage=stage,
                        rank=rank,
                        status=str(appraisal.result.status),
                        measurement=appraisal.result.measurement,
                        device=appraisal.result.device_id,
                    )
                else:
                    self.ctx.events.write("admitted", worker=wid, stage=stage, rank=rank, status="unattested")
                self.roster.keys[wid] = key
                self.roster.prev[wid] = self.roster.chain_heads.get(wid, chain_genesis(self.ctx.run_id, wid))
                self.roster.processes[wid] = {
                    "worker": wid,
                    "stage": stage,
                    "role": "stage" if stage is not None else "standby",
                    "rank": rank,
                    "pid": msg.pid,
                    "host": msg.host,
                }
            except AttestError as exc:
                reason = f"{exc.code}: {exc.message}"
                self.ctx.events.write(
                    "refused", worker=wid, stage=stage, rank=rank, code=str(exc.code), reason=exc.message
                )
                refusals.append(
                    f"worker {wid} ({'stage ' + str(stage) if stage is not None else 'standby'}) "
                    f"was refused admission: {reason}"
                )
            except VerifierUnavailable as exc:
                unavailable = str(exc)
            except (ValueError, ProtocolError) as exc:
                self.ctx.events.write("refused", worker=wid, stage=stage, rank=rank, code="MALFORMED", reason=str(exc))
                refusals.append(f"worker {wid} was refused admission: {exc}")
        if refusals or unavailable is not None:
            for rank, wid, _ in workers:
                send_message(self.ctx.transport, rank, Refused() if wid not in self.roster.keys else Shutdown())
            if unavailable is not None:
                raise self._verifier_failed(unavailable)
            raise AdmissionRefused("; ".join(refusals))
        admitted = Admitted(*self.roster.slot_maps())
        for rank, _, _ in workers:
            send_message(self.ctx.transport, rank, admitted)
        self.roster.write_workers()

    def calibrate(self, stages: Iterable[int]) -> None:
        """With ``spot_check_compare = "tolerance"``, calibrate the tolerance of each of ``stages``
        from its current worker (:mod:`stagewarden.runtime.calibration`); nothing in bitwise mode.

        Each worker computes the calibration units on seed-derived inputs on its own device and
        returns their outputs and the weights it used, which must be the weights the stage holds
        (else its message is malformed). The coordinator re-executes the units and sets the
        stage's tolerance; event ``calibration`` and ``spot_check_tolerance`` in ``summary.json``
        record it. Called at admission, on resume and when a standby takes a stage.

        Raises:
            AdmissionRefused: A worker's tolerance exceeds
                :data:`~stagewarden.runtime.calibration.MAX_TOLERANCE`; every worker is released.
            TransportError: A worker's answer is malformed (blamed on that worker).
        """
        c = self.ctx.config
        if c.spot_check_compare != "tolerance":
            return
        chosen = list(stages)  # slots
        for s in chosen:
            send_message(self.ctx.transport, self.roster.rank_of(s), Calibrate(CALIBRATION_UNITS))
        groups = ("weights", *(f"unit{i}" for i in range(CALIBRATION_UNITS)))
        refusals: list[str] = []
        for s in chosen:
            wid, rank = self.roster.slot_ids[s], self.roster.rank_of(s)
            calibrated = receive(self.ctx.transport, rank, Calibrated)
            received, digests = self.reexec.recv_tensors(s, calibrated.tensors, groups)
            weights, units = received["weights"], [received[f"unit{i}"] for i in range(CALIBRATION_UNITS)]
            if digest_of_weights(weights, digests) != self.ledger.stage_weights_digest(s):
                raise TransportError(
                    f"worker {wid} computed its calibration with other weights than stage {s} holds", peer=rank
                )
            try:
                with deterministic(c.train.threads):
                    tolerance = calibrate_stage(c, self.roster.layout.stage(s), weights, units)
            except SpotCheckError as exc:
                raise TransportError(f"worker {wid} sent a malformed calibration: {exc}", peer=rank) from None
            accepted = tolerance.value <= MAX_TOLERANCE
            record = {
                "stage": s,
                "worker": wid,
                "rank": rank,
                "session": self.ctx.session,
                "at_step": len(self.tally.losses),
            }
            record.update(tolerance_record(tolerance), accepted=accepted)
            self.ctx.events.write("calibration", **record)
            self.tally.tolerances[s] = record
            if accepted:
                self.reexec.tolerance[s] = tolerance
                continue
            reason = (
                f"its calibration differs from the coordinator's re-execution by a relative error of "
                f"{tolerance.max_observed:.3g}, which needs a tolerance of {tolerance.value:.3g}, above the cap "
                f"of {MAX_TOLERANCE:g}: its numerics are too far from the verifier's for a spot check to tell "
                "them from tampering"
            )
            self.ctx.events.write("refused", worker=wid, stage=s, rank=rank, code="TOLERANCE_ABOVE_CAP", reason=reason)
            refusals.append(f"worker {wid} (stage {s}) was refused: {reason}")
        if refusals:
            self.faults.stop_watchdog()
            for rank in range(1, c.world_size):
                if rank not in self.roster.released:
                    send_message(self.ctx.transport, rank, Release())
                    self.roster.released.add(rank)
            raise AdmissionRefused("; ".join(refusals))
