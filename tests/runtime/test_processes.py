"""How ``launch_local`` starts a run's processes: forked from the fork server or as subprocesses.

The forked run must equal the subprocess run (summary and weights, bitwise), the fallback must
still work, a forked process must exit with the entry's codes and write its log, and killing the
launcher must leave no process behind (the fork server included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from distributed_helpers import reference, tiny_config

from stagewarden.runtime.launch import LaunchError, launch_local
from stagewarden.runtime.processes import START_METHOD_ENV, ForkServer, choose_start_method, fork_server_unavailable

HERE = Path(__file__).resolve().parent
#: Set in the launcher's environment (so the fork server's and every forked process's): finds
#: every process of one test run in ``/proc``.
MARKER_ENV = "STAGEWARDEN_TEST_LAUNCH_MARKER"

needs_fork_server = pytest.mark.skipif(
    fork_server_unavailable(main_file=False) is not None, reason="this platform has no fork server"
)


def _gone(pids: tuple[int, ...]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _marked(marker: str) -> list[int]:
    """The pids of live processes whose initial environment carries ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _python_c(code: str, **env: str) -> str:
    """The output of ``python -c code`` (``__main__`` is no file there)."""
    inherited = {k: v for k, v in os.environ.items() if k != START_METHOD_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_python_c_falls_back_to_subprocesses() -> None:
    """Under ``python -c`` (no ``__main__`` file) ``auto`` picks subprocesses; ``forkserver`` asked for is kept."""
    code = (
        "from stagewarden.runtime.processes import choose_start_method, fork_server_unavailable\n"
        "print(choose_start_method())\nprint(choose_start_method('forkserver'))\nprint(fork_server_unavailable())\n"
    )
    auto, forced, reason = _python_c(code).splitlines()
    assert (auto, forced) == ("subprocess", "forkserver")
    assert "__main__ is not a file" in reason
    assert _python_c(code, **{START_METHOD_ENV: "forkserver"}).splitlines()[0] == "forkserver"


def test_the_environment_variable_forces_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STAGEWARDEN_START_METHOD=subprocess`` picks subprocesses; an unknown value is a clear LaunchError."""
    monkeypatch.setenv(START_METHOD_ENV, "subprocess")
    assert choose_start_method() == "subprocess"
    monkeypatch.setenv(START_METHOD_ENV, "threads")
    with pytest.raises(LaunchError, match="STAGEWARDEN_START_METHOD must be one of auto, forkserver, subprocess"):
        launch_local(tiny_config(), Path("unused"))


@needs_fork_server
def test_import_time_settings_the_fork_server_lacks_mean_subprocesses() -> None:
    """A run whose processes would load torch under other thread settings than the fork server's is not forked."""
    env = dict(os.environ)
    assert ForkServer.serves({**env, "PYTHONUNBUFFERED": "1", "STAGEWARDEN_TEST_CRASH": "2:1", "RANK": "3"})
    assert not ForkServer.serves({**env, "OMP_NUM_THREADS": str(int(env.get("OMP_NUM_THREADS", "1")) + 5)})


@needs_fork_server
def test_a_forked_process_has_the_entrys_exit_codes_environment_and_log(tmp_path: Path) -> None:
    """Bad arguments exit 2 with the usage in the log; a failure exits 1 with its message in the error file."""
    env = {"PATH": os.environ.get("PATH", ""), "RANK": "1", "WORLD_SIZE": "99", "MASTER_PORT": "1", "MASTER_ADDR": "x"}
    bad = ForkServer.start(["--bogus"], env, tmp_path / "bad.log")
    assert bad.wait(60) == 2
    assert "usage: python -m stagewarden.runtime.entry" in (tmp_path / "bad.log").read_text()

    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(stages=2).to_json()))
    error = tmp_path / "rank1.error"
    argv = ["--config", str(config), "--out", str(tmp_path / "run"), "--error-file", str(error)]
    failed = ForkServer.start(argv, env, tmp_path / "rank1.log")
    assert failed.wait(60) == 1
    assert failed.poll() == 1 and failed.returncode == 1
    message = json.loads(error.read_text())["message"]
    assert "WORLD_SIZE is 99 but the configuration needs 3 processes" in message  # the environment it was given
    assert message in (tmp_path / "rank1.log").read_text()
    failed.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_fork_server
def test_a_forked_run_equals_the_subprocess_run(tmp_path: Path) -> None:
    """The same tiny run, forked and as subprocesses: the same losses and final weights (the reference's)."""
    config = tiny_config(stages=3)
    forked = launch_local(config, tmp_path / "forked", start_method="forkserver")
    plain = launch_local(config, tmp_path / "plain", start_method="subprocess")
    assert (forked.start_method, plain.start_method) == ("forkserver", "subprocess")
    for key in ("status", "steps_completed", "losses", "final_weights"):
        assert forked.summary[key] == plain.summary[key], key
    losses, digests = reference(config)
    assert forked.summary["losses"] == losses
    assert forked.summary["final_weights"]["stages"] == digests
    assert _gone(forked.pids) and _gone(plain.pids)


LAUNCHER = """
import sys

sys.path.insert(0, {here!r})
from distributed_helpers import tiny_config
from stagewarden.runtime.launch import launch_local

if __name__ == "__main__":
    launch_local(tiny_config(steps=10000), sys.argv[1], start_method="forkserver")
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_fork_server
def test_killing_the_launcher_leaves_no_process(tmp_path: Path) -> None:
    """SIGKILL to a launcher mid-run: its forked processes, the fork server and its helpers all exit."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the processes of a run needs /proc")
    marker = uuid.uuid4().hex
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER.format(here=str(HERE)), encoding="utf-8")
    run_dir = tmp_path / "run"
    env = {**os.environ, MARKER_ENV: marker, "TMPDIR": str(tmp_path)}  # its key folder stays in tmp_path
    env.pop(START_METHOD_ENV, None)
    with open(tmp_path / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(script), str(run_dir)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180.0
        while not (run_dir / "workers.json").exists():  # every process of the run is up
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        world = tiny_config().world_size
        assert len(_marked(marker)) >= 1 + world + 1  # the launcher, the run, the fork server
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30.0
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marked(marker) == [], "a process outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in _marked(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
