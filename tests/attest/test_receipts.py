"""Receipts, signed headers and tensor digests: encoding, canonical form, signatures, strict parsing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct

import blake3
import numpy as np
import pytest
import torch
from nacl.signing import SigningKey
from receipt_fixtures import ENV, T0, make_header, make_receipt

from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.headers import (
    SignedHeader,
    TransferKind,
    encode_header,
    header_digest,
    parse_header,
    verify_header,
)
from stagewarden.attest.receipts import (
    EnvFlag,
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    encode_receipt_body,
    parse_receipt,
    receipt_digest,
    verify_receipt,
)
from stagewarden.attest.tensor_digest import (
    THREADED_MIN_BYTES,
    digest_state_dict,
    digest_tensor,
    tensor_bytes,
    tensor_digest,
)

# -- an independent encoder, written from the layout table in docs/receipts.rst ----------------


def _s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def independent_receipt_bytes(r: Receipt) -> bytes:
    """Encode a receipt by hand from the documented version-1 layout."""
    kind = {"forward": 1, "backward": 2, "update": 3}[str(r.kind)]
    micros = (r.signed_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return (
        b"SWRC"
        + struct.pack(">HB", 1, kind)
        + _s(r.run_id)
        + _s(r.worker_id)
        + struct.pack(">IIQI", r.stage, r.replica, r.step, r.micro_batch)
        + r.input_digest
        + r.output_digest
        + r.weights_digest
        + _s(r.env.torch_version)
        + _s(r.env.device)
        + _s(r.env.dtype)
        + struct.pack(">IQ", int(r.env.flags), micros)
        + r.prev_digest
        + r.signer_key
        + r.signature
    )


def independent_header_bytes(h: SignedHeader) -> bytes:
    """Encode a signed header by hand from the documented version-1 layout."""
    kind = {"activation": 1, "gradient": 2}[str(h.kind)]
    micros = (h.signed_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return (
        b"SWHD"
        + struct.pack(">HB", 1, kind)
        + _s(h.run_id)
        + _s(h.sender)
        + struct.pack(">IIIQI", h.sender_stage, h.sender_replica, h.receiver_stage, h.step, h.micro_batch)
        + _s(h.tensor.dtype)
        + struct.pack(f">B{len(h.tensor.shape)}Q", len(h.tensor.shape), *h.tensor.shape)
        + h.tensor.digest
        + struct.pack(">Q", micros)
        + h.signer_key
        + h.signature
    )


def test_receipt_matches_independent_encoder() -> None:
    """The library encoder and a hand-written encoder of the documented layout produce identical bytes."""
    r = make_receipt(
        env=ExecutionEnv("2.13.0+cpu", "cuda:1", "bfloat16", EnvFlag.DETERMINISTIC_ALGORITHMS | EnvFlag.TF32_MATMUL),
        kind=UnitKind.BACKWARD,
        step=2**40,
        micro_batch=7,
        signed_at=T0 + dt.timedelta(microseconds=123457),
    )
    assert encode_receipt(r) == independent_receipt_bytes(r)
    assert blake3.blake3(independent_receipt_bytes(r)[:-64]).digest() == receipt_digest(r)


def test_header_matches_independent_encoder() -> None:
    """The signed-header encoder matches a hand-written encoder of the documented layout."""
    h = make_header(
        kind=TransferKind.GRADIENT,
        sender_stage=4,
        receiver_stage=3,
        tensor=dataclasses.replace(make_header().tensor, shape=(2, 3, 5)),
    )
    assert encode_header(h) == independent_header_bytes(h)
    assert blake3.blake3(independent_header_bytes(h)[:-64]).digest() == header_digest(h)


def test_receipt_round_trip_and_canonical() -> None:
    """Parsing the encoding gives the same receipt, and re-encoding gives the same bytes."""
    r = make_receipt()
    data = encode_receipt(r)
    assert parse_receipt(data) == r
    assert encode_receipt(parse_receipt(data)) == data


def test_header_round_trip() -> None:
    """A signed header survives encoding and parsing unchanged."""
    h = make_header()
    assert parse_header(encode_header(h)) == h


def test_receipt_signature_verifies() -> None:
    """A receipt signed by a key verifies under that key."""
    key = SigningKey.generate()
    r = make_receipt(key)
    verify_receipt(r, expected_key=bytes(key.verify_key))


def test_forged_receipt_signature_rejected() -> None:
    """A receipt whose signature bytes were altered is RECEIPT_SIGNATURE."""
    r = make_receipt()
    forged = dataclasses.replace(r, signature=bytes([r.signature[0] ^ 1]) + r.signature[1:])
    with pytest.raises(AttestError) as info:
        verify_receipt(forged)
    assert info.value.code is ErrorCode.RECEIPT_SIGNATURE


def test_altered_receipt_field_rejected() -> None:
    """Changing a signed field after signing breaks the signature."""
    r = dataclasses.replace(make_receipt(), output_digest=bytes(32))
    with pytest.raises(AttestError) as info:
        verify_receipt(r)
    assert info.value.code is ErrorCode.RECEIPT_SIGNATURE


def test_parsed_receipt_and_header_altered_after_parsing_rejected() -> None:
    """A receipt or header parsed from the wire and then altered is encoded anew, so its old
    signature no longer verifies (the kept body of the parsed bytes does not carry over)."""
    parsed = parse_receipt(encode_receipt(make_receipt()))
    verify_receipt(parsed)
    assert receipt_digest(parsed) == blake3.blake3(encode_receipt(parsed)[:-64]).digest()
    with pytest.raises(AttestError) as info:
        verify_receipt(dataclasses.replace(parsed, step=parsed.step + 1))
    assert info.value.code is ErrorCode.RECEIPT_SIGNATURE
    header = parse_header(encode_header(make_header()))
    verify_header(header)
    with pytest.raises(AttestError) as info:
        verify_header(dataclasses.replace(header, micro_batch=header.micro_batch + 1))
    assert info.value.code is ErrorCode.HEADER_SIGNATURE


def test_receipt_wrong_key_rejected() -> None:
    """A receipt signed by another key than the expected one is RECEIPT_SIGNATURE."""
    r = make_receipt(SigningKey.generate())
    with pytest.raises(AttestError) as info:
        verify_receipt(r, expected_key=bytes(SigningKey.generate().verify_key))
    assert info.value.code is ErrorCode.RECEIPT_SIGNATURE


def test_receipt_signer_key_swapped_rejected() -> None:
    """Replacing the signer key field by another key does not verify."""
    r = dataclasses.replace(make_receipt(), signer_key=bytes(SigningKey.generate().verify_key))
    with pytest.raises(AttestError):
        verify_receipt(r)


def test_header_signature_checked() -> None:
    """A header verifies when intact and is HEADER_SIGNATURE when altered."""
    h = make_header()
    verify_header(h)
    with pytest.raises(AttestError) as info:
        verify_header(dataclasses.replace(h, step=h.step + 1))
    assert info.value.code is ErrorCode.HEADER_SIGNATURE


def test_receipt_digest_excludes_signature() -> None:
    """The receipt digest covers the body only, so it does not depend on the signature bytes."""
    r = make_receipt()
    assert receipt_digest(r) == receipt_digest(dataclasses.replace(r, signature=bytes(64)))
    assert receipt_digest(r) == blake3.blake3(encode_receipt_body(r)).digest()


def test_chain_genesis_is_per_worker_and_run() -> None:
    """Each (run, worker) has its own genesis value."""
    assert chain_genesis("a", "w") != chain_genesis("a", "v") != chain_genesis("b", "w")
    assert len(chain_genesis("a", "w")) == 32


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda d: d + b"\x00", ErrorCode.RECEIPT_MALFORMED),
        (lambda d: d[:-1], ErrorCode.RECEIPT_MALFORMED),
        (lambda d: b"XWRC" + d[4:], ErrorCode.RECEIPT_MALFORMED),
        (lambda d: d[:4] + b"\x00\x02" + d[6:], ErrorCode.RECEIPT_VERSION),
        (lambda d: d[:6] + b"\x04" + d[7:], ErrorCode.RECEIPT_MALFORMED),
        (lambda d: d[:9] + b"." + d[10:], ErrorCode.RECEIPT_MALFORMED),
        (lambda d: d[:9] + b"\xff" + d[10:], ErrorCode.RECEIPT_MALFORMED),
        (lambda d: b"", ErrorCode.RECEIPT_MALFORMED),
    ],
    ids=["trailing", "truncated", "magic", "version", "kind", "id-leading-dot", "bad-utf8", "empty"],
)
def test_parse_receipt_rejects(mutate, code) -> None:  # type: ignore[no-untyped-def]
    """Malformed receipt bytes are rejected with the right code."""
    with pytest.raises(FormatError) as info:
        parse_receipt(mutate(encode_receipt(make_receipt())))
    assert info.value.code is code


def test_parse_receipt_rejects_unknown_flags() -> None:
    """An environment flag bit that the format does not define is malformed."""
    data = bytearray(encode_receipt(make_receipt()))
    flags_at = len(data) - 64 - 32 - 32 - 8 - 4
    data[flags_at : flags_at + 4] = struct.pack(">I", 1 << 20)
    with pytest.raises(FormatError):
        parse_receipt(bytes(data))


def test_encode_rejects_invalid_fields() -> None:
    """Encoding refuses out-of-range numbers, bad identifiers and wrong digest sizes."""
    for change in (
        dict(stage=-1),
        dict(worker_id="a/b"),
        dict(input_digest=b"x"),
        dict(step=2**64),
        dict(signed_at=dt.datetime(2026, 1, 1)),
        dict(env=dataclasses.replace(ENV, device="é")),
    ):
        with pytest.raises(ValueError):
            make_receipt(**change)


def test_header_direction_enforced() -> None:
    """An activation must go to the next stage (or the one after, past a bypassed stage) and a
    gradient to the previous one (or the one before it)."""
    with pytest.raises(ValueError):
        make_header(receiver_stage=3)
    with pytest.raises(ValueError):
        make_header(receiver_stage=0)
    assert make_header(receiver_stage=2).receiver_stage == 2
    data = bytearray(encode_header(make_header()))
    at = data.index(struct.pack(">III", 0, 0, 1))
    data[at : at + 12] = struct.pack(">III", 0, 0, 5)
    with pytest.raises(FormatError) as info:
        parse_header(bytes(data))
    assert info.value.code is ErrorCode.HEADER_MALFORMED


# -- tensor digests -------------------------------------------------------------------------------


def test_tensor_digest_definition() -> None:
    """The digest is BLAKE3 over the documented header and the raw element bytes."""
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    header = b"stagewarden/tensor/v1\x00" + _s("float32") + struct.pack(">BQQ", 2, 2, 3) + struct.pack(">Q", 24)
    assert digest_tensor(t) == blake3.blake3(header + t.numpy().tobytes()).digest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
def test_digest_hashes_what_tensor_bytes_gives(dtype: torch.dtype) -> None:
    """A contiguous CPU tensor, and a transposed or negative view of the same values (each
    copied first), hash the bytes tensor_bytes gives under the documented header."""
    from stagewarden.attest.tensor_digest import dtype_name, tensor_header

    t = (torch.arange(24) % 3).to(dtype).reshape(4, 6)
    expected = blake3.blake3(tensor_header(dtype_name(dtype), (4, 6), t.numel() * t.element_size()))
    expected.update(bytes(tensor_bytes(t)))
    assert digest_tensor(t) == expected.digest()
    assert digest_tensor(t.t().contiguous().t()) == expected.digest()  # non-contiguous view, same values
    if dtype.is_floating_point:
        assert digest_tensor(torch._neg_view(-t)) == expected.digest()  # a negative view is resolved


def test_update_digests_definition() -> None:
    """An update receipt's input and output digests are BLAKE3 over their own domain tag and the
    two component digests, so neither can stand for the other or for a weights digest."""
    from stagewarden.attest.tensor_digest import update_input_digest, update_output_digest

    a, b = bytes(range(32)), bytes(range(32, 64))
    assert update_input_digest(a, b) == blake3.blake3(b"stagewarden/update-input/v2\x00" + a + b).digest()
    assert update_output_digest(a, b) == blake3.blake3(b"stagewarden/update-output/v1\x00" + a + b).digest()
    assert len({update_input_digest(a, b), update_output_digest(a, b), update_input_digest(b, a)}) == 3
    with pytest.raises(ValueError, match="32-byte"):
        update_output_digest(a, b[:31])


def test_last_forward_output_digest_definition() -> None:
    """A last stage's forward output commits to the logits and the loss under a domain of its
    own, so it can stand for neither an update's digests nor the logits alone."""
    from stagewarden.attest.tensor_digest import last_forward_output_digest, update_output_digest

    a, b = bytes(range(32)), bytes(range(32, 64))
    domain = b"stagewarden/last-forward-output/v1\x00"
    assert last_forward_output_digest(a, b) == blake3.blake3(domain + a + b).digest()
    assert len({last_forward_output_digest(a, b), last_forward_output_digest(b, a), update_output_digest(a, b)}) == 3
    with pytest.raises(ValueError, match="32-byte"):
        last_forward_output_digest(a[:31], b)


