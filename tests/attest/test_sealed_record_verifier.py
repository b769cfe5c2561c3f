"""The log holder who reads every private key the run directory and ``RUN_DIR.keys`` hold and
re-keys every worker, from the attacker's side, on a real run.

The holder copies the coordinator's key while the run goes (:mod:`sealed_record_fixtures`), finds
no other private key in either folder, gives every worker a receipt key of its own choosing,
rewrites a digest (stage 0's first input: another data batch), re-signs every receipt, header and
step root under the new keys with each worker's chain intact, re-seals every step head with the
coordinator's key, has the new keys cosign the final head, makes evidence for the new keys with
the vendor's device keys, and issues attestation results for them. It lacks only the attestation
verifier's key, which lives in the verifier's own folder: its results are signed with a key of
its own, and the audit with both keys pinned finds the forgery, blaming no worker. The same
forgery with the verifier's real key (what a holder could do while that key sat in
``RUN_DIR.keys``) audits clean, which shows the forgery is complete and that the verifier's key
is what stops it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import blake3
from click.testing import CliRunner
from nacl.signing import SigningKey
from sealed_record_fixtures import (  # noqa: F401  (honest_run: a fixture)
    EVENTS,
    SUMMARY,
    Record,
    Trained,
    audit,
    copy_run,
    frame_digests,
    honest_run,
    read_records,
    write_records,
)

from stagewarden.attest.audit_seal import final_roster
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.headers import encode_header, parse_header, sign_header
from stagewarden.attest.receipt_log import LOG_GENESIS, RecordType
from stagewarden.attest.receipts import chain_genesis, encode_receipt, parse_receipt, receipt_digest, sign_receipt
from stagewarden.attest.result import parse_result_unverified, sign_result
from stagewarden.attest.run_record import RunRecord
from stagewarden.attest.rundir import RunDir
from stagewarden.attest.step_heads import Cosignature, EventsChain, SignedStepHead, cosign, roster_digest, sign_head
from stagewarden.attest.token import key_id
from stagewarden.attest.vendor import load_vendor, make_evidence
from stagewarden.cli import cli


def _private_keys(trained: Trained) -> dict[bytes, SigningKey]:
    """Every Ed25519 seed the holder finds in the run directory and ``RUN_DIR.keys`` (any file
    holding 64 hex digits or 32 raw bytes), plus the coordinator key it copied during the run, by
    public key."""
    found = {bytes(trained.signing_key.verify_key): trained.signing_key}
    keys_dir = trained.run.parent / f"{trained.run.name}.keys"
    for base in (trained.run, keys_dir):
        for path in base.rglob("*") if base.exists() else ():
            if not path.is_file() or path.stat().st_size > 1024:
                continue
            data = path.read_bytes().strip()
            for seed in (data, bytes.fromhex(data.decode()) if _is_hex(data) else b""):
                if len(seed) == 32:
                    key = SigningKey(seed)
                    found[bytes(key.verify_key)] = key
    return found


def _is_hex(data: bytes) -> bool:
    try:
        bytes.fromhex(data.decode("ascii"))
    except ValueError:
        return False
    return True


def _rekey_records(records: list[Record], keys: dict[str, SigningKey]) -> list[Record]:
    """Every receipt, header and step root re-signed under ``keys`` (new ones per worker), each
    worker's receipt chain rebuilt, stage 0's first forward input rewritten; heads and
    cosignatures are left for :func:`_reseal`."""
    prev: dict[str, bytes] = {}
    leaves: dict[bytes, bytes] = {}  # old leaf hash -> new
    out: list[Record] = []
    rewritten = False
    step_root = getattr(RecordType, "STEP_ROOT", None)
    for record_type, payload in records:
        if record_type is RecordType.RECEIPT:
            receipt = parse_receipt(payload)
            worker = receipt.worker_id
            changes: dict[str, object] = {
                "prev_digest": prev.get(worker, chain_genesis(receipt.run_id, worker)),
                "signer_key": bytes(keys[worker].verify_key),
            }
            if not rewritten and receipt.stage == 0 and receipt.kind == "forward":
                changes["input_digest"] = blake3.blake3(b"another data batch").digest()
                rewritten = True
            signed = sign_receipt(dataclasses.replace(receipt, **changes), keys[worker])  # type: ignore[arg-type]
            prev[worker] = receipt_digest(signed)
            new = encode_receipt(signed)
        elif record_type is RecordType.HEADER:
            header = parse_header(payload)
            new = encode_header(sign_header(header, keys[header.sender]))
        else:
            out.append((record_type, payload))
            continue
        if step_root is not None:
            from stagewarden.attest.step_roots import leaf_hash

            leaves[leaf_hash(payload)] = leaf_hash(new)
        out.append((record_type, new))
    assert rewritten
    if step_root is None:
        return out
    from stagewarden.attest.step_roots import parse_root, sign_root

    for i, (record_type, payload) in enumerate(out):
        if record_type is step_root:  # a root covers records logged before or after it
            root = parse_root(payload)
            moved = dataclasses.replace(root, leaves=tuple(leaves[leaf] for leaf in root.leaves))
            out[i] = (record_type, sign_root(moved, keys[root.worker_id]).encode())
    return out


def _reseal(run: Path, records: list[Record], coordinator: SigningKey, keys: dict[str, SigningKey]) -> list[Record]:
    """Every step head re-signed over the log as it now stands (the final one with the roster of
    the new keys and the summary), and each cosignature re-made by its worker's new key."""
    summary = RunRecord.from_json(run / SUMMARY)
    roster = final_roster(summary, {w: bytes(k.verify_key) for w, k in keys.items()})
    assert roster is not None
    lines = (run / EVENTS).read_bytes().split(b"\n")[:-1]
    out: list[Record] = []
    head = None
    for record_type, payload in records:
        if record_type is RecordType.STEP_HEAD:
            old = SignedStepHead.parse(payload).head
            chain = EventsChain()
            for line in lines[: old.events]:
                chain.add(line)
            update: dict[str, object] = {
                "records": len(out),
                "log_digest": (frame_digests(out)[-1] if out else LOG_GENESIS).hex(),
                "events_digest": chain.digest.hex(),
            }
            if old.final:
                update["roster_digest"] = roster_digest(roster).hex()
                update["summary_digest"] = blake3.blake3((run / SUMMARY).read_bytes()).hexdigest()
            head = old.model_copy(update=update)
            payload = sign_head(head, coordinator).encode()
        elif record_type is RecordType.COSIGNATURE:
            assert head is not None
            worker = Cosignature.parse(payload).worker
            payload = cosign(head, worker, keys[worker]).encode()
        out.append((record_type, payload))
    return out


