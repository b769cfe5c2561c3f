"""Renewing the workers' attestation during a run.

An attestation result is valid for a limited time (the verifier's policy; the simulated verifier
takes :attr:`~stagewarden.runtime.config.RunConfig.result_lifetime`), and the audit requires a
valid result for every receipt a worker signed. Once half of the shortest remaining lifetime has
passed, the coordinator asks every admitted worker (stage workers and free standbys) for fresh
evidence bound to a new nonce and has the run's verifier service appraise it (the service loads
the vendor's CRLs or the DCAP collateral afresh for every appraisal), so that a device revoked
since admission, or collateral gone stale, is seen. A verifier that cannot be reached stops the
run cleanly (``stopped``, resumable once the verifier is back). An accepted result is added to the
worker's results; a refused worker is handled as a failed one
(:meth:`~stagewarden.runtime.coordinator.faults.Faults.refuse`): a free standby takes its stage
from the newest verified checkpoint, or the run stops and can be resumed.
"""

from __future__ import annotations

import datetime as dt

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.verifier_client import VerifierUnavailable
from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.context import RunContext
from stagewarden.runtime.coordinator.errors import AdmissionRefused, TrainingStopped
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.protocol import Evidence, ProtocolError, Reattest, receive, send_message


class Renewal:
    """Re-attests the admitted workers before their results expire."""

    def __init__(self, ctx: RunContext, roster: Roster, admission: Admission, faults: Faults) -> None:
        self.ctx, self.roster, self.admission, self.faults = ctx, roster, admission, faults
        self.renewals = 0
        """How many renewals this session made."""

    def _serving(self) -> list[tuple[int, str, int | None]]:
        """Every attested worker still counted on: rank, id and the stage it was admitted for."""
        ranks = {wid: self.roster.rank_of(s) for s, wid in enumerate(self.roster.slot_ids)}
        ranks.update({self.roster.standby_ids[k]: self.roster.standby_rank(k) for k in self.roster.free_standbys})
        return [
            (rank, wid, self.admission.admitted_stage[wid])
            for wid, rank in ranks.items()
            if wid in self.admission.windows and rank not in self.roster.released
        ]

    def due(self, now: dt.datetime | None = None) -> bool:
        """Whether some worker's newest result has used up half of its lifetime."""
        serving = self._serving()
        if not serving:
            return False
        now = now or dt.datetime.now(dt.UTC)
        halfway = min(
            issued + (expires - issued) / 2
            for issued, expires in (self.admission.windows[wid] for _, wid, _ in serving)
        )
        return now >= halfway

    def renew(self) -> None:
        """Re-attest every serving worker; stop as after a worker fault on the first refusal.

        Raises:
            RunInterrupted: A worker was refused (its device revoked, its evidence changed, or its
                receipt key not the one it was admitted with).
        """
        serving = self._serving()
        try:
            attesting = self.admission.verifier()
            if attesting is None:
                return
            nonces = {wid: attesting[0].issue_nonce() for _, wid, _ in serving}
        except (AdmissionRefused, VerifierUnavailable) as exc:
            raise TrainingStopped(f"workers cannot be re-attested: {exc}") from None
        unavailable: str | None = None
        for rank, wid, _ in serving:
            send_message(self.ctx.transport, rank, Reattest(nonces[wid]))
        refused: tuple[int, str, str] | None = None
        for rank, wid, stage in serving:
            msg = receive(self.ctx.transport, rank, Evidence)
            if refused is not None or unavailable is not None:
                continue  # every answer is read, so that no worker's message is left behind
            try:
                if msg.worker_id != wid:
                    raise ProtocolError(f"rank {rank} answered as {msg.worker_id!r}, not {wid!r}", peer=rank)
                if msg.receipt_key != self.roster.keys.get(wid):
                    raise AttestError(
                        ErrorCode.KEY_BINDING, f"worker {wid} presented another receipt key than at admission"
                    )
                appraisal = self.admission.appraise(*attesting, wid, stage, msg, nonces[wid], renewal=True)
            except VerifierUnavailable as exc:
                unavailable = str(exc)
                continue
            except AttestError as exc:
                self.ctx.events.write("reattest_refused", worker=wid, rank=rank, code=str(exc.code), reason=exc.message)
                refused = (rank, str(exc.code), exc.message)
                continue
            except ValueError as exc:
                raise ProtocolError(f"rank {rank}: {exc}", peer=rank) from None
            self.ctx.events.write(
                "reattested",
                worker=wid,
                rank=rank,
                status=str(appraisal.result.status),
                expires_at=appraisal.result.expires_at.isoformat(),
            )
        if unavailable is not None:
            raise TrainingStopped(f"workers cannot be re-attested: {unavailable}")
        self.renewals += 1
        if refused is not None:
            self.faults.refuse(*refused)
