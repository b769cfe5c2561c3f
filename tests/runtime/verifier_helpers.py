"""A real attestation verifier service for the tests of one collaborator: the service of
:mod:`stagewarden.attest.verifier_service`, built as the verifier process builds it
(:func:`~stagewarden.runtime.verifier_process.appraiser_loader`), serving on a Unix socket from a
thread of the test process, and a client for it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from nacl.signing import SigningKey

from stagewarden.attest.clock import Clock, SystemClock
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.attest.verifier_service import VerifierService
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.verifier_process import appraiser_loader


@contextlib.contextmanager
def serving_verifier(
    config: RunConfig, vendor: Path | None, clock: Clock | None = None, key: SigningKey | None = None
) -> Iterator[VerifierClient]:
    """A client of a verifier service for ``config`` (simulated: trusting ``vendor``), signing with
    ``key`` (default: a new one), its clock ``clock``; the service stops on exit."""
    service = VerifierService(appraiser_loader(config, vendor, key or SigningKey.generate(), clock or SystemClock()))
    folder = Path(tempfile.mkdtemp(prefix="sw-verifier-test-"))  # short: a socket path has 108 bytes at most
    socket_path = folder / "verifier.sock"
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(socket_path, stop), daemon=True)
    thread.start()
    try:
        yield VerifierClient(socket_path, connect_seconds=10.0)
    finally:
        stop.set()
        thread.join(5)
        shutil.rmtree(folder, ignore_errors=True)
