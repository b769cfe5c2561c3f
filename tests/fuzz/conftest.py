"""The fuzz suite: every parser of untrusted input, given random bytes and mutated valid inputs,
returns a value or raises its own domain error, and returns within a wall-clock limit.

Examples per test follow the Hypothesis profile (``ci`` by default, ``fuzz`` for long sessions;
see ``tests/conftest.py``). The modules reuse the attestation test fixtures (a simulated vendor
PKI, signed receipts and headers), so their folder is put on ``sys.path`` here: pytest adds only
the folders of the test files it collects, and this suite may run on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ATTEST_TESTS = str(Path(__file__).resolve().parents[1] / "attest")
if _ATTEST_TESTS not in sys.path:
    sys.path.append(_ATTEST_TESTS)
