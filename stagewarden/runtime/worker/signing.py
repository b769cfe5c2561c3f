"""What a worker signs: its receipts, hash-chained one to the next, the headers of the
tensors it sends, and once a step the root over both (:class:`Signer`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import torch
from nacl.signing import SigningKey

from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, sign_header
from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    receipt_digest,
    sign_receipt,
)
from stagewarden.attest.step_roots import root_over, sign_root
from stagewarden.attest.tensor_digest import TensorDigest, tensor_digest


class Signer:
    """A worker's receipt key and the head of its receipt chain.

    Args:
        key: The Ed25519 key the worker attests and signs with.
    """

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.run_id = ""
        self.worker_id = ""
        self.stage: int | None = None
        """The stage the worker runs (``None`` for a standby that has none yet)."""
        self.pipeline = 0
        """The pipeline of the worker's slot, which its receipts and headers name as their replica
        (:mod:`stagewarden.runtime.layout`)."""
        self.prev = b""
        """The digest of the last receipt signed (or the chain's genesis), which the next one links to."""

    def start(self, run_id: str, worker_id: str, chain_head: bytes | None) -> None:
        """Sign as ``worker_id`` of ``run_id``, continuing the chain from ``chain_head`` (a resumed
        run's last logged receipt) or from its genesis."""
        self.run_id, self.worker_id = run_id, worker_id
        self.prev = chain_head if chain_head is not None else chain_genesis(run_id, worker_id)

    def receipt(
        self, step: int, mb: int, kind: UnitKind, inp: bytes, out: bytes, weights: bytes, env: ExecutionEnv
    ) -> bytes:
        """Sign the receipt of one unit of the worker's stage, linked to the previous one; its encoding."""
        assert self.stage is not None
        receipt = sign_receipt(
            Receipt(
                run_id=self.run_id,
                worker_id=self.worker_id,
                stage=self.stage,
                replica=self.pipeline,
                step=step,
                micro_batch=mb,
                kind=kind,
                input_digest=inp,
                output_digest=out,
                weights_digest=weights,
                env=env,
                signed_at=dt.datetime.now(dt.UTC),
                prev_digest=self.prev,
            ),
            self.key,
        )
        self.prev = receipt_digest(receipt)
        return encode_receipt(receipt)

    def header(self, step: int, mb: int, kind: TransferKind, receiver: int) -> SignedHeader:
        """The unsigned header of a transfer from this stage to stage ``receiver`` (its tensor
        digest and signature are filled in when it is sent)."""
        assert self.stage is not None
        return SignedHeader(
            run_id=self.run_id,
            sender=self.worker_id,
            sender_stage=self.stage,
            sender_replica=self.pipeline,
            receiver_stage=receiver,
            step=step,
            micro_batch=mb,
            kind=kind,
            tensor=TensorDigest("float32", (), bytes(32)),  # replaced when sent
            signed_at=dt.datetime.now(dt.UTC),
        )

    def sign_for(self, header: SignedHeader, tensor: torch.Tensor) -> bytes:
        """``header`` signed over ``tensor``'s digest, encoded (a second header for another tensor
        than the one sent under the first)."""
        return encode_header(sign_header(dataclasses.replace(header, tensor=tensor_digest(tensor.cpu())), self.key))

    def root(self, step: int, receipts: Sequence[bytes], headers: Sequence[bytes]) -> bytes:
        """The signed step root (:mod:`stagewarden.attest.step_roots`) over the encoded
        ``receipts`` of one computation of ``step`` and the encoded ``headers`` the worker sent
        in it; its encoding."""
        assert self.stage is not None
        unsigned = root_over(self.run_id, self.worker_id, self.stage, self.pipeline, step, receipts, headers)
        return sign_root(unsigned, self.key).encode()
