"""Helpers of the fuzz tests: a wall-clock limit on every parser call, and JSON-text mutations.

Every call of a parser under test goes through :func:`bounded` (or :func:`outcome`): a call that
runs past its limit is interrupted and fails the example as a hang, so Hypothesis reports (and
shrinks) the input that made the parser hang instead of the test sitting until pytest's timeout.
The limit is a ``SIGALRM`` timer on the main thread; an outer timer (pytest-timeout's) is saved
and re-armed with the time it had left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st
from strategies import mutated_bytes

T = TypeVar("T")

#: Wall-clock seconds one parser call may take (parsers take milliseconds: this is a hang bound).
#: ``STAGEWARDEN_FUZZ_CALL_SECONDS`` changes it (a slow or heavily loaded machine).
CALL_SECONDS = float(os.environ.get("STAGEWARDEN_FUZZ_CALL_SECONDS") or 3.0)
#: Wall-clock seconds of a call that reads a whole folder (a run directory's audit, a checkpoint).
FOLDER_SECONDS = 5 * CALL_SECONDS


class ParserHung(BaseException):
    """Raised inside a call that ran past its limit. A ``BaseException``, so that no parser's
    ``except Exception`` can turn a hang into an ordinary rejection."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield  # no SIGALRM here: pytest-timeout still bounds the whole test
        return

    def hung(signum: int, frame: object) -> None:
        raise ParserHung

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, hung)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            left = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), outer_interval)


def bounded(call: Callable[..., T], *args: Any, limit: float = CALL_SECONDS, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, failing the example with AssertionError if it runs past ``limit`` seconds."""
    try:
        with _alarm(limit):
            return call(*args, **kwargs)
    except ParserHung:
        name = getattr(call, "__qualname__", repr(call))
        raise AssertionError(f"{name} did not return within {limit} s (a hang)") from None


def outcome(
    call: Callable[..., T],
    *args: Any,
    errors: type[BaseException] | tuple[type[BaseException], ...],
    limit: float = CALL_SECONDS,
    **kwargs: Any,
) -> tuple[T | None, BaseException | None]:
    """Run a parser under :func:`bounded`: ``(value, None)`` when it succeeds, ``(None, error)`` when
    it raises one of the domain ``errors``. Any other exception propagates and fails the test.

    Each outcome is recorded as a Hypothesis event (``pytest --hypothesis-show-statistics`` shows
    how often each parser accepted and with which code it refused), to see what the inputs reach.
    """
    name = getattr(call, "__qualname__", "parser")
    try:
        value = bounded(call, *args, limit=limit, **kwargs)
    except errors as exc:
        if currently_in_test_context():
            event(f"{name}: {type(exc).__name__} {getattr(exc, 'code', '')}".rstrip())
        return None, exc
    if currently_in_test_context():
        event(f"{name}: accepted")
    return value, None


# Snippets that matter to a JSON parser: structure, escapes (lone surrogates among them), numbers
# (floats, which canonical JSON refuses, and integers longer than Python's 4300-digit limit),
# constants, white space, and nesting deep enough to reach the recursion limit.
_JSON_SNIPPETS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b'"',
    b"\\",
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b'"\\u0000"',
    b'"\\x"',
    b"1.5",
    b"1e400",
    b"-0",
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b" ",
    b"\n",
    b"\xef\xbb\xbf",
    b"\xed\xa0\x80",
    b"9" * 5000,
    b"[" * 2000,
    b'{"a":' * 1200,
]


@st.composite
def mutated_json_text(draw: st.DrawFn, base: bytes, others: tuple[bytes, ...] = ()) -> bytes:
    """``base`` (JSON text) with JSON-significant snippets inserted or substituted, then maybe a few
    byte-level edits (:func:`strategies.mutated_bytes`)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        snippet = draw(st.sampled_from(_JSON_SNIPPETS))
        cut = draw(st.integers(0, 2))
        data[at : at + cut] = snippet
    if draw(st.booleans()):
        return draw(mutated_bytes(bytes(data), others, max_ops=2))
    return bytes(data)
