"""Crash-safe file output: write to a temporary file in the same folder, fsync, then rename (and fsync the folder)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _naming(exc: OSError, target: Path, tmp: str | None) -> OSError:
    """``exc`` as it concerns ``target``: an error about the temporary file names the target instead."""
    if exc.errno is not None and (tmp is None or exc.filename in (None, tmp)):
        return OSError(exc.errno, exc.strerror, os.fspath(target))
    return exc


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a part.

    Raises:
        OSError: the file cannot be written; the error names ``path`` (not the temporary file),
            and no temporary file is left behind.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise _naming(exc, target, tmp) from None
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def publish_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the finished folder ``staging`` to ``target`` (a sibling), replacing what ``target`` held.

    Readers see the old ``target`` or the new one: the old one is moved aside first, the new one
    renamed into place, then the old one removed. If that is interrupted between the two renames,
    the old ``target`` is put back.
    """
    new, final = Path(staging), Path(target)
    old: Path | None = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent)) / "previous"
        final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        if old is not None and not final.exists():
            old.rename(final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
