"""Shared helpers for the receipt, receipt-log and audit tests: synthetic runs and the tampering a
malicious worker or log writer would do (re-signing with the worker's own key where the attack
needs it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

from nacl.signing import SigningKey

from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, sign_header
from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    receipt_digest,
    sign_receipt,
)
from stagewarden.attest.step_roots import StepRoot, root_over, sign_root
from stagewarden.attest.synthetic import SyntheticRun, synthetic_run
from stagewarden.attest.tensor_digest import TensorDigest

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ENV = ExecutionEnv(torch_version="2.13.0", device="cpu", dtype="float32")


def make_receipt(key: SigningKey | None = None, **changes: object) -> Receipt:
    """A signed forward receipt of worker ``s0r0`` (fields overridable)."""
    fields: dict[str, object] = dict(
        run_id="run-1",
        worker_id="s0r0",
        stage=0,
        replica=0,
        step=3,
        micro_batch=1,
        kind=UnitKind.FORWARD,
        input_digest=bytes(range(32)),
        output_digest=bytes(range(32, 64)),
        weights_digest=bytes(range(64, 96)),
        env=ENV,
        signed_at=T0,
        prev_digest=chain_genesis("run-1", "s0r0"),
    )
    fields.update(changes)
    return sign_receipt(Receipt(**fields), key or SigningKey(bytes(32)))  # type: ignore[arg-type]


def make_header(key: SigningKey | None = None, **changes: object) -> SignedHeader:
    """A signed activation header from ``s0r0`` to stage 1 (fields overridable)."""
    fields: dict[str, object] = dict(
        run_id="run-1",
        sender="s0r0",
        sender_stage=0,
        sender_replica=0,
        receiver_stage=1,
        step=3,
        micro_batch=1,
        kind=TransferKind.ACTIVATION,
        tensor=TensorDigest("float32", (4, 8), bytes(range(32, 64))),
        signed_at=T0,
    )
    fields.update(changes)
    return sign_header(SignedHeader(**fields), key or SigningKey(bytes(32)))  # type: ignore[arg-type]


def small_run(**kwargs: object) -> SyntheticRun:
    """A 3-stage, 1-replica, 2-micro-batch, 2-step synthetic run (fast to make and audit)."""
    options: dict[str, object] = dict(run_id="run-1", stages=3, replicas=1, micro_batches=2, steps=2)
    options.update(kwargs)
    return synthetic_run(**options)  # type: ignore[arg-type]


def receipt_index(run: SyntheticRun, worker: str, step: int, mb: int, kind: UnitKind) -> int:
    """Position in ``run.entries`` of a worker's receipt for a unit."""
    for i, e in enumerate(run.entries):
        if isinstance(e, Receipt) and (e.worker_id, e.step, e.micro_batch, e.kind) == (worker, step, mb, kind):
            return i
    raise LookupError((worker, step, mb, kind))


def header_index(run: SyntheticRun, sender: str, step: int, mb: int, kind: TransferKind) -> int:
    """Position in ``run.entries`` of a sender's signed header for a transfer."""
    for i, e in enumerate(run.entries):
        if isinstance(e, SignedHeader) and (e.sender, e.step, e.micro_batch, e.kind) == (sender, step, mb, kind):
            return i
    raise LookupError((sender, step, mb, kind))


def rechain(run: SyntheticRun) -> None:
    """Recompute every worker's chain in log order and re-sign with its own key (a worker that lies
    consistently: its chain stays intact)."""
    prev: dict[str, bytes] = {}
    for i, e in enumerate(run.entries):
        if isinstance(e, Receipt):
            p = prev.get(e.worker_id, chain_genesis(e.run_id, e.worker_id))
            if e.prev_digest != p:
                e = sign_receipt(dataclasses.replace(e, prev_digest=p), run.keys[e.worker_id])
                run.entries[i] = e
            prev[e.worker_id] = receipt_digest(e)
    reroot(run)


def reroot(run: SyntheticRun) -> None:
    """Re-sign every step root over its worker's receipts (updates aside) and sent headers of its
    step as the entries now stand, in their order (a worker that lies consistently signs the root
    of what it lied about)."""
    for i, e in enumerate(run.entries):
        if not isinstance(e, StepRoot):
            continue
        receipts = [
            encode_receipt(r)
            for r in run.entries
            if isinstance(r, Receipt)
            and (r.worker_id, r.step) == (e.worker_id, e.step)
            and r.kind is not UnitKind.UPDATE
        ]
        sent = [
            encode_header(h)
            for h in run.entries
            if isinstance(h, SignedHeader) and (h.sender, h.step) == (e.worker_id, e.step)
        ]
        unsigned = root_over(e.run_id, e.worker_id, e.stage, e.replica, e.step, receipts, sent)
        run.entries[i] = sign_root(unsigned, run.keys[e.worker_id])


def lie(run: SyntheticRun, index: int, **changes: object) -> None:
    """Change fields of the entry at ``index``, re-sign it with its worker's key and re-chain."""
    e = run.entries[index]
    worker = e.worker_id if isinstance(e, Receipt) else e.sender
    changed = dataclasses.replace(e, **changes)  # type: ignore[arg-type]
    signer = sign_receipt if isinstance(changed, Receipt) else sign_header
    run.entries[index] = signer(changed, run.keys[worker])  # type: ignore[operator]
    rechain(run)


def write_run(
    tmp_path: Path, run: SyntheticRun, mutate: Callable[[SyntheticRun], None] | None = None, name: str = "run"
) -> Path:
    """Apply ``mutate`` to the run, then write it under ``tmp_path``; return the run directory."""
    if mutate is not None:
        mutate(run)
    return run.write(tmp_path / name)


# -- Hypothesis strategies for receipts and headers ----------------------------------------------

from hypothesis import strategies as st  # noqa: E402

from stagewarden.attest.receipts import EnvFlag  # noqa: E402

ids = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)
texts = st.from_regex(r"[\x20-\x7e]{0,30}", fullmatch=True)
digests = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
instants = st.integers(0, 2**52).map(lambda us: dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us))
envs = st.builds(ExecutionEnv, torch_version=texts, device=texts, dtype=texts, flags=st.integers(0, 31).map(EnvFlag))


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    """Any valid signed receipt."""
    return sign_receipt(
        Receipt(
            run_id=draw(ids),
            worker_id=draw(ids),
            stage=draw(u32),
            replica=draw(u32),
            step=draw(u64),
            micro_batch=draw(u32),
            kind=draw(st.sampled_from(list(UnitKind))),
            input_digest=draw(digests),
            output_digest=draw(digests),
            weights_digest=draw(digests),
            env=draw(envs),
            signed_at=draw(instants),
            prev_digest=draw(digests),
        ),
        SigningKey(draw(digests)),
    )


@st.composite
def headers(draw: st.DrawFn) -> SignedHeader:
    """Any valid signed header."""
    kind = draw(st.sampled_from(list(TransferKind)))
    stage = draw(st.integers(0 if kind is TransferKind.ACTIVATION else 1, 2**32 - 2))
    to = stage + 1 if kind is TransferKind.ACTIVATION else stage - 1
    shape = tuple(draw(st.lists(u64, max_size=16)))
    return sign_header(
        SignedHeader(
            run_id=draw(ids),
            sender=draw(ids),
            sender_stage=stage,
            sender_replica=draw(u32),
            receiver_stage=to,
            step=draw(u64),
            micro_batch=draw(u32),
            kind=kind,
            tensor=TensorDigest(draw(texts), shape, draw(digests)),
            signed_at=draw(instants),
        ),
        SigningKey(draw(digests)),
    )
