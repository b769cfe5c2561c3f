"""A synthetic run: the receipts, signed headers and attestation results of a simulated pipeline.

It runs no model: activation and gradient digests are derived from their coordinates, so a run of
any size is made in seconds. Every worker has an Ed25519 receipt key attested by a result token
signed with a verifier key (all keys derived from a seed, so runs are reproducible). Demos, the
documentation's example, tests and benchmarks use it to make run directories, and tests tamper
with :attr:`SyntheticRun.entries` before writing to check that the auditor finds each attack.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import blake3
from nacl.signing import SigningKey

from .audit_seal import final_roster
from .headers import SignedHeader, TransferKind, encode_header, sign_header
from .receipt_log import ReceiptLog, SyncPolicy
from .receipts import ExecutionEnv, Receipt, UnitKind, chain_genesis, encode_receipt, receipt_digest, sign_receipt
from .result import AttestationResult, Status, sign_result
from .run_record import RunRecord
from .run_record_parts import WorkerInfo
from .rundir import RunDirWriter
from .step_heads import EVENTS_GENESIS, StepHead, chains_digest, cosign, roster_digest, sign_head
from .step_roots import StepRoot, root_over, sign_root
from .tensor_digest import TensorDigest
from .token import key_id

#: The default start of a synthetic run's clock.
DEFAULT_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

Entry = Receipt | SignedHeader | StepRoot


def derive_key(seed: str, name: str) -> SigningKey:
    """A deterministic Ed25519 key for ``name`` under ``seed`` (synthetic runs only)."""
    return SigningKey(blake3.blake3(f"stagewarden/synthetic-key/{seed}/{name}".encode()).digest())


def synthetic_digest(*label: object) -> bytes:
    """A deterministic 32-byte digest standing for a tensor identified by ``label``."""
    return blake3.blake3(("stagewarden/synthetic/" + "/".join(map(str, label))).encode()).digest()


@dataclasses.dataclass
class SyntheticRun:
    """A simulated run, ready to be written as a run directory.

    Attributes:
        summary: the run record (identity and shape only: a synthetic run trains nothing).
        verifier: the verifier's signing key (its public half is the key to pin).
        keys: each worker's receipt signing key.
        results: each worker's attestation result tokens.
        entries: the log's receipts and signed headers, in log order.
        coordinator: the coordinator's signing key, which seals the log (its public half is the
            coordinator key to pin).
        sealed: whether :meth:`write` ends the log with a final step head and its cosignatures.
    """

    summary: RunRecord
    verifier: SigningKey
    keys: dict[str, SigningKey]
    results: dict[str, list[bytes]]
    entries: list[Entry]
    coordinator: SigningKey = dataclasses.field(default_factory=SigningKey.generate)
    sealed: bool = True

    @property
    def coordinator_key(self) -> bytes:
        """The coordinator's 32-byte public key."""
        return bytes(self.coordinator.verify_key)

    @property
    def verifier_key(self) -> bytes:
        """The verifier's 32-byte public key."""
        return bytes(self.verifier.verify_key)

    def write(self, path: str | os.PathLike[str], *, sync: SyncPolicy = "none") -> Path:
        """Write the run directory at ``path`` (which must not hold a run yet); return its path."""
        writer = RunDirWriter(path, self.summary)
        writer.write_verifier_key(self.verifier_key)
        for worker, tokens in self.results.items():
            writer.write_results(worker, tokens)
        writer.write_coordinator_key(self.coordinator_key)
        with writer.create_log(sync=sync) as log:
            for entry in self.entries:
                if isinstance(entry, Receipt):
                    log.append_receipt(entry)
                elif isinstance(entry, StepRoot):
                    log.append_root(entry)
                else:
                    log.append_header(entry)
            if self.sealed:
                self._seal(log)
        return Path(path)

    def _seal(self, log: ReceiptLog) -> None:
        """End the log as a run's coordinator does: a final step head over the log and the summary,
        cosigned by every worker that serves a stage at the end."""
        signing = {e.worker_id: e.signer_key for e in self.entries if isinstance(e, Receipt)}
        roster = final_roster(self.summary, signing) or final_roster(
            self.summary, {w: bytes(k.verify_key) for w, k in self.keys.items()}
        )
        entries = roster or []
        chains = {e.worker_id: receipt_digest(e) for e in self.entries if isinstance(e, Receipt)}
        head = StepHead(
            run_id=self.summary.run_id,
            sequence=0,
            session=0,
            steps=self.summary.steps,
            records=len(log),
            log_digest=log.head.hex(),
            events=0,
            events_digest=EVENTS_GENESIS.hex(),
            roster_digest=roster_digest(entries).hex(),
            chains_digest=chains_digest(chains).hex(),
            final=True,
            status="completed",
            summary_digest=blake3.blake3(self.summary.to_json().encode("utf-8")).hexdigest(),
        )
        log.append_head(sign_head(head, self.coordinator))
        for entry in entries:
            key = self.keys.get(entry.worker)
            if key is not None:
                log.append_cosignature(cosign(head, entry.worker, key))


def attestation_result(
    verifier: SigningKey,
    key: bytes,
    worker: str,
    issued_at: dt.datetime,
    lifetime: dt.timedelta,
    *,
    run_id: str | None = None,
    stage: int | None = None,
) -> bytes:
    """A signed affirming result token attesting ``key`` (as the evidence verifier would issue it),
    bound to ``worker`` and, when given, to ``run_id`` and ``stage``."""
    result = AttestationResult(
        status=Status.AFFIRMING,
        checks=(("measurement", "pass"),),
        attested_key=key,
        nonce=synthetic_digest("nonce", worker)[:16],
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        device_id=synthetic_digest("device", worker)[:8].hex(),
        hardware_model="simulated-tee",
        measurement=synthetic_digest("measurement").hex(),
        tcb_status="UpToDate",
        verifier_id=key_id(verifier.verify_key),
        run_id=run_id,
        worker=worker,
        stage=str(stage) if stage is not None else None,
    )
    return sign_result(result, verifier)


