"""Step roots: one signature per worker and step over a Merkle tree of that step's records.

A worker signs each receipt and each header it sends, so that every record can be checked
alone. Checking every one of them centrally costs the coordinator a signature check per unit
and transfer, which grows with stages x replicas x micro-batches. A :class:`StepRoot` lets it
check one signature per worker and step instead: with its commitment the worker sends the leaf
hashes of the records it committed to in that step (first its receipts, in signing order, then
the headers it sent) and signs the Merkle root over them. A record whose leaf hash is a leaf of
a genuine root is the signer's: the coordinator and the audit take it without checking its own
signature, and check that signature only for a record no root covers.

The tree is the Merkle tree of RFC 9162 (section 2.1.1) with BLAKE3: a leaf hash is
``BLAKE3(0x00 || record bytes)``, an inner node ``BLAKE3(0x01 || left || right)``, and a tree of
``n`` leaves splits at the largest power of two below ``n``. Because the signature covers the
root, not the list, one record's inclusion can later be shown with the ``log2(n)`` hashes on its
path; the log keeps the whole list, so the audit recomputes every root.

Encoding (version 1, big-endian)::

    "SWSR" | u16 version | string run_id | string worker_id | u32 stage | u32 replica | u64 step
    | u32 receipts | u32 headers | (receipts + headers) x 32-byte leaf hash
    | 32-byte signer key | 64-byte signature

The signature is over ``ROOT_DOMAIN || the encoding up to the leaves || Merkle root``.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import blake3
from nacl.signing import SigningKey

from .binary import Writer, check_bytes, check_id, check_uint, read_string
from .errors import AttestError, ErrorCode, FormatError
from .receipts import DIGEST_SIZE, KEY_SIZE, MAX_ID_BYTES, SIGNATURE_SIZE, verify_signature

#: First four bytes of an encoded step root.
ROOT_MAGIC = b"SWSR"
#: The step root format version this module writes and reads.
ROOT_VERSION = 1
#: What a worker's root signature is over, before the root's fields.
ROOT_DOMAIN = b"stagewarden/record/step-root/v1\x00"
#: The most leaves one root may have. A receipt log record holds at most 64 KiB, so a root with
#: its leaf list fits one record (a step of 256 micro-batches commits to about 1,030 records).
MAX_LEAVES = 1800

_FIXED = struct.Struct(">IIQII")
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(record: bytes) -> bytes:
    """The leaf hash of one encoded record (a receipt or a signed header, signature included)."""
    return blake3.blake3(_LEAF_PREFIX + record).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 9162 Merkle tree hash over ``leaves`` (leaf hashes), with BLAKE3; the hash of the
    empty string for no leaves.

    Built level by level, an odd last node moving up unpaired: this is the same tree as the
    RFC's recursive split at the largest power of two below ``n``.
    """
    if not leaves:
        return blake3.blake3(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [blake3.blake3(_NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


@dataclasses.dataclass(frozen=True)
class StepRoot:
    """A worker's signed root over the records it committed to in one computation of a step.

    Attributes:
        run_id: The training run.
        worker_id: The signing worker.
        stage: The worker's stage.
        replica: The worker's pipeline.
        step: The step.
        receipts: How many of the leaves are receipts (they come first, in signing order).
        leaves: The leaf hashes (:func:`leaf_hash`): the receipts, then the headers the worker
            sent in this computation of the step.
        signer_key: The worker's 32-byte Ed25519 receipt public key.
        signature: The 64-byte signature over :meth:`message`.
    """

    run_id: str
    worker_id: str
    stage: int
    replica: int
    step: int
    receipts: int
    leaves: tuple[bytes, ...]
    signer_key: bytes = bytes(KEY_SIZE)
    signature: bytes = bytes(SIGNATURE_SIZE)

    @property
    def receipt_leaves(self) -> tuple[bytes, ...]:
        """The leaf hashes of the receipts."""
        return self.leaves[: self.receipts]

    @property
    def header_leaves(self) -> tuple[bytes, ...]:
        """The leaf hashes of the headers the worker sent."""
        return self.leaves[self.receipts :]

    def _fields(self) -> bytes:
        w = Writer()
        w.raw(ROOT_MAGIC)
        w.u16(ROOT_VERSION)
        w.string(check_id(self.run_id, "run_id", MAX_ID_BYTES))
        w.string(check_id(self.worker_id, "worker_id", MAX_ID_BYTES))
        if not 0 <= self.receipts <= len(self.leaves) <= MAX_LEAVES:
            raise ValueError(f"a step root has at most {MAX_LEAVES} leaves, and its receipts are some of them")
        w.raw(
            _FIXED.pack(
                check_uint(self.stage, 32, "stage"),
                check_uint(self.replica, 32, "replica"),
                check_uint(self.step, 64, "step"),
                self.receipts,
                len(self.leaves) - self.receipts,
            )
        )
        return w.getvalue()

    def message(self) -> bytes:
        """What the worker signs: the domain, the root's fields and the Merkle root of its leaves."""
        return ROOT_DOMAIN + self._fields() + merkle_root(self.leaves)

    def encode(self) -> bytes:
        """The canonical encoding (see the module docstring)."""
        leaves = b"".join(check_bytes(leaf, DIGEST_SIZE, "leaf hash") for leaf in self.leaves)
        return (
            self._fields()
            + leaves
            + check_bytes(self.signer_key, KEY_SIZE, "signer_key")
            + check_bytes(self.signature, SIGNATURE_SIZE, "signature")
        )

    def verify(self, expected_key: bytes) -> None:
        """Raise ``STEP_ROOT_SIGNATURE`` unless ``expected_key`` signed this root."""
        if self.signer_key != expected_key:
            raise AttestError(
                ErrorCode.STEP_ROOT_SIGNATURE,
                f"step root was signed by key {self.signer_key.hex()[:16]}, not by the expected key "
                f"{expected_key.hex()[:16]}",
            )
        verify_signature(self.signer_key, self.message(), self.signature, ErrorCode.STEP_ROOT_SIGNATURE, "step root")


def root_over(
    run_id: str,
    worker_id: str,
    stage: int,
    replica: int,
    step: int,
    receipts: Sequence[bytes],
    headers: Sequence[bytes],
) -> StepRoot:
    """The unsigned root of ``worker_id`` over its encoded ``receipts`` of one computation of
    ``step`` (in signing order) and the encoded ``headers`` it sent in it."""
    leaves = tuple(leaf_hash(record) for record in (*receipts, *headers))
    return StepRoot(run_id, worker_id, stage, replica, step, len(receipts), leaves)


def sign_root(root: StepRoot, key: SigningKey) -> StepRoot:
    """``root`` with its signer key set to ``key``'s public half and signed by it."""
    unsigned = dataclasses.replace(root, signer_key=bytes(key.verify_key))
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.message()).signature)


def parse_root(data: bytes) -> StepRoot:
    """Parse an encoded step root strictly (its signature is not checked; see :meth:`StepRoot.verify`).

    Raises:
        stagewarden.attest.errors.FormatError: ``STEP_ROOT_MALFORMED`` for anything but a
            canonical version-1 encoding.
    """
    bad, what = ErrorCode.STEP_ROOT_MALFORMED, "step root"
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(bad, f"{what} must be bytes")
    data = bytes(data)
    if len(data) < 6 or data[:4] != ROOT_MAGIC:
        raise FormatError(bad, f"{what}: does not start with the step root magic 'SWSR'")
    version = (data[4] << 8) | data[5]
    if version != ROOT_VERSION:
        raise FormatError(bad, f"{what}: format version {version} is not supported (only {ROOT_VERSION})")
    run_id, pos = read_string(data, 6, MAX_ID_BYTES, True, "run_id", bad, what)
    worker_id, pos = read_string(data, pos, MAX_ID_BYTES, True, "worker_id", bad, what)
    if pos + _FIXED.size > len(data):
        raise FormatError(bad, f"{what}: truncated in fields stage..headers (at byte {pos})")
    stage, replica, step, receipts, headers = _FIXED.unpack_from(data, pos)
    pos += _FIXED.size
    count = receipts + headers
    if count > MAX_LEAVES:
        raise FormatError(bad, f"{what}: {count} leaves, at most {MAX_LEAVES} allowed (at byte {pos - 8})")
    expected = pos + DIGEST_SIZE * count + KEY_SIZE + SIGNATURE_SIZE
    if expected != len(data):
        state = "truncated" if expected > len(data) else "followed by trailing bytes"
        raise FormatError(bad, f"{what}: {state} (it names {count} leaves)")
    leaves = tuple(data[i : i + DIGEST_SIZE] for i in range(pos, pos + DIGEST_SIZE * count, DIGEST_SIZE))
    pos += DIGEST_SIZE * count
    return StepRoot(
        run_id=run_id,
        worker_id=worker_id,
        stage=stage,
        replica=replica,
        step=step,
        receipts=receipts,
        leaves=leaves,
        signer_key=data[pos : pos + KEY_SIZE],
        signature=data[pos + KEY_SIZE :],
    )
