"""Property tests: every attestation parser, given random bytes or random mutations of valid bytes,
either parses or raises the domain error (FormatError / AttestError), never anything else."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from attest_fixtures import AttestWorld
from hypothesis import given
from hypothesis import strategies as st
from strategies import fuzz_settings, mutated_bytes

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
# ATTEST_EXAMPLES, when set, fixes the examples per test; otherwise the active profile decides.
SETTINGS = (
    fuzz_settings(max_examples=int(os.environ["ATTEST_EXAMPLES"]))
    if os.environ.get("ATTEST_EXAMPLES")
    else fuzz_settings(1.5)
)


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
    _only_domain_errors(parse, data.draw(mutated_bytes(sample)))


@SETTINGS
@given(st.data())
def test_mutated_evidence_is_rejected_by_the_verifier_with_a_code(data: st.DataObject) -> None:
    """The whole appraisal of mutated evidence either accepts it unchanged or raises AttestError, nothing else."""
    v = WORLD.verifier()
    v.register_nonce(_N)
    mutated = data.draw(mutated_bytes(EVIDENCE))
    try:
        v.appraise_evidence(mutated, WORLD.worker_pub, _N)
    except AttestError:
        return
    assert mutated == EVIDENCE
