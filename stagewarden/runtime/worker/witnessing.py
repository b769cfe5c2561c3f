"""A worker's part in sealing the run's record: it checks every step head the coordinator sends
against what it knows itself, cosigns it and keeps both in its witness file
(:mod:`stagewarden.attest.witness`)."""

from __future__ import annotations

from pathlib import Path

from stagewarden.attest.errors import AttestError
from stagewarden.attest.step_heads import chains_digest, cosign, roster_digest
from stagewarden.attest.witness import WitnessEntry, WitnessWriter, witness_path
from stagewarden.runtime.protocol import Cosigned, WitnessHead
from stagewarden.runtime.worker.signing import Signer


class Witness:
    """Checks, cosigns and keeps the coordinator's step heads for one worker.

    Args:
        folder: Where the witness file goes (``None``: the worker keeps no file, and only cosigns).
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.coordinator_key = b""
        self._writer: WitnessWriter | None = None
        self._last: tuple[int, int] | None = None
        """(sequence, session) of the last head cosigned."""

    def start(self, coordinator_key: bytes) -> None:
        """Pin the coordinator's key (from its hello) for every head of the run."""
        self.coordinator_key = coordinator_key

    def on_head(self, msg: WitnessHead, signer: Signer) -> Cosigned:
        """Cosign ``msg``'s head if it matches this worker's view, and keep it; else say why not."""
        problem = self._check(msg, signer)
        if problem is not None:
            return Cosigned(None, f"worker {signer.worker_id} will not cosign head {msg.head.head.sequence}: {problem}")
        head = msg.head.head
        cosignature = cosign(head, signer.worker_id, signer.key)
        if self.folder is not None:
            if self._writer is None:
                self._writer = WitnessWriter(witness_path(self.folder, signer.worker_id))
            self._writer.append(WitnessEntry(head=msg.head, cosignature=cosignature), durable=head.final)
        self._last = (head.sequence, head.session)
        return Cosigned(cosignature)

    def close(self) -> None:
        """Sync and close the witness file."""
        if self._writer is not None:
            self._writer.close()

    def _check(self, msg: WitnessHead, signer: Signer) -> str | None:
        head = msg.head.head
        try:
            msg.head.verify(self.coordinator_key)
        except AttestError as exc:
            return exc.message
        if head.run_id != signer.run_id:
            return f"it is for run {head.run_id}, not {signer.run_id}"
        if self._last is not None:  # a rollback lowers the step count: only the numbering must follow
            sequence, session = self._last
            if head.sequence != sequence + 1 or head.session < session:
                return f"it does not follow head {sequence} (session {session})"
        if roster_digest(list(msg.roster)) != bytes.fromhex(head.roster_digest):
            return "the roster sent with it is not the roster it signs"
        if chains_digest(msg.chains) != bytes.fromhex(head.chains_digest):
            return "the chain heads sent with it are not the ones it signs"
        own_key = bytes(signer.key.verify_key).hex()
        if signer.stage is not None:
            entry = next((e for e in msg.roster if (e.stage, e.replica) == (signer.stage, signer.pipeline)), None)
            if entry is None or entry.worker != signer.worker_id or entry.key != own_key:
                return f"its roster does not name this worker with its key for stage {signer.stage}"
            if msg.chains.get(signer.worker_id) != signer.prev:
                return "it names another receipt-chain head for this worker than its last receipt"
        elif any(e.worker == signer.worker_id for e in msg.roster):
            return "its roster gives this standby a stage it was never assigned"
        return None
