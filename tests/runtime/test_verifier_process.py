"""The attestation verifier as a process of its own, in real local runs: its key stays in its own
folder (never under RUN_DIR or RUN_DIR.keys, after a completed or a stopped run), the workers are
not told where that folder is, no verifier process outlives the run (completed, coordinator
killed, Ctrl-C), a resumed run keeps the verifier's key, and a verifier that cannot start, is gone
or speaks garbage stops admission with one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import tiny_config

from stagewarden.attest.verifier_keys import VERIFIER_DIR_ENV, VERIFIER_KEY_FILE
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local
from stagewarden.runtime.worker.hooks import CRASH_ENV, STEP_DELAY_ENV

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")


def _verifier_pids(marker: str) -> set[int]:
    """The live verifier processes whose command line names ``marker`` (the test's key folder)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "stat").read_text()
            if b"stagewarden.runtime.verifier_process" in argv and marker.encode() in b" ".join(argv):
                if status.split(")")[-1].split()[0] != "Z":
                    found.add(int(entry.name))
                    FOLDERS[int(entry.name)] = str(Path(argv[argv.index(b"--socket") + 1].decode()).parent)
    return found


def _gone(pids: set[int], marker: str, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _verifier_pids(marker) and not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.1)
    return False


def _socket_folders(pids: set[int]) -> list[Path]:
    """The socket folders the verifier processes ``pids`` were started with (recorded while they ran)."""
    return [Path(FOLDERS[pid]) for pid in pids if pid in FOLDERS]


#: Verifier process id -> the folder of its socket, as its command line said.
FOLDERS: dict[int, str] = {}


class _Watch:
    """An ``on_event`` callback that, once the workers are admitted, records the verifier processes
    and what each worker process was given (command line, environment, configuration file)."""

    def __init__(self, run: Path, marker: str, then: str | None = None) -> None:
        self.run, self.marker, self.then = run, marker, then
        self.verifiers: set[int] = set()
        self.given: dict[int, bytes] = {}
        self.coordinator: int | None = None
        self.seen = False

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") != "step" or self.seen:
            return
        self.seen = True
        self.verifiers |= _verifier_pids(self.marker)
        listed = json.loads((self.run / "workers.json").read_text())["workers"]
        for row in listed:
            if row["role"] == "coordinator":
                self.coordinator = row["pid"]
                continue
            proc = Path(f"/proc/{row['pid']}")
            if self.then is not None:
                continue  # forked processes: their /proc command line is the fork server's
            argv = (proc / "cmdline").read_bytes()
            config = argv.split(b"\0")[argv.split(b"\0").index(b"--config") + 1]
            self.given[row["pid"]] = argv + (proc / "environ").read_bytes() + Path(config.decode()).read_bytes()
        if self.then == "kill-coordinator" and self.coordinator is not None:
            with contextlib.suppress(ProcessLookupError):  # a launcher starved of CPU may see the event late
                os.kill(self.coordinator, signal.SIGKILL)
        if self.then == "interrupt":
            raise KeyboardInterrupt


def _private_files(run: Path) -> list[Path]:
    keys = run.parent / f"{run.name}.keys"
    return [p for base in (run, keys) if base.exists() for p in base.rglob("*") if p.is_file()]


def _assert_no_verifier_secret(run: Path, verifier_dir: Path) -> None:
    seed_hex = (verifier_dir / VERIFIER_KEY_FILE).read_text().strip()
    seed = bytes.fromhex(seed_hex)
    for path in _private_files(run):
        data = path.read_bytes()
        assert path.name != VERIFIER_KEY_FILE, path
        assert seed_hex.encode() not in data and seed not in data, f"{path} holds the verifier's private key"
    assert (run / "attestation" / "verifier.pub").read_text() == (verifier_dir / "verifier.pub").read_text()


@pytest.fixture
def verifier_dir(tmp_path: Path) -> Path:
    return tmp_path / f"vkeys-{os.urandom(4).hex()}"


def test_completed_run_keeps_no_verifier_key_and_workers_never_learn_its_folder(
    tmp_path: Path, verifier_dir: Path
) -> None:
    """A completed run: the verifier's seed is nowhere under RUN_DIR or RUN_DIR.keys (which is
    gone), the run publishes only its public key; no worker's command line, environment or
    configuration names the key folder; the verifier process has ended."""
    run = tmp_path / "run"
    watch = _Watch(run, str(verifier_dir))
    result = launch_local(
        tiny_config(steps=2),
        run,
        verifier_dir=verifier_dir,
        on_event=watch,
        start_method="subprocess",
        env={VERIFIER_DIR_ENV: str(verifier_dir)},  # the folder named both ways: neither reaches a worker
    )
    assert result.summary["status"] == "completed"
    assert watch.verifiers and len(watch.given) == 2
    for pid, given in watch.given.items():
        assert str(verifier_dir).encode() not in given, f"worker {pid} was told the verifier's key folder"
        assert b"verifier.key" not in given
    _assert_no_verifier_secret(run, verifier_dir)
    assert not (tmp_path / "run.keys").exists()
    assert _gone(watch.verifiers, str(verifier_dir))


def test_stopped_run_keeps_no_verifier_key(tmp_path: Path, verifier_dir: Path) -> None:
    """A stopped run (stage 0 tampers, no honest path): RUN_DIR.keys stays for a resume, with the
    coordinator's key only; the verifier's key is in neither folder."""
    plan = AttackPlan.from_cli("reverse", "0", 1.0, 1).to_json()
    config = tiny_config(microbatches=1, steps=2, attack=plan, verification="spot_check", spot_check_rate=1.0)
    run = tmp_path / "run"
    result = launch_local(config, run, verifier_dir=verifier_dir)
    assert result.summary["status"] == "stopped"
    assert sorted(p.name for p in (tmp_path / "run.keys").iterdir()) == ["coordinator.key"]
    _assert_no_verifier_secret(run, verifier_dir)
    assert _gone(set(), str(verifier_dir))


def test_killed_coordinator_leaves_no_verifier_running(tmp_path: Path, verifier_dir: Path) -> None:
    """The coordinator is killed (SIGKILL) mid-run: its verifier process ends too."""
    run = tmp_path / "run"
    watch = _Watch(run, str(verifier_dir), then="kill-coordinator")
    with pytest.raises(LaunchError):
        launch_local(tiny_config(steps=6), run, verifier_dir=verifier_dir, on_event=watch, env={STEP_DELAY_ENV: "0.3"})
    assert watch.verifiers and watch.coordinator is not None, (watch.verifiers, watch.coordinator)
    assert _gone(watch.verifiers, str(verifier_dir)), f"verifiers still running: {_verifier_pids(str(verifier_dir))}"
    left = [(p, sorted(q.name for q in p.iterdir())) for p in _socket_folders(watch.verifiers) if p.exists()]
    assert not left, f"the verifier left its folder behind: {left}"


def test_interrupted_run_leaves_no_verifier_running(tmp_path: Path, verifier_dir: Path) -> None:
    """Ctrl-C during the run: every process stops, the verifier too."""
    run = tmp_path / "run"
    watch = _Watch(run, str(verifier_dir), then="interrupt")
    with pytest.raises(LaunchInterrupted):
        launch_local(tiny_config(steps=6), run, verifier_dir=verifier_dir, on_event=watch, env={STEP_DELAY_ENV: "0.3"})
    assert watch.verifiers
    assert _gone(watch.verifiers, str(verifier_dir))


def test_resume_needs_the_verifier_key_the_run_began_with(tmp_path: Path, verifier_dir: Path) -> None:
    """A worker crashes (no standby): the run is resumable. Resumed with a verifier of another key
    folder, admission is refused in one line naming the key; with the run's own folder it
    completes, every result verifying under the one key."""
    run = tmp_path / "run"
    config = tiny_config(steps=3)
    with pytest.raises(LaunchError) as crashed:
        launch_local(config, run, verifier_dir=verifier_dir, env={CRASH_ENV: "1:1"})
    assert crashed.value.resumable
    other = tmp_path / "other-keys"
    with pytest.raises(LaunchError) as refused:
        launch_local(config, run, verifier_dir=other, resume=True)
    message = str(refused.value)
    assert "is not the key" in message and "the verifier (its key folder) the run began with" in message
    assert "\n" not in message and "Traceback" not in message
    result = launch_local(config, run, verifier_dir=verifier_dir, resume=True)
    assert result.summary["status"] == "completed"
    _assert_no_verifier_secret(run, verifier_dir)
    from stagewarden.attest.audit import audit_run_dir

    key = bytes.fromhex((verifier_dir / "verifier.pub").read_text().strip())
    report = audit_run_dir(run, key, coordinator_key=bytes.fromhex((run / "coordinator.pub").read_text().strip()))
    assert report.clean, [(f.code, f.message) for f in report.errors]


def test_key_folder_open_to_others_stops_the_run_in_one_line(tmp_path: Path, verifier_dir: Path) -> None:
    """A key folder with group permissions: the verifier refuses to start, and the run fails with
    that reason in one line; no verifier is left."""
    verifier_dir.mkdir(mode=0o750)
    os.chmod(verifier_dir, 0o750)
    with pytest.raises(LaunchError) as failed:
        launch_local(tiny_config(), tmp_path / "run", verifier_dir=verifier_dir)
    message = str(failed.value)
    assert "group or others may use it" in message and "\n" not in message and "Traceback" not in message
    assert not (verifier_dir / VERIFIER_KEY_FILE).exists()
    assert _gone(set(), str(verifier_dir))


@contextlib.contextmanager
def _garbage_verifier() -> Iterator[Path]:
    """A Unix socket whose server answers every request with bytes that are not a reply."""
    folder = Path(tempfile.mkdtemp(prefix="sw-garbage-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "v.sock"))
    listener.listen(8)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1 << 16)
                    conn.sendall(struct.pack(">I", 9) + b"\x80\x04garbage")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield folder / "v.sock"
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_garbage_or_absent_verifier_stops_admission_in_one_line(tmp_path: Path) -> None:
    """``--verifier SOCKET`` naming a verifier that answers garbage, or nothing listening: the run
    fails at admission with one line that names the verifier, within seconds."""
    with _garbage_verifier() as path:
        with pytest.raises(LaunchError) as garbage:
            launch_local(tiny_config(), tmp_path / "run1", verifier=path, timeout=120)
    message = str(garbage.value)
    assert f"the attestation verifier at {path} broke the protocol" in message
    assert "\n" not in message and "Traceback" not in message
    started = time.monotonic()
    with pytest.raises(LaunchError) as absent:
        launch_local(tiny_config(), tmp_path / "run2", verifier=tmp_path / "nobody.sock", timeout=120)
    assert "is not listening within 10 s" in str(absent.value) and "\n" not in str(absent.value)
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_verifier_is_non_dumpable_before_it_reads_its_key(tmp_path: Path) -> None:
    """What the verifier process runs (build_service), in a forked child: the process is already
    non-dumpable when the key is loaded, and stays so."""
    from stagewarden.attest.vendor import init_vendor
    from stagewarden.attest.verifier_keys import is_dumpable, load_verifier_key
    from stagewarden.runtime import verifier_process

    init_vendor(tmp_path / "vendor")
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_config().to_json()))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports (dumpable when the key was read, dumpable after) and exits
        code = 1
        try:
            os.close(read)
            seen: list[bool] = []
            original = load_verifier_key

            def spying(folder: Path, create: bool = True) -> Any:
                seen.append(is_dumpable())
                return original(folder, create)

            setattr(verifier_process, "load_verifier_key", spying)  # noqa: B010 - the name the process looks up
            verifier_process.build_service(config, tmp_path / "keys", tmp_path / "vendor")
            os.write(write, bytes([len(seen), *seen, is_dumpable()]))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    report = os.read(read, 8)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == bytes([1, False, False])


