"""Fault injection on real multi-process runs (gloo on 127.0.0.1): a worker killed, stopped or
withholding, a hostile worker's crafted messages, the coordinator killed and resumed, a torn
receipt log and events file, half-written and corrupt checkpoints.

Every run that completes must end with the weights of the same training without faults (bitwise,
by digest), lose no verified step (the resumed step is the newest checkpoint written before the
fault) and pass ``stagewarden audit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.errors import ErrorCode
from stagewarden.runtime.checkpoint import step_dir
from stagewarden.runtime.launch import LaunchError, launch_local
from stagewarden.runtime.worker import HOSTILE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Liveness settings short enough for tests and long enough for a loaded 2-core machine.
FAST = dict(heartbeat_timeout=6.0, silence_timeout=12.0, timeout=60.0)


def _config(**overrides: Any) -> Any:
    return tiny_config(**{"steps": 4, **FAST, **overrides})


def _pid(run_dir: Path, role: str, stage: int | None = None) -> int:
    rows = json.loads((run_dir / "workers.json").read_text(encoding="utf-8"))["workers"]
    return next(int(r["pid"]) for r in rows if r["role"] == role and r["stage"] == stage)


def _at_step(step: int, act: Callable[[], None]) -> Callable[[dict[str, Any]], None]:
    """An ``on_event`` that runs ``act`` once, when step ``step`` has been reported."""
    done: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == step and not done:
            done.append(True)
            act()

    return on_event


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]


def verified_steps_lost(run_dir: Path) -> int:
    """For each resume: the newest checkpoint the run had written (and verified) before it was
    interrupted, minus the step it resumed from; summed over the resumes."""
    lost, newest = 0, 0
    for event in _events(run_dir):
        if event["event"] == "checkpoint":
            newest = max(newest, event["step"])
        elif event["event"] == "checkpoint_discarded":
            newest = min(newest, event["step"] - 1)
        elif event["event"] == "run_resumed":
            lost += newest - event["from_step"]
            newest = event["from_step"]
    return lost


def _check_completed(run_dir: Path, config: Any, summary: dict[str, Any]) -> None:
    assert summary["status"] == "completed"
    assert summary["steps_completed"] == config.steps
    _, digests = reference(config)
    assert summary["final_weights"]["stages"] == digests  # the same weights as training without faults
    assert verified_steps_lost(run_dir) == 0
    report = audit_run_dir(run_dir)
    assert report.clean, [f.message for f in report.errors]
    assert not (run_dir / "workers.json").exists()


def test_a_killed_worker_is_replaced_by_the_standby_and_the_run_completes(tmp_path: Path) -> None:
    config = _config(standby=1)
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def kill() -> None:
        killed.append(_pid(run_dir, "stage", 1))
        os.kill(killed[0], signal.SIGKILL)

    result = launch_local(config, run_dir, on_event=_at_step(1, kill))
    summary = result.summary
    assert killed
    [fault] = summary["faults"]
    assert (fault["worker"], fault["stage"], fault["standby"]) == ("s1r0", 1, "standby0")
    assert fault["cause"] in ("crashed", "unresponsive")
    assert summary["replacements"] == [
        {"worker": "s1r0", "by": "standby0", "stage": 1, "from_step": summary["resumes"][0]["from_step"]}
    ]
    _check_completed(run_dir, config, summary)


def test_without_a_standby_the_run_stops_resumable_and_resumes(tmp_path: Path) -> None:
    config = _config(standby=0)
    run_dir = tmp_path / "run"

    def kill() -> None:
        os.kill(_pid(run_dir, "stage", 0), signal.SIGKILL)

    with pytest.raises(LaunchError) as caught:
        launch_local(config, run_dir, on_event=_at_step(1, kill))
    assert caught.value.resumable
    assert "no standby" in str(caught.value) and "--resume" in str(caught.value)
    stopped = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert stopped["status"] == "interrupted"
    assert stopped["pending_fault"]["worker"] == "s0r0" and stopped["pending_fault"]["standby"] is None
    interrupted = audit_run_dir(run_dir)  # no final head yet: the record cannot be shown complete
    assert not interrupted.sealed and ErrorCode.RECORD_UNSEALED in {f.code for f in interrupted.errors}
    assert interrupted.step_heads >= 1
    result = launch_local(config, run_dir, resume=True)
    assert result.summary["resumes"][0]["fault"]["worker"] == "s0r0"
    assert result.summary["pending_fault"] is None
    _check_completed(run_dir, config, result.summary)
    resumed = audit_run_dir(run_dir)  # the resumed session's heads go on numbering the first's
    assert resumed.sealed and resumed.step_heads > interrupted.step_heads


def test_a_stopped_worker_is_declared_unresponsive(tmp_path: Path) -> None:
    config = _config(standby=1, stages=3)
    run_dir = tmp_path / "run"
    stopped: list[int] = []

    def stop() -> None:
        stopped.append(_pid(run_dir, "stage", 1))
        os.kill(stopped[0], signal.SIGSTOP)

    try:
        result = launch_local(config, run_dir, on_event=_at_step(1, stop))
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    [fault] = result.summary["faults"]
    assert (fault["worker"], fault["cause"]) == ("s1r0", "unresponsive")
    _check_completed(run_dir, config, result.summary)


def test_a_withholding_worker_is_found_by_the_chain_of_waits(tmp_path: Path) -> None:
    """Stage 1 of 3 stays alive (heartbeats on) and sends nothing from step 2 on; its neighbours
    wait on it, it waits on nobody: it is the one blamed, and the standby takes its stage."""
    attack = {"kind": "withhold", "stages": [1], "start": 2}
    config = _config(standby=1, stages=3, attack=attack)
    result = launch_local(config, tmp_path / "run")
    [fault] = result.summary["faults"]
    assert (fault["worker"], fault["cause"], fault["step"]) == ("s1r0", "withholding", 2)
    _check_completed(tmp_path / "run", config, result.summary)


@pytest.mark.parametrize(
    "kind",
    ["garbage", "oversize", "negative", "wrong_type", "bad_receipt", "forged_receipt", "forged_root", "root_mismatch"],
)
def test_a_crafted_message_is_blamed_on_its_sender_and_never_crashes_the_coordinator(tmp_path: Path, kind: str) -> None:
    """Without a standby the run stops at the fault, resumable, with the sender named and the
    reason recorded (the coordinator exits with the resumable code, not a crash)."""
    run_dir = tmp_path / "run"
    with pytest.raises(LaunchError) as caught:
        launch_local(_config(standby=0, steps=3), run_dir, env={HOSTILE_ENV: f"1:1:{kind}"})
    assert caught.value.resumable
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    [fault] = summary["faults"]
    assert (fault["worker"], fault["stage"], fault["cause"], fault["step"]) == ("s1r0", 1, "malformed", 1)
    assert fault["reason"].startswith("rank 2 sent a malformed message")
    if kind in ("forged_root", "root_mismatch"):  # one signature stands for the step: it must be the worker's
        assert "step root" in fault["reason"]
    assert summary["status"] == "interrupted"


def test_a_worker_sending_garbage_is_ejected_and_the_standby_completes_the_run(tmp_path: Path) -> None:
    config = _config(standby=1, steps=3)
    result = launch_local(config, tmp_path / "run", env={HOSTILE_ENV: "1:1:garbage"})
    [fault] = result.summary["faults"]
    assert (fault["worker"], fault["cause"], fault["standby"]) == ("s1r0", "malformed", "standby0")
    assert "not valid JSON" in fault["reason"]
    _check_completed(tmp_path / "run", config, result.summary)


def test_the_coordinator_killed_and_its_files_torn_is_resumed(tmp_path: Path) -> None:
    """The coordinator dies mid-run; then its receipt log gets a torn final record, events.jsonl a
    partial line, the newest checkpoint is corrupted and a later one is half-written. The resumed
    run repairs the log and the events, skips both checkpoints and completes. Every checkpoint is
    kept, so that the half-written one is still there to be found rewritten whatever step the
    kill lands on."""
    config = _config(standby=0, steps=5, keep_checkpoints=0)
    run_dir = tmp_path / "run"

    def kill() -> None:
        os.kill(_pid(run_dir, "coordinator"), signal.SIGKILL)

    with pytest.raises(LaunchError) as caught:
        launch_local(config, run_dir, on_event=_at_step(2, kill))
    assert caught.value.resumable
    written = sorted(e["step"] for e in _events(run_dir) if e["event"] == "checkpoint")
    newest = written[-1]
    with open(run_dir / "receipts.log", "ab") as log:
        log.write(b"\x40\x00\x00\x00\x01" + b"\x07" * 20)  # a record cut off in mid-write
    with open(run_dir / "events.jsonl", "ab") as events:
        events.write(b'{"event": "step", "step": 9')
    victim = step_dir(run_dir / "checkpoints", newest) / "weights-0.pt"
    victim.write_bytes(victim.read_bytes()[:-7] + b"corrupt")
    half = step_dir(run_dir / "checkpoints", newest + 1)
    half.mkdir(parents=True, exist_ok=True)
    (half / "weights-0.pt").write_bytes(b"half a file")

    result = launch_local(config, run_dir, resume=True)
    resumed = result.summary["resumes"][0]
    assert resumed["from_step"] == written[-2]  # the corrupt checkpoint costs its step, nothing more
    repairs = " ".join(resumed["repairs"])
    assert "torn final record" in repairs and "partial final line" in repairs
    assert f"step {newest}" in repairs and f"step {newest + 1}" in repairs
    assert (half / "manifest.json").is_file()  # written anew, whole, by the resumed run
    summary = result.summary
    assert summary["status"] == "completed"
    _, digests = reference(config)
    assert summary["final_weights"]["stages"] == digests
    report = audit_run_dir(run_dir)
    assert report.clean, [f.message for f in report.errors]
