"""The verifier (RFC 9334 role) for real TEE evidence: appraises Intel DCAP quotes and signs EAR results.

:meth:`DcapVerifier.appraise_evidence` has the shape of
:meth:`~stagewarden.attest.verifier.Verifier.appraise_evidence`: it takes the quote a worker's
:class:`~stagewarden.attest.providers.ConfigfsTsmProvider` fetched for the verifier's nonce and the
worker's receipt key, and fails closed with the first failed check's code. The nonce is consumed
once ``dcap-qvl`` has verified the quote, so forged bytes cannot burn an honest worker's nonce.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from .clock import Clock
from .collateral_cache import CollateralCache
from .dcap import Collateral, parse_collateral, verify_quote
from .dcap_policy import Binding, DcapPolicy, QuoteAppraisal, appraise_verified, load_dcap_policy
from .ear import EarResult, ear_from_appraisal, sign_ear
from .errors import AttestError
from .nonces import NonceRegistry


@dataclasses.dataclass(frozen=True)
class EarAppraisal:
    """What :meth:`DcapVerifier.appraise_evidence` returns: the appraisal, its EAR result and the signed token."""

    appraisal: QuoteAppraisal
    result: EarResult
    token: bytes


class DcapVerifier:
    """Appraises DCAP quotes under a :class:`~stagewarden.attest.dcap_policy.DcapPolicy`.

    Args:
        collateral: one bundle for every quote, or a cache that holds a bundle per platform.
        policy: the appraisal policy (statuses, reference values per stage, lifetimes).
        signing_key: the verifier's Ed25519 key; it signs the EAR results.
        clock: the verifier's clock (collateral validity and nonce expiry are judged by it).
        nonces: the registry of issued nonces to share with an earlier verifier; default: a new one.
    """

    kind = "dcap"

    def __init__(
        self,
        collateral: Collateral | CollateralCache,
        policy: DcapPolicy,
        signing_key: SigningKey,
        clock: Clock,
        nonces: NonceRegistry | None = None,
    ) -> None:
        self.collateral = collateral
        self.policy = policy
        self.signing_key = signing_key
        self.clock = clock
        self._nonces = nonces or NonceRegistry(clock, policy.nonce_lifetime_seconds)

    @property
    def verify_key(self) -> VerifyKey:
        """The public key relying parties pin to check results."""
        return self.signing_key.verify_key

    @property
    def nonces(self) -> NonceRegistry:
        """The nonces this verifier issued and those already answered."""
        return self._nonces

    def issue_nonce(self) -> bytes:
        """A fresh 32-byte nonce, valid for the policy's nonce lifetime and usable once."""
        return self._nonces.issue()

    def register_nonce(self, nonce: bytes) -> None:
        """Record ``nonce`` as issued by this verifier now."""
        self._nonces.register(nonce)

    def appraise_evidence(
        self, data: bytes, expected_key: bytes, nonce: bytes, stage: str | None = None
    ) -> EarAppraisal:
        """Appraise a quote that should bind ``nonce`` and ``expected_key``; with ``stage``, against
        that stage's reference values.

        Raises:
            AttestError: the first failed check, with its code.
        """
        if len(expected_key) != 32:
            raise ValueError(f"the expected receipt key is 32 bytes, not {len(expected_key)}")
        now = self.clock.now()
        source = self.collateral
        collateral = source.collateral_for(data) if isinstance(source, CollateralCache) else source
        verified = verify_quote(data, collateral, now)
        self._nonces.consume(nonce, now)
        appraisal = appraise_verified(verified, self.policy, Binding(nonce, bytes(expected_key)), stage)
        if not appraisal.accepted:
            code, message = appraisal.failures[0]
            raise AttestError(code, message)
        result = ear_from_appraisal(appraisal, self.policy, self.verify_key, now, nonce, bytes(expected_key))
        return EarAppraisal(appraisal, result, sign_ear(result, self.signing_key))

    @classmethod
    def from_files(
        cls,
        collateral: str | Path,
        policy: str | Path | None,
        signing_key: SigningKey,
        clock: Clock,
        nonces: NonceRegistry | None = None,
    ) -> DcapVerifier:
        """A verifier whose collateral is a bundle file or a cache folder, with the policy in a file
        (default: :class:`~stagewarden.attest.dcap_policy.DcapPolicy`).

        Raises:
            AttestError: COLLATERAL_MALFORMED or POLICY_MALFORMED.
            OSError: a file cannot be read.
        """
        path = Path(collateral)
        source = CollateralCache(path) if path.is_dir() else parse_collateral(path.read_bytes())
        loaded = load_dcap_policy(policy) if policy is not None else DcapPolicy()
        return cls(source, loaded, signing_key, clock, nonces)
