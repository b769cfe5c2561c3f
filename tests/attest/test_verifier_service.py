"""The attestation verifier service from the coordinator's and an attacker's side: its key folder
(private, refused when others may use it), its non-dumpable process, its socket protocol (typed
JSON frames, bounded, no pickle), and a client that turns a dead, silent or garbage-speaking
verifier into one line instead of a traceback or a hang."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from stagewarden.attest.binding import stage_label
from stagewarden.attest.clock import SystemClock
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.policy import Policy
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.result import verify_result
from stagewarden.attest.vendor import init_vendor, load_vendor, local_verifier, make_evidence
from stagewarden.attest.verifier_client import VerifierClient, VerifierUnavailable
from stagewarden.attest.verifier_keys import (
    VERIFIER_KEY_FILE,
    VerifierKeyError,
    check_private_dir,
    is_dumpable,
    load_verifier_key,
    make_non_dumpable,
)
from stagewarden.attest.verifier_messages import MAX_FRAME_BYTES, ErrorReply, NonceRequest, parse_reply
from stagewarden.attest.verifier_service import VerifierService

MEASUREMENTS = {stage_label(0): b"\x10" * 32, stage_label(1): b"\x11" * 32, stage_label(None): b"\x12" * 32}
RECEIPT_KEY = bytes(SigningKey(b"\x07" * 32).verify_key)


@contextlib.contextmanager
def _socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sw-vs-"))  # short: a socket path holds 108 bytes at most
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _serving(
    vendor: Path, key: SigningKey, reload: Callable[[object], object] | None = None
) -> Iterator[VerifierClient]:
    """A client of a service serving from a thread, whose appraiser trusts ``vendor`` and signs
    with ``key`` (or is what ``reload`` builds)."""

    def simulated(nonces: object) -> object:
        return local_verifier(load_vendor(vendor), MEASUREMENTS, Policy(), SystemClock(), key, nonces=nonces)  # type: ignore[arg-type]

    service = VerifierService(reload or simulated)  # type: ignore[arg-type]
    with _socket_dir() as folder:
        stop = threading.Event()
        thread = threading.Thread(target=service.serve, args=(folder / "v.sock", stop), daemon=True)
        thread.start()
        try:
            yield VerifierClient(folder / "v.sock", connect_seconds=10.0)
        finally:
            stop.set()
            thread.join(5)


@contextlib.contextmanager
def _fake_server(answer: Callable[[socket.socket], None]) -> Iterator[Path]:
    """A socket whose server reads one frame and then does what ``answer`` does."""
    with _socket_dir() as folder:
        path = folder / "fake.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(4)

        def run() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    with conn:
                        (length,) = struct.unpack(">I", conn.recv(4))
                        conn.recv(length)
                        answer(conn)

        threading.Thread(target=run, daemon=True).start()
        try:
            yield path
        finally:
            listener.close()


@pytest.fixture
def vendor(tmp_path: Path) -> Path:
    init_vendor(tmp_path / "vendor")
    return tmp_path / "vendor"


# -- the key folder --------------------------------------------------------------------------------


def test_key_folder_is_created_private_and_the_key_is_kept(tmp_path: Path) -> None:
    """A new folder is made 0700 with a 0600 key; loading again gives the same key."""
    folder = tmp_path / "state" / "verifier"
    key = load_verifier_key(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / VERIFIER_KEY_FILE).stat().st_mode) == 0o600
    assert bytes(load_verifier_key(folder)) == bytes(key)
    assert (folder / "verifier.pub").read_text().strip() == bytes(key.verify_key).hex()


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o770, 0o701])
def test_key_folder_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A folder with any group or other permission bit is refused, with the chmod that fixes it, and
    its key is not read."""
    folder = tmp_path / "verifier"
    load_verifier_key(folder)
    os.chmod(folder, mode)
    with pytest.raises(VerifierKeyError, match=r"group or others may use it; make it private \(chmod 700"):
        load_verifier_key(folder)


def test_key_folder_that_is_a_link_or_a_file_is_refused(tmp_path: Path) -> None:
    """A symbolic link to a private folder, or a plain file, is not a key folder."""
    real = tmp_path / "real"
    load_verifier_key(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(VerifierKeyError, match="not a directory"):
        check_private_dir(link)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VerifierKeyError, match="not a directory"):
        load_verifier_key(tmp_path / "file")


def test_key_file_open_to_others_or_not_a_seed_is_refused(tmp_path: Path) -> None:
    """A key file readable by others, or holding anything but a seed, is refused."""
    folder = tmp_path / "verifier"
    load_verifier_key(folder)
    os.chmod(folder / VERIFIER_KEY_FILE, 0o644)
    with pytest.raises(VerifierKeyError, match="mode 0600"):
        load_verifier_key(folder)
    os.chmod(folder / VERIFIER_KEY_FILE, 0o600)
    (folder / VERIFIER_KEY_FILE).write_text("not a seed\n")
    with pytest.raises(VerifierKeyError, match="64 hex digits"):
        load_verifier_key(folder)