def _reattest(trained: Trained, run: Path, keys: dict[str, SigningKey], verifier: SigningKey) -> None:
    """New evidence (made with the vendor's device keys) and results for every worker's new key,
    the results signed by ``verifier``; ``verifier.pub`` replaced by its public key."""
    vendor = load_vendor(trained.run.parent / "vendor")
    files = RunDir(run)
    attestation = run / "attestation"
    for path in sorted(attestation.glob("*.ear")):
        worker = path.stem
        tokens = []
        for token in files.results(worker):
            result = parse_result_unverified(token)
            forged = dataclasses.replace(
                result, attested_key=bytes(keys[worker].verify_key), verifier_id=key_id(verifier.verify_key)
            )
            tokens.append(sign_result(forged, verifier))
        path.write_bytes(b"".join(t + b"\n" for t in tokens))
        last = parse_result_unverified(tokens[-1])
        device = next(d.stem for d in (vendor.path / "devices").glob("*.crt") if _device_serial(d) == last.device_id)
        evidence = make_evidence(
            vendor, device, bytes(keys[worker].verify_key), last.nonce, bytes.fromhex(last.measurement)
        )
        (attestation / f"{worker}.evidence").write_bytes(evidence)
    (attestation / "verifier.pub").write_text(bytes(verifier.verify_key).hex() + "\n")


