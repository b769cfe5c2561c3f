"""How :func:`~stagewarden.runtime.launch.launch_local` starts the processes of a run on this machine.

Each process is forked from a ``multiprocessing`` fork server that has already imported torch and
the runtime (fast), or started as ``python -m stagewarden.runtime.entry`` (a fresh interpreter,
the fallback). Either way the launcher gets a handle with the part of ``subprocess.Popen``'s
interface it uses (:class:`RunProcess`), and the process runs the same entry code with the same
environment, log file, exit codes and session.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal, Protocol

#: The environment variable that picks how runs start their processes, one of
#: :data:`START_METHODS`; ``auto`` when it is not set.
START_METHOD_ENV = "STAGEWARDEN_START_METHOD"

StartMethod = Literal["auto", "forkserver", "subprocess"]
#: ``auto`` (the fork server where it is available and ``__main__`` is a file, else
#: subprocesses), ``forkserver`` (the fork server, also when ``__main__`` is no file; an error where
#: the platform has none) and ``subprocess`` (a new interpreter per process).
START_METHODS: tuple[str, ...] = ("auto", "forkserver", "subprocess")

#: The modules the fork server imports once, before it forks any process. ``torch._inductor.config``
#: is what the first ``torch.use_deterministic_algorithms`` call imports (about 1.9 s of CPU on
#: the development machine), which every stage process would otherwise pay again.
FORKSERVER_PRELOAD = [
    "torch",
    "torch._inductor.config",
    "stagewarden.runtime.entry",
    "stagewarden.runtime.coordinator",
    "stagewarden.runtime.worker",
]

#: Environment variables read when torch and its libraries load (thread pools, allocators, the
#: interpreter's own settings). A forked process has the fork server's values in effect, so a run
#: whose processes would get other values than the fork server started with uses subprocesses.
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "GOTO", "TORCH_", "PYTORCH_", "LD_", "PYTHON")
#: Variables under those prefixes that the forked process applies itself.
APPLIED_IN_CHILD = frozenset({"PYTHONUNBUFFERED"})


class StartMethodError(ValueError):
    """The start method asked for is unknown or cannot be used here."""


class RunProcess(Protocol):
    """A started process of a run: the part of ``subprocess.Popen`` the launcher uses."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def fork_server_unavailable(*, main_file: bool = True) -> str | None:
    """Why the fork server cannot start processes from this program, or ``None`` when it can.

    With ``main_file`` (as ``auto`` asks), a program whose ``__main__`` is not a file is refused
    too: nothing of such a ``__main__`` can be imported again in a forked process. The run's
    processes need nothing from it, which is why ``forkserver``, asked for, accepts it (for
    example under pytest-xdist, whose workers run ``python -c``).
    """
    if os.name != "posix" or "forkserver" not in multiprocessing.get_all_start_methods():
        return "this platform has no multiprocessing fork server"
    if not main_file:
        return None
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) is None:
        path = getattr(main, "__file__", None)
        if not isinstance(path, str) or not os.path.isfile(path):
            return "the launching program's __main__ is not a file (python -c, an interactive session)"
    return None


def choose_start_method(requested: StartMethod | str | None = None) -> Literal["forkserver", "subprocess"]:
    """``forkserver`` or ``subprocess``: ``requested``, else :data:`START_METHOD_ENV`, else ``auto``.

    Raises:
        StartMethodError: The value is not one of :data:`START_METHODS`, or ``forkserver`` was
            asked for where it is unavailable.
    """
    value = requested or os.environ.get(START_METHOD_ENV) or "auto"
    if value not in START_METHODS:
        source = "start_method" if requested else START_METHOD_ENV
        raise StartMethodError(f"{source} must be one of {', '.join(START_METHODS)}, not {value!r}")
    if value == "subprocess":
        return "subprocess"
    reason = fork_server_unavailable(main_file=value == "auto")
    if reason is None:
        return "forkserver"
    if value == "forkserver":
        raise StartMethodError(f"the fork server cannot start the run's processes: {reason}")
    return "subprocess"


def start_subprocess(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m stagewarden.runtime.entry ARGV`` in its own session, writing to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stagewarden.runtime.entry", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class ForkedProcess:
    """A process forked by the fork server, behind ``subprocess.Popen``'s interface.

    ``returncode`` follows Popen's convention (``-N`` for a process killed by signal ``N``).
    """

    def __init__(self, process: multiprocessing.process.BaseProcess, argv: list[str]) -> None:
        self._process = process
        self.args = argv
        self.returncode: int | None = None
        if process.pid is None:
            raise RuntimeError("the process was not started")
        self._pid: int = process.pid

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid the process no longer owns
            os.kill(self._pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the handle's file descriptors (the process must have exited)."""
        if self.poll() is not None:
            self._process.close()


class ForkServer:
    """The fork server of this program, started on first use with :data:`FORKSERVER_PRELOAD`.

    The server (``multiprocessing``'s, shared by the whole program) is a child of this process; it
    exits when this process and every process it forked have exited.
    """

    _lock = threading.Lock()
    _context: multiprocessing.context.ForkServerContext | None = None
    _environment: dict[str, str] = {}

    @classmethod
    def context(cls) -> multiprocessing.context.ForkServerContext:
        with cls._lock:
            if cls._context is None:
                from multiprocessing import forkserver

                context = multiprocessing.get_context("forkserver")
                assert isinstance(context, multiprocessing.context.ForkServerContext)
                context.set_forkserver_preload(FORKSERVER_PRELOAD)
                forkserver.ensure_running()  # started now, with this environment
                cls._environment = import_time_environment(dict(os.environ))
                cls._context = context
            return cls._context

    @classmethod
    def serves(cls, env: dict[str, str]) -> bool:
        """Whether a process forked now would see the import-time settings of ``env``."""
        cls.context()
        return import_time_environment(env) == cls._environment

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        """Fork a process that runs ``stagewarden.runtime.entry.run_forked`` with these arguments.

        ``log_path`` is created (emptied) here, so it exists even if the process dies before it
        opens it.
        """
        from stagewarden.runtime.entry import run_forked

        log_path.write_bytes(b"")
        process = cls.context().Process(
            target=run_forked, args=(argv, env, str(log_path)), name=f"stagewarden-{env.get('RANK', '?')}"
        )
        process.start()
        return ForkedProcess(process, argv)


def import_time_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that take effect when torch and the interpreter start."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in APPLIED_IN_CHILD}
