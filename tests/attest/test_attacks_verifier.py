"""Attacks on the verifier and the relying party, each with real SIMULATED TEE evidence, certificates
and collateral from the session's vendor PKI:

* a measurement of another stage (per-stage reference values, results bound to run, worker, stage);
* one device or one receipt key for two workers;
* an older CRL or TCB info offered beside the newest (a stale CRL must not re-admit a revoked device);
* unknown critical X.509 extensions in the vendor chain.
"""

from __future__ import annotations

import datetime as dt

import pytest
from attest_fixtures import MEASUREMENT, MODEL, T0, AttestWorld, tcb_signing_key
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from nacl.signing import SigningKey

from stagewarden.attest.collateral import ReferenceValues, TcbLevel, TcbStatus, sign_reference_values
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.evidence import measure_stage
from stagewarden.attest.pki import make_crl, make_device, make_intermediate, make_tcb_signer
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.verifier import Appraisal, Verifier

E = ErrorCode
#: Stage 1's measurement (stage 0's is the fixtures' MEASUREMENT).
STAGE_1 = measure_stage(b"def stage(x): return x", b'{"layers": 4, "stage": 1}', b"\x01" * 64)
#: An OID no verifier knows (under the IANA example enterprise arc).
UNKNOWN_OID = ObjectIdentifier("1.3.6.1.4.1.32473.1.1")


def _staged_references(world: AttestWorld) -> bytes:
    values = ReferenceValues(
        T0 - dt.timedelta(hours=1),
        T0 + dt.timedelta(days=1),
        (("stage-0", MEASUREMENT), ("stage-1", STAGE_1)),
        ("0", "1"),
    )
    return sign_reference_values(values, world.rvp_key)


def _appraise(world: AttestWorld, verifier: Verifier, measurement: bytes = MEASUREMENT, **bound: str) -> Appraisal:
    nonce = verifier.issue_nonce()
    return verifier.appraise_evidence(world.evidence(nonce, measurement=measurement), world.worker_pub, nonce, **bound)


def _refused(code: ErrorCode, call) -> AttestError:  # type: ignore[no-untyped-def]
    with pytest.raises(AttestError) as info:
        call()
    assert info.value.code is code, info.value
    return info.value


# -- 1. a measurement of another stage ----------------------------------------------------------


def test_stage_one_worker_with_stage_zero_measurement_is_refused(attest_world: AttestWorld) -> None:
    """Genuine evidence carrying stage 0's measurement, appraised for stage 1: MEASUREMENT_WRONG_STAGE."""
    verifier = attest_world.verifier(references=_staged_references(attest_world))
    error = _refused(E.MEASUREMENT_WRONG_STAGE, lambda: _appraise(attest_world, verifier, stage="1"))
    assert "stage 0" in error.message


def test_unknown_measurement_stays_a_mismatch(attest_world: AttestWorld) -> None:
    """A measurement of no stage is MEASUREMENT_MISMATCH, not a wrong stage."""
    verifier = attest_world.verifier(references=_staged_references(attest_world))
    _refused(E.MEASUREMENT_MISMATCH, lambda: _appraise(attest_world, verifier, bytes(32), stage="0"))


def test_result_names_run_worker_and_stage(attest_world: AttestWorld) -> None:
    """An accepted result names the run, the worker and the stage appraised; without a stage asked
    for, it names the stage the matching reference value is bound to."""
    verifier = attest_world.verifier(references=_staged_references(attest_world))
    result = _appraise(attest_world, verifier, STAGE_1, stage="1", run_id="run-a", worker="s1r0").result
    assert (result.run_id, result.worker, result.stage, result.measurement) == ("run-a", "s1r0", "1", STAGE_1.hex())
    assert _appraise(attest_world, verifier, STAGE_1).result.stage == "1"


@pytest.mark.parametrize(
    ("admit", "needle"),
    [
        ({"worker": "s1r0", "run_id": "run-b", "stage": "1"}, "run"),
        ({"worker": "s0r0", "run_id": "run-a", "stage": "1"}, "worker"),
        ({"worker": "s1r0", "run_id": "run-a", "stage": "0"}, "stage"),
        ({"worker": "s0r0"}, "worker"),  # a result naming another worker is refused even without run and stage
    ],
)
def test_relying_party_refuses_a_result_bound_elsewhere(
    attest_world: AttestWorld, admit: dict[str, str], needle: str
) -> None:
    """A result issued for run-a, worker s1r0, stage 1 admits nobody else, in no other run or stage."""
    verifier = attest_world.verifier(references=_staged_references(attest_world))
    appraisal = _appraise(attest_world, verifier, STAGE_1, stage="1", run_id="run-a", worker="s1r0")
    party = RelyingParty(verifier.verify_key, attest_world.clock())
    worker = admit.pop("worker")
    error = _refused(
        E.RESULT_BINDING,
        lambda: party.admit(worker, appraisal.token, attest_world.worker_pub, appraisal.result.nonce, **admit),
    )
    assert needle in error.message
    party.admit("s1r0", appraisal.token, attest_world.worker_pub, run_id="run-a", stage="1")


