"""Seeds derived from a run seed and a name, so that every process derives the same seed for a part.

A derived seed depends only on its inputs, never on the global random state: two processes that
derive the seed of ``("block", 3)`` from the same run seed get the same number, whatever they did
before.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: str | int) -> int:
    """Derive a 63-bit seed from a run seed and a path of names.

    Args:
        seed: The run seed.
        *parts: Names that identify what the seed is for, such as ``"block", 3``.

    Returns:
        A non-negative integer below ``2**63``, the same on every platform.
    """
    text = ":".join([str(int(seed)), *(str(part) for part in parts)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"stagewarden").digest()
    return int.from_bytes(digest, "big") >> 1


def generator(seed: int, *parts: str | int) -> torch.Generator:
    """Return a CPU generator seeded with :func:`derive_seed` of the same arguments."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, *parts))
    return gen