def test_gradient_trace_digest_definition() -> None:
    """A gradient trace digest is BLAKE3 over its domain tag, the entry count and the entries in
    order: reordering, dropping or repeating an entry changes it."""
    from stagewarden.attest.tensor_digest import gradient_trace_digest

    a, b = bytes(range(32)), bytes(range(32, 64))
    domain = b"stagewarden/gradient-trace/v1\x00"
    assert gradient_trace_digest([a, b]) == blake3.blake3(domain + b"\x00\x00\x00\x02" + a + b).digest()
    assert gradient_trace_digest([]) == blake3.blake3(domain + b"\x00\x00\x00\x00").digest()
    variants = [[a, b], [b, a], [a], [a, b, b], []]
    assert len({gradient_trace_digest(v) for v in variants}) == len(variants)
    with pytest.raises(ValueError, match="32-byte"):
        gradient_trace_digest([a, b[:31]])


def test_gradients_digest_definition_and_flat_buffer() -> None:
    """A gradients digest hashes the domain, the count and each tensor's header, zero-padded to
    1024 bytes, then every tensor's elements in order; views of one flat buffer hash the same
    in one pass, and anything that is not such a buffer is ignored."""
    from stagewarden.attest.tensor_digest import TENSOR_DOMAIN, gradients_digest

    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.tensor([1.5, -2.0], dtype=torch.float32)

    def header(t: torch.Tensor) -> bytes:
        dims = struct.pack(f">B{t.dim()}Q", t.dim(), *t.shape)
        return TENSOR_DOMAIN + b"\x00\x07float32" + dims + struct.pack(">Q", t.numel() * 4)

    prefix = b"stagewarden/gradients/v1\x00" + struct.pack(">I", 2) + header(a) + header(b)
    stream = prefix + bytes(-len(prefix) % 1024) + a.numpy().tobytes() + b.numpy().tobytes()
    expected = blake3.blake3(stream).digest()
    assert gradients_digest([a, b]) == expected
    flat = torch.cat([a.reshape(-1), b])
    views = [flat[:6].view(2, 3), flat[6:]]
    assert gradients_digest(views, flat) == expected
    assert gradients_digest([a, b], flat) == expected  # not views of the buffer: hashed one by one
    assert gradients_digest(views, flat[:7]) == expected  # a buffer they do not cover: ignored
    assert gradients_digest([b, a]) != expected and gradients_digest([a.reshape(3, 2), b]) != expected
    assert gradients_digest([]) == blake3.blake3(b"stagewarden/gradients/v1\x00" + bytes(4) + bytes(1024 - 29)).digest()


