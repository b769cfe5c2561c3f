"""Byte-level training data: the corpus and the micro-batches drawn from it.

The default corpus is the Python standard library's own source, present on every Python
installation. A micro-batch depends only on the corpus, the sampler's settings, the seed, the
step and the micro-batch index, so any process (a stage worker, the verifier re-executing a
unit) regenerates exactly the data of step ``t`` without replaying the run.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from stagewarden.runtime.errors import DataError
from stagewarden.runtime.seeding import generator

if TYPE_CHECKING:
    from stagewarden.runtime.config import RunConfig

DEFAULT_MAX_BYTES = 2 * 1024 * 1024
"""How many bytes of the default corpus are used (2 MiB)."""

_BINARY_SNIFF = 8192

Split = Literal["train", "val"]


_NOT_STDLIB = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files, in sorted path order (relative to the library root).

    Installed third-party packages (``site-packages``, ``dist-packages``) are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (path for path in root.rglob("*.py") if _NOT_STDLIB.isdisjoint(path.relative_to(root).parts))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def _read_capped(files: Sequence[Path], max_bytes: int | None) -> bytes:
    chunks: list[bytes] = []
    total = 0
    for path in files:
        data = path.read_bytes()
        if max_bytes is not None and total + len(data) > max_bytes:
            chunks.append(data[: max_bytes - total])
            total = max_bytes
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()  # (N,)


def default_corpus(max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """The default corpus: the standard library's ``.py`` sources, concatenated, capped.

    Args:
        max_bytes: Keep the first this many bytes.

    Returns:
        A 1-D ``uint8`` tensor of at most ``max_bytes`` bytes.
    """
    if max_bytes < 1:
        raise DataError(f"the corpus size limit must be at least 1 byte, got {max_bytes}")
    data = _read_capped(stdlib_sources(), max_bytes)
    if not data:
        root = sysconfig.get_paths()["stdlib"]
        raise DataError(f"no standard-library sources found under {root}; give data files instead")
    return _to_tensor(data)


def _is_binary(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"\x00" in handle.read(_BINARY_SNIFF)


def _text_files_under(folder: Path) -> list[Path]:
    """Regular, non-hidden, non-binary files below ``folder``, in sorted relative-path order."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or "__pycache__" in relative.parts:
            continue
        if path.is_file() and not _is_binary(path):
            found.append(path)
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _collect(paths: Sequence[Path]) -> list[Path]:
    """The files to read, in order; raises DataError for a missing path, empty folder or binary file."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = _text_files_under(path)
            if not found:
                raise DataError(f"data folder {path} holds no text files")
            files.extend(found)
        elif path.is_file():
            if _is_binary(path):
                raise DataError(f"data file {path} is not a text file (it contains NUL bytes)")
            files.append(path)
        else:
            raise DataError(f"data path {path} does not exist")
    return files


def load_corpus(paths: Sequence[Path], max_bytes: int | None = None) -> torch.Tensor:
    """Read a corpus from text files and folders of text files, in the order given.

    A folder contributes its regular files, recursively, in sorted path order, skipping hidden
    entries, ``__pycache__`` and binary files (a NUL byte near the start). A file named directly
    must be text.

    Args:
        paths: Files and folders.
        max_bytes: Keep only the first this many bytes; ``None`` keeps everything.

    Returns:
        A 1-D ``uint8`` tensor.

    Raises:
        DataError: A path is missing, a named file is binary, or there is no text at all.
    """
    if not paths:
        raise DataError("no data paths given")
    if max_bytes is not None and max_bytes < 1:
        raise DataError(f"the corpus size limit must be at least 1 byte, got {max_bytes}")
    try:
        files = _collect(paths)
        data = _read_capped(files, max_bytes)
    except OSError as error:
        raise DataError(f"cannot read the data: {error}") from error
    if not data:
        raise DataError("the data files are all empty: " + ", ".join(str(path) for path in paths))
    return _to_tensor(data)


def corpus_digest(corpus: torch.Tensor) -> str:
    """The SHA-256 of the corpus bytes, hex: names the data a run trained on."""
    data = corpus.to(torch.uint8).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


class Batches:
    """Deterministic micro-batches of ``(input, target)`` windows from a byte corpus.

    The corpus is split once: the first ``1 - val_fraction`` for training, the rest for
    validation. Micro-batch ``j`` of step ``t`` draws ``batch_size`` window offsets uniformly
    from its split with a generator seeded by ``(seed, split, t, j)``.

    Args:
        corpus: The token ids, 1-D (``uint8`` or ``int64``).
        block_size: Window length ``T``.
        batch_size: Windows per micro-batch ``B``.
        microbatches: Micro-batches per step ``M``.
        seed: The run seed.
        val_fraction: Share of the corpus, at the end, held out for validation.

    Raises:
        DataError: The corpus is not 1-D, or a split is shorter than one window plus its target.
    """

    def __init__(
        self,
        corpus: torch.Tensor,
        block_size: int,
        batch_size: int,
        microbatches: int,
        seed: int,
        val_fraction: float = 0.1,
    ) -> None:
        if corpus.dim() != 1:
            raise DataError(f"the corpus must be a 1-D tensor of token ids, got shape {tuple(corpus.shape)}")
        for name, value in (("block_size", block_size), ("batch_size", batch_size), ("microbatches", microbatches)):
            if value < 1:
                raise DataError(f"{name} must be at least 1, got {value}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        self.block_size = block_size
        self.batch_size = batch_size
        self.microbatches = microbatches
        self.seed = seed
        tokens = corpus.to(torch.int64)  # (N,)
        cut = int(len(tokens) * (1.0 - val_fraction))
        self.splits: dict[str, torch.Tensor] = {"train": tokens[:cut], "val": tokens[cut:]}
        for split, data in self.splits.items():
            if len(data) < block_size + 1:
                raise DataError(
                    f"the {split} split has {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    "use more data or a shorter block"
                )

    def microbatch(
        self, step: int, index: int, split: Split = "train", shard: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch ``index`` of ``step`` in data-parallel ``shard`` (the replica that trains on
        it; replica 0's draws are a single pipeline's, and each other replica draws its own windows
        with a generator seeded by ``(seed, split, t, j, shard)``).

        Returns:
            ``(x, y)``, both ``(B, T)`` int64, where ``y`` is ``x`` shifted by one token.
        """
        if not 0 <= index < self.microbatches:
            raise IndexError(f"micro-batch index {index} is out of range for {self.microbatches} micro-batches")
        data = self.splits[split]
        T = self.block_size  # noqa: N806
        gen = (
            generator(self.seed, "batch", split, step, index)
            if shard == 0
            else generator(self.seed, "batch", split, step, index, shard)
        )
        starts = torch.randint(0, len(data) - T, (self.batch_size,), generator=gen)  # (B,)
        offsets = starts[:, None] + torch.arange(T + 1)[None, :]  # (B, T + 1)
        windows = data[offsets]  # (B, T + 1)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T), (B, T)

    def batch(self, step: int, split: Split = "train", shard: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every micro-batch of ``step`` in ``shard``, in order: a list of ``M`` pairs ``(x, y)``,
        each ``(B, T)``."""
        return [self.microbatch(step, index, split, shard) for index in range(self.microbatches)]


def batches_for(config: RunConfig) -> Batches:
    """The run's micro-batches: from its data files, else the default corpus."""
    if config.data:
        corpus = load_corpus([Path(p) for p in config.data], config.max_bytes)
    else:
        corpus = default_corpus() if config.max_bytes is None else default_corpus(config.max_bytes)
    return Batches(corpus, config.model.block_size, config.batch_size, config.microbatches, config.seed)