def test_relying_party_refuses_an_unbound_result_where_a_stage_is_expected(attest_world: AttestWorld) -> None:
    """A result appraised against every stage's values (no stage named) does not admit to stage 0."""
    verifier = attest_world.verifier()  # reference values bound to no stage
    appraisal = _appraise(attest_world, verifier)
    party = RelyingParty(verifier.verify_key, attest_world.clock())
    _refused(E.RESULT_BINDING, lambda: party.admit("s0r0", appraisal.token, attest_world.worker_pub, stage="0"))


# -- 2. one device, one worker; one receipt key, one worker -------------------------------------


def test_two_workers_on_one_device_are_refused(attest_world: AttestWorld) -> None:
    """The device attests for s0r0, then (other key, fresh nonce) for s1r0: DEVICE_SHARED until s0r0 leaves."""
    verifier = attest_world.verifier()
    party = RelyingParty(verifier.verify_key, attest_world.clock())
    first = _appraise(attest_world, verifier)
    party.admit("s0r0", first.token, attest_world.worker_pub)
    other = bytes(SigningKey.generate().verify_key)
    nonce = verifier.issue_nonce()
    second = verifier.appraise_evidence(attest_world.evidence(nonce, pubkey=other), other, nonce)
    _refused(E.DEVICE_SHARED, lambda: party.admit("s1r0", second.token, other))
    party.evict("s0r0")
    party.admit("s1r0", second.token, other)


def test_two_workers_with_one_receipt_key_are_refused(attest_world: AttestWorld) -> None:
    """Two devices attest the same receipt key for two workers: KEY_SHARED."""
    verifier = attest_world.verifier()
    party = RelyingParty(verifier.verify_key, attest_world.clock())
    party.admit("s0r0", _appraise(attest_world, verifier).token, attest_world.worker_pub)
    device = make_device(attest_world.intermediate, "gpu-node-1", MODEL, T0 - dt.timedelta(days=10))
    nonce = verifier.issue_nonce()
    token = verifier.appraise_evidence(
        attest_world.evidence(nonce, device=device, device_id="gpu-node-1"), attest_world.worker_pub, nonce
    ).token
    _refused(E.KEY_SHARED, lambda: party.admit("s1r0", token, attest_world.worker_pub))


def test_a_worker_may_reattest_on_its_own_device(attest_world: AttestWorld) -> None:
    """Re-attestation of the same worker from the same device and key is not sharing."""
    verifier = attest_world.verifier()
    party = RelyingParty(verifier.verify_key, attest_world.clock())
    party.admit("s0r0", _appraise(attest_world, verifier).token, attest_world.worker_pub)
    party.admit("s0r0", _appraise(attest_world, verifier).token, attest_world.worker_pub)


# -- 3. the newest CRL and TCB info decide -------------------------------------------------------


@pytest.mark.parametrize("newest_first", [False, True])
def test_an_older_crl_does_not_readmit_a_revoked_device(attest_world: AttestWorld, newest_first: bool) -> None:
    """The intermediate published a CRL without the device, then one revoking it; both are still
    within nextUpdate. In either order the device is CERT_REVOKED."""
    w = attest_world
    issuer = w.intermediate
    old = make_crl(issuer, [], T0 - dt.timedelta(days=2), dt.timedelta(days=7))
    new = make_crl(issuer, [w.device.cert.serial_number], T0 - dt.timedelta(hours=1), dt.timedelta(days=7))
    root_crl = w.crls()[0]
    crls = (root_crl, new, old) if newest_first else (root_crl, old, new)
    verifier = w.verifier(endorsements=w.endorsements(crls=crls))
    _refused(E.CERT_REVOKED, lambda: _appraise(w, verifier))


@pytest.mark.parametrize("newest_first", [False, True])
def test_an_older_crl_does_not_readmit_a_revoked_intermediate(attest_world: AttestWorld, newest_first: bool) -> None:
    """The same with the root's CRL revoking the intermediate."""
    w = attest_world
    old = make_crl(w.root, [], T0 - dt.timedelta(days=2), dt.timedelta(days=7))
    new = make_crl(w.root, [w.intermediate.cert.serial_number], T0 - dt.timedelta(hours=1), dt.timedelta(days=7))
    device_crl = w.crls()[1]
    crls = (new, old, device_crl) if newest_first else (old, new, device_crl)
    verifier = w.verifier(endorsements=w.endorsements(crls=crls))
    _refused(E.CERT_REVOKED, lambda: _appraise(w, verifier))


def test_a_crl_issued_in_the_future_does_not_hide_the_current_one(attest_world: AttestWorld) -> None:
    """A genuine CRL dated after now is not the one in force: the current one (revoking) decides."""
    w = attest_world
    current = make_crl(w.intermediate, [w.device.cert.serial_number], T0 - dt.timedelta(hours=1))
    future = make_crl(w.intermediate, [], T0 + dt.timedelta(days=1))
    verifier = w.verifier(endorsements=w.endorsements(crls=(w.crls()[0], future, current)))
    _refused(E.CERT_REVOKED, lambda: _appraise(w, verifier))


