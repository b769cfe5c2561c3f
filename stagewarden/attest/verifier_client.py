"""The coordinator's side of the attestation verifier service: ask for nonces, appraisals and the
verifier's public key over its Unix socket (:mod:`stagewarden.attest.verifier_service`).

Every call has a deadline. A verifier that is gone, silent or answers anything but a well-formed
reply of the kind asked for raises :class:`VerifierUnavailable` with one line that says so; a
refused piece of evidence raises :class:`~stagewarden.attest.errors.AttestError` with the
verifier's code, as an in-process verifier would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nacl.signing import VerifyKey
from pydantic import BaseModel

from .errors import AttestError, ErrorCode
from .verifier_messages import (
    AppraisalReply,
    AppraiseRequest,
    ErrorReply,
    NonceReply,
    NonceRequest,
    PublicKeyReply,
    PublicKeyRequest,
    RefusedReply,
    VerifierProtocolError,
    encode_frame,
    parse_reply,
    read_frame,
)

#: Seconds a request may take (a DCAP appraisal runs ``dcap-qvl``).
REQUEST_SECONDS = 30.0
#: Seconds to wait for a verifier that is starting to accept connections (one started for the run
#: computes its reference values first).
CONNECT_SECONDS = 120.0
#: Seconds to wait for a verifier run by someone else (``--verifier SOCKET``), which should be up.
EXTERNAL_CONNECT_SECONDS = 10.0
_R = TypeVar("_R", bound=BaseModel)


class VerifierUnavailable(Exception):
    """The verifier service cannot be reached or broke its protocol; the message says which."""


class VerifierClient:
    """Talks to the verifier service listening on ``socket_path``.

    Args:
        socket_path: The service's Unix socket.
        request_seconds: The deadline of each request.
        connect_seconds: How long the first connection waits for the service to start listening.
        alive: Called while waiting to connect: ``None`` when the service may still come up, else
            why it will not (its process exited, say), which ends the wait at once.
    """

    def __init__(
        self,
        socket_path: str | Path,
        request_seconds: float = REQUEST_SECONDS,
        connect_seconds: float = CONNECT_SECONDS,
        alive: Callable[[], str | None] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.request_seconds = request_seconds
        self.connect_seconds = connect_seconds
        self.alive = alive
        self._reached = False
        self._key: VerifyKey | None = None
        self.kind = ""
        """``simulated`` or ``dcap``, once :meth:`public_key` has been asked."""

    def public_key(self) -> VerifyKey:
        """The verifier's public key (asked once, then remembered)."""
        if self._key is None:
            reply = self._call(PublicKeyRequest(), PublicKeyReply)
            self._key, self.kind = VerifyKey(bytes.fromhex(reply.key)), reply.kind
        return self._key

    def issue_nonce(self) -> bytes:
        """A fresh nonce the verifier will accept once."""
        return bytes.fromhex(self._call(NonceRequest(), NonceReply).nonce)

    def appraise(
        self, run_id: str, worker: str, stage: int | None, receipt_key: bytes, nonce: bytes, evidence: bytes
    ) -> bytes:
        """The signed result (token) for ``evidence`` of ``worker`` in run ``run_id``, admitted for
        ``stage``, which must bind ``nonce`` and ``receipt_key``.

        Raises:
            AttestError: The verifier refused the evidence (its code and reason).
            VerifierUnavailable: The verifier cannot be reached or answered out of protocol.
        """
        request = AppraiseRequest(
            run_id=run_id,
            worker=worker,
            stage=stage,
            receipt_key=receipt_key.hex(),
            nonce=nonce.hex(),
            evidence=evidence.hex(),
        )
        return bytes.fromhex(self._call(request, AppraisalReply).token)

    def _call(self, request: BaseModel, expected: type[_R]) -> _R:
        where = f"the attestation verifier at {self.socket_path}"
        try:
            with self._connect(where) as conn:
                conn.settimeout(self.request_seconds)
                conn.sendall(encode_frame(request))
                reply = parse_reply(read_frame(conn))
        except TimeoutError:
            raise VerifierUnavailable(f"{where} did not answer within {self.request_seconds:g} s") from None
        except VerifierProtocolError as exc:
            raise VerifierUnavailable(f"{where} broke the protocol: {exc}") from None
        except OSError as exc:
            raise VerifierUnavailable(f"{where} cannot be reached ({exc.strerror or exc})") from None
        if isinstance(reply, expected):
            return reply
        if isinstance(reply, RefusedReply):
            try:
                code = ErrorCode(reply.code)
            except ValueError:
                raise VerifierUnavailable(f"{where} refused with an unknown code {reply.code[:64]!r}") from None
            raise AttestError(code, reply.message)
        if isinstance(reply, ErrorReply):
            raise VerifierUnavailable(f"{where} failed: {reply.message[:500]}")
        raise VerifierUnavailable(f"{where} answered {reply.op!r} to a {request.op!r} request")  # type: ignore[attr-defined]

    def _connect(self, where: str) -> socket.socket:
        """A connection to the service; the first one waits up to ``connect_seconds`` for it to listen."""
        deadline = time.monotonic() + (0.0 if self._reached else self.connect_seconds)
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                conn.close()
                gone = self.alive() if self.alive is not None else None
                if gone is not None:
                    raise VerifierUnavailable(f"{where} is not running: {gone}") from None
                if time.monotonic() >= deadline:
                    waited = f" within {self.connect_seconds:g} s" if not self._reached else ""
                    raise VerifierUnavailable(f"{where} is not listening{waited} ({exc.strerror})") from None
                time.sleep(0.1)
                continue
            except OSError:
                conn.close()
                raise
            self._reached = True
            return conn
