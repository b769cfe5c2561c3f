"""Step roots (docs/receipts.rst, "Step roots"): the format, the Merkle tree, and the audit's use
of them, attacked from the log holder's side on a copy of a real run and from a worker's side on
records signed for the test."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import blake3
import pytest
from nacl.signing import SigningKey
from sealed_record_fixtures import (  # noqa: F401  (honest_run: fixture)
    Trained,
    audit,
    author,
    caught,
    copy_run,
    honest_run,
    read_records,
    write_records,
)

from stagewarden.attest.audit_findings import FindingLog
from stagewarden.attest.audit_records import check_records
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.receipt_log import LOG_GENESIS, LogRecord, RecordType
from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    parse_receipt,
    sign_receipt,
)
from stagewarden.attest.step_roots import MAX_LEAVES, StepRoot, leaf_hash, merkle_root, parse_root, sign_root

E = ErrorCode


def _rfc9162(leaves: list[bytes]) -> bytes:
    """RFC 9162's MTH, written from its recursive definition (split at the largest power of two
    below n), over leaf hashes."""
    if not leaves:
        return blake3.blake3(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return blake3.blake3(b"\x01" + _rfc9162(leaves[:k]) + _rfc9162(leaves[k:])).digest()


@pytest.mark.parametrize("n", range(34))
def test_the_tree_is_rfc9162s(n: int) -> None:
    leaves = [leaf_hash(bytes([i]) * 7) for i in range(n)]
    assert merkle_root(leaves) == _rfc9162(leaves)


def test_a_leaf_is_not_an_inner_node() -> None:
    """Domain separation: the bytes of an inner node, taken as a record, hash to another leaf."""
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert leaf_hash(a + b) != merkle_root([a, b])


def _root(key: SigningKey, leaves: int = 5, receipts: int = 3) -> StepRoot:
    unsigned = StepRoot("run-1", "s1r0", 1, 0, 7, receipts, tuple(leaf_hash(bytes([i])) for i in range(leaves)))
    return sign_root(unsigned, key)


def test_encoding_round_trips_and_the_signature_binds_every_field() -> None:
    key = SigningKey.generate()
    root = _root(key)
    assert parse_root(root.encode()) == root
    root.verify(bytes(key.verify_key))
    for change in (
        {"step": 8},
        {"stage": 2},
        {"replica": 1},
        {"worker_id": "s1r1"},
        {"run_id": "run-2"},
        {"receipts": 2},
        {"leaves": (bytes(32), *root.leaves[1:])},
        {"leaves": root.leaves[:-1]},
    ):
        with pytest.raises(AttestError) as bad:
            dataclasses.replace(root, **change).verify(bytes(key.verify_key))  # type: ignore[arg-type]
        assert bad.value.code is E.STEP_ROOT_SIGNATURE
    with pytest.raises(AttestError, match="not by the expected key"):
        root.verify(bytes(SigningKey.generate().verify_key))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\0",
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:4] + b"\x00\x02" + b[6:],
        lambda b: b[:20],
        lambda b: b"",
    ],
    ids=["short", "trailing", "magic", "version", "cut", "empty"],
)
def test_a_malformed_root_is_refused_with_its_code(mutate: object) -> None:
    encoded = _root(SigningKey.generate()).encode()
    with pytest.raises(FormatError) as bad:
        parse_root(mutate(encoded))  # type: ignore[operator]
    assert bad.value.code is E.STEP_ROOT_MALFORMED


def test_a_root_naming_more_leaves_than_allowed_is_refused_before_it_is_read() -> None:
    root = _root(SigningKey.generate())
    encoded = bytearray(root.encode())
    at = encoded.index(b"\x00\x00\x00\x03\x00\x00\x00\x02")  # receipts 3, headers 2
    encoded[at + 4 : at + 8] = (MAX_LEAVES).to_bytes(4, "big")
    with pytest.raises(FormatError, match="leaves, at most"):
        parse_root(bytes(encoded))
    with pytest.raises(ValueError, match="at most"):
        StepRoot("r", "w", 0, 0, 0, 0, (bytes(32),) * (MAX_LEAVES + 1)).encode()


# -- the audit's first pass, on records signed here ------------------------------------------------


def _receipts(key: SigningKey, count: int, bad_signature: int | None = None) -> list[bytes]:
    out, prev = [], chain_genesis("run-1", "s1r0")
    for m in range(count):
        receipt = sign_receipt(
            Receipt(
                run_id="run-1",
                worker_id="s1r0",
                stage=1,
                replica=0,
                step=0,
                micro_batch=m,
                kind=UnitKind.FORWARD,
                input_digest=bytes(32),
                output_digest=bytes(32),
                weights_digest=bytes(32),
                env=ExecutionEnv.capture(None),
                signed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                prev_digest=prev,
            ),
            key,
        )
        if m == bad_signature:
            receipt = dataclasses.replace(receipt, signature=bytes(64))
        prev = blake3.blake3(encode_receipt(receipt)).digest()
        out.append(encode_receipt(receipt))
    return out


def _records(payloads: list[tuple[RecordType, bytes]]) -> list[LogRecord]:
    return [LogRecord(i, 0, t, p, LOG_GENESIS, bytes(32)) for i, (t, p) in enumerate(payloads)]


def _root_over(receipts: list[bytes], key: SigningKey) -> bytes:
    unsigned = StepRoot("run-1", "s1r0", 1, 0, 0, len(receipts), tuple(leaf_hash(r) for r in receipts))
    return sign_root(unsigned, key).encode()


def test_a_covered_record_is_its_signers_on_the_roots_signature_alone() -> None:
    """A worker's receipt whose own signature is zeros, listed by the worker's genuine root, is
    the worker's: the root's one signature stands for it."""
    key = SigningKey.generate()
    receipts = _receipts(key, 3, bad_signature=1)
    log = FindingLog()
    items = check_records(
        _records([(RecordType.RECEIPT, r) for r in receipts] + [(RecordType.STEP_ROOT, _root_over(receipts, key))]),
        1,
        log,
    )
    assert [i.error for i in items] == [None, None, None] and not log.findings


def test_a_root_by_another_key_covers_nothing() -> None:
    """The same receipts under a root signed by a key of the holder's own cover nothing: the
    receipt with the bad signature is reported. A root that names the worker's key but was signed
    by another is reported itself."""
    key, holder = SigningKey.generate(), SigningKey.generate()
    receipts = _receipts(key, 3, bad_signature=1)
    own = _root_over(receipts, holder)
    log = FindingLog()
    items = check_records(_records([(RecordType.RECEIPT, r) for r in receipts] + [(RecordType.STEP_ROOT, own)]), 1, log)
    assert [i.error.code if i.error else None for i in items] == [None, E.RECEIPT_SIGNATURE, None]
    posing = dataclasses.replace(parse_root(own), signer_key=bytes(key.verify_key))
    log = FindingLog()
    items = check_records(
        _records([(RecordType.RECEIPT, r) for r in receipts] + [(RecordType.STEP_ROOT, posing.encode())]), 1, log
    )
    assert [f.code for f in log.findings] == [E.STEP_ROOT_SIGNATURE]
    assert [i.error.code if i.error else None for i in items] == [None, E.RECEIPT_SIGNATURE, None]


def test_a_record_altered_after_it_was_covered_is_found() -> None:
    """A receipt rewritten in the log (a digest changed, the signature kept) no longer hashes to
    its leaf: its own signature is checked and fails, and the root lists a receipt the log lacks."""
    key = SigningKey.generate()
    receipts = _receipts(key, 3)
    root = _root_over(receipts, key)
    altered = bytearray(receipts[2])
    parsed = parse_receipt(receipts[2])
    at = bytes(altered).index(parsed.output_digest)
    altered[at] ^= 1
    log = FindingLog()
    items = check_records(
        _records([(RecordType.RECEIPT, r) for r in receipts[:2]] + [(RecordType.RECEIPT, bytes(altered))])
        + _records([(RecordType.STEP_ROOT, root)]),
        1,
        log,
    )
    assert items[2].error is not None and items[2].error.code is E.RECEIPT_SIGNATURE
    assert [f.code for f in log.findings] == [E.STEP_ROOT_MISMATCH]


# -- the audit of a real run, attacked ------------------------------------------------------------


def test_a_real_run_logs_one_root_per_worker_and_step_covering_every_receipt(honest: Trained) -> None:
    records = read_records(honest.run)
    roots = [parse_root(p) for t, p in records if t is RecordType.STEP_ROOT]
    assert roots and len({(r.worker_id, r.step) for r in roots}) == len(roots)
    listed = {leaf for r in roots for leaf in r.leaves}
    receipts = [p for t, p in records if t is RecordType.RECEIPT and parse_receipt(p).kind is not UnitKind.UPDATE]
    headers = [p for t, p in records if t is RecordType.HEADER]
    assert all(leaf_hash(p) in listed for p in receipts + headers)
    report = audit(honest, honest.run)
    assert report.clean, [(f.code, f.message) for f in report.errors]


def test_a_roots_signature_altered_is_found_and_blames_nobody(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = next(i for i, (t, _) in enumerate(records) if t is RecordType.STEP_ROOT)
    payload = bytearray(records[at][1])
    payload[-1] ^= 1
    records[at] = (RecordType.STEP_ROOT, bytes(payload))
    write_records(run, records)
    caught(honest, run, E.STEP_ROOT_SIGNATURE)


def test_a_receipt_cut_out_under_its_root_is_found(honest: Trained, tmp_path: Path) -> None:
    """One forward receipt deleted and the log re-framed: the worker's own root still lists it."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = next(
        i
        for i, (t, p) in enumerate(records)
        if t is RecordType.RECEIPT and parse_receipt(p).kind is UnitKind.FORWARD and parse_receipt(p).step == 1
    )
    victim = author(records[at])
    del records[at]
    write_records(run, records)
    caught(honest, run, E.STEP_ROOT_MISMATCH)
    report = audit(honest, run)
    assert victim not in {w for f in report.errors for w in f.workers}


