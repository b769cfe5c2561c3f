"""The attestation verifier of a run as a process of its own: ``python -m stagewarden.runtime.verifier_process``
(what ``stagewarden verifier serve`` and a coordinator that starts its own verifier run).

The process makes itself non-dumpable, loads its signing key from its key folder
(:mod:`stagewarden.attest.verifier_keys`), computes the reference measurement of every stage (and
of a standby) from the run configuration and its own copy of the runtime's code, exactly as a
worker measures itself (:func:`reference_measurements`), and serves
:class:`~stagewarden.attest.verifier_service.VerifierService` on a Unix socket until it is
stopped (SIGTERM, SIGINT) or, when started by a coordinator, that coordinator is gone.
:func:`start_verifier` starts one as a child process and returns a client for it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nacl.signing import SigningKey

from stagewarden.attest.binding import stage_label
from stagewarden.attest.clock import Clock, SystemClock
from stagewarden.attest.dcap_verifier import DcapVerifier
from stagewarden.attest.errors import AttestError
from stagewarden.attest.nonces import NonceRegistry
from stagewarden.attest.policy import Policy
from stagewarden.attest.tensor_digest import digest_state_dict
from stagewarden.attest.vendor import load_vendor, local_verifier
from stagewarden.attest.verifier import Verifier
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.attest.verifier_keys import VerifierKeyError, load_verifier_key, make_non_dumpable
from stagewarden.attest.verifier_service import Reload, VerifierService
from stagewarden.runtime.config import ConfigError, RunConfig, load_run_config
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.measure import code_digest, stage_measurement

#: The socket file in the private folder :func:`start_verifier` makes.
SOCKET_NAME = "verifier.sock"
#: How long the reference values the verifier derives stay valid (it re-derives them on every appraisal).
REFERENCE_LIFETIME = dt.timedelta(days=1)
#: Seconds between two looks at whether the process that started the verifier is still there.
PARENT_POLL_SECONDS = 0.2
#: Seconds a verifier gets to stop on SIGTERM before it is killed.
STOP_GRACE = 3.0
_PR_SET_PDEATHSIG = 1


class VerifierSetupError(RuntimeSetupError):
    """The verifier cannot start or be reached; the message says why."""


def initial_weights_digest(config: RunConfig, stage: int) -> bytes:
    """The digest of ``stage``'s initial weights, derived from the seed as every worker derives them."""
    from stagewarden.runtime.model import build_stage

    return digest_state_dict(build_stage(config.model, config.stages, stage, config.seed).state_dict())


def reference_measurements(config: RunConfig, code: bytes | None = None) -> dict[str, bytes]:
    """The measurement a worker of every stage, and a standby, must present, by stage label: computed
    from ``config``, the initial weights its seed gives and ``code`` (default: this installation's
    runtime code, :func:`~stagewarden.runtime.measure.code_digest`)."""
    code = code if code is not None else code_digest()
    out = {
        stage_label(stage): stage_measurement(config, stage, initial_weights_digest(config, stage), code)
        for stage in range(config.stages)
    }
    out[stage_label(None)] = stage_measurement(config, None, None, code)
    return out


def appraiser_loader(config: RunConfig, vendor_dir: str | Path | None, key: SigningKey, clock: Clock) -> Reload:
    """What the verifier service rebuilds its appraiser with: for ``attestation_kind`` ``dcap`` the
    configuration's collateral and policy (the policy holds the reference values), otherwise the
    simulated vendor in ``vendor_dir`` with the reference measurements computed once here.

    Raises:
        VerifierSetupError: The configuration or the vendor folder does not allow a verifier.
    """
    if config.attestation_kind == "dcap":
        collateral = config.dcap_collateral
        if collateral is None:
            raise VerifierSetupError("attestation_kind dcap needs dcap_collateral (a collateral file or cache folder)")

        def load_dcap(nonces: NonceRegistry | None) -> DcapVerifier:
            return DcapVerifier.from_files(collateral, config.dcap_policy, key, clock, nonces)

        return load_dcap
    if vendor_dir is None:
        raise VerifierSetupError("a simulated-attestation verifier needs the vendor folder (--vendor)")
    references = reference_measurements(config)
    policy = Policy(result_lifetime_seconds=config.result_lifetime)

    def load_simulated(nonces: NonceRegistry | None) -> Verifier:
        return local_verifier(load_vendor(vendor_dir), references, policy, clock, key, REFERENCE_LIFETIME, nonces)

    return load_simulated


def build_service(
    config_path: str | Path, verifier_dir: str | Path, vendor_dir: str | Path | None = None
) -> VerifierService:
    """Read the run configuration in ``config_path``, make this process non-dumpable, then load the
    key and build the service (the reference values included).

    Raises:
        VerifierSetupError: The process cannot be made non-dumpable (Linux), the key folder is
            refused, or the configuration or vendor does not allow a verifier.
    """
    try:
        config = load_run_config(config_path)
    except ConfigError as exc:
        raise VerifierSetupError(str(exc)) from None
    if sys.platform.startswith("linux") and not make_non_dumpable():
        raise VerifierSetupError("cannot make the verifier process non-dumpable (prctl PR_SET_DUMPABLE failed)")
    try:
        key = load_verifier_key(Path(verifier_dir))
        return VerifierService(appraiser_loader(config, vendor_dir, key, SystemClock()))
    except (VerifierKeyError, ConfigError) as exc:
        raise VerifierSetupError(str(exc)) from None
    except (AttestError, OSError) as exc:
        raise VerifierSetupError(f"cannot set up the verifier: {exc}") from None


