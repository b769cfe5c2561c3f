"""BLAKE3 digests of tensors and of whole weight sets, over the tensor's memory without copying it.

A tensor digest commits to the tensor's dtype, its shape and its bytes::

    digest = BLAKE3( "stagewarden/tensor/v1" 0x00
                     || u16 len(dtype) || dtype (ASCII, torch name without "torch.")
                     || u8 ndim || ndim x u64 dim
                     || u64 nbytes
                     || the elements in row-major (C) order, native little-endian bytes )

(all integers big-endian), so two tensors with equal bytes but a different dtype or shape have
different digests. For a contiguous CPU tensor the element bytes are hashed straight from the
tensor's storage through a ``memoryview`` (no copy). A non-contiguous tensor is first made
contiguous, and a tensor on another device (GPU) is first copied to the CPU: both cost one copy
of the tensor, and the digest is the same as that of the contiguous CPU copy. Inputs of at
least ``THREADED_MIN_BYTES`` bytes are hashed with BLAKE3's multithreading.

Digests sit on the pipeline's critical path (every sent tensor, and a stage's whole gradient set
after each backward unit when receipts are on), so they cost little per tensor: the hashed header
is cached per dtype and shape, and the element bytes go to BLAKE3 as a NumPy view, without the
read-only wrapping of :func:`tensor_bytes` (which hashes the same bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import blake3

if TYPE_CHECKING:  # torch is imported only where a tensor is digested, so readers of receipts need not load it
    import torch

#: Domain tag of a single tensor digest.
TENSOR_DOMAIN = b"stagewarden/tensor/v1\x00"
#: Domain tag of a digest of an ordered list of tensors.
TENSOR_LIST_DOMAIN = b"stagewarden/tensor-list/v1\x00"
#: Domain tag of a weights digest (a state dict, keys sorted).
WEIGHTS_DOMAIN = b"stagewarden/weights/v1\x00"
#: Domain tag of an update unit's input digest (gradient trace and optimizer state before).
UPDATE_INPUT_DOMAIN = b"stagewarden/update-input/v2\x00"
#: Domain tag of a stage's gradient trace: its accumulated gradients after each backward unit of a step.
GRADIENT_TRACE_DOMAIN = b"stagewarden/gradient-trace/v1\x00"
#: Domain tag of a gradients digest: a stage's parameter gradients, hashed as one stream.
GRADIENTS_DOMAIN = b"stagewarden/gradients/v1\x00"
#: BLAKE3's chunk size: a gradients digest pads its headers to a multiple of it, so that the
#: elements start on a chunk boundary (BLAKE3 hashes whole aligned chunks several at a time).
CHUNK_BYTES = 1024
#: Domain tag of an update unit's output digest (weights and optimizer state after).
UPDATE_OUTPUT_DOMAIN = b"stagewarden/update-output/v1\x00"
LAST_FORWARD_DOMAIN = b"stagewarden/last-forward-output/v1\x00"
#: Domain of :func:`aggregate_commitment`.
AGGREGATE_DOMAIN = b"stagewarden/aggregate/v1\x00"
#: From this many bytes on, BLAKE3 hashes with several threads. Below about 8 MiB, hashing the
#: header and then the elements with threads was measured slower than with one thread (on 2 idle
#: cores: 60 against 27 microseconds for 128 KiB, 273 against 169 for 1 MiB, even at 4 MiB), and
#: a training job's cores are rarely idle.
THREADED_MIN_BYTES = 8 * 1024 * 1024
#: Most dimensions a digested tensor may have.
MAX_DIMS = 16
#: Length of every digest, in bytes.
DIGEST_SIZE = 32


@dataclasses.dataclass(frozen=True)
class TensorDigest:
    """The digest of one tensor, with the dtype and shape it commits to.

    Attributes:
        dtype: the torch dtype name without the ``torch.`` prefix (``"float32"``).
        shape: the tensor's shape.
        digest: the 32-byte BLAKE3 digest defined in the module docstring.
    """

    dtype: str
    shape: tuple[int, ...]
    digest: bytes


def dtype_name(dtype: torch.dtype) -> str:
    """The name of ``dtype`` as digests and headers carry it (``torch.float32`` gives ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=4096)
