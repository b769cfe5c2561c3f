"""The framed transport and the receiver's checks of signed headers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nacl.signing import SigningKey
from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, sign_header
from stagewarden.attest.tensor_digest import TensorDigest, tensor_digest
from stagewarden.runtime.launch import free_port
from stagewarden.runtime.transport import Expected, HeaderRejected, Transport, TransportError, check_header

SENDER = SigningKey(bytes(range(32)))
SHAPE = (2, 3, 4)


def _expected(**overrides: object) -> Expected:
    base = dict(
        run_id="r",
        sender="s0r0",
        sender_key=bytes(SENDER.verify_key),
        sender_stage=0,
        receiver_stage=1,
        step=0,
        micro_batch=1,
        kind=TransferKind.ACTIVATION,
        dtype="float32",
        shape=SHAPE,
    )
    base.update(overrides)
    return Expected(**base)  # type: ignore[arg-type]


def _header(value: torch.Tensor, key: SigningKey = SENDER, **overrides: object) -> bytes:
    header = SignedHeader(
        run_id="r",
        sender="s0r0",
        sender_stage=0,
        sender_replica=0,
        receiver_stage=1,
        step=0,
        micro_batch=1,
        kind=TransferKind.ACTIVATION,
        tensor=tensor_digest(value),
        signed_at=dt.datetime.now(dt.UTC),
    )
    return encode_header(sign_header(dataclasses.replace(header, **overrides), key))


def test_check_header_accepts_a_genuine_header() -> None:
    """A header signed by the expected sender for the expected transfer is accepted."""
    assert check_header(_header(torch.zeros(SHAPE)), _expected()).micro_batch == 1


def test_check_header_rejects_a_forged_header() -> None:
    """A header signed by any key but the sender's attested key is rejected as HEADER_SIGNATURE."""
    with pytest.raises(HeaderRejected) as info:
        check_header(_header(torch.zeros(SHAPE), key=SigningKey.generate()), _expected())
    assert info.value.code == "HEADER_SIGNATURE"


@pytest.mark.parametrize(
    "overrides",
    [{"step": 1}, {"micro_batch": 0}, {"tensor": TensorDigest("float32", (2, 3, 5), bytes(32))}],
)
def test_check_header_rejects_another_transfer(overrides: dict[str, object]) -> None:
    """A genuine header for another step, micro-batch or shape is rejected as HEADER_MISMATCH."""
    with pytest.raises(HeaderRejected) as info:
        check_header(_header(torch.zeros(SHAPE), **overrides), _expected())
    assert info.value.code == "HEADER_MISMATCH"


def _peer(rank: int, port: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=dt.timedelta(seconds=30))
    t = Transport()
    tensor = torch.arange(24, dtype=torch.float32).reshape(SHAPE)
    try:
        if rank == 0:
            t.send_bytes(1, b"\x00frame\xff")
            t.send_bytes(1, b"")
            t.send_json(1, {"type": "hello", "n": 3})
            template = SignedHeader(
                run_id="r",
                sender="s0r0",
                sender_stage=0,
                sender_replica=0,
                receiver_stage=1,
                step=0,
                micro_batch=1,
                kind=TransferKind.ACTIVATION,
                tensor=TensorDigest("float32", (), bytes(32)),
                signed_at=dt.datetime.now(dt.UTC),
            )
            t.send_signed(1, tensor, template, SENDER, blocking=False)
            queue.put(("sent", True))
            t.send_signed(1, tensor, template, SigningKey.generate(), blocking=False)  # forged
            try:
                t.flush()  # the receiver refuses the header and never takes the tensor
            except TransportError:
                pass
        else:
            got = [t.recv_bytes(0), t.recv_bytes(0), t.recv_json(0, "hello")]
            received, header, _ = t.recv_signed(0, _expected())
            try:
                t.recv_signed(0, _expected())
                forged = "accepted"
            except HeaderRejected as exc:
                forged = exc.code
            queue.put(("received", (got, bool(torch.equal(received, tensor)), header.step, forged)))
    finally:
        dist.destroy_process_group()


def test_round_trip_between_two_processes() -> None:
    """Frames, JSON and a signed tensor cross gloo intact; a forged header is refused on receipt."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_peer, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    got, equal, step, forged = results["received"]
    assert got == [b"\x00frame\xff", b"", {"type": "hello", "n": 3}]
    assert equal and step == 0 and forged == "HEADER_SIGNATURE"
