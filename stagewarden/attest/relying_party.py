"""The relying party (RFC 9334 role): admits workers on the strength of the verifier's attestation results.

A worker is admitted only with a result that verifies under the pinned verifier key, is valid now,
attests exactly the receipt key the worker will sign with, names that worker (and, when the
caller gives them, the run and the stage: :mod:`stagewarden.attest.binding`), and shares neither
its receipt key nor its device with another admitted worker. An admission lasts until the
result expires; after that the worker must present a fresh result (re-attestation).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from nacl.signing import VerifyKey

from .binding import Binding, Holder, check_binding, check_not_shared
from .clock import Clock
from .ear import EarResult, is_ear_token, verify_ear
from .errors import AttestError, ErrorCode
from .result import AttestationResult, Status, verify_result


@dataclasses.dataclass(frozen=True)
class Admission:
    """A worker admitted on the strength of ``result`` (whose token is kept for audits): a simulated
    TEE result, or an EAR for a DCAP quote."""

    worker: str
    receipt_key: bytes
    result: AttestationResult | EarResult
    token: bytes

    @property
    def expires_at(self) -> dt.datetime:
        """When the admission (the result) expires."""
        return self.result.expires_at


class RelyingParty:
    """Admits workers with valid attestation results and tracks their admissions.

    Args:
        verifier_key: the pinned Ed25519 public key of the verifier.
        clock: the relying party's clock.
        accept_warning: whether results with status ``warning`` admit a worker (``affirming`` always does).
    """

    def __init__(self, verifier_key: VerifyKey, clock: Clock, accept_warning: bool = True) -> None:
        self.verifier_key = verifier_key
        self.clock = clock
        self.accept_warning = accept_warning
        self._admitted: dict[str, Admission] = {}

    def admit(
        self,
        worker: str,
        token: bytes,
        receipt_key: bytes,
        expected_nonce: bytes | None = None,
        *,
        run_id: str | None = None,
        stage: str | None = None,
    ) -> Admission:
        """Admit ``worker`` whose receipts will be signed by ``receipt_key``; raise
        :class:`~stagewarden.attest.errors.AttestError` if the result does not allow it.

        A result that names a worker must name ``worker``; with ``run_id`` or ``stage`` given, the
        result must name ``worker``, that run and that stage (``RESULT_BINDING``). Another worker
        admitted now with the same receipt key is ``KEY_SHARED``, with the same device
        ``DEVICE_SHARED``. A rejected re-attestation leaves an earlier admission in place until
        that one expires.
        """
        check = verify_ear if is_ear_token(token) else verify_result
        result = check(token, self.verifier_key, self.clock, expected_key=receipt_key, expected_nonce=expected_nonce)
        named_worker = result.worker if isinstance(result, AttestationResult) else None
        strict = run_id is not None or stage is not None
        check_binding(result, Binding(run_id, worker if strict or named_worker is not None else None, stage))
        now = self.clock.now()
        current = [Holder.of(a.worker, a.result) for a in self._admitted.values() if now < a.expires_at]
        check_not_shared(Holder.of(worker, result), current)
        if result.status is Status.WARNING and not self.accept_warning:
            raise AttestError(
                ErrorCode.RESULT_STATUS,
                f"attestation result has status warning ({', '.join(result.warnings)}) "
                "and this relying party wants affirming",
            )
        admission = Admission(worker, bytes(receipt_key), result, bytes(token))
        self._admitted[worker] = admission
        return admission

    def admission(self, worker: str) -> Admission:
        """The current, unexpired admission of ``worker``; raise WORKER_NOT_ADMITTED or RESULT_EXPIRED otherwise."""
        admission = self._admitted.get(worker)
        if admission is None:
            raise AttestError(ErrorCode.WORKER_NOT_ADMITTED, f"worker {worker!r} has not been admitted")
        now = self.clock.now()
        if now >= admission.expires_at:
            raise AttestError(
                ErrorCode.RESULT_EXPIRED,
                f"worker {worker!r}'s attestation result expired at {admission.expires_at.isoformat()}; "
                "it must re-attest",
            )
        return admission

    def check_receipt_key(self, worker: str, receipt_key: bytes) -> Admission:
        """Check that ``worker`` is admitted now and that ``receipt_key`` is the key its result attests."""
        admission = self.admission(worker)
        if admission.receipt_key != receipt_key:
            raise AttestError(ErrorCode.RESULT_KEY_MISMATCH, f"worker {worker!r} was admitted with another receipt key")
        return admission

    def is_admitted(self, worker: str) -> bool:
        """Whether ``worker`` holds an unexpired admission."""
        try:
            self.admission(worker)
        except AttestError:
            return False
        return True

    def needs_reattestation(self, worker: str, margin: dt.timedelta = dt.timedelta(0)) -> bool:
        """Whether ``worker`` must (re-)attest: not admitted, or its result expires within ``margin``."""
        admission = self._admitted.get(worker)
        return admission is None or self.clock.now() + margin >= admission.expires_at

    def evict(self, worker: str) -> None:
        """Forget ``worker``'s admission (for example after it was convicted of cheating)."""
        self._admitted.pop(worker, None)

    def admitted_workers(self) -> list[str]:
        """The workers whose admissions are unexpired now, sorted."""
        return sorted(w for w in self._admitted if self.is_admitted(w))
