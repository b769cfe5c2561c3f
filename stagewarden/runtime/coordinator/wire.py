"""Decoding the fields of the workers' messages the coordinator reads, and the tensor digests of
what it received: the checks every collaborator of the engine applies alike."""

from __future__ import annotations

from typing import Any

import torch

from stagewarden.attest.tensor_digest import digest_tensor, weights_digest

#: The tensor dtypes a worker may announce.
FETCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The most elements one announced tensor may have.
MAX_FETCH_ELEMENTS = 1 << 28


def hex_field(value: Any, size: int | None, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if size is not None and len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def hex_list(value: Any, length: int, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{what} must be a list of {length} hex digests")
    return [hex_field(v, 32, f"{what}[{i}]") for i, v in enumerate(value)]


def busy_seconds(msg: dict[str, Any]) -> float:
    value = msg.get("busy_ns", 0)
    return value / 1e9 if isinstance(value, int) and value >= 0 else 0.0


def float_field(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("a loss must be a float in hex notation")
    return float.fromhex(value)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def dtype_name(tensor: torch.Tensor) -> str:
    return next(name for name, dtype in FETCH_DTYPES.items() if dtype == tensor.dtype)


def tensor_digests(tensors: dict[str, torch.Tensor], digests: dict[str, bytes], group: str) -> dict[str, bytes]:
    """Each tensor's :func:`~stagewarden.attest.tensor_digest.digest_tensor` by key: the one
    the receiving side computed (by ``<group>.<name>``) where it has it."""
    return {k: digests.get(f"{group}.{k}") or digest_tensor(v) for k, v in tensors.items()}


def digest_of_weights(weights: dict[str, torch.Tensor], digests: dict[str, bytes], group: str = "weights") -> bytes:
    """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of ``weights``, from the tensor
    digests the receiving side computed (by ``<group>.<name>``) where it has them."""
    return weights_digest(tensor_digests(weights, digests, group))