def test_two_verifiers_creating_one_folder_get_one_key(tmp_path: Path) -> None:
    """Verifiers started at once on a new folder agree on its key (created exclusively, then read)."""
    folder = tmp_path / "verifier"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(bytes(load_verifier_key(folder)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_make_non_dumpable_takes_effect() -> None:
    """A process that calls make_non_dumpable is no longer dumpable (Linux PR_GET_DUMPABLE is 0)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports and exits at once
        os.close(read)
        before = is_dumpable()
        done = make_non_dumpable()
        os.write(write, bytes([before, done, is_dumpable()]))
        os._exit(0)
    os.close(write)
    report = os.read(read, 3)
    os.close(read)
    os.waitpid(pid, 0)
    assert report == bytes([True, True, False])


# -- the service through its client ----------------------------------------------------------------


def test_client_gets_key_nonce_and_a_result_that_binds_run_worker_stage_key(vendor: Path) -> None:
    """A genuine device's evidence for the verifier's nonce gets a result, signed by the service's
    key, naming the run, the worker, the stage and the receipt key; the nonce is then used up."""
    key = SigningKey.generate()
    with _serving(vendor, key) as client:
        assert bytes(client.public_key()) == bytes(key.verify_key) and client.kind == "simulated"
        nonce = client.issue_nonce()
        evidence = make_evidence(load_vendor(vendor), "dev-a", RECEIPT_KEY, nonce, MEASUREMENTS["1"])
        token = client.appraise("run-x", "s1r0", 1, RECEIPT_KEY, nonce, evidence)
        result = verify_result(token, key.verify_key, SystemClock(), expected_key=RECEIPT_KEY, expected_nonce=nonce)
        assert (result.run_id, result.worker, result.stage) == ("run-x", "s1r0", "1")
        RelyingParty(key.verify_key, SystemClock()).admit("s1r0", token, RECEIPT_KEY, nonce, run_id="run-x", stage="1")
        with pytest.raises(AttestError) as caught:
            client.appraise("run-x", "s1r0", 1, RECEIPT_KEY, nonce, evidence)
        assert caught.value.code is ErrorCode.NONCE_REUSED


def test_refusals_keep_the_verifiers_code(vendor: Path) -> None:
    """Another stage's measurement, a nonce the verifier never issued, and garbage evidence are
    refused with the verifier's own codes, through the socket."""
    with _serving(vendor, SigningKey.generate()) as client:
        nonce = client.issue_nonce()
        evidence = make_evidence(load_vendor(vendor), "dev-a", RECEIPT_KEY, nonce, MEASUREMENTS["1"])
        with pytest.raises(AttestError) as wrong_stage:
            client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, nonce, evidence)
        assert wrong_stage.value.code is ErrorCode.MEASUREMENT_WRONG_STAGE
        foreign = os.urandom(32)
        forged = make_evidence(load_vendor(vendor), "dev-b", RECEIPT_KEY, foreign, MEASUREMENTS["0"])
        with pytest.raises(AttestError) as unknown:
            client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, foreign, forged)
        assert unknown.value.code is ErrorCode.NONCE_UNKNOWN
        with pytest.raises(AttestError):
            client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, client.issue_nonce(), b"\x00garbage")


def test_revocation_after_the_nonce_is_seen_at_appraisal(vendor: Path) -> None:
    """The service reloads the vendor for every appraisal: a device revoked after its nonce was
    issued is refused (CERT_REVOKED), and the nonce stays valid across the reload."""
    from stagewarden.attest.vendor import revoke_device

    with _serving(vendor, SigningKey.generate()) as client:
        nonce = client.issue_nonce()
        evidence = make_evidence(load_vendor(vendor), "dev-r", RECEIPT_KEY, nonce, MEASUREMENTS["0"])
        revoke_device(load_vendor(vendor), "dev-r")
        with pytest.raises(AttestError) as caught:
            client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, nonce, evidence)
        assert caught.value.code is ErrorCode.CERT_REVOKED
        honest = client.issue_nonce()
        good = make_evidence(load_vendor(vendor), "dev-ok", RECEIPT_KEY, honest, MEASUREMENTS["0"])
        assert client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, honest, good)


