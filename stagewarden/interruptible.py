"""Running a long proof in a child process, so that Ctrl-C stops it at once.

Z3 solves in C and does not return to Python while it searches, so a SIGINT that reaches the
process running it waits, or is swallowed by Z3's own handler. ``verify`` and ``synthesize``
therefore prove in a forked child that renders its output into text and sends it, with its
progress, to the parent as JSON lines over a pipe (no pickle). The parent only waits: on SIGINT
it kills the child and the command ends with :class:`KeyboardInterrupt` (exit code 130), having
printed nothing of the result. Where ``os.fork`` does not exist the job runs in process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: How often the child checks that its parent is still alive, in seconds.
_PARENT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class CommandOutput:
    """What a command prints and the exit code it ends with."""

    stdout: str
    stderr: str
    exit_code: int


class ChildFailed(RuntimeError):
    """The child process raised an unexpected exception or died; the message carries its traceback
    or the signal that ended it."""


#: A job: given a function that reports progress (one line of text), it returns the output.
Job = Callable[[Callable[[str], None]], CommandOutput]


def run_interruptibly(job: Job, on_progress: Callable[[str], None] | None = None) -> CommandOutput:
    """Run ``job`` in a forked child and return its output; ``on_progress`` sees its progress lines.

    Raises:
        KeyboardInterrupt: SIGINT reached this process (the child is killed first), or the job
            itself was interrupted.
        ChildFailed: the job raised another exception, or the child died without an answer.
    """
    report = on_progress or (lambda _line: None)
    if not hasattr(os, "fork"):
        return job(report)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit, where coverage cannot follow
        os.close(read_end)
        _child(job, write_end)
    os.close(write_end)
    child = _Child(pid)
    try:
        return _collect(read_end, child, report)
    finally:
        os.close(read_end)
        child.reap()


def _child(job: Job, write_end: int) -> None:  # pragma: no cover - runs in the forked child
    """Run the job and send its messages; never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone answers Ctrl-C
    parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    stream = os.fdopen(write_end, "w", encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        stream.write(json.dumps(message) + "\n")
        stream.flush()

    code = 0
    try:
        output = job(lambda line: send({"progress": line}))
        send({"stdout": output.stdout, "stderr": output.stderr, "exit_code": output.exit_code})
    except KeyboardInterrupt:
        send({"interrupted": True})
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, as text
        send({"failure": "".join(traceback.format_exception(exc))})
        code = 1
    finally:
        os._exit(code)


def _exit_when_orphaned(parent: int) -> None:  # pragma: no cover - runs in the forked child
    """End the child when its parent is gone (killed outright), instead of proving for nobody."""
    while os.getppid() == parent:
        threading.Event().wait(_PARENT_POLL_SECONDS)
    os._exit(1)


class _Child:
    """The forked child's process id, and whether it has been waited for (after which the id may
    belong to another process and must not be signalled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reaped = False

    def status(self) -> str:
        """Wait for the child to end and describe how it ended."""
        _, status = os.waitpid(self.pid, 0)
        self.reaped = True
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.waitstatus_to_exitcode(status)}"

    def reap(self) -> None:
        """Kill the child if it still runs and wait for it, so that none is left behind."""
        if self.reaped:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self.reaped = True


def _collect(read_end: int, child: _Child, report: Callable[[str], None]) -> CommandOutput:
    """Read the child's messages until its answer; a SIGINT meanwhile raises KeyboardInterrupt."""
    pending = b""
    while True:
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            raise ChildFailed(f"the prover's process ended without an answer ({child.status()})")
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "progress" in message:
                report(str(message["progress"]))
            elif "interrupted" in message:
                raise KeyboardInterrupt
            elif "failure" in message:
                raise ChildFailed(f"the prover failed:\n{message['failure']}")
            else:
                return CommandOutput(str(message["stdout"]), str(message["stderr"]), int(message["exit_code"]))
