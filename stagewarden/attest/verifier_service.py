"""The attestation verifier as a service of its own: it holds the verifier's signing key and answers
a coordinator's requests (a nonce, an appraisal, its public key) over a Unix domain socket.

The service wraps an appraiser (the simulated vendor's :class:`~stagewarden.attest.verifier.Verifier`
or the Intel DCAP :class:`~stagewarden.attest.dcap_verifier.DcapVerifier`), built by whoever starts
the service from inputs the coordinator does not choose: the vendor's pinned root, the reference
values, the policy and the key folder. The coordinator only names the run, the worker, its stage,
the receipt key and the nonce that the result must bind (:mod:`stagewarden.attest.verifier_messages`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .binding import stage_label
from .dcap_verifier import DcapVerifier
from .errors import AttestError
from .nonces import NonceRegistry
from .verifier import Verifier
from .verifier_messages import (
    AppraisalReply,
    AppraiseRequest,
    ErrorReply,
    NonceReply,
    NonceRequest,
    PublicKeyReply,
    RefusedReply,
    VerifierProtocolError,
    encode_frame,
    parse_request,
    read_frame,
)

#: Seconds a connection may stay silent before the service closes it.
IDLE_SECONDS = 60.0
#: Connections served at once (more wait in the listen backlog).
MAX_CONNECTIONS = 16


Appraiser = Verifier | DcapVerifier
#: Builds the appraiser from what is on disk now; given the nonces already issued, it shares them.
Reload = Callable[[NonceRegistry | None], Appraiser]


class VerifierService:
    """Answers requests; safe to call from several connection threads.

    Every appraisal is made by an appraiser built afresh by ``reload`` (the vendor's CRLs and TCB
    info, or the DCAP collateral, as they are now: a device revoked since the last appraisal is
    refused), sharing the registry of the nonces issued so far; every appraiser signs with the
    same key, which ``reload`` holds.

    Args:
        reload: Builds the appraiser (called once here, then once per appraisal).

    Raises:
        AttestError, OSError, ValueError: The first appraiser cannot be built.
    """

    def __init__(self, reload: Reload) -> None:
        self.reload = reload
        self.appraiser: Appraiser = reload(None)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    @property
    def kind(self) -> Literal["simulated", "dcap"]:
        """``dcap`` or ``simulated``: the evidence the service appraises."""
        return "dcap" if isinstance(self.appraiser, DcapVerifier) else "simulated"

    def handle(self, payload: bytes) -> BaseModel:
        """The reply to one request frame's payload (never raises on bad input)."""
        try:
            request = parse_request(payload)
        except VerifierProtocolError as exc:
            return ErrorReply(message=str(exc))
        with self._lock:
            if isinstance(request, NonceRequest):
                return NonceReply(nonce=self.appraiser.issue_nonce().hex())
            if isinstance(request, AppraiseRequest):
                return self._appraise(request)
            return PublicKeyReply(key=bytes(self.appraiser.verify_key).hex(), kind=self.kind)

    def _appraise(self, request: AppraiseRequest) -> BaseModel:
        evidence = bytes.fromhex(request.evidence)
        key, nonce = bytes.fromhex(request.receipt_key), bytes.fromhex(request.nonce)
        try:
            appraiser = self.reload(self.appraiser.nonces)
        except (AttestError, OSError, ValueError) as exc:
            return ErrorReply(message=f"the verifier cannot load its endorsements: {str(exc)[:1000]}")
        self.appraiser = appraiser
        try:
            if isinstance(appraiser, DcapVerifier):
                stage = str(request.stage) if request.stage is not None else None
                token = appraiser.appraise_evidence(evidence, key, nonce, stage=stage).token
            else:
                token = appraiser.appraise_evidence(
                    evidence,
                    key,
                    nonce,
                    stage=stage_label(request.stage),
                    run_id=request.run_id,
                    worker=request.worker,
                ).token
        except AttestError as exc:
            return RefusedReply(code=str(exc.code), message=exc.message[:4000])
        except ValueError as exc:
            return ErrorReply(message=f"the evidence cannot be appraised: {str(exc)[:1000]}")
        return AppraisalReply(token=token.hex())

    def serve(self, path: Path, stop: threading.Event) -> None:
        """Listen on the Unix socket ``path`` (mode 0600) until ``stop`` is set, one thread per
        connection; the socket file is removed on return.

        Raises:
            OSError: ``path`` cannot be bound (another service listens there, or its folder is missing).
        """
        listener = bind_socket(path)
        try:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                if not self._slots.acquire(blocking=False):
                    conn.close()
                    continue
                threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                path.unlink()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IDLE_SECONDS)
                while True:
                    try:
                        payload = read_frame(conn)
                    except (VerifierProtocolError, OSError):
                        return
                    try:
                        reply = self.handle(payload)
                    except Exception as exc:  # noqa: BLE001 - a fault of the appraiser answers, not kills, the request
                        reply = ErrorReply(message=f"the verifier failed: {type(exc).__name__}: {str(exc)[:500]}")
                    conn.sendall(encode_frame(reply))
        except OSError:
            return
        finally:
            self._slots.release()


def bind_socket(path: Path) -> socket.socket:
    """A Unix stream socket listening on ``path``, mode 0600 (put it in a private folder: it is
    bound before its mode is set). A
    stale socket file (nobody listening) is replaced; a live one or any other file is refused.

    Raises:
        OSError: ``path`` is taken or cannot be bound.
    """
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise FileExistsError(f"a verifier already listens on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(MAX_CONNECTIONS)
    except OSError:
        listener.close()
        raise
    return listener
