"""Fuzzing the signed binary objects through their checks: receipts (``attest/receipts.py``) and the
signed headers a receiver checks (``runtime/transport.py check_header`` with an ``Expected``, and
``Transport.recv_signed``, which adds the tensor's digest).

Random bytes and byte edits of receipts and headers against the parsers are fuzzed in
``tests/attest/test_receipt_fuzz.py``. Here the edits are field swaps and splices on valid
objects (two fields of one object exchanged, a field taken from another valid object), encoded
without signing again, and a receiver's whole check. Properties: an edited object still parses to
exactly itself (the encoding is canonical), but never verifies; a receiver accepts a header and
tensor only when they are the ones the sender signed for the transfer it expects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from fuzzing import outcome
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from receipt_fixtures import headers, make_header, make_receipt, receipts
from strategies import fuzz_settings, mutated_bytes

from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, parse_header, sign_header
from stagewarden.attest.receipts import Receipt, encode_receipt, parse_receipt, verify_receipt
from stagewarden.attest.tensor_digest import tensor_digest
from stagewarden.runtime.transport import HEADER_SLOT, Expected, HeaderRejected, Transport, TransportError, check_header

KEY = SigningKey(bytes(range(32)))
RECEIPT = make_receipt(KEY)
TENSOR = torch.arange(32, dtype=torch.float32).reshape(4, 8)
HEADER = make_header(KEY, tensor=tensor_digest(TENSOR))
HEADER_BYTES = encode_header(HEADER)
EXPECTED = Expected(
    run_id=HEADER.run_id,
    sender=HEADER.sender,
    sender_key=bytes(KEY.verify_key),
    sender_stage=HEADER.sender_stage,
    receiver_stage=HEADER.receiver_stage,
    step=HEADER.step,
    micro_batch=HEADER.micro_batch,
    kind=HEADER.kind,
    dtype="float32",
    shape=(4, 8),
)
HEADER_CODES = {str(ErrorCode.HEADER_MALFORMED), str(ErrorCode.HEADER_SIGNATURE), "HEADER_MISMATCH"}

#: Fields of the same type, which a swap can exchange and the encoding still carries.
_RECEIPT_GROUPS = [
    ("run_id", "worker_id"),
    ("stage", "replica", "micro_batch", "step"),
    ("input_digest", "output_digest", "weights_digest", "prev_digest", "signer_key"),
]
_HEADER_GROUPS = [("run_id", "sender"), ("sender_replica", "micro_batch", "step")]


@st.composite
def field_edits(draw: st.DrawFn, original: Any, others: st.SearchStrategy[Any], groups: list[tuple[str, ...]]) -> Any:
    """``original`` with two same-typed fields swapped, or fields taken from another valid object."""
    changes: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            group = draw(st.sampled_from(groups))
            a, b = draw(st.sampled_from(group)), draw(st.sampled_from(group))
            changes[a], changes[b] = getattr(original, b), getattr(original, a)
        else:
            donor = draw(others)
            name = draw(st.sampled_from([f.name for f in dataclasses.fields(donor) if f.init]))
            changes[name] = getattr(donor, name)
    return dataclasses.replace(original, **changes)


@fuzz_settings()
@given(field_edits(RECEIPT, receipts(), _RECEIPT_GROUPS))
def test_edited_receipts_parse_to_themselves_but_never_verify(edited: Receipt) -> None:
    """A receipt with swapped or spliced fields, signature kept, encodes canonically (it parses back
    to itself) and fails verification, under its own key and under the expected one."""
    try:
        data = encode_receipt(edited)
    except ValueError:  # e.g. a 64-bit step swapped into a 32-bit field: the encoder refuses it
        return
    parsed, error = outcome(parse_receipt, data, errors=FormatError)
    assert error is None and parsed == edited and encode_receipt(parsed) == data
    for expected in (None, bytes(KEY.verify_key)):
        _, error = outcome(verify_receipt, parsed, expected, errors=AttestError)
        if data == encode_receipt(RECEIPT):
            assert error is None
        else:
            assert error is not None and error.code is ErrorCode.RECEIPT_SIGNATURE


def _check(raw: bytes) -> SignedHeader | None:
    header, error = outcome(check_header, raw, EXPECTED, errors=HeaderRejected)
    if error is not None:
        assert isinstance(error, HeaderRejected) and error.code in HEADER_CODES and str(error)
        return None
    assert header is not None
    return header


@fuzz_settings()
@given(st.one_of(st.binary(max_size=300), mutated_bytes(HEADER_BYTES, (encode_header(make_header()),))))
def test_received_header_bytes(raw: bytes) -> None:
    """A receiver accepts header bytes only when they are exactly the header the sender signed."""
    header = _check(raw)
    assert (header is not None) == (raw == HEADER_BYTES)
    if header is not None:
        assert header == HEADER


@fuzz_settings()
@given(field_edits(HEADER, headers(), _HEADER_GROUPS), st.booleans())
def test_edited_headers(edited: SignedHeader, sign_again: bool) -> None:
    """Field edits of a header are refused: kept signature, HEADER_SIGNATURE; signed again by the
    sender's own key (a sender that lies about the transfer), HEADER_MISMATCH unless the edit left
    the transfer, dtype and shape as expected."""
    try:
        if sign_again:
            edited = sign_header(edited, KEY)
        raw = encode_header(edited)
    except ValueError:  # a direction or a field width the encoder refuses
        return
    header = _check(raw)
    transfer = (edited.run_id, edited.sender, edited.sender_stage, edited.receiver_stage, edited.step)
    matches = transfer == (HEADER.run_id, HEADER.sender, HEADER.sender_stage, HEADER.receiver_stage, HEADER.step)
    matches = matches and (edited.micro_batch, edited.kind) == (HEADER.micro_batch, HEADER.kind)
    matches = matches and edited.tensor.dtype == "float32" and tuple(edited.tensor.shape) == (4, 8)
    if header is not None:
        assert matches and (sign_again or raw == HEADER_BYTES)
        assert parse_header(raw) == header == edited


class _Wire(Transport):
    """A transport whose next signed transfer carries the given header bytes and tensor (the
    checks of recv_signed run as they are). Header bytes too long for the slot are cut off
    while the length field still announces them all."""

    def __init__(self, header: bytes, tensor: torch.Tensor) -> None:
        super().__init__("cpu")
        slot = bytearray(HEADER_SLOT)
        slot[:4] = len(header).to_bytes(4, "big")
        kept = header[: HEADER_SLOT - 4]
        slot[4 : 4 + len(kept)] = kept
        self.message = bytes(slot) + tensor.contiguous().view(torch.uint8).numpy().tobytes()

    def _recv(self, src: int, tensor: torch.Tensor) -> None:
        # the receiver allocates what it expects: the slot and a float32 (4, 8) tensor
        assert tensor.dtype == torch.uint8 and tensor.numel() == HEADER_SLOT + 4 * 8 * 4 == len(self.message)
        tensor.copy_(torch.frombuffer(bytearray(self.message), dtype=torch.uint8))


@st.composite
def edited_tensors(draw: st.DrawFn) -> torch.Tensor:
    tensor = TENSOR.clone()
    for _ in range(draw(st.integers(0, 2))):
        flat = tensor.view(-1).view(torch.int32)
        flat[draw(st.integers(0, 31))] ^= 1 << draw(st.integers(0, 31))
    return tensor


@fuzz_settings()
@given(st.one_of(st.just(HEADER_BYTES), mutated_bytes(HEADER_BYTES)), edited_tensors())
def test_received_transfers(raw: bytes, tensor: torch.Tensor) -> None:
    """``recv_signed`` returns the tensor only when header and tensor are the ones signed; otherwise
    it raises HeaderRejected (TransportError) with a code."""
    result, error = outcome(_Wire(raw, tensor).recv_signed, 1, EXPECTED, errors=TransportError)
    exact = raw == HEADER_BYTES and torch.equal(tensor.view(torch.int32), TENSOR.view(torch.int32))
    if error is not None:
        assert not exact and isinstance(error, HeaderRejected) and error.code in HEADER_CODES
        return
    assert exact and result is not None
    received, header, frame = result
    assert torch.equal(received, TENSOR) and header == HEADER and frame == raw
    assert header.kind is TransferKind.ACTIVATION