def test_a_received_header_cut_out_is_found_from_its_senders_root(honest: Trained, tmp_path: Path) -> None:
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    at = next(i for i, (t, _) in enumerate(records) if t is RecordType.HEADER)
    del records[at]
    write_records(run, records)
    caught(honest, run, E.STEP_ROOT_MISMATCH)


def test_every_root_dropped_leaves_each_record_on_its_own_signature(honest: Trained, tmp_path: Path) -> None:
    """Without the roots every record is checked on its own signature (all genuine): the audit
    finds only that the record was altered, through the seal."""
    run = copy_run(honest, tmp_path)
    write_records(run, [r for r in read_records(run) if r[0] is not RecordType.STEP_ROOT])
    report = audit(honest, run)
    codes = {f.code for f in report.errors}
    assert E.RECORD_REWRITTEN in codes and not codes & {E.RECEIPT_SIGNATURE, E.HEADER_SIGNATURE, E.STEP_ROOT_MISMATCH}
    assert not [f for f in report.errors if f.workers]


def test_a_root_moved_to_another_step_position_is_found(honest: Trained, tmp_path: Path) -> None:
    """Two workers' roots swapped in the log (each still genuine): only the log's order changed,
    which the seal finds."""
    run = copy_run(honest, tmp_path)
    records = read_records(run)
    positions = [i for i, (t, _) in enumerate(records) if t is RecordType.STEP_ROOT]
    a, b = positions[0], positions[1]
    records[a], records[b] = records[b], records[a]
    write_records(run, records)
    caught(honest, run, E.RECORD_REWRITTEN)
