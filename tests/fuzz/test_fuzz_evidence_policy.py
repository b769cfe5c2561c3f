"""Fuzzing evidence (``attest/evidence.py parse_evidence`` and the verifier's appraisal of it) and
appraisal policies (``attest/policy.py parse_policy``, JSON and YAML).

Random bytes and byte-level mutations of evidence are fuzzed in
``tests/attest/test_attest_properties.py``; here the edits follow the layout: fixed fields
rewritten, the certificate count and lengths changed, certificates swapped, dropped, repeated,
corrupted or taken from another vendor, the signature replaced. Evidence that parses is exactly
its canonical encoding, and no edited evidence passes appraisal. Policies are edited as documents
and as text; a policy that parses is written back equal, and JSON and YAML agree.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from attest_fixtures import AttestWorld
from cryptography.hazmat.primitives.serialization import Encoding
from fuzzing import mutated_json_text, outcome
from hypothesis import assume, example, given
from hypothesis import strategies as st
from strategies import dump_yaml, fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.evidence import HEADER_SIZE, encode_body, parse_evidence
from stagewarden.attest.policy import Policy, parse_policy

WORLD = AttestWorld.create()
FOREIGN = AttestWorld.create()  # another simulated vendor: its certificates chain to another root
NONCE = WORLD.verifier().issue_nonce()
EVIDENCE = WORLD.evidence(NONCE)
EVIDENCE_CODES = (ErrorCode.EVIDENCE_MALFORMED, ErrorCode.EVIDENCE_VERSION)
#: Certificates to splice in: this vendor's root, intermediate and device, another vendor's device.
CERTS = [c.public_bytes(Encoding.DER) for c in (WORLD.root.cert, WORLD.intermediate.cert, WORLD.device.cert)]
CERTS.append(FOREIGN.device.cert.public_bytes(Encoding.DER))


def split_evidence(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """The fixed header, the certificates and the signature of well-formed evidence."""
    pos, certs = HEADER_SIZE + 1, []
    for _ in range(data[HEADER_SIZE]):
        (size,) = struct.unpack_from(">H", data, pos)
        certs.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    (sig_size,) = struct.unpack_from(">H", data, pos)
    return data[:HEADER_SIZE], certs, data[pos + 2 : pos + 2 + sig_size]


def join_evidence(head: bytes, certs: list[bytes], signature: bytes, count: int | None = None) -> bytes:
    """Evidence laid out from its parts (lengths written modulo 2**16, count as given)."""
    out = bytearray(head)
    out.append(len(certs) % 256 if count is None else count)
    for der in certs:
        out += struct.pack(">H", len(der) % 65536) + der
    return bytes(out + struct.pack(">H", len(signature) % 65536) + signature)


HEAD, CHAIN, SIGNATURE = split_evidence(EVIDENCE)
_TEXTS = [
    b"SWSIM-TEE-1",
    b"",
    b"A" * 16,
    b"A" * 40,
    b"two words",
    b"x\x00y",
    "caf\u00e9".encode(),
    b"gpu-node-0",
    b".",
    b"-",
]
#: Fixed fields of the header: (offset, size).
_FIELDS = {"magic": (0, 8), "version": (8, 2), "model": (10, 16), "device": (26, 32), "svns": (58, 8)}
_FIELDS |= {"attributes": (66, 8), "measurement": (74, 32), "report_data": (106, 64)}


@st.composite
def edited_evidence(draw: st.DrawFn) -> bytes:
    """Valid evidence with 1 to 3 edits that follow its layout."""
    head, certs, signature, count = bytearray(HEAD), list(CHAIN), SIGNATURE, None
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["field", "text", "count", "certs", "cert_bytes", "signature"]))
        if op == "field":
            start, size = _FIELDS[draw(st.sampled_from(sorted(_FIELDS)))]
            head[start : start + size] = draw(st.binary(min_size=size, max_size=size))
        elif op == "text":
            start, size = _FIELDS[draw(st.sampled_from(["model", "device"]))]
            head[start : start + size] = draw(st.sampled_from(_TEXTS)).ljust(size, b"\x00")[:size]
        elif op == "count":
            count = draw(st.integers(0, 255))
        elif op == "certs":
            edit = draw(st.sampled_from(["swap", "drop", "add", "replace"]))
            if edit == "swap":
                certs.reverse()
            elif edit == "drop" and certs:
                certs.pop(draw(st.integers(0, len(certs) - 1)))
            elif edit == "add":
                certs.insert(draw(st.integers(0, len(certs))), draw(st.sampled_from(CERTS)))
            elif certs:
                certs[draw(st.integers(0, len(certs) - 1))] = draw(st.sampled_from(CERTS))
        elif op == "cert_bytes" and certs:
            index = draw(st.integers(0, len(certs) - 1))
            certs[index] = draw(mutated_bytes(certs[index], tuple(CERTS), max_ops=2))
        elif op == "signature":
            signature = draw(st.one_of(st.binary(max_size=160), mutated_bytes(SIGNATURE, max_ops=2)))
    return join_evidence(bytes(head), certs, signature, count)


def _parse_evidence(data: bytes) -> None:
    evidence, error = outcome(parse_evidence, data, errors=FormatError)
    if error is not None:
        assert isinstance(error, FormatError) and error.code in EVIDENCE_CODES
        return
    assert evidence is not None
    body = encode_body(
        hardware_model=evidence.hardware_model,
        device_id=evidence.device_id,
        svns=evidence.svns,
        attributes=evidence.attributes,
        measurement=evidence.measurement,
        report_data=evidence.report_data,
        chain=evidence.chain,
    )
    assert evidence.signed_bytes == body
    assert body + struct.pack(">H", len(evidence.signature)) + evidence.signature == data  # one encoding


@fuzz_settings()
@given(edited_evidence())
@example(join_evidence(HEAD, [*CHAIN, CERTS[0]], SIGNATURE))  # the root in the chain: parses, never verifies
def test_edited_evidence(data: bytes) -> None:
    """Evidence edited along its layout raises FormatError or parses to exactly its own encoding."""
    _parse_evidence(data)


@fuzz_settings(0.5)
@given(edited_evidence())
def test_edited_evidence_never_passes_appraisal(data: bytes) -> None:
    """The verifier rejects every edited evidence with an AttestError (only the original passes)."""
    assume(data != EVIDENCE)
    verifier = WORLD.verifier()
    verifier.register_nonce(NONCE)
    _, error = outcome(verifier.appraise_evidence, data, WORLD.worker_pub, NONCE, errors=AttestError)
    assert error is not None and isinstance(error, AttestError)


# -- policies --------------------------------------------------------------------------------------

POLICY = {
    "version": 1,
    "warn": ["TCB_OUT_OF_DATE", "CRL_NEAR_NEXT_UPDATE"],
    "crl_near_next_update_seconds": 3600,
    "result_lifetime_seconds": 600,
    "nonce_lifetime_seconds": 30,
}
POLICY_JSON = json.dumps(POLICY).encode()
POLICY_YAML = dump_yaml(POLICY).encode()
_POLICY_VALUES = st.one_of(
    json_values,
    st.sampled_from(["TCB_OUT_OF_DATE", "CRL_NEAR_NEXT_UPDATE", "TCB_REVOKED", "KEY_BINDING", 0, 1, 86400, 86401]),
    st.lists(st.sampled_from(["TCB_OUT_OF_DATE", "CRL_NEAR_NEXT_UPDATE", "CERT_REVOKED", 1]), max_size=3),
)


def _parse_policy(data: bytes, yaml: bool) -> Policy | None:
    policy, error = outcome(parse_policy, data, yaml=yaml, errors=FormatError)
    if error is not None:
        assert isinstance(error, FormatError) and error.code is ErrorCode.POLICY_MALFORMED and error.message
        return None
    assert isinstance(policy, Policy)
    assert parse_policy(json.dumps(policy.to_json()).encode()) == policy  # written back, read back equal
    return policy


@fuzz_settings()
@given(mutated_tree(POLICY, values=_POLICY_VALUES))
def test_edited_policy_documents(document: Any) -> None:
    """An edited policy, written as JSON and as YAML, is refused by both or read equal by both; what
    is read keeps every value of the document."""
    try:
        as_yaml = dump_yaml(document).encode("utf-8")
    except Exception:  # ruamel cannot write every string (lone surrogates): no YAML twin to compare
        assume(False)
        raise
    from_json = _parse_policy(json.dumps(document).encode(), yaml=False)
    from_yaml = _parse_policy(as_yaml, yaml=True)
    assert from_json == from_yaml
    if from_json is not None:
        written = from_json.to_json()
        assert {k: v for k, v in document.items() if k != "warn"} == {k: written[k] for k in document if k != "warn"}
        assert set(document.get("warn", [])) == set(written["warn"])


_BILLION_LAUGHS = b"version: 1\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode() for i in range(8)
)


@fuzz_settings()
@given(
    st.one_of(
        st.binary(max_size=300).map(lambda b: (b, False)),
        st.binary(max_size=300).map(lambda b: (b, True)),
        mutated_json_text(POLICY_JSON).map(lambda b: (b, False)),
        mutated_bytes(POLICY_YAML).map(lambda b: (b, True)),
        mutated_bytes(_BILLION_LAUGHS).map(lambda b: (b, True)),
    )
)
@example((_BILLION_LAUGHS, True))  # aliases nested nine deep: rejected (unknown keys) without expanding them
@example((b"version: 1\nwarn: !!python/object:os.system [echo]\n", True))
@pytest.mark.filterwarnings("ignore::ruamel.yaml.error.ReusedAnchorWarning")  # edited anchors repeat a name
def test_policy_text(case: tuple[bytes, bool]) -> None:
    """Random and mutated policy text (JSON or YAML) is refused with POLICY_MALFORMED or read."""
    data, yaml = case
    _parse_policy(data, yaml)
