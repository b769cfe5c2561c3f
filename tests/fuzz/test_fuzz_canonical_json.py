"""Fuzzing canonical JSON (``attest/token.py parse_canonical_json``) and the control messages of the
transport (``Transport.recv_json``, which parses every frame with it).

Whatever the bytes, the parser returns a value whose canonical encoding is exactly those bytes, or
raises FormatError with the caller's code; a control message is a dict with an expected string
``type``, or TransportError.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from fuzzing import bounded, mutated_json_text, outcome
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.attest.errors import ErrorCode, FormatError
from stagewarden.attest.token import canonical_json, parse_canonical_json
from stagewarden.runtime.transport import Transport, TransportError

CODE = ErrorCode.RESULT_MALFORMED

#: Control messages of the kinds the coordinator and the workers exchange.
MESSAGES: list[dict[str, Any]] = [
    {"type": "release"},
    {"type": "admitted", "keys": {"s0r0": "00" * 32, "s1r0": "11" * 32}, "workers": ["s0r0", "s1r0"]},
    {"type": "idle", "step": 3},
    {"type": "update", "step": 0},
    {"type": "load", "step": 2, "tensors": [["w", "float32", [4, 8], "ab" * 32]]},
    {"type": "fetch", "step": 1, "micro_batch": 2, "kind": "forward"},
    {"type": "restored", "step": 4, "weights": "cd" * 32},
    {"type": "error", "message": "stage 1 failed"},
]
FRAMES = tuple(canonical_json(m) for m in MESSAGES)
TYPES = sorted({m["type"] for m in MESSAGES} - {"error"})


def _encode(value: Any) -> bytes:
    """``value`` in canonical layout, lone surrogates written as their (invalid) UTF-8 bytes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def _parse(data: bytes) -> Any:
    """Parse ``data``; on success check that it is the canonical encoding of what it parsed to."""
    value, error = outcome(parse_canonical_json, data, CODE, "fuzzed JSON", errors=FormatError)
    if error is not None:
        assert isinstance(error, FormatError) and error.code is CODE
        assert error.message.startswith("fuzzed JSON")
        return None
    assert canonical_json(value) == data
    return value


@fuzz_settings()
@given(st.binary(max_size=512))
@example(b'"\\ud800"')  # a lone surrogate: re-encoding it raised UnicodeEncodeError (fixed)
@example(b'{"\\udfff":0}')
@example(b"9" * 5000)  # past Python's digit limit for int()
def test_random_bytes(data: bytes) -> None:
    """Random bytes parse canonically or raise FormatError with the caller's code."""
    _parse(data)


@fuzz_settings()
@given(json_values)
def test_canonical_values_round_trip(value: Any) -> None:
    """Every value canonical JSON can encode (text without lone surrogates) parses back equal."""
    try:
        data = canonical_json(value)
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 encoding: nothing to send
        return
    assert _parse(data) == value


@fuzz_settings(2.0)
@given(st.data())
def test_mutated_encodings(data: st.DataObject) -> None:
    """Canonical encodings after byte edits, JSON-snippet edits or tree edits (re-encoded) parse
    canonically or raise FormatError."""
    message = data.draw(st.sampled_from(MESSAGES))
    base = canonical_json(message)
    mutated = data.draw(
        st.one_of(mutated_bytes(base, FRAMES), mutated_json_text(base, FRAMES), mutated_tree(message).map(_encode))
    )
    _parse(mutated)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_nesting_at_the_recursion_limit(opening: bytes) -> None:
    """Documents nested to every depth around the interpreter's recursion limit parse or raise
    FormatError: the depth at which decoding still succeeds but re-encoding overflows used to
    raise RecursionError (fixed)."""
    limit = sys.getrecursionlimit()
    closing = b"]" if opening == b"[" else b"}"
    for depth in range(limit - 300, limit + 10):  # wide enough for any stack depth the test starts at
        _parse(opening * depth + b"0" * (opening == b'{"a":') + closing * depth)


class _Wire(Transport):
    """A transport whose next received frame is given (no process group: the parsing code of
    :meth:`Transport.recv_json` runs as it is)."""

    def __init__(self, frame: bytes) -> None:
        super().__init__("cpu")
        self.frame = frame

    def recv_bytes(self, src: int, limit: int = 1 << 30) -> bytes:
        if len(self.frame) > limit:
            raise TransportError(f"rank {src} announced a frame of {len(self.frame)} bytes")
        return self.frame


def _receive(frame: bytes, expect: list[str] | None) -> dict[str, Any] | None:
    message, error = outcome(_Wire(frame).recv_json, 1, expect, errors=TransportError)
    if error is not None:
        assert str(error)
        return None
    assert isinstance(message, dict) and isinstance(message.get("type"), str)
    assert message["type"] != "error" and (expect is None or message["type"] in expect)
    assert canonical_json(message) == frame  # accepted only in canonical form
    return message


@pytest.mark.parametrize("message", MESSAGES, ids=[m["type"] for m in MESSAGES])
def test_control_messages_round_trip(message: dict[str, Any]) -> None:
    """What ``send_json`` writes, ``recv_json`` reads back equal (an ``error`` message raises)."""
    frame = canonical_json(message)
    if message["type"] == "error":
        with pytest.raises(TransportError, match="reported an error"):
            bounded(_Wire(frame).recv_json, 1, None)
    else:
        assert _receive(frame, [message["type"]]) == message


@fuzz_settings(2.0)
@given(
    st.one_of(
        st.binary(max_size=256),
        st.sampled_from(FRAMES).flatmap(lambda f: mutated_bytes(f, FRAMES)),
        st.sampled_from(FRAMES).flatmap(lambda f: mutated_json_text(f, FRAMES)),
        st.sampled_from(MESSAGES).flatmap(mutated_tree).map(_encode),
    ),
    st.one_of(st.none(), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3)),
)
@example(b'{"type":"\\ud800"}', None)  # escaped recv_json as UnicodeEncodeError before the fix
def test_control_messages(frame: bytes, expect: list[str] | None) -> None:
    """A received control frame is a message of an expected type or raises TransportError."""
    _receive(frame, expect)
