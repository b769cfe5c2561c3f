"""Negative corpus: each case mutates valid evidence, collateral or a result and names the error code it must yield.

A case returns normally only when the piece it built is accepted; the table says which code
(or, for policy-accepted conditions, which warning) each case must end with.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
from collections.abc import Callable

import pytest
from attest_fixtures import DEVICE_ID, MODEL, SVNS, T0, AttestWorld
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.evidence import HEADER_SIZE, encode_body, report_data, sign_body
from stagewarden.attest.pki import make_crl, make_device, make_intermediate, make_root, make_tcb_signer
from stagewarden.attest.policy import Policy
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.result import Status, sign_result, verify_result
from stagewarden.attest.verifier import Appraisal, Verifier

E = ErrorCode


def _regions(data: bytes) -> dict[str, int]:
    """Offset of one byte to flip in each region of the evidence layout."""
    offsets = {
        "magic": 0,
        "version": 9,
        "hardware_model": 10,
        "device_id": 26,
        "svns": 59,
        "attributes": 73,
        "measurement": 74,
        "report_data": 106,
        "cert_count": HEADER_SIZE,
    }
    offset = HEADER_SIZE + 1
    for index in range(data[HEADER_SIZE]):
        (size,) = struct.unpack_from(">H", data, offset)
        offsets[f"cert{index}_length"] = offset
        offsets[f"cert{index}_der"] = offset + 2 + size - 1  # last byte: inside the certificate signature
        offset += 2 + size
    offsets["signature_length"] = offset
    offsets["signature"] = len(data) - 1
    return offsets


def _appraise(
    w: AttestWorld,
    mutate: Callable[[bytes], bytes] = lambda b: b,
    verifier: Verifier | None = None,
    key: bytes | None = None,
    **evidence: object,
) -> Appraisal:
    v = verifier or w.verifier()
    nonce = v.issue_nonce()
    data = mutate(w.evidence(nonce, **evidence))  # type: ignore[arg-type]
    return v.appraise_evidence(data, key or w.worker_pub, nonce)


def _flip(region: str) -> Callable[[AttestWorld], object]:
    def run(w: AttestWorld) -> object:
        def mutate(data: bytes) -> bytes:
            at = _regions(data)[region]
            return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

        return _appraise(w, mutate)

    return run


def _self_made_root(w: AttestWorld) -> object:
    fake_root = make_root(T0 - dt.timedelta(days=1))
    fake_intermediate = make_intermediate(fake_root, T0 - dt.timedelta(days=1))
    fake_device = make_device(fake_intermediate, DEVICE_ID, MODEL, T0 - dt.timedelta(days=1))
    return _appraise(w, device=fake_device, chain=[fake_device.cert, fake_intermediate.cert])


def _wrong_issuer(w: AttestWorld) -> object:
    other = make_intermediate(
        w.root, T0 - dt.timedelta(days=1), common_name="stagewarden SIMULATED TEE Intermediate CA 2"
    )
    device = make_device(other, DEVICE_ID, MODEL, T0 - dt.timedelta(days=1))
    return _appraise(w, device=device, chain=[device.cert, w.intermediate.cert])


def _device(w: AttestWorld, **kwargs: object) -> object:
    start = kwargs.pop("start", T0 - dt.timedelta(days=1))
    device = make_device(w.intermediate, DEVICE_ID, MODEL, start, **kwargs)  # type: ignore[arg-type]
    return _appraise(w, device=device)


def _expired_intermediate(w: AttestWorld) -> object:
    old = T0 - dt.timedelta(days=20)
    intermediate = make_intermediate(w.root, old, lifetime=dt.timedelta(days=10))
    device = make_device(intermediate, DEVICE_ID, MODEL, old, lifetime=dt.timedelta(days=100))
    v = w.verifier(endorsements=w.endorsements(crls=w.crls(intermediate=intermediate)))
    return _appraise(w, verifier=v, device=device, chain=[device.cert, intermediate.cert])


def _with_crls(**kwargs: object) -> Callable[[AttestWorld], object]:
    def run(w: AttestWorld) -> object:
        return _appraise(w, verifier=w.verifier(endorsements=w.endorsements(crls=w.crls(**kwargs))))  # type: ignore[arg-type]

    return run


def _crl_wrong_signer(w: AttestWorld) -> object:
    impostor = make_intermediate(w.root, T0 - dt.timedelta(days=1))
    forged = make_crl(impostor, [], T0 - dt.timedelta(hours=1))  # same issuer name, another key
    return _appraise(w, verifier=w.verifier(endorsements=w.endorsements(crls=(w.crls()[0], forged))))


def _crl_missing(w: AttestWorld) -> object:
    return _appraise(w, verifier=w.verifier(endorsements=w.endorsements(crls=(w.crls()[0],))))


def _bad_evidence_signature(w: AttestWorld) -> object:
    return _appraise(w, signing_key=ec.generate_private_key(ec.SECP256R1()))


def _device_mismatch(w: AttestWorld) -> object:
    return _appraise(w, device_id="gpu-node-9")


def _nonce_not_issued(w: AttestWorld) -> object:
    v = w.verifier()
    nonce = bytes(32)
    return v.appraise_evidence(w.evidence(nonce), w.worker_pub, nonce)


def _nonce_reused(w: AttestWorld) -> object:
    v = w.verifier()
    nonce = v.issue_nonce()
    data = w.evidence(nonce)
    v.appraise_evidence(data, w.worker_pub, nonce)
    return v.appraise_evidence(data, w.worker_pub, nonce)


def _nonce_expired(w: AttestWorld) -> object:
    clock = w.clock()
    v = w.verifier(clock=clock)
    nonce = v.issue_nonce()
    clock.advance(dt.timedelta(seconds=Policy().nonce_lifetime_seconds))
    return v.appraise_evidence(w.evidence(nonce), w.worker_pub, nonce)


def _answers_other_nonce(w: AttestWorld) -> object:
    v = w.verifier()
    first, second = v.issue_nonce(), v.issue_nonce()
    return v.appraise_evidence(w.evidence(first), w.worker_pub, second)


def _key_substitution(w: AttestWorld) -> object:
    attacker = bytes(SigningKey.generate().verify_key)
    return _appraise(w, key=attacker)


def _with_verifier(**kwargs: Callable[[AttestWorld], object]) -> Callable[[AttestWorld], object]:
    def run(w: AttestWorld) -> object:
        built = {name: make(w) for name, make in kwargs.items()}
        if "tcb_infos" in built or "tcb_signing_cert" in built:
            built = {"endorsements": w.endorsements(**built)}  # type: ignore[arg-type]
        return _appraise(w, verifier=w.verifier(**built))  # type: ignore[arg-type]

    return run


def _reserved_attributes(w: AttestWorld) -> object:
    v = w.verifier()
    nonce = v.issue_nonce()
    body = encode_body(
        hardware_model=MODEL,
        device_id=DEVICE_ID,
        svns=SVNS,
        attributes=1 << 7,
        measurement=bytes(32),
        report_data=report_data(nonce, w.worker_pub),
        chain=(w.device.cert, w.intermediate.cert),
    )
    assert isinstance(w.device.key, ec.EllipticCurvePrivateKey)
    return v.appraise_evidence(sign_body(body, w.device.key), w.worker_pub, nonce)


def _forged_result(w: AttestWorld) -> object:
    appraisal = _appraise(w)
    forged = sign_result(appraisal.result, SigningKey.generate())
    return verify_result(forged, w.verifier_key.verify_key, w.clock())


def _tampered_result(w: AttestWorld) -> object:
    appraisal = _appraise(w)
    header, _, signature = appraisal.token.split(b".")
    other = sign_result(
        dataclasses.replace(appraisal.result, status=Status.AFFIRMING, device_id="other"), w.verifier_key
    )
    return verify_result(header + b"." + other.split(b".")[1] + b"." + signature, w.verifier_key.verify_key, w.clock())


def _expired_result(w: AttestWorld) -> object:
    appraisal = _appraise(w)
    later = w.clock(appraisal.result.expires_at)
    return RelyingParty(w.verifier_key.verify_key, later).admit("stage-0", appraisal.token, w.worker_pub)


def _result_for_other_key(w: AttestWorld) -> object:
    appraisal = _appraise(w)
    return RelyingParty(w.verifier_key.verify_key, w.clock()).admit("stage-0", appraisal.token, bytes(32))


def _rp_expired_admission(w: AttestWorld) -> object:
    appraisal = _appraise(w)
    clock = w.clock()
    rp = RelyingParty(w.verifier_key.verify_key, clock)
    rp.admit("stage-0", appraisal.token, w.worker_pub)
    clock.advance(dt.timedelta(hours=2))
    return rp.check_receipt_key("stage-0", w.worker_pub)


def _foreign_tcb_signer(w: AttestWorld) -> object:
    stranger_root = make_root(T0 - dt.timedelta(days=1))
    signer = make_tcb_signer(stranger_root, T0 - dt.timedelta(days=1))
    from attest_fixtures import tcb_signing_key

    return _appraise(
        w,
        verifier=w.verifier(
            endorsements=w.endorsements(
                tcb_signing_cert=signer.cert, tcb_infos=(w.tcb_info(key=tcb_signing_key(signer)),)
            )
        ),
    )


@dataclasses.dataclass(frozen=True)
class Case:
    """One corpus entry: a name, what it does, and the code it must end with."""

    name: str
    run: Callable[[AttestWorld], object]
    expected: ErrorCode
    warning: bool = False  # True: accepted with status warning that names ``expected``


DAY = dt.timedelta(days=1)
CASES = [
    # every byte region of the evidence, flipped
    Case("flip magic", _flip("magic"), E.EVIDENCE_MALFORMED),
    Case("flip version", _flip("version"), E.EVIDENCE_VERSION),
    Case("flip hardware model", _flip("hardware_model"), E.EVIDENCE_SIGNATURE),
    Case("flip device id", _flip("device_id"), E.EVIDENCE_SIGNATURE),
    Case("flip svns", _flip("svns"), E.EVIDENCE_SIGNATURE),
    Case("flip attributes (debug bit)", _flip("attributes"), E.EVIDENCE_SIGNATURE),
    Case("flip measurement", _flip("measurement"), E.EVIDENCE_SIGNATURE),
    Case("flip report data", _flip("report_data"), E.EVIDENCE_SIGNATURE),
    Case("flip certificate count", _flip("cert_count"), E.EVIDENCE_MALFORMED),
    Case("flip device certificate length", _flip("cert0_length"), E.EVIDENCE_MALFORMED),
    Case("flip device certificate", _flip("cert0_der"), E.CERT_SIGNATURE),
    Case("flip intermediate certificate length", _flip("cert1_length"), E.EVIDENCE_MALFORMED),
    Case("flip intermediate certificate", _flip("cert1_der"), E.CERT_SIGNATURE),
    Case("flip signature length", _flip("signature_length"), E.EVIDENCE_MALFORMED),
    Case("flip signature", _flip("signature"), E.EVIDENCE_SIGNATURE),
    # framing
    Case("truncated by one byte", lambda w: _appraise(w, lambda b: b[:-1]), E.EVIDENCE_MALFORMED),
    Case("truncated to the header", lambda w: _appraise(w, lambda b: b[:HEADER_SIZE]), E.EVIDENCE_MALFORMED),
    Case("trailing byte", lambda w: _appraise(w, lambda b: b + b"\x00"), E.EVIDENCE_MALFORMED),
    Case("empty", lambda w: _appraise(w, lambda b: b""), E.EVIDENCE_MALFORMED),
    # chain shape and anchor
    Case(
        "chain includes the root",
        lambda w: _appraise(w, chain=[w.device.cert, w.intermediate.cert, w.root.cert]),
        E.CHAIN_SHAPE,
    ),
    Case("chain without intermediate", lambda w: _appraise(w, chain=[w.device.cert]), E.CHAIN_SHAPE),
    Case("self-made root", _self_made_root, E.CHAIN_ANCHOR),
    # each certificate
    Case("wrong issuer", _wrong_issuer, E.CERT_ISSUER),
    Case("CA used as end entity", lambda w: _device(w, ca=True), E.CERT_CA_FLAGS),
    Case(
        "device key on the wrong curve",
        lambda w: _device(w, key=ec.generate_private_key(ec.SECP384R1())),
        E.CERT_KEY_TYPE,
    ),
    Case("device certificate not yet valid", lambda w: _device(w, start=T0 + DAY), E.CERT_NOT_YET_VALID),
    Case("device certificate expired", lambda w: _device(w, start=T0 - 3 * DAY, lifetime=DAY), E.CERT_EXPIRED),
    Case("intermediate certificate expired", _expired_intermediate, E.CERT_EXPIRED),
    # revocation
    Case("revoked device", lambda w: _with_crls(revoked_devices=[w.device.cert.serial_number])(w), E.CERT_REVOKED),
    Case(
        "revoked intermediate",
        lambda w: _with_crls(revoked_intermediates=[w.intermediate.cert.serial_number])(w),
        E.CERT_REVOKED,
    ),
    Case("stale CRL", _with_crls(now=T0 - 10 * DAY, lifetime=7 * DAY), E.CRL_STALE),
    Case("CRL not yet valid", _with_crls(now=T0 + DAY), E.CRL_NOT_YET_VALID),
    Case("CRL signed by another key", _crl_wrong_signer, E.CRL_INVALID),
    Case("CRL missing", _crl_missing, E.CRL_INVALID),
    Case(
        "CRL near nextUpdate, rejected",
        lambda w: _appraise(w, verifier=w.verifier(policy=Policy(crl_near_next_update_seconds=30 * 86400))),
        E.CRL_NEAR_NEXT_UPDATE,
    ),
    Case(
        "CRL near nextUpdate, warning",
        lambda w: _appraise(
            w,
            verifier=w.verifier(
                policy=Policy(crl_near_next_update_seconds=30 * 86400, warn=frozenset({E.CRL_NEAR_NEXT_UPDATE}))
            ),
        ),
        E.CRL_NEAR_NEXT_UPDATE,
        warning=True,
    ),
    # evidence signature and device
    Case("evidence signed by another key", _bad_evidence_signature, E.EVIDENCE_SIGNATURE),
    Case("evidence names another device", _device_mismatch, E.DEVICE_MISMATCH),
    # nonce and key binding
    Case("nonce not issued by the verifier", _nonce_not_issued, E.NONCE_UNKNOWN),
    Case("reused nonce", _nonce_reused, E.NONCE_REUSED),
    Case("expired nonce", _nonce_expired, E.NONCE_EXPIRED),
    Case("evidence answers another nonce", _answers_other_nonce, E.KEY_BINDING),
    Case("key substitution", _key_substitution, E.KEY_BINDING),
    # collateral
    Case(
        "TCB info signed by another key",
        _with_verifier(tcb_infos=lambda w: (w.tcb_info(key=SigningKey.generate()),)),
        E.TCB_INFO_INVALID,
    ),
    Case("TCB signer not certified by the root", _foreign_tcb_signer, E.TCB_INFO_INVALID),
    Case(
        "TCB info expired",
        _with_verifier(tcb_infos=lambda w: (w.tcb_info(issue=T0 - 40 * DAY, next_update=T0 - DAY),)),
        E.TCB_INFO_EXPIRED,
    ),
    Case(
        "TCB info not yet valid",
        _with_verifier(tcb_infos=lambda w: (w.tcb_info(issue=T0 + DAY, next_update=T0 + 9 * DAY),)),
        E.TCB_INFO_NOT_YET_VALID,
    ),
    Case("TCB info malformed", _with_verifier(tcb_infos=lambda w: (b"not.a.token",)), E.COLLATERAL_MALFORMED),
    Case(
        "reference values signed by another key",
        _with_verifier(references=lambda w: w.references(key=SigningKey.generate())),
        E.REFERENCE_INVALID,
    ),
    Case(
        "reference values expired",
        _with_verifier(references=lambda w: w.references(issued=T0 - 9 * DAY, expires=T0 - DAY)),
        E.REFERENCE_EXPIRED,
    ),
    Case(
        "reference values not yet valid",
        _with_verifier(references=lambda w: w.references(issued=T0 + DAY, expires=T0 + 9 * DAY)),
        E.REFERENCE_NOT_YET_VALID,
    ),
    # TCB level
    Case("TCB revoked", lambda w: _appraise(w, svns=(0, 0, 0, 0)), E.TCB_REVOKED),
    Case("TCB out of date, rejected by policy", lambda w: _appraise(w, svns=(1, 1, 1, 9)), E.TCB_OUT_OF_DATE),
    Case(
        "TCB out of date, warning by policy",
        lambda w: _appraise(
            w, svns=(1, 1, 1, 9), verifier=w.verifier(policy=Policy(warn=frozenset({E.TCB_OUT_OF_DATE})))
        ),
        E.TCB_OUT_OF_DATE,
        warning=True,
    ),
    Case(
        "TCB unknown hardware model",
        _with_verifier(tcb_infos=lambda w: (w.tcb_info(model="SWSIM-OTHER"),)),
        E.TCB_UNKNOWN,
    ),
    # attributes and measurement
    Case("debug on", lambda w: _appraise(w, debug=True), E.DEBUG_ENABLED),
    Case("reserved attribute bit", _reserved_attributes, E.RESERVED_ATTRIBUTES),
    Case("measurement mismatch", lambda w: _appraise(w, measurement=b"\x42" * 32), E.MEASUREMENT_MISMATCH),
    # attestation results
    Case("forged attestation result", _forged_result, E.RESULT_SIGNATURE),
    Case("tampered attestation result", _tampered_result, E.RESULT_SIGNATURE),
    Case("expired attestation result", _expired_result, E.RESULT_EXPIRED),
    Case("result attests another key", _result_for_other_key, E.RESULT_KEY_MISMATCH),
    Case("admission expired, no re-attestation", _rp_expired_admission, E.RESULT_EXPIRED),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_negative_corpus(attest_world: AttestWorld, case: Case) -> None:
    """Each mutation of valid evidence, collateral or result ends with exactly its expected code."""
    if case.warning:
        appraisal = case.run(attest_world)
        assert isinstance(appraisal, Appraisal)
        assert appraisal.result.status is Status.WARNING
        assert str(case.expected) in appraisal.result.warnings
        return
    with pytest.raises(AttestError) as caught:
        case.run(attest_world)
    assert caught.value.code is case.expected, caught.value.message
    assert caught.value.message


def test_corpus_is_large_and_covers_every_region(attest_world: AttestWorld) -> None:
    """The corpus has at least 30 cases and flips every byte region of the evidence layout."""
    assert len(CASES) >= 30
    regions = set(_regions(attest_world.evidence(bytes(32))))
    flipped = {c.name.removeprefix("flip ") for c in CASES if c.name.startswith("flip ")}
    assert len(flipped) == len(regions)


def test_unflipped_evidence_is_accepted(attest_world: AttestWorld) -> None:
    """The unmutated evidence behind the corpus is accepted (so every rejection above is caused by its mutation)."""
    appraisal = _appraise(attest_world)
    assert appraisal.result.status is Status.AFFIRMING