def test_malformed_and_oversized_requests_are_answered_or_dropped(vendor: Path) -> None:
    """Raw requests that are not JSON, not a known op, carry extra fields, or announce a frame over
    the limit get an error reply or a closed connection; the service keeps serving."""
    with _serving(vendor, SigningKey.generate()) as client:
        client.public_key()
        for payload in (
            b"\x80\x04pickle",
            b'{"op": "steal_key", "version": 1}',
            b'{"op": "nonce", "version": 1, "x": 1}',
        ):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(client.socket_path))
                conn.sendall(struct.pack(">I", len(payload)) + payload)
                (length,) = struct.unpack(">I", conn.recv(4))
                reply = parse_reply(conn.recv(length))
                assert isinstance(reply, ErrorReply)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(client.socket_path))
            conn.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
            conn.settimeout(5)
            assert conn.recv(4) == b""  # closed without reading a byte more
        assert len(client.issue_nonce()) == 32


@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda c: c.sendall(struct.pack(">I", 5) + b"hello"), "broke the protocol: the reply is not JSON"),
        (lambda c: c.sendall(struct.pack(">I", 1 << 30)), "broke the protocol: a frame of"),
        (lambda c: c.close(), "broke the protocol: the connection closed"),
        (
            lambda c: c.sendall(struct.pack(">I", 27) + b'{"op":"public_key","key":1}'),
            "broke the protocol: malformed reply",
        ),
        (
            lambda c: c.sendall(
                struct.pack(">I", 64) + b'{"op":"refused","code":"NOT_A_CODE","message":"x","version":1}    '
            ),
            "refused with an unknown code",
        ),
    ],
)
def test_a_verifier_speaking_garbage_is_one_line(answer: Callable[[socket.socket], None], message: str) -> None:
    """A verifier answering anything but a well-formed reply raises VerifierUnavailable with one line."""
    with _fake_server(answer) as path:
        with pytest.raises(VerifierUnavailable) as caught:
            VerifierClient(path, connect_seconds=5).issue_nonce()
    text = str(caught.value)
    assert message in text and "\n" not in text and str(path) in text


def test_a_wrong_kind_of_reply_is_refused() -> None:
    """A nonce answered with a key (a well-formed reply of the wrong kind) is refused."""
    reply = b'{"op":"public_key","key":"' + b"ab" * 32 + b'","kind":"simulated","version":1}'
    with _fake_server(lambda c: c.sendall(struct.pack(">I", len(reply)) + reply)) as path:
        with pytest.raises(VerifierUnavailable, match="answered 'public_key' to a 'nonce' request"):
            VerifierClient(path, connect_seconds=5).issue_nonce()


def test_a_silent_verifier_times_out() -> None:
    """A verifier that reads the request and never answers: VerifierUnavailable after the deadline."""
    with _fake_server(lambda c: time.sleep(30)) as path:
        started = time.monotonic()
        with pytest.raises(VerifierUnavailable, match="did not answer within 1 s"):
            VerifierClient(path, request_seconds=1.0, connect_seconds=5).issue_nonce()
    assert time.monotonic() - started < 10


def test_no_verifier_fails_fast_when_its_process_is_gone(tmp_path: Path) -> None:
    """Nobody listens: the client waits only as long as the verifier may still come up, and says why
    it will not (its process exited) at once."""
    started = time.monotonic()
    client = VerifierClient(tmp_path / "none.sock", connect_seconds=60, alive=lambda: "its process exited with code 2")
    with pytest.raises(VerifierUnavailable, match="is not running: its process exited with code 2"):
        client.issue_nonce()
    assert time.monotonic() - started < 5
    with pytest.raises(VerifierUnavailable, match="is not listening within 0.5 s"):
        VerifierClient(tmp_path / "none.sock", connect_seconds=0.5).issue_nonce()


def test_requests_are_typed_json_never_pickle() -> None:
    """What the client sends is one JSON frame of a typed request."""
    from stagewarden.attest.verifier_messages import encode_frame, parse_request

    frame = encode_frame(NonceRequest())
    (length,) = struct.unpack(">I", frame[:4])
    assert frame[4:] == b'{"version":1,"op":"nonce"}' and length == len(frame) - 4
    assert isinstance(parse_request(frame[4:]), NonceRequest)


def test_an_appraiser_that_crashes_is_answered_and_the_service_goes_on(vendor: Path) -> None:
    """An unexpected error while appraising becomes an error reply (VerifierUnavailable at the
    client, one line), and the service keeps answering."""
    key = SigningKey.generate()
    calls: list[int] = []

    def reload(nonces: object) -> object:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return local_verifier(load_vendor(vendor), MEASUREMENTS, Policy(), SystemClock(), key, nonces=nonces)  # type: ignore[arg-type]

    with _serving(vendor, key, reload) as client:
        nonce = client.issue_nonce()
        with pytest.raises(VerifierUnavailable, match="failed: the verifier failed: RuntimeError: disk on fire"):
            client.appraise("run-x", "s0r0", 0, RECEIPT_KEY, nonce, b"\x00")
        assert bytes(client.public_key()) == bytes(key.verify_key)
