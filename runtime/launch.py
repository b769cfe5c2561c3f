"""Launch a whole run on this machine: the coordinator and every worker as child processes.

:func:`launch_local` creates (or reuses) a simulated vendor outside the run directory, provisions
a simulated device identity per worker, writes the configuration, picks a free port on
127.0.0.1, starts ``1 + S + K`` processes of ``python -m stagewarden.runtime.entry``, follows
``events.jsonl`` for progress, and always cleans up: on a failure, a timeout or Ctrl-C the
children are terminated, then killed, and the temporary folder (with the device keys) is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.errors import RuntimeSetupError

#: Seconds the other processes get to exit on their own after one fails.
FAILURE_GRACE = 5.0
#: Seconds between SIGTERM and SIGKILL when cleaning up.
KILL_GRACE = 3.0


class LaunchError(RuntimeSetupError):
    """The run failed; the message says why. ``pids`` are the children started (all gone)."""

    def __init__(self, message: str, pids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pids = pids


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """A finished run: its directory, its summary and the children that ran it (all gone)."""

    run_dir: Path
    summary: dict[str, Any]
    pids: tuple[int, ...]
    seconds: float


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def provision_vendor(config: RunConfig, folder: Path, vendor_dir: str | Path | None) -> Path:
    """The vendor folder to use (``vendor_dir``, or a new simulated vendor in ``folder``), with a
    simulated device identity issued for every worker rank."""
    from stagewarden.attest.vendor import device_identity, init_vendor, load_vendor
    from stagewarden.runtime.worker import device_id_for

    vendor = load_vendor(vendor_dir) if vendor_dir is not None else init_vendor(folder)
    for rank in range(1, config.world_size):
        device_identity(vendor, device_id_for(rank))
    return vendor.path


def launch_local(
    config: RunConfig,
    run_dir: str | Path,
    *,
    vendor_dir: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> LaunchResult:
    """Run ``config`` with every process on this machine and return when it is done.

    Args:
        config: The run configuration.
        run_dir: The run directory; it must not hold a run yet.
        vendor_dir: Reuse this simulated vendor instead of creating a throw-away one.
        on_event: Called in this process with every event the coordinator writes to
            ``events.jsonl`` (for progress display).
        env: Extra environment variables for the children.
        timeout: Seconds after which the run is stopped (``None``: no limit).

    Raises:
        LaunchError: A process failed (the message is the coordinator's, or the first failing
            process's), the run timed out, or it was interrupted; no child survives.
    """
    run_path = Path(run_dir)
    if (run_path / "summary.json").exists():
        raise LaunchError(f"{run_path} already holds a run (summary.json exists)")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="stagewarden-launch-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    try:
        vendor = str(provision_vendor(config, tmp / "vendor", vendor_dir)) if config.attestation else None
        config_path = tmp / "config.json"
        config_path.write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
        port = free_port()
        base = {**os.environ, **(env or {})}
        base.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(config.world_size),
            STAGEWARDEN_PARENT_PID=str(os.getpid()),
            PYTHONUNBUFFERED="1",
        )
        for rank in range(config.world_size):
            args = [
                sys.executable,
                "-m",
                "stagewarden.runtime.entry",
                "--config",
                str(config_path),
                "--out",
                str(run_path),
                "--error-file",
                str(tmp / f"rank{rank}.error"),
            ]
            if vendor is not None:
                args += ["--vendor", vendor]
            log = open(tmp / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            child_env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            procs.append(
                subprocess.Popen(
                    args,
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        pids = tuple(p.pid for p in procs)
        _wait(procs, run_path, on_event, timeout, started, tmp, pids)
        summary = json.loads((run_path / "summary.json").read_text(encoding="utf-8"))
        return LaunchResult(run_path, summary, pids, time.monotonic() - started)
    except KeyboardInterrupt:
        raise LaunchError("interrupted; every process of the run was stopped", tuple(p.pid for p in procs)) from None
    finally:
        _stop(procs)
        for log in logs:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait(
    procs: list[subprocess.Popen[bytes]],
    run_path: Path,
    on_event: Callable[[dict[str, Any]], None] | None,
    timeout: float | None,
    started: float,
    tmp: Path,
    pids: tuple[int, ...],
) -> None:
    events = _EventTail(run_path / "events.jsonl")
    failed_at: float | None = None
    while True:
        codes = [p.poll() for p in procs]
        if on_event is not None:
            for event in events.read():
                on_event(event)
        if all(c is not None for c in codes):
            break
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE:
            break
        if timeout is not None and time.monotonic() - started > timeout:
            _stop(procs)
            raise LaunchError(f"the run did not finish within {timeout:.0f} s; every process was stopped", pids)
        time.sleep(0.05)
    if on_event is not None:
        for event in events.read():
            on_event(event)
    codes = [p.poll() for p in procs]
    if all(c == 0 for c in codes):
        return
    raise LaunchError(_failure_message(codes, tmp), pids)


def _failure_message(codes: list[int | None], tmp: Path) -> str:
    errors: dict[int, str] = {}
    for rank in range(len(codes)):
        path = tmp / f"rank{rank}.error"
        with contextlib.suppress(OSError, ValueError):
            errors[rank] = str(json.loads(path.read_text(encoding="utf-8"))["message"])
    if 0 in errors:
        return errors[0]
    for rank, code in enumerate(codes):
        if code not in (None, 0):
            if rank in errors:
                return f"rank {rank}: {errors[rank]}"
            tail = ""
            with contextlib.suppress(OSError):
                lines = (tmp / f"rank{rank}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
                tail = (": " + lines[-1]) if lines else ""
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            return f"rank {rank} ({'coordinator' if rank == 0 else 'worker'}) {how}{tail}"
    return "the run stopped"


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    for p in alive:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


class _EventTail:
    """Reads the complete lines appended to ``events.jsonl`` since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
