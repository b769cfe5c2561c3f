"""Single-use verifier nonces: issued with a lifetime, consumed once, remembered for a day after expiry."""

from __future__ import annotations

import datetime as dt
import secrets

from .clock import Clock
from .errors import AttestError, ErrorCode

#: The size of a nonce, in bytes.
NONCE_BYTES = 32


class NonceRegistry:
    """The nonces a verifier issued and the ones already answered.

    Args:
        clock: the verifier's clock.
        lifetime_seconds: how long an issued nonce may be answered.
    """

    def __init__(self, clock: Clock, lifetime_seconds: int) -> None:
        self.clock = clock
        self.lifetime = dt.timedelta(seconds=lifetime_seconds)
        self._issued: dict[bytes, dt.datetime] = {}
        self._used: dict[bytes, dt.datetime] = {}

    def issue(self) -> bytes:
        """A fresh random nonce, registered as issued now."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.register(nonce)
        return nonce

    def register(self, nonce: bytes) -> None:
        """Record ``nonce`` as issued now (for a nonce handed out by another channel)."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
        self._prune()
        if nonce in self._issued or nonce in self._used:
            raise ValueError("this nonce was already issued")
        self._issued[nonce] = self.clock.now() + self.lifetime

    def _prune(self) -> None:
        now = self.clock.now()
        grace = dt.timedelta(days=1)
        for table in (self._issued, self._used):
            for nonce in [n for n, expiry in table.items() if expiry + grace < now]:
                del table[nonce]

    def consume(self, nonce: bytes, now: dt.datetime) -> None:
        """Mark ``nonce`` answered; raise NONCE_REUSED, NONCE_UNKNOWN or NONCE_EXPIRED when it may not be."""
        if nonce in self._used:
            raise AttestError(ErrorCode.NONCE_REUSED, "the nonce was already used by an earlier appraisal")
        expiry = self._issued.get(nonce)
        if expiry is None:
            raise AttestError(ErrorCode.NONCE_UNKNOWN, "the nonce was not issued by this verifier")
        del self._issued[nonce]
        self._used[nonce] = expiry
        if now >= expiry:
            raise AttestError(ErrorCode.NONCE_EXPIRED, f"the nonce expired at {expiry.isoformat()}")
