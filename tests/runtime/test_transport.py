"""The framed transport and the receiver's checks of signed headers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_helpers import activation_header
from nacl.signing import SigningKey

from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, sign_header
from stagewarden.attest.tensor_digest import TensorDigest, tensor_digest
from stagewarden.runtime.launch import free_port
from stagewarden.runtime.transport import (
    HEADER_SLOT,
    Expected,
    HeaderRejected,
    Transport,
    TransportError,
    check_header,
)

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
    header = dataclasses.replace(_template(), tensor=tensor_digest(value))
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


def _template() -> SignedHeader:
    """The header of stage 0's activation of micro-batch 1, signed now (its digest is filled in when sent)."""
    return activation_header(signed_at=dt.datetime.now(dt.UTC))


def _run_pair(target: Any) -> dict[str, Any]:
    """Run ``target(rank, port, queue)`` as ranks 0 and 1 of a gloo group; return what they put."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=target, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    return results


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
            template = _template()
            t.send_signed(1, tensor, template, SENDER, blocking=False)
            queue.put(("sent", True))
            t.send_signed(1, tensor, template, SigningKey.generate(), blocking=False)  # forged
            try:
                t.flush()  # the receiver refuses the transfer (the send may complete or fail)
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
    results = _run_pair(_peer)
    got, equal, step, forged = results["received"]
    assert got == [b"\x00frame\xff", b"", {"type": "hello", "n": 3}]
    assert equal and step == 0 and forged == "HEADER_SIGNATURE"


def _unsigned_peer(rank: int, port: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=dt.timedelta(seconds=30))
    t = Transport(signed=False)
    tensor = torch.arange(24, dtype=torch.float32).reshape(SHAPE)
    try:
        if rank == 0:
            template = _template()
            returned = t.send_signed(1, tensor, template, SENDER, blocking=False)
            t.send_relayed(1, b"not sent without signatures", tensor * 2)
            t.send_json(1, {"type": "done"})
            t.flush()
            queue.put(("sent", returned))
        else:
            first, header, raw = t.recv_signed(0, _expected())
            second, _, _ = t.recv_signed(0, _expected())
            done = t.recv_json(0, "done")
            ok = bool(torch.equal(first, tensor)) and bool(torch.equal(second, tensor * 2))
            queue.put(("received", (ok, header, raw, done["type"])))
    finally:
        dist.destroy_process_group()


def test_an_unsigned_transport_sends_tensors_alone() -> None:
    """Without signatures (a run with receipts off) a transfer is the tensor alone, relayed or
    not: the receiver gets it by its expected shape, no header, and the frames after it stay
    aligned."""
    results = _run_pair(_unsigned_peer)
    assert results["sent"] is None
    assert results["received"] == (True, None, b"", "done")


def _frame_receiver(frame: torch.Tensor) -> Transport:
    """A transport whose next receive gets ``frame`` (no process group needed)."""
    t = Transport()
    t._recv = lambda src, buffer: buffer.copy_(frame)  # type: ignore[method-assign]
    return t


def test_a_signed_transfer_is_one_message_with_a_zero_padded_header_slot() -> None:
    """The message is the header's length, the header, zeros up to the slot's end (nothing of
    the sender's memory) and the tensor's bytes; the receiver gets back the tensor and header."""
    tensor = torch.arange(24, dtype=torch.float32).reshape(SHAPE)
    raw = _header(tensor)
    frame = Transport()._transfer_frame(raw, tensor)
    assert frame.numel() == HEADER_SLOT + tensor.numel() * 4
    assert int.from_bytes(frame[:4].numpy().tobytes(), "big") == len(raw)
    assert frame[4 : 4 + len(raw)].numpy().tobytes() == raw
    assert not frame[4 + len(raw) : HEADER_SLOT].any()
    received, header, got = _frame_receiver(frame).recv_signed(0, _expected())
    assert torch.equal(received, tensor) and got == raw and header is not None and header.micro_batch == 1


@pytest.mark.parametrize("length", [0, HEADER_SLOT - 3, 1 << 31])
def test_a_header_length_outside_the_slot_is_refused(length: int) -> None:
    tensor = torch.zeros(SHAPE)
    frame = Transport()._transfer_frame(_header(tensor), tensor)
    frame[:4] = torch.frombuffer(bytearray(length.to_bytes(4, "big")), dtype=torch.uint8)
    with pytest.raises(HeaderRejected) as info:
        _frame_receiver(frame).recv_signed(0, _expected())
    assert info.value.code == "HEADER_MALFORMED" and info.value.peer == 0


def test_a_tensor_that_is_not_the_signed_one_is_refused() -> None:
    """The header is genuine but the bytes after it are another tensor: HEADER_MISMATCH."""
    tensor = torch.zeros(SHAPE)
    frame = Transport()._transfer_frame(_header(tensor), tensor + 1)
    with pytest.raises(HeaderRejected) as info:
        _frame_receiver(frame).recv_signed(0, _expected())
    assert info.value.code == "HEADER_MISMATCH"