def run_service(service: VerifierService, socket_path: str | Path, parent_pid: int | None = None) -> None:
    """Serve on ``socket_path`` until SIGTERM or SIGINT, or, with ``parent_pid``, until that
    process is gone (call from the main thread).

    Raises:
        VerifierSetupError: The socket cannot be bound.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid is not None:
        _follow_parent(parent_pid, stop)
    try:
        service.serve(Path(socket_path), stop)
    except OSError as exc:
        raise VerifierSetupError(f"cannot listen on {socket_path}: {exc}") from None


def _signal_on_parent_death() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _follow_parent(parent_pid: int, stop: threading.Event) -> None:
    """Set ``stop`` when ``parent_pid`` is no longer this process's parent (a watcher thread, in
    case the kernel's signal on the parent's death was missed)."""

    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent_pid:
                stop.set()
            time.sleep(PARENT_POLL_SECONDS)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class LocalVerifier:
    """A verifier process started by :func:`start_verifier`; :meth:`stop` ends it and removes its
    socket folder (also on exit from a ``with`` block)."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path) -> None:
        self.process = process
        self.folder = folder
        self.client = VerifierClient(folder / SOCKET_NAME, alive=self._gone)

    @property
    def pid(self) -> int:
        """The verifier process's id."""
        return self.process.pid

    def _gone(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"its process exited with code {code}{self.last_error()}"

    def last_error(self) -> str:
        """The last line the process wrote to its standard error, as ``": LINE"`` (or nothing)."""
        with contextlib.suppress(OSError):
            lines = (self.folder / "verifier.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if lines:
                return ": " + lines[-1][:500]
        return ""

    def stop(self) -> None:
        """Terminate the process (kill it after :data:`STOP_GRACE` seconds) and remove its folder."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: The longest path a Unix socket may have on Linux (``sun_path`` holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def _socket_parent() -> str:
    """Where the verifier's private socket folder is made: the temporary folder, unless a socket
    path under it would be longer than a Unix socket allows (a deep ``TMPDIR``), then ``/tmp``.
    The folder itself is private (``mkdtemp`` makes it mode 0700) wherever it is."""
    parent = tempfile.gettempdir()
    longest = len(os.path.join(parent, "stagewarden-verifier-" + "x" * 8, SOCKET_NAME))
    return parent if longest <= MAX_SOCKET_PATH else "/tmp"


def start_verifier(config_path: str | Path, verifier_dir: str | Path, vendor_dir: str | Path | None) -> LocalVerifier:
    """Start a verifier process, child of this one, serving on a socket in a new private folder;
    it stops when this process is gone. The key folder is passed to the verifier alone.

    Raises:
        VerifierSetupError: The process cannot be started.
    """
    folder = Path(tempfile.mkdtemp(prefix="stagewarden-verifier-", dir=_socket_parent()))
    args = [sys.executable, "-m", "stagewarden.runtime.verifier_process", "--config", str(config_path)]
    args += ["--socket", str(folder / SOCKET_NAME), "--verifier-dir", str(verifier_dir)]
    args += ["--parent-pid", str(os.getpid()), "--remove-folder"]
    if vendor_dir is not None:
        args += ["--vendor", str(vendor_dir)]
    try:
        with open(folder / "verifier.log", "wb") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise VerifierSetupError(f"cannot start the attestation verifier: {exc.strerror or exc}") from None
    return LocalVerifier(process, folder)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stagewarden.runtime.verifier_process", description=__doc__)
    parser.add_argument("--config", required=True, help="the run configuration (JSON, see RunConfig.to_json)")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--verifier-dir", required=True, help="the verifier's key folder (mode 0700)")
    parser.add_argument("--vendor", help="the simulated vendor folder (simulated attestation)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process, the parent, is gone")
    parser.add_argument(
        "--remove-folder", action="store_true", help="remove the socket's folder (made for this verifier) once stopped"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the verifier; 0 when stopped, 2 when it cannot start (one line on standard error)."""
    args = _parse_args(argv)
    try:
        if args.parent_pid is not None:
            _signal_on_parent_death()  # from now: the key is loaded only in a process that ends with its parent
            if os.getppid() != args.parent_pid:
                return 0
        run_service(build_service(args.config, args.verifier_dir, args.vendor), args.socket, args.parent_pid)
    except VerifierSetupError as exc:
        print(f"stagewarden verifier: error: {exc}", file=sys.stderr)
        return 2  # the folder stays: its log says why, for the coordinator to read
    if args.remove_folder:  # also when the coordinator was killed before it could
        shutil.rmtree(Path(args.socket).parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
