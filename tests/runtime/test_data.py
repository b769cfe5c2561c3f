"""The byte corpus and the deterministic micro-batch sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stagewarden.runtime.data import Batches, corpus_digest, default_corpus, load_corpus, stdlib_sources
from stagewarden.runtime.errors import DataError


@pytest.fixture(scope="module")
def corpus() -> torch.Tensor:
    data: torch.Tensor = default_corpus(max_bytes=64 * 1024)
    return data


def test_default_corpus_is_capped_stdlib_source(corpus: torch.Tensor) -> None:
    """The default corpus is the first bytes of the sorted standard-library sources, as uint8."""
    assert corpus.dtype == torch.uint8 and corpus.shape == (64 * 1024,)
    first = stdlib_sources()[0].read_bytes()
    assert bytes(corpus[: min(len(first), 1024)].tolist()) == first[:1024]
    assert all("site-packages" not in path.parts for path in stdlib_sources())


def test_default_corpus_is_deterministic(corpus: torch.Tensor) -> None:
    """Building the default corpus twice gives the same bytes and digest."""
    again = default_corpus(max_bytes=64 * 1024)
    assert torch.equal(corpus, again)
    assert corpus_digest(corpus) == corpus_digest(again)


def test_load_corpus_reads_files_and_folders_in_order(tmp_path: Path) -> None:
    """Files are read in the order given, folders recursively in sorted order, hidden and binary files skipped."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("BB")
    (tmp_path / "d" / "a.txt").write_text("AA")
    (tmp_path / "d" / "sub" / "c.txt").write_text("CC")
    (tmp_path / "d" / ".hidden").write_text("XX")
    (tmp_path / "d" / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / "f.txt").write_text("FF")
    data = load_corpus([tmp_path / "f.txt", tmp_path / "d"])
    assert bytes(data.tolist()) == b"FFAABBCC"
    assert bytes(load_corpus([tmp_path / "d"], max_bytes=3).tolist()) == b"AAB"


def test_load_corpus_errors(tmp_path: Path) -> None:
    """Missing paths, empty files, empty folders and binary files raise DataError with the path."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "x.bin").write_bytes(b"\x00abc")
    with pytest.raises(DataError, match="does not exist"):
        load_corpus([tmp_path / "missing.txt"])
    with pytest.raises(DataError, match="empty"):
        load_corpus([tmp_path / "empty.txt"])
    with pytest.raises(DataError, match="no text files"):
        load_corpus([tmp_path / "nothing"])
    with pytest.raises(DataError, match="not a text file"):
        load_corpus([tmp_path / "x.bin"])
    with pytest.raises(DataError, match="no data paths"):
        load_corpus([])


def test_batches_shapes_and_shift(corpus: torch.Tensor) -> None:
    """A step yields M micro-batches of int64 (B, T) inputs whose targets are the next tokens."""
    batches = Batches(corpus, block_size=16, batch_size=4, microbatches=3, seed=0)
    step = batches.batch(5)
    assert len(step) == 3
    windows = batches.splits["train"].unfold(0, 17, 1)  # every (T + 1)-window of the training split
    for x, y in step:
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], dim=1):
            assert (windows == row).all(dim=1).any()


def test_batches_depend_only_on_seed_and_step(corpus: torch.Tensor) -> None:
    """Same seed and step give the same data, in any order and whatever the global RNG; other seeds or steps differ."""
    a = Batches(corpus, 16, 4, 2, seed=1)
    b = Batches(corpus, 16, 4, 2, seed=1)
    later = a.batch(9)
    torch.manual_seed(99)
    b.batch(0)
    for (xa, ya), (xb, yb) in zip(later, b.batch(9), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.microbatch(9, 1)[0], later[1][0])
    assert not torch.equal(a.batch(9)[0][0], a.batch(10)[0][0])
    assert not torch.equal(a.batch(9)[0][0], Batches(corpus, 16, 4, 2, seed=2).batch(9)[0][0])


def test_train_and_validation_do_not_overlap(corpus: torch.Tensor) -> None:
    """Validation windows come from the held-out tail, training windows from the head."""
    batches = Batches(corpus, 16, 8, 1, seed=0, val_fraction=0.25)
    cut = len(batches.splits["train"])
    assert cut + len(batches.splits["val"]) == len(corpus)
    assert torch.equal(batches.splits["val"], corpus[cut:].long())
    x, _ = batches.microbatch(0, 0, split="val")
    assert not torch.equal(x, batches.microbatch(0, 0, split="train")[0])


def test_batches_reject_bad_settings(corpus: torch.Tensor) -> None:
    """Too little data, a non-1-D corpus, bad sizes and out-of-range micro-batches are reported."""
    with pytest.raises(DataError, match="block_size"):
        Batches(corpus[:20], block_size=16, batch_size=1, microbatches=1, seed=0)
    with pytest.raises(DataError, match="1-D"):
        Batches(corpus.view(2, -1), 16, 1, 1, seed=0)
    with pytest.raises(DataError, match="batch_size"):
        Batches(corpus, 16, 0, 1, seed=0)
    with pytest.raises(IndexError):
        Batches(corpus, 16, 1, 2, seed=0).microbatch(0, 2)