def tensor_header(dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The hashed header of a tensor digest (domain tag, dtype, shape, byte count)."""
    if len(shape) > MAX_DIMS:
        raise ValueError(f"a digested tensor has at most {MAX_DIMS} dimensions, not {len(shape)}")
    name = dtype.encode("ascii")
    return b"".join(
        (
            TENSOR_DOMAIN,
            struct.pack(">H", len(name)),
            name,
            struct.pack(f">B{len(shape)}Q", len(shape), *shape),
            struct.pack(">Q", nbytes),
        )
    )


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A read-only byte view of ``tensor``'s elements in row-major order.

    Zero-copy for a contiguous CPU tensor; a non-contiguous or non-CPU tensor is copied once
    (see the module docstring). Conjugate and negative views are resolved first (a copy).

    Raises:
        TypeError: for sparse, quantized or nested tensors, whose bytes are not a plain array.
    """
    return memoryview(_element_array(tensor.detach())).toreadonly()


def _element_array(flat: torch.Tensor) -> Any:
    """The elements of the detached tensor ``flat`` as a NumPy ``uint8`` array (a view of its
    memory when it is a contiguous CPU tensor): what :func:`tensor_bytes` wraps and digests hash."""
    import torch

    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise NotImplementedError("tensor digests are defined over little-endian element bytes")
    if flat.layout != torch.strided or flat.is_quantized or flat.is_nested:
        raise TypeError(f"cannot digest a {flat.layout} / quantized / nested tensor; digest its dense form")
    if flat.is_conj() or flat.is_neg():
        flat = flat.resolve_conj().resolve_neg()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(-1).view(torch.uint8).numpy()  # numpy arrays support the buffer protocol


#: dtype names by dtype (``str(dtype)`` is slow enough to matter per tensor).
_DTYPE_NAMES: dict[Any, str] = {}


def _cached_dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else _DTYPE_NAMES.setdefault(dtype, dtype_name(dtype))


def _digest_parts(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """The dtype name, shape and digest of ``tensor`` (the header comes from a cache, the
    elements straight from :func:`_element_array`, without :func:`tensor_bytes`' read-only view)."""
    flat = tensor.detach()
    dtype = _cached_dtype_name(flat.dtype)
    shape = tuple(flat.shape)
    data = _element_array(flat)
    nbytes = data.nbytes
    hasher = blake3.blake3(tensor_header(dtype, shape, nbytes), max_threads=_threads(nbytes))
    hasher.update(data)
    return dtype, shape, hasher.digest()


def _threads(size: int) -> int:
    return blake3.blake3.AUTO if size >= THREADED_MIN_BYTES else 1


def tensor_digest(tensor: torch.Tensor) -> TensorDigest:
    """The :class:`TensorDigest` of ``tensor`` (see the module docstring for the definition)."""
    dtype, shape, digest = _digest_parts(tensor)
    return TensorDigest(dtype=dtype, shape=shape, digest=digest)


def digest_tensor(tensor: torch.Tensor) -> bytes:
    """Just the 32 digest bytes of :func:`tensor_digest`."""
    return _digest_parts(tensor)[2]


def digest_tensors(tensors: Iterable[torch.Tensor]) -> bytes:
    """The digest of an ordered list of tensors: BLAKE3(domain || u32 count || each tensor digest)."""
    digests = [_digest_parts(t)[2] for t in tensors]
    return blake3.blake3(TENSOR_LIST_DOMAIN + struct.pack(">I", len(digests)) + b"".join(digests)).digest()


def gradients_digest(tensors: Sequence[torch.Tensor], flat: torch.Tensor | None = None) -> bytes:
    """The digest of a stage's parameter gradients (in parameter order), hashed as one stream::

        BLAKE3( "stagewarden/gradients/v1" 0x00 || u32 count
                || each tensor's header (as a tensor digest hashes it)
                || zero bytes up to a multiple of 1024
                || every tensor's elements, concatenated in order )

    It commits to every tensor's dtype, shape and bytes, like :func:`digest_tensors`, but hashes
    all elements in one pass instead of one digest per tensor: about 1.7 times as fast for a
    stage of a few dozen tensors when they lie in one buffer.

    Args:
        tensors: The gradients, in parameter order.
        flat: Optionally, a contiguous tensor the ``tensors`` are consecutive views of, in order
            and covering it exactly (a flat gradient buffer): its memory is then hashed in one
            update. Anything else is ignored (the tensors are hashed one after the other, with
            the same result).
    """
    whole = flat is not None and views_cover(flat, tensors)
    parts = [GRADIENTS_DOMAIN, struct.pack(">I", len(tensors))]
    arrays = []
    total = 0
    for tensor in tensors:
        t = tensor.detach()
        dtype = _cached_dtype_name(t.dtype)
        if whole:  # a contiguous view of the flat buffer: its bytes are hashed with the buffer's
            nbytes = t.numel() * t.element_size()
        else:
            arrays.append(_element_array(t))
            nbytes = arrays[-1].nbytes
        parts.append(tensor_header(dtype, tuple(t.shape), nbytes))
        total += nbytes
    prefix = b"".join(parts)
    hasher = blake3.blake3(prefix + bytes(-len(prefix) % CHUNK_BYTES), max_threads=_threads(total))
    if whole:
        assert flat is not None
        hasher.update(_element_array(flat.detach()))
    for data in arrays:
        hasher.update(data)
    return hasher.digest()


def views_cover(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are consecutive contiguous views of the contiguous ``flat``, in order,
    covering all of it (so its memory is their elements, concatenated)."""
    if not flat.is_contiguous() or flat.is_conj() or flat.is_neg():
        return False
    address, end = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    for t in tensors:
        if (
            t.device != flat.device
            or t.dtype != flat.dtype
            or not t.is_contiguous()
            or t.is_conj()
            or t.is_neg()
            or t.data_ptr() != address
        ):
            return False
        address += t.numel() * t.element_size()
    return address == end


def digest_state_dict(state: Mapping[str, torch.Tensor]) -> bytes:
    """The weights digest of a state dict, independent of its key order.

    ``BLAKE3(domain || u32 count || for each name in sorted order: u16 len(name) || name (UTF-8)
    || tensor digest)``.
    """
    return weights_digest({name: digest_tensor(tensor) for name, tensor in state.items()})


def weights_digest(digests: Mapping[str, bytes]) -> bytes:
    """:func:`digest_state_dict` from the tensor digests of a state dict (name to
    :func:`digest_tensor`), for a holder that has digested each tensor already."""
    parts = [WEIGHTS_DOMAIN, struct.pack(">I", len(digests))]
    for name in sorted(digests):
        encoded = name.encode("utf-8")
        parts += [struct.pack(">H", len(encoded)), encoded, digests[name]]
    return blake3.blake3(b"".join(parts)).digest()


def update_input_digest(gradient_trace: bytes, optimizer: bytes) -> bytes:
    """What an update receipt's input digest commits to: ``BLAKE3("stagewarden/update-input/v2"
    0x00 || gradient_trace || optimizer)``, from the :func:`gradient_trace_digest` of the step's
    accumulated gradients (whose last entry is what the update starts from) and the
    :func:`digest_state_dict` of the optimizer state before the update."""
    return _pair(UPDATE_INPUT_DOMAIN, gradient_trace, optimizer)


def gradient_trace_digest(digests: Sequence[bytes]) -> bytes:
    """The digest of a stage's gradient trace of one step: ``BLAKE3("stagewarden/gradient-trace/v1"
    0x00 || u32 count || each digest)``, where entry ``m`` is the :func:`gradients_digest` of
    the stage's accumulated parameter gradients right after its backward unit of micro-batch
    ``m`` (in parameter order). Committing to every entry, not just the last, lets a spot check of one
    backward unit start from the gradients the previous unit committed to."""
    if any(len(d) != DIGEST_SIZE for d in digests):
        raise ValueError(f"a gradient trace is a list of {DIGEST_SIZE}-byte digests")
    return blake3.blake3(GRADIENT_TRACE_DOMAIN + struct.pack(">I", len(digests)) + b"".join(digests)).digest()


def update_output_digest(weights: bytes, optimizer: bytes) -> bytes:
    """What an update receipt's output digest commits to: ``BLAKE3("stagewarden/update-output/v1"
    0x00 || weights || optimizer)``, from the :func:`digest_state_dict` of the weights and of the
    optimizer state after the update."""
    return _pair(UPDATE_OUTPUT_DOMAIN, weights, optimizer)


def aggregate_commitment(rule: str, contributions: Sequence[bytes]) -> bytes:
    """What a replica's update commits to about the gradients it aggregated:
    ``BLAKE3("stagewarden/aggregate/v1" 0x00 || u8 len(rule) || rule || u32 count || each digest)``,
    from the aggregation rule's name and the contributions' :func:`gradients_digest`, in replica
    order. With data-parallel replicas it is the entry before the last of an update's gradient
    trace (whose last entry is the aggregate applied), so anyone holding the contributions'
    digests can recompute it."""
    name = rule.encode("utf-8")
    if len(name) > 255 or any(len(d) != DIGEST_SIZE for d in contributions):
        raise ValueError(f"an aggregate commits to a rule name of at most 255 bytes and {DIGEST_SIZE}-byte digests")
    head = AGGREGATE_DOMAIN + bytes([len(name)]) + name + struct.pack(">I", len(contributions))
    return blake3.blake3(head + b"".join(contributions)).digest()


def last_forward_output_digest(logits: bytes, loss: bytes) -> bytes:
    """What a forward receipt of the last stage commits to as its output:
    ``BLAKE3("stagewarden/last-forward-output/v1" 0x00 || logits || loss)``, from the
    :func:`digest_tensor` of the micro-batch's logits and of its loss (a 0-dimensional float32
    tensor, before the ``1 / M`` scaling). The loss the run reports is then signed, and a spot
    check of the unit re-executes it with the logits."""
    return _pair(LAST_FORWARD_DOMAIN, logits, loss)


def _pair(domain: bytes, first: bytes, second: bytes) -> bytes:
    if len(first) != DIGEST_SIZE or len(second) != DIGEST_SIZE:
        raise ValueError(f"a combined digest combines two {DIGEST_SIZE}-byte digests")
    return blake3.blake3(domain + first + second).digest()
