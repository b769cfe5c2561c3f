"""Property tests: every attestation parser, given random bytes or random mutations of valid bytes,
either parses or raises the domain error (FormatError / AttestError), never anything else."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from attest_fixtures import AttestWorld
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagewarden.attest.collateral import parse_reference_values, parse_tcb_info
from stagewarden.attest.errors import AttestError, FormatError
from stagewarden.attest.evidence import parse_evidence
from stagewarden.attest.policy import parse_policy
from stagewarden.attest.result import parse_result_unverified

WORLD = AttestWorld.create()
_V = WORLD.verifier()
_N = _V.issue_nonce()
EVIDENCE = WORLD.evidence(_N)
RESULT = _V.appraise_evidence(EVIDENCE, WORLD.worker_pub, _N).token
SAMPLES: dict[str, tuple[Callable[[bytes], object], bytes]] = {
    "evidence": (parse_evidence, EVIDENCE),
    "tcb_info": (parse_tcb_info, WORLD.tcb_info()),
    "reference_values": (parse_reference_values, WORLD.references()),
    "policy_json": (parse_policy, b'{"version":1,"warn":["TCB_OUT_OF_DATE"],"result_lifetime_seconds":60}'),
    "policy_yaml": (
        lambda b: parse_policy(b, yaml=True),
        b"version: 1\nwarn: [TCB_OUT_OF_DATE]\nnonce_lifetime_seconds: 30\n",
    ),
    "result": (parse_result_unverified, RESULT),
}
SETTINGS = settings(
    max_examples=int(os.environ.get("ATTEST_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Valid bytes with a few random flips, insertions, deletions or a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


def _only_domain_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except FormatError:
        pass


@pytest.mark.parametrize("name", sorted(SAMPLES))
@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_format_errors(name: str, data: bytes) -> None:
    """Random bytes never escape a parser as anything but FormatError."""
    _only_domain_errors(SAMPLES[name][0], data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_valid_samples_parse(name: str) -> None:
    """The valid sample of every parser parses (so the mutations start from accepted bytes)."""
    parse, sample = SAMPLES[name]
    parse(sample)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@SETTINGS
@given(st.data())
def test_mutated_bytes_raise_only_format_errors(name: str, data: st.DataObject) -> None:
    """Random mutations of valid bytes never escape a parser as anything but FormatError."""
    parse, sample = SAMPLES[name]
    _only_domain_errors(parse, data.draw(mutations(sample)))


@SETTINGS
@given(st.data())
def test_mutated_evidence_is_rejected_by_the_verifier_with_a_code(data: st.DataObject) -> None:
    """The whole appraisal of mutated evidence either accepts it unchanged or raises AttestError, nothing else."""
    v = WORLD.verifier()
    v.register_nonce(_N)
    mutated = data.draw(mutations(EVIDENCE))
    try:
        v.appraise_evidence(mutated, WORLD.worker_pub, _N)
    except AttestError:
        return
    assert mutated == EVIDENCE
