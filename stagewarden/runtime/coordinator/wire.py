"""What the coordinator needs beyond the protocol's parsing (:mod:`stagewarden.runtime.protocol`)
to take the tensors a worker announces: their torch dtypes, the size limit, and the digests of
what it received."""

from __future__ import annotations

import torch

from stagewarden.attest.tensor_digest import digest_tensor, weights_digest

#: The torch dtype of each dtype name a tensor group may announce
#: (:data:`stagewarden.runtime.protocol.fields.TENSOR_DTYPES`).
FETCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The most elements one announced tensor may have.
MAX_FETCH_ELEMENTS = 1 << 28


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_digests(tensors: dict[str, torch.Tensor], digests: dict[str, bytes], group: str) -> dict[str, bytes]:
    """Each tensor's :func:`~stagewarden.attest.tensor_digest.digest_tensor` by key: the one
    the receiving side computed (by ``<group>.<name>``) where it has it."""
    return {k: digests.get(f"{group}.{k}") or digest_tensor(v) for k, v in tensors.items()}


def digest_of_weights(weights: dict[str, torch.Tensor], digests: dict[str, bytes], group: str = "weights") -> bytes:
    """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of ``weights``, from the tensor
    digests the receiving side computed (by ``<group>.<name>``) where it has them."""
    return weights_digest(tensor_digests(weights, digests, group))