def synthetic_run(
    run_id: str = "demo",
    *,
    stages: int = 2,
    replicas: int = 1,
    micro_batches: int = 2,
    steps: int = 1,
    headers: bool = True,
    roots: bool = True,
    start: dt.datetime = DEFAULT_START,
    attestation_lifetime: dt.timedelta = dt.timedelta(days=1),
    seed: str = "demo",
) -> SyntheticRun:
    """Simulate a run: per step, forward for every micro-batch through the stages, backward back
    through them, then one update per worker; each transfer between stages with a signed header.
    With ``roots``, each worker's signed step root over its forward and backward receipts and the
    headers it sent follows them, before the updates, as a run's coordinator logs them.

    Receipts are signed 1 ms apart from ``start``; each worker's attestation is issued a minute
    before ``start`` and lasts ``attestation_lifetime``.
    """
    verifier = derive_key(seed, "verifier")
    workers = [WorkerInfo(f"s{s}r{r}", s, r) for r in range(replicas) for s in range(stages)]
    summary = RunRecord(
        run_id=run_id, stages=stages, replicas=replicas, micro_batches=micro_batches, steps=steps, workers=workers
    )
    keys = {w.id: derive_key(seed, w.id) for w in workers}
    issued = start - dt.timedelta(minutes=1)
    results = {
        w.id: [
            attestation_result(
                verifier, bytes(keys[w.id].verify_key), w.id, issued, attestation_lifetime, run_id=run_id, stage=w.stage
            )
        ]
        for w in workers
    }
    env = ExecutionEnv(torch_version="2.13.0", device="cpu", dtype="float32")
    prev = {w.id: chain_genesis(run_id, w.id) for w in workers}
    entries: list[Entry] = []
    clock = [start]
    covered: dict[str, tuple[list[bytes], list[bytes]]] = {}  # per worker: this step's receipts, headers

    def tick() -> dt.datetime:
        clock[0] += dt.timedelta(milliseconds=1)
        return clock[0]

    def receipt(stage: int, replica: int, step: int, mb: int, kind: UnitKind, inp: bytes, out: bytes) -> None:
        worker = f"s{stage}r{replica}"
        r = sign_receipt(
            Receipt(
                run_id=run_id,
                worker_id=worker,
                stage=stage,
                replica=replica,
                step=step,
                micro_batch=mb,
                kind=kind,
                input_digest=inp,
                output_digest=out,
                weights_digest=synthetic_digest("weights", stage, step),
                env=env,
                signed_at=tick(),
                prev_digest=prev[worker],
            ),
            keys[worker],
        )
        prev[worker] = receipt_digest(r)
        entries.append(r)
        if roots and kind is not UnitKind.UPDATE:
            covered.setdefault(worker, ([], []))[0].append(encode_receipt(r))

    def header(stage: int, replica: int, step: int, mb: int, kind: TransferKind, digest: bytes) -> None:
        if not headers:
            return
        worker = f"s{stage}r{replica}"
        to = stage + 1 if kind is TransferKind.ACTIVATION else stage - 1
        signed = sign_header(
            SignedHeader(
                run_id=run_id,
                sender=worker,
                sender_stage=stage,
                sender_replica=replica,
                receiver_stage=to,
                step=step,
                micro_batch=mb,
                kind=kind,
                tensor=TensorDigest("float32", (8, 64), digest),
                signed_at=tick(),
            ),
            keys[worker],
        )
        entries.append(signed)
        if roots:
            covered.setdefault(worker, ([], []))[1].append(encode_header(signed))

    def root(stage: int, replica: int, step: int) -> None:
        worker = f"s{stage}r{replica}"
        if roots:
            receipts, sent = covered.pop(worker, ([], []))
            entries.append(sign_root(root_over(run_id, worker, stage, replica, step, receipts, sent), keys[worker]))

    for step in range(steps):
        for replica in range(replicas):
            for mb in range(micro_batches):
                act = synthetic_digest("data", replica, step, mb)
                for stage in range(stages):
                    out = synthetic_digest("activation", replica, step, mb, stage)
                    receipt(stage, replica, step, mb, UnitKind.FORWARD, act, out)
                    if stage + 1 < stages:
                        header(stage, replica, step, mb, TransferKind.ACTIVATION, out)
                    act = out
                grad = synthetic_digest("loss-gradient", replica, step, mb)
                for stage in reversed(range(stages)):
                    out = synthetic_digest("gradient", replica, step, mb, stage)
                    receipt(stage, replica, step, mb, UnitKind.BACKWARD, grad, out)
                    if stage > 0:
                        header(stage, replica, step, mb, TransferKind.GRADIENT, out)
                    grad = out
            for stage in range(stages):
                root(stage, replica, step)
            for stage in range(stages):
                receipt(
                    stage,
                    replica,
                    step,
                    0,
                    UnitKind.UPDATE,
                    synthetic_digest("gradients", replica, step, stage),
                    synthetic_digest("weights", stage, step + 1),
                )
    return SyntheticRun(
        summary=summary,
        verifier=verifier,
        keys=keys,
        results=results,
        entries=entries,
        coordinator=derive_key(seed, "coordinator"),
    )
