"""The launch measurement of a stage worker: digests of its code, its configuration and its initial weights.

A worker computes :func:`stage_measurement` over what it will actually run; the coordinator
computes the same value from its own copy of the code, the configuration and the initial weights
it derives from the seed, and takes those as the verifier's reference values. A worker whose code,
configuration or weights differ gets another measurement and is refused at admission.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stagewarden.attest.evidence import measure_stage
from stagewarden.attest.token import canonical_json
from stagewarden.runtime.config import RunConfig

#: The folder whose ``.py`` files make up the measured code.
RUNTIME_SOURCE = Path(__file__).resolve().parent


def code_digest(folder: Path = RUNTIME_SOURCE) -> bytes:
    """SHA-256 over the runtime's source files, sorted by name (each as its relative name, a NUL,
    its length and its bytes)."""
    h = hashlib.sha256(b"stagewarden/runtime-code/v1\x00")
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        h.update(path.relative_to(folder).as_posix().encode() + b"\x00" + len(data).to_bytes(8, "big") + data)
    return h.digest()


def stage_config(config: RunConfig, stage: int | None) -> bytes:
    """Canonical JSON of what a worker measures of the configuration: the run configuration and
    its stage (``None`` for a standby)."""
    return canonical_json({"run": config.measured_json(), "stage": stage})


def stage_measurement(config: RunConfig, stage: int | None, weights_digest: bytes | None, code: bytes) -> bytes:
    """The measurement of a worker for ``stage`` whose initial weights have this
    :func:`~stagewarden.attest.tensor_digest.digest_state_dict` (``None`` for a standby: no weights yet)."""
    digest = weights_digest if weights_digest is not None else hashlib.sha256(b"standby").digest()
    return measure_stage(code, stage_config(config, stage), digest)
