"""Launch a whole run on this machine, or prepare one that ``torchrun`` starts across machines.

:func:`launch_local` creates (or reuses) a simulated vendor outside the run directory, provisions
a simulated device identity per worker, writes the configuration, picks a free port on
127.0.0.1, starts ``1 + S + K`` processes of the run's entry (``stagewarden.runtime.entry``;
forked from a fork server, or ``python -m`` subprocesses, see :mod:`stagewarden.runtime.processes`),
follows ``events.jsonl`` for progress, and always cleans up: on a failure, a timeout or Ctrl-C the
children are terminated, then killed, and the temporary folder (with the device keys) is removed.
The coordinator (rank 0) starts the run's attestation verifier, a process of its own whose key
folder only rank 0's command line names (:mod:`stagewarden.runtime.verifier_process`), or uses
the one given with ``verifier``.
:func:`prepare_run` writes the same configuration and vendor into a folder to copy to every
machine, and :func:`torchrun_args` the arguments that start one machine's share of the processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import FaultRecord
from stagewarden.attest.verifier_keys import VERIFIER_DIR_ENV
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.processes import (
    ForkedProcess,
    ForkServer,
    RunProcess,
    StartMethod,
    StartMethodError,
    choose_start_method,
    start_subprocess,
)

#: The coordinator's exit code when it stopped on a worker fault (see
#: :data:`stagewarden.runtime.coordinator.EXIT_RESUMABLE`; not imported, to keep torch out of here).
EXIT_RESUMABLE = 75

#: Seconds the other processes get to exit on their own after one fails.
FAILURE_GRACE = 5.0
#: Seconds between SIGTERM and SIGKILL when cleaning up.
KILL_GRACE = 3.0


class LaunchError(RuntimeSetupError):
    """The run failed; the message says why. ``pids`` are the children started (all gone);
    ``resumable`` says whether the run directory can be resumed (``train --resume``)."""

    def __init__(self, message: str, pids: tuple[int, ...] = (), resumable: bool = False) -> None:
        super().__init__(message)
        self.pids = pids
        self.resumable = resumable


class LaunchInterrupted(LaunchError):
    """The run was interrupted (Ctrl-C); every process was stopped."""


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """A finished run: its directory, its record (``summary.json``) and the children that ran it (all gone).

    ``start_method`` says how the last set of processes was started: ``forkserver`` or ``subprocess``.
    """

    run_dir: Path
    record: RunRecord
    pids: tuple[int, ...]
    seconds: float
    start_method: str = "subprocess"

    @property
    def summary(self) -> dict[str, Any]:
        """The record as its JSON object (for comparing whole records; read fields from ``record``)."""
        return self.record.to_data()


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


#: The configuration file :func:`prepare_run` writes.
PREPARED_CONFIG = "run.json"
#: The simulated vendor folder :func:`prepare_run` creates when it is given none.
PREPARED_VENDOR = "vendor"


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """A run prepared for ``torchrun``: its configuration file and (attestation on) its vendor folder."""

    config: RunConfig
    config_path: Path
    vendor_path: Path | None

    def entry_args(self, run_dir: str | Path) -> list[str]:
        """The arguments of ``python -m stagewarden.runtime.entry`` for this run, writing ``run_dir`` on rank 0."""
        args = ["--config", str(self.config_path), "--out", str(run_dir), "--resume", "auto"]
        return args if self.vendor_path is None else [*args, "--vendor", str(self.vendor_path)]


def prepare_run(config: RunConfig, folder: str | Path, *, vendor_dir: str | Path | None = None) -> PreparedRun:
    """Write what every machine of a ``torchrun`` launch needs into ``folder`` and return it.

    ``folder`` gets the configuration (:data:`PREPARED_CONFIG`) and, with attestation on, a new
    simulated vendor (:data:`PREPARED_VENDOR`) or, given ``vendor_dir``, that vendor is used; the
    vendor issues the simulated device identity of every worker rank. Copy ``folder`` to the same
    path on every machine (the vendor holds private keys: it is a simulation, keep it off shared
    storage you do not control).

    Raises:
        LaunchError: ``folder`` exists and is not an empty folder.
    """
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LaunchError(f"{target} exists and is not an empty folder")
    # built in a hidden sibling and renamed into place, so a failure leaves nothing behind
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if config.attestation:
            provision_vendor(config, building / PREPARED_VENDOR, vendor_dir)
        atomic_write_text(building / PREPARED_CONFIG, json.dumps(config.to_json(), indent=2) + "\n")
        if target.exists():
            target.rmdir()
        building.rename(target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    vendor = (target / PREPARED_VENDOR).resolve() if config.attestation else None
    return PreparedRun(config, (target / PREPARED_CONFIG).resolve(), vendor)


def torchrun_args(
    prepared: PreparedRun,
    run_dir: str | Path,
    *,
    nnodes: int,
    nproc_per_node: int,
    rdzv_endpoint: str,
    rdzv_id: str,
    local_addr: str | None = None,
) -> list[str]:
    """The ``torchrun`` arguments that start ``nproc_per_node`` processes of ``prepared`` on one machine.

    Every machine runs the same arguments (``local_addr`` aside); ``nnodes * nproc_per_node`` must
    be the run's :attr:`~stagewarden.runtime.config.RunConfig.world_size`. The c10d rendezvous
    runs on ``rdzv_endpoint`` (``HOST:PORT`` of one of the machines), and the run's process group
    uses the same store, so that port is the only one to open besides gloo's own connections.

    Raises:
        LaunchError: The process counts do not add up to the run's world size.
    """
    world = prepared.config.world_size
    if nnodes < 1 or nproc_per_node < 1 or nnodes * nproc_per_node != world:
        raise LaunchError(
            f"{nnodes} machines x {nproc_per_node} processes is not the {world} processes the run needs "
            f"(1 coordinator + {prepared.config.layout.slots} stage workers + {prepared.config.standby} standby)"
        )
    args = [
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv_endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--max-restarts={prepared.config.standby}",
    ]
    if local_addr is not None:
        args.append(f"--local-addr={local_addr}")
    return [*args, "-m", "stagewarden.runtime.entry", *prepared.entry_args(run_dir)]


def launch_local(
    config: RunConfig,
    run_dir: str | Path,
    *,
    vendor_dir: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    resume: bool = False,
    max_restarts: int | None = None,
    start_method: StartMethod | None = None,
    verifier: str | Path | None = None,
    verifier_dir: str | Path | None = None,
) -> LaunchResult:
    """Run ``config`` with every process on this machine and return when it is done.

    The processes are forked from a ``multiprocessing`` fork server that has imported torch and
    the runtime once (seconds saved per process), or, where that is unavailable (not POSIX, or
    ``__main__`` is not a file, as under ``python -c``) or asked for, started as
    ``python -m stagewarden.runtime.entry`` subprocesses; both run the same code with the same
    environment, logs and exit codes. Each forked process imports the launching program's
    ``__main__`` file again (as ``__mp_main__``), so a script that calls ``launch_local`` must do
    so under ``if __name__ == "__main__":``; unguarded, every process of the run fails at start.

    When a worker fails (its process dies, it stops answering, it withholds a transfer or sends a
    malformed message) the coordinator records the fault and exits; if a standby is left to take
    the failed worker's stage, every process is stopped and the run is resumed at once from its
    newest verified checkpoint by a new set of processes (the failed worker's rank is sent home).

    Args:
        config: The run configuration.
        run_dir: The run directory; it must not hold a run yet (unless ``resume``).
        vendor_dir: Reuse this simulated vendor instead of creating a throw-away one.
        on_event: Called in this process with every event the coordinator writes to
            ``events.jsonl`` (for progress display).
        env: Extra environment variables for the children.
        timeout: Seconds after which the run is stopped (``None``: no limit).
        resume: Resume the interrupted run in ``run_dir``.
        max_restarts: Automatic resumes after worker faults (default: one per standby).
        start_method: ``forkserver``, ``subprocess`` or ``auto`` (the fork server where it is
            available); default: the environment variable ``STAGEWARDEN_START_METHOD``, else ``auto``.
        verifier: The Unix socket of an attestation verifier service to use (``stagewarden
            verifier serve``); default: the coordinator starts a verifier process of its own.
        verifier_dir: The key folder of the verifier the coordinator starts (default
            :func:`~stagewarden.attest.verifier_keys.default_verifier_dir`). Only the coordinator's
            command line names it, and only the verifier process reads the key in it.

    Raises:
        LaunchError: A process failed (the message is the coordinator's, or the first failing
            process's), the run timed out, or it was interrupted; no child survives. Also: the
            start method is unknown or unavailable, or ``launch_local`` was called while a forked
            process imported the launching script (the call is not under ``if __name__ == "__main__":``).
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise LaunchError(
            "launch_local was called while a process of a run was importing the launching script; "
            'call it under if __name__ == "__main__": (see the launch_local documentation)'
        )
    try:
        method = choose_start_method(start_method)
    except StartMethodError as exc:
        raise LaunchError(str(exc)) from None
    run_path = Path(run_dir)
    if not resume and (run_path / "summary.json").exists():
        raise LaunchError(f"{run_path} already holds a run (summary.json exists)")
    if resume and not (run_path / "summary.json").is_file():
        raise LaunchError(f"{run_path} holds no run to resume (no summary.json)")
    restarts = config.standby if max_restarts is None else max_restarts
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="stagewarden-launch-"))
    pids: list[int] = []
    events = _EventTail(run_path / "events.jsonl", skip_existing=resume)
    try:
        vendor = str(provision_vendor(config, tmp / "vendor", vendor_dir)) if config.attestation else None
        config_path = tmp / "config.json"
        config_path.write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
        while True:
            coordinator_args = [] if verifier is None else ["--verifier", str(verifier)]
            if verifier_dir is not None:
                coordinator_args += ["--verifier-dir", str(verifier_dir)]
            codes, session_pids, used = _run_world(
                config,
                run_path,
                config_path,
                vendor,
                tmp,
                env,
                resume,
                events,
                on_event,
                timeout,
                started,
                method,
                coordinator_args,
            )
            pids += session_pids
            if all(c == 0 for c in codes):
                try:
                    record = RunRecord.from_json(run_path / SUMMARY_FILE)
                except RunDirError as exc:
                    raise LaunchError(
                        f"the run ended but its record cannot be read: {exc.message}", tuple(pids)
                    ) from None
                return LaunchResult(run_path, record, tuple(pids), time.monotonic() - started, used)
            message = _failure_message(codes, tmp, forked=used == "forkserver")
            if codes[0] != EXIT_RESUMABLE:
                raise LaunchError(message, tuple(pids), resumable=_resumable(run_path))
            pending = _pending_fault(run_path)
            if pending is None or not pending.standby or restarts <= 0:
                raise LaunchError(message, tuple(pids), resumable=True)
            restarts -= 1
            resume = True
    except KeyboardInterrupt:
        step = mark_interrupted(run_path)
        where = f" at step {step}" if step is not None else ""
        raise LaunchInterrupted(
            f"interrupted{where}; every process of the run was stopped", tuple(pids), resumable=_resumable(run_path)
        ) from None
    finally:
        (run_path / "workers.json").unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _run_world(
    config: RunConfig,
    run_path: Path,
    config_path: Path,
    vendor: str | None,
    tmp: Path,
    env: dict[str, str] | None,
    resume: bool,
    events: _EventTail,
    on_event: Callable[[dict[str, Any]], None] | None,
    timeout: float | None,
    started: float,
    method: str,
    coordinator_args: list[str],
) -> tuple[list[int | None], list[int], str]:
    """Start one set of ``1 + S + K`` processes, wait for them, stop them; return the exit codes,
    the process ids and the start method used (``method``, or ``subprocess`` where the fork
    server's import-time settings differ from those the processes are to get).
    ``coordinator_args`` go to rank 0 alone (its verifier)."""
    procs: list[RunProcess] = []
    for leftover in tmp.glob("rank*.error"):
        leftover.unlink()
    try:
        port = free_port()
        base = {**os.environ, **(env or {})}
        base.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(config.world_size),
            STAGEWARDEN_PARENT_PID=str(os.getpid()),
            PYTHONUNBUFFERED="1",
        )
        if method == "forkserver" and not ForkServer.serves(base):
            method = "subprocess"  # e.g. OMP_NUM_THREADS set for the run: torch must load with it
        for rank in range(config.world_size):
            args = [
                "--config",
                str(config_path),
                "--out",
                str(run_path),
                "--error-file",
                str(tmp / f"rank{rank}.error"),
                "--resume",
                "always" if resume else "never",
            ]
            if vendor is not None:
                args += ["--vendor", vendor]
            if rank == 0:
                args += coordinator_args
            child_env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            if rank > 0:  # the verifier's key folder is the coordinator's business alone
                child_env.pop(VERIFIER_DIR_ENV, None)
            log = tmp / f"rank{rank}.log"
            if method == "forkserver":
                procs.append(ForkServer.start(args, child_env, log))
            else:
                procs.append(start_subprocess(args, child_env, log))
        pids = [p.pid for p in procs]
        grace = max(FAILURE_GRACE, 2 * config.heartbeat_timeout + 5.0)
        codes = _wait(procs, events, on_event, timeout, started, grace, tuple(pids))
        return codes, pids, method
    finally:
        _stop(procs)
        for p in procs:
            if isinstance(p, ForkedProcess):
                p.close()