def test_tensor_digest_separates_dtype_and_shape() -> None:
    """Equal bytes under another dtype or shape give another digest."""
    t = torch.zeros(4, dtype=torch.float32)
    assert digest_tensor(t) != digest_tensor(t.view(torch.int32))
    assert digest_tensor(t) != digest_tensor(t.reshape(2, 2))
    assert tensor_digest(t.reshape(2, 2)).shape == (2, 2)


def test_tensor_bytes_zero_copy() -> None:
    """A contiguous CPU tensor is hashed from its own memory (same address, no copy)."""
    t = torch.randn(1024, requires_grad=True)
    view = tensor_bytes(t)
    assert np.frombuffer(view, dtype=np.uint8).ctypes.data == t.data_ptr()
    assert view.readonly


def test_non_contiguous_equals_contiguous_copy() -> None:
    """A transposed (non-contiguous) tensor has the digest of its contiguous copy."""
    t = torch.randn(5, 7).t()
    assert digest_tensor(t) == digest_tensor(t.contiguous())


def test_threaded_digest_equals_single_thread() -> None:
    """Large tensors (hashed with threads) get the same digest as a single-threaded hash."""
    t = torch.randn(THREADED_MIN_BYTES // 4 * 3)
    td = tensor_digest(t)
    from stagewarden.attest.tensor_digest import tensor_header

    single = blake3.blake3(tensor_header("float32", td.shape, t.numel() * 4) + t.numpy().tobytes()).digest()
    assert td.digest == single


def test_state_dict_digest_ignores_key_order() -> None:
    """A weights digest depends on names and tensors, not on dict order."""
    a, b = torch.ones(3), torch.zeros(2)
    assert digest_state_dict({"a": a, "b": b}) == digest_state_dict({"b": b, "a": a})
    assert digest_state_dict({"a": a, "b": b}) != digest_state_dict({"a": b, "b": a})


def test_tensor_digest_special_dtypes() -> None:
    """bfloat16, bool, 0-d and empty tensors all digest."""
    for t in (
        torch.ones(3, dtype=torch.bfloat16),
        torch.ones(2, dtype=torch.bool),
        torch.tensor(1.0),
        torch.zeros(0, 4),
    ):
        assert len(digest_tensor(t)) == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensor_digest_equals_cpu_copy() -> None:
    """A GPU tensor is copied to the CPU once and gets the digest of its CPU copy."""
    t = torch.randn(4096, device="cuda")
    assert digest_tensor(t) == digest_tensor(t.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gradients_digest_equals_cpu_copy() -> None:
    """Views of a flat GPU buffer (hashed from one CPU copy of the buffer) digest like the CPU
    tensors they hold."""
    from stagewarden.attest.tensor_digest import gradients_digest

    flat = torch.randn(4096 + 96, device="cuda")
    views = [flat[:4096].view(64, 64), flat[4096:]]
    assert gradients_digest(views, flat) == gradients_digest([v.cpu() for v in views])
