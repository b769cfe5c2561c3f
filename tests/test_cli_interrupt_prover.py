"""Ctrl-C stops ``stagewarden verify`` and ``synthesize`` at once, whatever the solver is doing:
SIGINT to a real process that is deep in a Z3 search, then exit code 130, one line, no output,
no process left behind; and the child-process runner that makes it so, in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import sigint_default

from stagewarden.interruptible import ChildFailed, CommandOutput, run_interruptibly

#: A spec on which the solver searches for tens of seconds (about 20 s on a 2-core machine):
#: 1,616 workers, redundant-neighbour and peer spot checks, framing and liveness.
SLOW_SPEC = """\
version: 1
name: slow-to-prove
topology:
  stages: 400
  replicas: 4
  standby: 16
adversary:
  max_malicious: 30
  collusion: false
  capabilities: [tamper_activations, tamper_gradients, equivocate, false_accuse]
defense:
  receipts: false
  checks:
    - scheme: redundant_neighbour
      input_via: upstream
    - scheme: spot_check
      rate: 0.1
      verifier: peer
  response: [eject, rollback]
guarantees:
  - id: det
    kind: detection
  - id: dmg
    kind: bounded_damage
    max_undetected: 10
    probability: 0.99
  - id: nf
    kind: no_framing
  - id: live
    kind: liveness
"""

#: How long the command runs before the signal: past start-up and spec loading, into the search.
SIGNAL_AFTER_SECONDS = 1.5
#: How soon after SIGINT the command must have ended.
EXIT_WITHIN_SECONDS = 1.0


#: Whether /proc lists each process's children (Linux).
_HAS_PROC = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def _children(pid: int) -> list[int]:
    """The processes that ``pid`` has forked (Linux /proc), or [] where /proc does not list them."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet waited for, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass(frozen=True)
class Interrupted:
    """How a command ended after SIGINT."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float  # from the signal to the end of the process
    children: list[int]  # the processes it had forked when the signal was sent


def _interrupt(args: list[str]) -> Interrupted:
    """Run ``python -c ARGS...``; once it has started proving (where /proc shows its child
    process; a loaded machine may take seconds to get there), wait SIGNAL_AFTER_SECONDS, send
    SIGINT and wait for the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,  # noqa: PLW1509 - a test's process, no threads to race
    )
    deadline = time.monotonic() + 60
    while _HAS_PROC and not _children(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(SIGNAL_AFTER_SECONDS)
    assert process.poll() is None, f"the command ended before the signal: {process.communicate()}"
    children = _children(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return Interrupted(process.returncode, out, err, time.monotonic() - sent, children)


def _check_interrupted(result: Interrupted) -> None:
    """Exit code 130 within the time allowed, one line on standard error, nothing on standard output."""
    assert result.code == 130, result.stderr
    assert result.seconds < EXIT_WITHIN_SECONDS, f"exited {result.seconds:.2f} s after SIGINT"
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["error: interrupted (Ctrl-C)"]
    assert result.stdout == ""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("command", ["verify", "synthesize"])
def test_sigint_during_a_long_search_exits_130_within_a_second(command: str, tmp_path: Path) -> None:
    """SIGINT while the solver searches: exit code 130 within a second, 'interrupted' on standard
    error, no traceback, nothing on standard output, and the prover's process is gone."""
    spec = tmp_path / "slow.yaml"
    spec.write_text(SLOW_SPEC, encoding="utf-8")
    result = _interrupt(["from stagewarden.cli import main; main()", command, str(spec)])
    _check_interrupted(result)
    if _HAS_PROC:
        assert result.children, "no prover process ran when the signal was sent"
    assert not [pid for pid in result.children if _alive(pid)], "the prover's process outlived the command"


@pytest.mark.skipif(not _HAS_PROC, reason="finding the child process needs Linux /proc")
def test_the_prover_process_ends_with_a_killed_command(tmp_path: Path) -> None:
    """A command killed outright (SIGKILL, which it cannot answer) does not leave its prover
    running: the child notices that its parent is gone and ends."""
    spec = tmp_path / "slow.yaml"
    spec.write_text(SLOW_SPEC, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-c", "from stagewarden.cli import main; main()", "verify", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=sigint_default,  # noqa: PLW1509 - a test's process, no threads to race
    )
    deadline = time.monotonic() + 60
    while not _children(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _children(process.pid)
    assert children, "no prover process started"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children), "the prover kept running after its command was killed"


#: Replaces the prover (or the defence search) with one Z3 check that takes minutes: the
#: pigeonhole principle for 12 pigeons in 11 holes, as clauses. Should the check return (as it
#: does when Z3's own SIGINT handler cancels it), the process ends with exit code 5.
_SOLVER_BOUND = """
import sys, z3
from stagewarden.cli import main

def pigeonhole(*args, **kwargs):
    holes = 11
    x = [[z3.Bool(f"x{i}_{j}") for j in range(holes)] for i in range(holes + 1)]
    solver = z3.Solver()
    for row in x:
        solver.add(z3.Or(row))
    for j in range(holes):
        for a in range(holes + 1):
            for b in range(a + 1, holes + 1):
                solver.add(z3.Or(z3.Not(x[a][j]), z3.Not(x[b][j])))
    print(solver.check(), file=sys.stderr)
    sys.exit(5)

import stagewarden.prover, stagewarden.prover.synthesis
stagewarden.prover.verify = pigeonhole
stagewarden.prover.synthesis.synthesize = pigeonhole
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("command", ["verify", "synthesize"])
def test_sigint_inside_one_long_solver_call_exits_130(command: str) -> None:
    """SIGINT while one Z3 check runs in C (where Python cannot run a signal handler, and Z3's
    own handler would turn the interrupt into an 'unknown' result): still exit code 130 within a
    second, and nothing printed."""
    _check_interrupted(_interrupt([_SOLVER_BOUND, command, "--example", "demo"]))


def _job(lines: list[str], output: CommandOutput):  # type: ignore[no-untyped-def]
    def job(progress):  # type: ignore[no-untyped-def]
        for line in lines:
            progress(line)
        return output

    return job


def test_the_child_returns_its_output_and_progress() -> None:
    """Output, exit code and every progress line come back intact, a megabyte of text included."""
    big = "x" * 1_000_000 + "\n✔ holds\n"
    seen: list[str] = []
    output = run_interruptibly(_job(["one", "two ✔"], CommandOutput(big, "warning\n", 3)), seen.append)
    assert output == CommandOutput(big, "warning\n", 3)
    assert seen == ["one", "two ✔"]


def test_the_child_runs_in_another_process() -> None:
    """The job runs in a process of its own (so that killing it stops the solver)."""
    output = run_interruptibly(lambda progress: CommandOutput(str(os.getpid()), "", 0))
    assert int(output.stdout) != os.getpid()


def test_an_interrupt_inside_the_job_is_an_interrupt() -> None:
    """A KeyboardInterrupt in the job is re-raised in the parent."""

    def job(progress):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_interruptibly(job)


def test_a_failing_job_carries_its_traceback() -> None:
    """Another exception in the job becomes ChildFailed with the child's traceback."""

    def job(progress):  # type: ignore[no-untyped-def]
        raise ValueError("deliberate failure")

    with pytest.raises(ChildFailed, match="ValueError: deliberate failure"):
        run_interruptibly(job)


def test_a_child_that_dies_without_an_answer_is_a_failure() -> None:
    """A child that ends without answering (killed, out of memory) is a failure naming how it ended."""

    def job(progress):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ChildFailed, match="killed by signal 9"):
        run_interruptibly(job)
