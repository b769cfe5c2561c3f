"""The entry point of every process of a run: ``python -m stagewarden.runtime.entry``.

The rank decides the role: rank 0 is the coordinator, ranks ``1..S`` the stage workers, ranks
``S+1..S+K`` the standby workers. The rank, world size and rendezvous address come from the
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK`` picks the
GPU with device cuda), as :func:`stagewarden.runtime.launch.launch_local` and ``torchrun`` set them.
:func:`run_forked` is the same entry for a process forked from the launcher's fork server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord
from stagewarden.attest.witness import WITNESS_DIR

if TYPE_CHECKING:
    from stagewarden.attest.verifier_client import VerifierClient
    from stagewarden.runtime.config import RunConfig

#: Set by the local launcher: the pid of the launching process; a worker exits when it is gone.
PARENT_PID_ENV = "STAGEWARDEN_PARENT_PID"
#: The exit code of a process whose launcher is gone.
EXIT_LAUNCHER_GONE = 70
#: Set once this process has joined the run's process groups: it then exits without teardown.
_JOINED = threading.Event()
#: cuBLAS needs this workspace setting to run matrix products deterministically (the workers
#: compute under ``torch.use_deterministic_algorithms``); set when the environment has none.
CUBLAS_WORKSPACE = ":4096:8"


class EntryError(Exception):
    """A process of the run could not start or stopped."""


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise EntryError(f"environment variable {name} is not set (start the run with torchrun or stagewarden train)")
    try:
        return int(value)
    except ValueError:
        raise EntryError(f"environment variable {name} must be an integer, not {value!r}") from None


def _watch_parent() -> None:
    """Exit when the launcher named by :data:`PARENT_PID_ENV`, this process's parent, is gone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != int(parent):  # reparented: the launcher died
                os._exit(EXIT_LAUNCHER_GONE)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _watch_launcher() -> None:
    """Exit when the launcher that had this process forked is gone.

    The fork server, not the launcher, is the parent of a forked process, so reparenting says
    nothing; multiprocessing gives the process a sentinel of the process that started it (the
    launcher), which becomes ready when that process ends, however it ends.
    """
    launcher = multiprocessing.parent_process()
    if launcher is None:
        raise EntryError("run_forked must run in a process started by multiprocessing")

    def watch() -> None:
        launcher.join()
        os._exit(EXIT_LAUNCHER_GONE)

    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


def run_process(
    config_path: str,
    out: str,
    vendor: str | None,
    resume: str = "never",
    witness_dir: str | None = None,
    verifier: str | None = None,
    verifier_dir: str | None = None,
) -> None:
    """Join the process groups (the run's, and the heartbeat channel's) and play this rank's role
    (raises on failure). The groups are not left: :func:`_run` ends the process instead.

    ``witness_dir`` (workers): where the worker keeps its witness file (default ``OUT/witness``).

    ``verifier`` (rank 0, attestation on): the Unix socket of a verifier service to use; without
    it rank 0 starts a verifier process of its own whose key lives in ``verifier_dir`` (default
    :func:`~stagewarden.attest.verifier_keys.default_verifier_dir`), stopped when rank 0 ends.

    ``resume`` (rank 0): ``never`` starts a new run in ``out``; ``always`` resumes the interrupted
    run there; ``auto`` resumes it if there is one that has not completed, else starts a new run
    (for ``torchrun --max-restarts``, which restarts every process after a failure).
    """
    from stagewarden.runtime.config import load_run_config

    config = load_run_config(config_path)
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank == 0 and config.attestation and verifier is None:
        # started first: it computes the reference values while the process groups form
        from stagewarden.attest.verifier_keys import default_verifier_dir
        from stagewarden.runtime.verifier_process import start_verifier

        with start_verifier(config_path, verifier_dir or default_verifier_dir(), vendor) as local:
            _play_role(config, rank, world, out, vendor, resume, witness_dir, local.client)
        return
    client = None
    if rank == 0 and config.attestation and verifier is not None:
        from stagewarden.attest.verifier_client import EXTERNAL_CONNECT_SECONDS, VerifierClient

        client = VerifierClient(verifier, connect_seconds=EXTERNAL_CONNECT_SECONDS)
    _play_role(config, rank, world, out, vendor, resume, witness_dir, client)


