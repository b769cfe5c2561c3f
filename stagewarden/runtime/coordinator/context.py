"""What every collaborator of the coordinator's engine shares: the run's constants, its event log,
and the run context (configuration, transport, run directory and the coordinator's keys)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError, FormatError
from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.receipt_log import ReceiptLog
from stagewarden.attest.rundir import RunDirWriter
from stagewarden.attest.step_heads import EventsChain
from stagewarden.attest.tensor_digest import digest_state_dict, gradients_digest
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.coordinator.errors import ResumeError
from stagewarden.runtime.responses import Response
from stagewarden.runtime.route import Route
from stagewarden.runtime.spotcheck import SampleSeed
from stagewarden.runtime.transport import Transport

#: The ``runtime_version`` of the keys this module adds to ``summary.json``.
RUNTIME_SUMMARY_VERSION = 1
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.csv"
#: Test-only hook: when set to ``1``, the coordinator fetches units after every commitment and
#: checks their digests against the receipts (event ``fetch_check``).
FETCH_CHECK_ENV = "STAGEWARDEN_TEST_FETCH_CHECK"

#: Domain of the coordinator's signature over a detection.
DETECTION_DOMAIN = b"stagewarden/runtime/detection/v1\x00"
#: The responses the engine carries out.
CARRIED_OUT = (Response.EJECT, Response.ROLLBACK, Response.RESTART, Response.SKIP_STAGE)
#: The folder of the run directory that holds the verified checkpoints.
CHECKPOINTS_DIR = "checkpoints"
#: ``workers.json``: every process of the run now (for operators).
WORKERS_FILE = "workers.json"
#: The suffix of the folder beside the run directory (``RUN_DIR.keys``, mode 0700) that keeps the
#: coordinator's private signing seed while the run can be resumed, so that a resumed coordinator
#: signs detections and step heads under the same key; removed when the run completes. It is not
#: in the run directory, which is meant to be shared, and it never holds the attestation
#: verifier's key (that lives in the verifier's own folder: :mod:`stagewarden.attest.verifier_keys`).
KEYS_SUFFIX = ".keys"
#: Exit code of a coordinator that stopped on a worker fault, leaving a resumable run directory.
EXIT_RESUMABLE = 75
#: The exceptions that processing a worker's message can raise on malformed content.
CONTENT_ERRORS = (AttestError, FormatError, ValueError, KeyError, TypeError, IndexError, OverflowError)


#: The digest (hex) of an optimizer state before its first update (no state yet).
EMPTY_OPTIMIZER = digest_state_dict({}).hex()
#: The digest of no accumulated gradients: what a step's first backward unit starts from.
NO_GRADS = gradients_digest([])
#: How many steps back the coordinator keeps each stage's gradient traces (for the checks of a
#: step's units, which may run while the next step computes, and of the update before a step).
TRACES_KEPT = 3


class EventLog:
    """``events.jsonl``: one JSON object per line, appended and flushed as events happen, with the
    hash chain over its lines (:class:`~stagewarden.attest.step_heads.EventsChain`) that each step
    head signs. Opening an existing file (a resumed run) takes up its chain from its lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.chain = EventsChain()
        if path.exists():
            for line in path.read_bytes().split(b"\n")[:-1]:
                self.chain.add(line)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, event: str, **fields: Any) -> None:
        """Append an event with the current UTC time."""
        record = {"time": dt.datetime.now(dt.UTC).isoformat(), "event": event, **fields}
        line = json.dumps(record, sort_keys=True)
        self._file.write(line + "\n")
        self._file.flush()
        self.chain.add(line.encode("utf-8"))

    def sync(self) -> None:
        """Make every line written so far durable (a step head signs them)."""
        if not self._file.closed:
            self._file.flush()
            os.fdatasync(self._file.fileno())

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def private_key(keys_dir: Path, name: str, create: bool) -> SigningKey:
    """The coordinator's signing key ``name``, kept (as its seed) in ``RUN_DIR.keys`` (see
    :data:`KEYS_SUFFIX`) so that a resumed coordinator signs under the same key. The attestation
    verifier's key is never one of them."""
    path = keys_dir / f"{name}.key"
    if create:
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        key = SigningKey.generate()
        atomic_write_text(path, bytes(key).hex() + "\n")
        return key
    try:
        return SigningKey(bytes.fromhex(path.read_text(encoding="utf-8").strip()))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{path}: the coordinator's {name} key cannot be read ({exc})") from None


@dataclasses.dataclass
class RunContext:
    """The run every collaborator of the engine works in: fixed once the run (or its resumed
    session) has started.

    Attributes:
        config: The run configuration.
        transport: The point-to-point transport (the coordinator is rank 0).
        run_dir: The run directory.
        keys_dir: ``RUN_DIR.keys``, the coordinator's private signing seeds (:data:`KEYS_SUFFIX`).
        vendor_dir: The simulated vendor folder whose root the verifier pins.
        heartbeats: The coordinator's end of the workers' heartbeat channel.
        run_id: The run id.
        session: 0 for the first session, then one more per resume.
        signing_key: The coordinator's key: it signs detections and the summary's view.
        writer: The run directory's writer.
        events: ``events.jsonl``.
        log: The receipt log (``None`` without receipts).
        verifier: The attestation verifier service (``None``: none given; a run with attestation
            then refuses admission).

    The keys, the writer, the event log and the receipt log are set when a new run starts or an
    interrupted one is taken up (:class:`~stagewarden.runtime.coordinator.resume.Resume`).
    """

    config: RunConfig
    transport: Transport
    run_dir: Path
    keys_dir: Path
    vendor_dir: str | None
    heartbeats: Any
    run_id: str
    session: int
    signing_key: SigningKey = dataclasses.field(init=False)
    writer: RunDirWriter = dataclasses.field(init=False)
    events: EventLog = dataclasses.field(init=False)
    log: ReceiptLog | None = dataclasses.field(init=False)
    verifier: VerifierClient | None = dataclasses.field(default=None, init=False)


@dataclasses.dataclass
class CurrentAttempt:
    """The computation of a step in progress, set by the engine as it starts one and read by the
    collaborators that check it.

    Attributes:
        route: How tensors flow in this computation (around a bypassed stage, if any).
        bypass: The stage this computation bypasses, if any.
        seed: With ``spot_check``: the sample's secret committed before the computation.
    """

    route: Route
    bypass: int | None = None
    seed: SampleSeed | None = None