def test_a_verifier_gone_mid_run_stops_the_run_cleanly_at_renewal(tmp_path: Path, verifier_dir: Path) -> None:
    """Results valid for 2 s, so workers are re-attested every few steps; the verifier process is
    killed after step 1: the next renewal cannot reach it, and the run stops (``stopped``, sealed,
    resumable) with a reason naming the verifier, not a traceback or a worker's fault."""
    run = tmp_path / "run"
    killed: list[int] = []

    def kill_verifier(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == 1 and not killed:
            for pid in _verifier_pids(str(verifier_dir)):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    config = tiny_config(steps=30, result_lifetime=2)
    result = launch_local(
        config, run, verifier_dir=verifier_dir, on_event=kill_verifier, env={STEP_DELAY_ENV: "0.1"}, max_restarts=0
    )
    assert killed
    summary = result.summary
    assert summary["status"] == "stopped" and len(summary["losses"]) < 30
    assert summary["stop_reason"].startswith("workers cannot be re-attested: the attestation verifier at ")
    assert "\n" not in summary["stop_reason"] and not summary["faults"]


def test_the_socket_folder_leaves_a_deep_temporary_folder_for_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket path under a deep TMPDIR would pass the Unix limit (the run then could not reach
    its verifier): the private socket folder is made in /tmp instead; a short TMPDIR is kept."""
    from stagewarden.runtime import verifier_process

    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    assert verifier_process._socket_parent() == "/tmp"
    short = Path("/tmp") / "swv"
    short.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    assert verifier_process._socket_parent() == str(short)