def _play_role(
    config: RunConfig,
    rank: int,
    world: int,
    out: str,
    vendor: str | None,
    resume: str,
    witness_dir: str | None,
    verifier: VerifierClient | None,
) -> None:
    """:func:`run_process` once the configuration is read (and rank 0's verifier is known)."""
    import torch.distributed as dist

    from stagewarden.runtime.liveness import HeartbeatInbox, HeartbeatSender, heartbeat_group
    from stagewarden.runtime.transport import Transport

    _env_int("MASTER_PORT")
    if not os.environ.get("MASTER_ADDR"):
        raise EntryError(
            "environment variable MASTER_ADDR is not set (start the run with torchrun or stagewarden train)"
        )
    if world != config.world_size:
        raise EntryError(
            f"WORLD_SIZE is {world} but the configuration needs {config.world_size} processes "
            f"(1 coordinator + {config.stages} stages + {config.standby} standby)"
        )
    if config.device == "cuda" and (rank > 0 or config.backend == "nccl"):
        _use_gpu(rank)  # a gloo coordinator computes nothing on a GPU and needs none
    try:
        dist.init_process_group(
            config.backend,
            rank=rank,
            world_size=world,
            timeout=dt.timedelta(seconds=config.timeout),
            init_method="env://",
        )
    except Exception as exc:  # noqa: BLE001 - torch raises backend-specific errors
        raise EntryError(
            f"rank {rank} could not join the process group: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    # From here the process ends without tearing the groups down (see _run): gloo cannot cancel a
    # receive, the coordinator's heartbeat threads wait in one for as long as their workers live,
    # and destroying a gloo group, explicitly or in the interpreter's exit, can abort the process.
    _JOINED.set()
    # nccl moves GPU tensors; gloo moves CPU tensors, so a stage on a GPU sends and receives
    # through host copies and gets what it receives back on its GPU.
    wire = "cuda" if config.backend == "nccl" else "cpu"
    compute = "cuda" if config.device == "cuda" and rank > 0 else "cpu"
    transport = Transport(wire, deliver_to=compute, signed=config.receipts)  # headers belong to receipts
    try:
        group = heartbeat_group()  # collective: every rank creates it, before anything else
    except Exception as exc:  # noqa: BLE001 - torch raises backend-specific errors
        raise EntryError(
            f"rank {rank} could not open the heartbeat channel: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    if rank == 0:
        from stagewarden.runtime.coordinator import Coordinator

        inbox = HeartbeatInbox(range(1, world), group)
        inbox.start()  # at once: a worker's heartbeat waits until the coordinator takes it
        again = resume == "always" or (resume == "auto" and _resumable(Path(out)))
        if not again and (Path(out) / "summary.json").exists():
            raise EntryError(f"{out} already holds a run (summary.json exists); the coordinator writes a new one")
        Coordinator(config, out, transport, vendor, resume=again, heartbeats=inbox, verifier=verifier).run()
    else:
        from stagewarden.runtime.worker import StageWorker, TestHooks

        hooks = TestHooks.from_environ()  # read once, here
        witness = Path(witness_dir) if witness_dir else Path(out) / WITNESS_DIR
        StageWorker(
            config, rank, transport, vendor, heartbeats=HeartbeatSender(group), hooks=hooks, witness_dir=witness
        ).run()


def _resumable(out: Path) -> bool:
    """Whether ``out`` holds a run that has not completed."""
    try:
        training = RunRecord.from_json(out / SUMMARY_FILE).training
    except RunDirError:
        return False
    return training is not None and training.status not in ("completed", "refused")


def _use_gpu(rank: int) -> None:
    """Pick this process's GPU: ``LOCAL_RANK`` modulo the GPUs of this machine (processes share
    GPUs when there are more of them than GPUs, which gloo allows and nccl does not)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    import torch

    if not torch.cuda.is_available():
        raise EntryError("device cuda was asked for but CUDA is not available on this machine")
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local % torch.cuda.device_count())


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run this rank's role, and return the exit code (0 ok, 1 failed, 2 bad input)."""
    args = _parse_args(argv)
    _watch_parent()
    return _run(args)


def run_forked(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """:func:`main` in a process forked from the launcher's fork server (it exits with main's code).

    The process becomes what ``python -m stagewarden.runtime.entry ARGV`` started by the launcher
    would be: a session of its own, exactly the environment ``env``, standard input from
    ``/dev/null``, standard output and error (unbuffered) appended to ``log_path``, and an exit
    when the launcher is gone.
    """
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    _redirect_std_streams(log_path)
    sys.argv = [str(Path(__file__).resolve()), *argv]
    args = _parse_args(argv)
    _watch_launcher()
    sys.exit(_run(args))


def _redirect_std_streams(log_path: str) -> None:
    """Point file descriptors 0, 1 and 2 and ``sys.stdin/stdout/stderr`` where a launched process has them."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's stdin
    sys.stdout = _unbuffered(1, sys.stdout)
    sys.stderr = _unbuffered(2, sys.stderr)


def _unbuffered(fd: int, like: io.TextIOBase | Any) -> io.TextIOWrapper:
    """A text stream on ``fd`` as ``PYTHONUNBUFFERED=1`` makes one: nothing waits in a buffer."""
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stagewarden.runtime.entry", description=__doc__)
    parser.add_argument("--config", required=True, help="the run configuration (JSON, see RunConfig.to_json)")
    parser.add_argument("--out", required=True, help="the run directory (written by rank 0 only)")
    parser.add_argument("--vendor", help="the simulated vendor folder (required when attestation is on)")
    parser.add_argument("--error-file", help="write a one-line JSON error here on failure")
    parser.add_argument(
        "--witness-dir",
        help="workers: keep the witness file of the run's step heads in this folder (default: OUT/witness)",
    )
    parser.add_argument(
        "--verifier",
        metavar="SOCKET",
        help="rank 0: use the attestation verifier service listening on this Unix socket "
        "(default: start one; see stagewarden verifier serve)",
    )
    parser.add_argument(
        "--verifier-dir",
        help="rank 0: the key folder of the verifier it starts (mode 0700; default: a per-user state folder)",
    )
    parser.add_argument(
        "--resume",
        choices=("never", "always", "auto"),
        default="never",
        help="rank 0: resume the interrupted run in --out (always), only if there is one (auto), or never",
    )
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> int:
    """Run this rank's role; the exit code, with any failure reported on stderr and in ``--error-file``.
    A process that joined the run's process groups exits here with that code, after flushing its
    output, without the interpreter's teardown (see :func:`run_process`)."""
    code = _run_role(args)
    if _JOINED.is_set():
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(code)
    return code


def _run_role(args: argparse.Namespace) -> int:
    rank = os.environ.get("RANK", "?")
    try:
        run_process(args.config, args.out, args.vendor, args.resume, args.witness_dir, args.verifier, args.verifier_dir)
    except KeyboardInterrupt:
        _report(args.error_file, rank, "interrupted", 130)
        return 130
    except Exception as exc:  # noqa: BLE001 - the edge of the process: one clear line, no traceback
        from stagewarden.runtime.coordinator import EXIT_RESUMABLE, RunInterrupted
        from stagewarden.runtime.errors import RuntimeSetupError

        if isinstance(exc, RunInterrupted):
            _report(args.error_file, rank, str(exc), EXIT_RESUMABLE)
            return EXIT_RESUMABLE

        message = str(exc) if isinstance(exc, RuntimeSetupError | EntryError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RuntimeSetupError | EntryError):
            import traceback

            traceback.print_exc()
        _report(args.error_file, rank, message, 1)
        return 1
    return 0


def _report(path: str | None, rank: str, message: str, code: int) -> None:
    print(f"stagewarden rank {rank}: error: {message}", file=sys.stderr)
    if path:
        try:
            Path(path).write_text(json.dumps({"rank": rank, "message": message, "exit": code}) + "\n", encoding="utf-8")
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
