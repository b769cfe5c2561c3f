"""The attestation verifier's key folder: where its Ed25519 signing seed lives, outside any run
directory, readable by its owner only.

The folder (default :func:`default_verifier_dir`) must be a directory of the current user with
mode 0700 (no group or other bits); the key file ``verifier.key`` (hex of the 32-byte seed, mode
0600) is created once and reused, so every run and resumed session the verifier serves signs
under the same key. Only the verifier process reads it; :func:`make_non_dumpable` keeps a process
of the same user from reading the seed out of its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import stat
import sys
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

#: The environment variable that names the default verifier folder (else see :func:`default_verifier_dir`).
VERIFIER_DIR_ENV = "STAGEWARDEN_VERIFIER_DIR"
#: The verifier's signing seed in its folder.
VERIFIER_KEY_FILE = "verifier.key"
#: The verifier's public key in its folder (hex), for operators and auditors to pin.
VERIFIER_PUBLIC_FILE = "verifier.pub"
#: Linux ``prctl`` option that sets whether the process may be dumped or traced.
_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


class VerifierKeyError(Exception):
    """The verifier's key folder or key cannot be used; the message says why and what to do."""


def default_verifier_dir() -> Path:
    """``$STAGEWARDEN_VERIFIER_DIR``, else ``$XDG_STATE_HOME/stagewarden/verifier``, else
    ``~/.local/state/stagewarden/verifier``: a per-user state folder, never inside a run directory."""
    named = os.environ.get(VERIFIER_DIR_ENV)
    if named:
        return Path(named).expanduser()
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "stagewarden" / "verifier"


def check_private_dir(folder: Path) -> None:
    """Refuse ``folder`` unless it is a real directory (no link) of this user with no group or
    other permission bits.

    Raises:
        VerifierKeyError: It is missing, a link or not a directory, another user's, or open to others.
    """
    try:
        info = os.lstat(folder)
    except OSError as exc:
        raise VerifierKeyError(f"verifier folder {folder} cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise VerifierKeyError(f"verifier folder {folder} is not a directory (a link or a file is refused)")
    if info.st_uid != os.getuid():
        raise VerifierKeyError(f"verifier folder {folder} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        raise VerifierKeyError(
            f"verifier folder {folder} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may use it; "
            f"make it private (chmod 700 {folder}) or use another folder"
        )


def load_verifier_key(folder: Path, create: bool = True) -> SigningKey:
    """The verifier's signing key from ``folder`` (see the module docstring); with ``create``, a new
    folder (mode 0700) and key are made where there are none. Two verifiers starting at once on
    the same new folder end up with the same key (the file is created exclusively, then read).

    Raises:
        VerifierKeyError: The folder is refused (:func:`check_private_dir`), or the key file is not
            a private regular file holding 64 hex digits.
    """
    if create and not os.path.lexists(folder):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise VerifierKeyError(f"cannot create verifier folder {folder} ({exc.strerror})") from None
    check_private_dir(folder)
    path = folder / VERIFIER_KEY_FILE
    if create and not os.path.lexists(path):
        _create_key(folder, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise VerifierKeyError(f"verifier key {path} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise VerifierKeyError(f"verifier key {path} must be a regular file of mode 0600")
        text = f.read(200)
    try:
        key = SigningKey(bytes.fromhex(text.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError, TypeError):
        raise VerifierKeyError(f"verifier key {path} does not hold the 64 hex digits of a seed") from None
    _write_public(folder, key.verify_key)
    return key


def read_public_key(folder: Path) -> VerifyKey:
    """The verifier's public key as its folder records it (for pinning), without the private key.

    Raises:
        VerifierKeyError: There is no readable public key in ``folder``.
    """
    path = folder / VERIFIER_PUBLIC_FILE
    try:
        return VerifyKey(bytes.fromhex(path.read_text(encoding="ascii").strip()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        raise VerifierKeyError(
            f"no verifier public key in {folder} (a verifier writes it the first time it starts)"
        ) from None


def _create_key(folder: Path, path: Path) -> None:
    """Write a new seed to a private temporary file and link it into place, unless another
    process got there first (then its key is the key)."""
    tmp = folder / f".{VERIFIER_KEY_FILE}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(bytes(SigningKey.generate()).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_public(folder: Path, key: VerifyKey) -> None:
    path = folder / VERIFIER_PUBLIC_FILE
    text = bytes(key).hex() + "\n"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="ascii") == text:
            return
    tmp = folder / f".{VERIFIER_PUBLIC_FILE}.{secrets.token_hex(8)}"
    with contextlib.suppress(OSError):
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, path)


def make_non_dumpable() -> bool:
    """Mark this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): no core dump, and a
    process of the same user cannot attach to it with ptrace or read its memory through
    ``/proc/PID/mem``. Returns whether it took effect (``False`` off Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0


def is_dumpable() -> bool:
    """Whether this process may be dumped or traced by its user (Linux ``PR_GET_DUMPABLE``; ``True``
    elsewhere)."""
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)) != 0
