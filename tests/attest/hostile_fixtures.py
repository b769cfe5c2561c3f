"""Hostile run directories and the audit that reads them: a real run directory copied and made
hostile, and ``stagewarden audit`` run on it in a child process under a wall-clock limit and an
address-space limit, with its exit code, output, CPU time and peak memory measured.

The bounds every hostile directory must meet (docs/receipts.rst, "Hostile run directories"):
:data:`CPU_SECONDS` of CPU and :data:`PEAK_MB` of peak resident memory. Wall time is only a hang
guard (:data:`HANG_SECONDS`): on a loaded machine starting the interpreter alone takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A real ``stagewarden demo`` run directory (4 stages, 5 steps, one detection answered by eject),
#: with its events, metrics, attestation results and evidence.
RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "attacked"
#: CPU seconds (user + system) one audit of a hostile directory may take.
CPU_SECONDS = 5.0
#: Peak resident memory one audit of a hostile directory may reach, in MB.
PEAK_MB = 200
#: The bounds of an audit with ``--spec``: checking the spec runs its prover, which alone takes
#: about 3 s of CPU and 300 MB on the recorded run, whatever the run directory holds.
SPEC_CPU_SECONDS = 10.0
SPEC_PEAK_MB = 450
#: Wall-clock seconds after which the audit counts as hung (and is killed).
HANG_SECONDS = float(os.environ.get("STAGEWARDEN_HOSTILE_HANG_SECONDS") or 60.0)
#: A file to which every audit appends its figures as a JSON line (the docs' measurements).
FIGURES = os.environ.get("STAGEWARDEN_HOSTILE_FIGURES")
#: The child's address-space limit: a runaway allocation fails there instead of swapping the machine.
ADDRESS_SPACE = 2 << 30


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One audit in a child process."""

    code: int | None  # None: killed as hung
    output: str
    wall: float
    cpu: float
    peak_mb: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]

    def check_bounded(self, spec: bool = False) -> None:
        """No hang, no traceback, within the CPU and memory bounds (those of ``--spec`` if ``spec``)."""
        assert self.code is not None, f"audit hung (killed after {HANG_SECONDS} s): {self.output[-500:]}"
        assert "Traceback" not in self.output and "MemoryError" not in self.output, self.output[-2000:]
        cpu, peak = (SPEC_CPU_SECONDS, SPEC_PEAK_MB) if spec else (CPU_SECONDS, PEAK_MB)
        assert self.cpu <= cpu, f"audit took {self.cpu:.2f} s of CPU"
        assert self.peak_mb <= peak, f"audit peaked at {self.peak_mb:.0f} MB"

    def check_refused(self, *words: str, spec: bool = False) -> None:
        """Exit 2 with one line (``error: ...``) naming ``words``, within the bounds."""
        self.check_bounded(spec)
        assert self.code == 2, (self.code, self.output[-2000:])
        assert len(self.lines) == 1 and self.lines[0].startswith("error: "), self.output[-2000:]
        for word in words:
            assert word in self.lines[0], (word, self.lines[0])


#: Runs the audit for :func:`audit_process` and reports its resource use. A process forked from
#: the test process would count the test process's resident memory in its own peak (Linux keeps a
#: process's peak across fork and exec), and under pytest-xdist that is a worker that has trained
#: models; so a fresh, small interpreter forks the audit instead, limits its address space, waits
#: for it and writes its CPU time and peak memory as JSON.
_SPAWNER = """
import json, os, resource, sys
limit, report, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as handle:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "peak_kb": usage.ru_maxrss}, handle)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def audit_process(*args: str | Path) -> Outcome:
    """``stagewarden audit ARGS`` in a child process (its own session, stdin closed)."""
    command = [sys.executable, "-m", "stagewarden.cli", "audit", *map(str, args)]
    env = {**os.environ, "COLUMNS": "200"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "usage.json"
        started = time.monotonic()
        spawner = [sys.executable, "-S", "-c", _SPAWNER, str(ADDRESS_SPACE), str(report), *command]
        child = subprocess.Popen(
            spawner, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        code: int | None = None
        try:
            code = child.wait(HANG_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        wall = time.monotonic() - started
        out.seek(0)
        output = out.read().decode("utf-8", errors="replace")
        usage = json.loads(report.read_text()) if code is not None and report.exists() else {"cpu": 0.0, "peak_kb": 0}
    result = Outcome(code, output, wall, usage["cpu"], usage["peak_kb"] / 1024)
    if FIGURES:
        figures = {"args": [str(a) for a in args[1:]], "code": code, "wall": wall, "cpu": result.cpu}
        figures |= {"peak_mb": result.peak_mb, "load": os.getloadavg()[0]}
        figures["case"] = os.environ.get("PYTEST_CURRENT_TEST")
        with open(FIGURES, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(figures) + "\n")
    return result


def recorded_copy(folder: Path) -> Path:
    """A fresh copy of :data:`RECORDED` in ``folder``."""
    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(RECORDED, run)
    return run


def replace_by_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def replace_by_link(path: Path, target: str | Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


def replace_by_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("a folder where a file belongs\n")