def _device_serial(certificate: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value)


def _forge(trained: Trained, tmp_path: Path, verifier: SigningKey) -> Path:
    """A copy of the run re-keyed by a holder who knows ``_private_keys`` and signs results with ``verifier``."""
    run = copy_run(trained, tmp_path)
    stolen = _private_keys(trained)
    records = read_records(run)
    workers = {parse_receipt(p).worker_id for t, p in records if t is RecordType.RECEIPT}
    workers |= {path.stem for path in (run / "attestation").glob("*.ear")}  # a standby signs no receipt
    keys = {worker: SigningKey.generate() for worker in workers}
    write_records(run, _reseal(run, _rekey_records(records, keys), stolen[trained.coordinator_key], keys))
    _reattest(trained, run, keys, verifier)
    return run


def test_the_holder_finds_no_verifier_key_in_the_run_or_its_keys_folder(honest: Trained) -> None:
    """Of every private key in RUN_DIR and RUN_DIR.keys (and the coordinator's, copied while the
    run went), none is the verifier's."""
    found = _private_keys(honest)
    assert honest.coordinator_key in found
    assert honest.verifier_key not in found


def test_rekeying_every_worker_is_found_with_the_verifier_key_pinned(honest: Trained, tmp_path: Path) -> None:
    """Every worker re-keyed, every record re-signed and re-sealed with the stolen coordinator key,
    a digest rewritten, results signed by the holder's own verifier key: the audit with the
    verifier and coordinator keys pinned is not clean and finds the results forged
    (RESULT_SIGNATURE) and every re-keyed worker's records under a key no genuine result attests
    (KEY_UNATTESTED); nothing else is found."""
    run = _forge(honest, tmp_path, SigningKey.generate())
    report = audit(honest, run)
    found = [(f.code, f.workers) for f in report.errors]
    assert not report.clean
    assert {code for code, _ in found} == {ErrorCode.RESULT_SIGNATURE, ErrorCode.KEY_UNATTESTED}, found
    unattested = " ".join(f.message for f in report.errors if f.code is ErrorCode.KEY_UNATTESTED)
    assert {w for w in ("s0r0", "s1r0", "s2r0") if w in unattested} == {"s0r0", "s1r0", "s2r0"}
    pinned = ["--verifier-key", honest.verifier_key.hex(), "--coordinator-key", honest.coordinator_key.hex()]
    result = CliRunner().invoke(cli, ["audit", str(run), *pinned])
    assert result.exit_code == 1 and "RESULT_SIGNATURE" in result.output, result.output


def test_rekeying_every_worker_blames_no_worker(honest: Trained, tmp_path: Path) -> None:
    """The same forgery: no finding names a worker, all of whom are honest."""
    report = audit(honest, _forge(honest, tmp_path, SigningKey.generate()))
    blamed = [(f.code, f.workers) for f in report.errors if f.workers]
    assert not report.clean and not blamed, f"honest workers blamed: {blamed}"


def test_the_same_forgery_with_the_verifiers_key_would_audit_clean(honest: Trained, tmp_path: Path) -> None:
    """The control: the same forgery, with results signed by the verifier's real key (read from
    its own folder, where no holder of the run directory finds it), audits clean. So the forgery
    is complete, and only the verifier's key, kept out of the run's folders, stops it."""
    assert honest.verifier_dir is not None
    from stagewarden.attest.verifier_keys import load_verifier_key

    real = load_verifier_key(honest.verifier_dir, create=False)
    assert bytes(real.verify_key) == honest.verifier_key
    report = audit(honest, _forge(honest, tmp_path, real))
    assert report.clean, [(f.code, f.workers, f.message) for f in report.errors]