def _wait(
    procs: list[RunProcess],
    events: _EventTail,
    on_event: Callable[[dict[str, Any]], None] | None,
    timeout: float | None,
    started: float,
    grace: float,
    pids: tuple[int, ...],
) -> list[int | None]:
    """Wait until every process exits, or the coordinator has exited (the workers get
    :data:`FAILURE_GRACE` seconds to follow), or a worker failed and the coordinator has not
    followed within ``grace`` seconds (it normally records the fault and exits well before)."""
    failed_at: float | None = None
    coordinator_done: float | None = None
    while True:
        codes = [p.poll() for p in procs]
        if on_event is not None:
            for event in events.read():
                on_event(event)
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        if codes[0] is not None and coordinator_done is None:
            coordinator_done = now
        if coordinator_done is not None and now - coordinator_done > FAILURE_GRACE:
            break
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = now
        if failed_at is not None and now - failed_at > grace:
            break
        if timeout is not None and now - started > timeout:
            _stop(procs)
            raise LaunchError(f"the run did not finish within {timeout:.0f} s; every process was stopped", pids)
        time.sleep(0.05)
    if on_event is not None:
        for event in events.read():
            on_event(event)
    return [p.poll() for p in procs]


def _training(run_path: Path) -> TrainingRecord | None:
    """The training part of ``run_path``'s record; ``None`` where there is none or it cannot be read."""
    try:
        return RunRecord.from_json(run_path / SUMMARY_FILE).training
    except RunDirError:
        return None