@pytest.mark.parametrize("newest_first", [False, True])
def test_an_older_tcb_info_does_not_rate_a_recovered_level_up_to_date(
    attest_world: AttestWorld, newest_first: bool
) -> None:
    """TCB info of last week rates SVNs 1.1.1.1 UpToDate; today's (after a TCB recovery) rates them
    OutOfDate. In either order the evidence at 1.1.1.1 is TCB_OUT_OF_DATE."""
    w = attest_world
    old = w.tcb_info(
        levels=(TcbLevel((1, 1, 1, 1), TcbStatus.UP_TO_DATE), TcbLevel((0, 0, 0, 0), TcbStatus.REVOKED)),
        issue=T0 - dt.timedelta(days=7),
    )
    new = w.tcb_info(issue=T0 - dt.timedelta(hours=1))
    verifier = w.verifier(endorsements=w.endorsements(tcb_infos=(new, old) if newest_first else (old, new)))
    nonce = verifier.issue_nonce()
    _refused(
        E.TCB_OUT_OF_DATE,
        lambda: verifier.appraise_evidence(w.evidence(nonce, svns=(1, 1, 1, 1)), w.worker_pub, nonce),
    )


# -- 4. unknown critical extensions in the vendor chain -----------------------------------------


def _unknown(critical: bool) -> tuple[x509.ExtensionType, bool]:
    return (x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), critical)


def _with_device_extension(world: AttestWorld, extension: tuple[x509.ExtensionType, bool]) -> Appraisal:
    device = make_device(world.intermediate, "gpu-node-0", MODEL, T0 - dt.timedelta(days=10), extensions=[extension])
    verifier = world.verifier()
    nonce = verifier.issue_nonce()
    return verifier.appraise_evidence(world.evidence(nonce, device=device), world.worker_pub, nonce)


def test_unknown_critical_extension_on_the_device_certificate_is_refused(attest_world: AttestWorld) -> None:
    """A device certificate with a critical extension the verifier does not know: CERT_CRITICAL_EXTENSION."""
    error = _refused(E.CERT_CRITICAL_EXTENSION, lambda: _with_device_extension(attest_world, _unknown(True)))
    assert UNKNOWN_OID.dotted_string in error.message


def test_unknown_non_critical_extension_is_ignored(attest_world: AttestWorld) -> None:
    """The same extension marked non-critical may be ignored (RFC 5280), so the evidence is accepted."""
    assert _with_device_extension(attest_world, _unknown(False)).result.device_id == "gpu-node-0"


def test_known_but_unprocessed_critical_extension_is_refused(attest_world: AttestWorld) -> None:
    """An extension cryptography parses but the verifier does not process (critical extendedKeyUsage)."""
    usage = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING])
    _refused(E.CERT_CRITICAL_EXTENSION, lambda: _with_device_extension(attest_world, (usage, True)))


def test_unknown_critical_extension_on_the_intermediate_is_refused(attest_world: AttestWorld) -> None:
    """An intermediate with an unknown critical extension, issuing the device and its CRL: refused."""
    w = attest_world
    before = T0 - dt.timedelta(days=10)
    intermediate = make_intermediate(w.root, before, extensions=[_unknown(True)])
    device = make_device(intermediate, "gpu-node-0", MODEL, before)
    verifier = w.verifier(endorsements=w.endorsements(crls=w.crls(intermediate=intermediate)))
    nonce = verifier.issue_nonce()
    evidence = w.evidence(nonce, device=device, chain=(device.cert, intermediate.cert))
    _refused(E.CERT_CRITICAL_EXTENSION, lambda: verifier.appraise_evidence(evidence, w.worker_pub, nonce))


def test_unknown_critical_extension_on_the_tcb_signer_is_refused(attest_world: AttestWorld) -> None:
    """The TCB-signing certificate with an unknown critical extension, signing the TCB info: refused."""
    w = attest_world
    signer = make_tcb_signer(w.root, T0 - dt.timedelta(days=10), extensions=[_unknown(True)])
    info = w.tcb_info(key=tcb_signing_key(signer))
    verifier = w.verifier(endorsements=w.endorsements(tcb_signing_cert=signer.cert, tcb_infos=(info,)))
    _refused(E.CERT_CRITICAL_EXTENSION, lambda: _appraise(w, verifier))


def test_refused_chain_does_not_burn_the_nonce(attest_world: AttestWorld) -> None:
    """The extension check runs before the nonce is consumed: the honest evidence still goes through."""
    w = attest_world
    verifier = w.verifier()
    nonce = verifier.issue_nonce()
    device = make_device(w.intermediate, "gpu-node-0", MODEL, T0 - dt.timedelta(days=10), extensions=[_unknown(True)])
    with pytest.raises(AttestError):
        verifier.appraise_evidence(w.evidence(nonce, device=device), w.worker_pub, nonce)
    assert verifier.appraise_evidence(w.evidence(nonce), w.worker_pub, nonce).result.nonce == nonce
