"""Admitting the workers: attestation (simulated vendor or Intel DCAP), the measurement each
must present, and the calibration of the spot check's tolerance."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence

from nacl.signing import SigningKey

from stagewarden.attest.binding import stage_label
from stagewarden.attest.clock import Clock, SystemClock
from stagewarden.attest.dcap_verifier import DcapVerifier, EarAppraisal
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.policy import Policy
from stagewarden.attest.receipts import chain_genesis
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.rundir import RunDir
from stagewarden.attest.vendor import load_vendor, local_verifier
from stagewarden.attest.verifier import Appraisal, Verifier
from stagewarden.runtime.calibration import CALIBRATION_UNITS, MAX_TOLERANCE, calibrate_stage, tolerance_record
from stagewarden.runtime.compare import SpotCheckError
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.coordinator.context import RunContext, private_key
from stagewarden.runtime.coordinator.errors import AdmissionRefused
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.coordinator.ledger import Ledger
from stagewarden.runtime.coordinator.reexecution import Reexecution
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.coordinator.tally import RunTally
from stagewarden.runtime.coordinator.wire import digest_of_weights
from stagewarden.runtime.measure import code_digest, stage_measurement
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


def _dcap_verifier(c: RunConfig, signing_key: SigningKey, clock: Clock) -> DcapVerifier:
    """The verifier of Intel quotes the configuration names (its collateral and policy files)."""
    if c.dcap_collateral is None:
        raise AdmissionRefused("attestation_kind dcap needs dcap_collateral (a collateral file or cache folder)")
    try:
        return DcapVerifier.from_files(c.dcap_collateral, c.dcap_policy, signing_key, clock)
    except (AttestError, OSError) as exc:
        raise AdmissionRefused(f"cannot set up the DCAP verifier: {exc}") from None


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

    def reference_measurements(self) -> dict[str, bytes]:
        """The measurement each worker must present: computed here from the code, the
        configuration and the initial weights derived from the seed."""
        out = {wid: self.reference_for(self.roster.layout.stage(q)) for q, wid in enumerate(self.roster.slot_ids)}
        for k in self.roster.free_standbys:
            out[self.roster.standby_ids[k]] = self.reference_for(None)
        return out

    def reference_for(self, stage: int | None) -> bytes:
        """The measurement a worker admitted for ``stage`` (``None``: a standby) presents."""
        initial = self.ledger.initial_weights_digest(stage) if stage is not None else None
        return stage_measurement(self.ctx.config, stage, initial, self._code_digest)

    @functools.cached_property
    def _code_digest(self) -> bytes:
        """The digest of the runtime's code, read once: the code every measurement covers."""
        return code_digest()

    def verifier_for(
        self, workers: Sequence[tuple[int, str, int | None]], create_key: bool
    ) -> tuple[Verifier | DcapVerifier | None, RelyingParty | None]:
        """A verifier and a relying party for ``workers`` (rank, id, admitted stage), built afresh
        (the vendor's CRLs or the DCAP collateral as they are now); ``(None, None)`` without
        attestation."""
        c = self.ctx.config
        if not c.attestation:
            return None, None
        key = private_key(self.ctx.keys_dir, "verifier", create=create_key)
        if c.attestation_kind == "dcap":
            clock = SystemClock()
            dcap = _dcap_verifier(c, key, clock)
            return dcap, RelyingParty(dcap.verify_key, clock)
        if self.ctx.vendor_dir is None:
            raise AdmissionRefused("attestation is on but no vendor folder was given")
        clock = SystemClock()
        verifier = local_verifier(
            load_vendor(self.ctx.vendor_dir),
            {stage_label(stage): self.reference_for(stage) for _, _, stage in workers},
            Policy(result_lifetime_seconds=c.result_lifetime),
            clock,
            signing_key=key,
        )
        return verifier, RelyingParty(verifier.verify_key, clock)

    def appraise(
        self,
        verifier: Verifier | DcapVerifier,
        rp: RelyingParty,
        wid: str,
        stage: int | None,
        msg: Evidence,
        nonce: bytes,
        renewal: bool,
    ) -> Appraisal | EarAppraisal:
        """Appraise ``msg``, the evidence of worker ``wid`` admitted for ``stage``, against ``nonce``;
        store the evidence and the result and remember the result's window. At admission the
        evidence is stored before it is appraised (a refused worker's too), and the result replaces
        those of earlier sessions only in a new run; a renewal (``renewal``) stores the evidence
        only once accepted, so that the stored evidence always belongs to a stored result, and adds
        the result to the worker's earlier ones.

        Raises:
            AttestError: The evidence is refused (the code says why).
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
        appraisal: Appraisal | EarAppraisal
        if isinstance(verifier, DcapVerifier):
            at_stage = str(stage) if stage is not None else None
            appraisal = verifier.appraise_evidence(evidence, key, nonce, stage=at_stage)
            rp.admit(wid, appraisal.token, key, expected_nonce=nonce, stage=at_stage)
        else:
            bound = {"stage": stage_label(stage), "run_id": self.ctx.run_id}
            appraisal = verifier.appraise_evidence(evidence, key, nonce, worker=wid, **bound)
            rp.admit(wid, appraisal.token, key, expected_nonce=nonce, **bound)
        if renewal:
            self.ctx.writer.write_evidence(wid, evidence)
        earlier = RunDir(self.ctx.run_dir).results(wid) if renewal or self.ctx.session > 0 else []
        self.ctx.writer.write_results(wid, [*earlier, appraisal.token])
        self.windows[wid] = (appraisal.result.issued_at, appraisal.result.expires_at)
        self.admitted_stage[wid] = stage
        return appraisal

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
        staged = [(rank, wid, None if slot is None else layout.stage(slot)) for rank, wid, slot in workers]
        verifier, rp = self.verifier_for(staged, create_key=self.ctx.session == 0)
        if verifier is not None:
            self.ctx.writer.write_verifier_key(bytes(verifier.verify_key))
        nonces: dict[str, bytes] = {}
        for rank, wid, slot in workers:
            nonce = verifier.issue_nonce() if verifier is not None else None
            if nonce is not None:
                nonces[wid] = nonce
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
            try:
                msg = Evidence.parse(raw)
                key = msg.receipt_key
                if msg.worker_id != wid:
                    raise ValueError(f"rank {rank} answered as {msg.worker_id!r}, not {wid!r}")
                if verifier is not None and rp is not None:
                    appraisal = self.appraise(verifier, rp, wid, stage, msg, nonces[wid], renewal=False)
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
            except (ValueError, ProtocolError) as exc:
                self.ctx.events.write("refused", worker=wid, stage=stage, rank=rank, code="MALFORMED", reason=str(exc))
                refusals.append(f"worker {wid} was refused admission: {exc}")
        if refusals:
            for rank, wid, _ in workers:
                send_message(self.ctx.transport, rank, Refused() if wid not in self.roster.keys else Shutdown())
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