def _pending_fault(run_path: Path) -> FaultRecord | None:
    training = _training(run_path)
    return training.pending_fault if training is not None else None


def _resumable(run_path: Path) -> bool:
    """Whether ``run_path`` holds a run that stopped before completing and has a checkpoint."""
    training = _training(run_path)
    return training is not None and training.status not in ("completed", "refused") and bool(training.checkpoints)


def mark_interrupted(run_path: Path) -> int | None:
    """Record in ``summary.json`` that the run was interrupted (Ctrl-C) once its processes are
    stopped: ``status`` becomes ``interrupted`` and ``interrupted_at_step`` the steps it completed.

    The stopped coordinator cannot say so itself (it is terminated while it waits), so a summary
    still saying ``running`` is rewritten, atomically; a run that had already ended keeps its status.
    Returns the step reached, or None where there is no readable summary.
    """
    path = run_path / SUMMARY_FILE
    try:
        record = RunRecord.from_json(path)
    except RunDirError:
        return None
    training = record.training
    if training is not None and training.status in ("running", "starting"):
        marked = training.model_copy(update={"status": "interrupted", "interrupted_at_step": record.steps})
        with contextlib.suppress(OSError):
            record.model_copy(update={"training": marked}).write(path)
    return record.steps


def _failure_message(codes: list[int | None], tmp: Path, forked: bool = False) -> str:
    errors: dict[int, str] = {}
    for rank in range(len(codes)):
        path = tmp / f"rank{rank}.error"
        with contextlib.suppress(OSError, ValueError):
            errors[rank] = str(json.loads(path.read_text(encoding="utf-8"))["message"])
    # a worker's own error is the cause, and the coordinator saw only its connection close; but a
    # worker that lost the coordinator only repeats the coordinator's failure
    workers = [rank for rank in errors if rank != 0 and "rank 0 " not in errors[rank]]
    if workers:
        first = workers[0]
        context = f" (the coordinator: {errors[0]})" if 0 in errors else ""
        return f"rank {first}: {errors[first]}{context}"
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
            if forked and not tail and code == 1:
                # it failed before its entry ran: most likely while importing the launching script
                tail = (
                    " before it started (see the launcher's standard error; a script that calls "
                    'launch_local must do so under if __name__ == "__main__":)'
                )
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            return f"rank {rank} ({'coordinator' if rank == 0 else 'worker'}) {how}{tail}"
    return "the run stopped"


def _stop(procs: list[RunProcess]) -> None:
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
    """Reads the complete lines appended to ``events.jsonl`` since the last call (with
    ``skip_existing``, since it was created)."""

    def __init__(self, path: Path, skip_existing: bool = False) -> None:
        self.path = path
        self.offset = path.stat().st_size if skip_existing and path.exists() else 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data and self.path.stat().st_size < self.offset:  # cut by a resumed coordinator's repair
            self.offset, self.partial = self.path.stat().st_size, b""
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
