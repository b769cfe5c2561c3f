"""Ctrl-C during ``stagewarden train``: the run directory's ``summary.json`` says ``interrupted``
with the step reached, never ``running``, and the file is replaced whole (never half written)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import sigint_default

from stagewarden.runtime.launch import mark_interrupted

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "stagewarden" / "runtime" / "model.py")
TINY = ["--n-layer", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--data", DATA]


def _summary(run: Path) -> dict[str, object]:
    return dict(json.loads((run / "summary.json").read_text(encoding="utf-8")))


def _recorded(status: str) -> dict[str, object]:
    """A real run's summary (5 steps completed) with ``status``."""
    data = json.loads((ROOT / "docs" / "report-example" / "clean" / "summary.json").read_text(encoding="utf-8"))
    data["status"] = status
    return dict(data)


def test_mark_interrupted_rewrites_a_running_summary(tmp_path: Path) -> None:
    """A summary left at ``running`` becomes ``interrupted`` at its completed step; nothing else
    changes and no temporary file is left beside it."""
    summary = _recorded("running")
    (tmp_path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert mark_interrupted(tmp_path) == 5
    after = _summary(tmp_path)
    assert after["status"] == "interrupted" and after["interrupted_at_step"] == 5
    assert {k: v for k, v in after.items() if k not in ("status", "interrupted_at_step")} == {
        k: v for k, v in summary.items() if k != "status"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("status", ["completed", "stopped", "failed", "refused"])
def test_mark_interrupted_keeps_an_ended_run(tmp_path: Path, status: str) -> None:
    """A run that had already ended when Ctrl-C came keeps its own status."""
    (tmp_path / "summary.json").write_text(json.dumps(_recorded(status)), encoding="utf-8")
    assert mark_interrupted(tmp_path) == 5
    assert _summary(tmp_path)["status"] == status


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_mark_interrupted_without_a_readable_summary(tmp_path: Path, content: str | None) -> None:
    """No summary, a torn one or one that is not an object: nothing is written, no step is claimed."""
    if content is not None:
        (tmp_path / "summary.json").write_text(content, encoding="utf-8")
    assert mark_interrupted(tmp_path) is None
    if content is not None:
        assert (tmp_path / "summary.json").read_text(encoding="utf-8") == content


@pytest.mark.slow
def test_ctrl_c_during_train_leaves_an_interrupted_summary(tmp_path: Path) -> None:
    """SIGINT to a training ``stagewarden train`` (what Ctrl-C sends the terminal's foreground
    process; the run's workers are in a session of their own) exits 130, and summary.json says
    ``interrupted`` at a step the run really completed."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "stagewarden.cli", "train", "--steps", "400", *TINY, "--out", str(run)]
    command = [sys.executable, "-c", "from stagewarden.cli import main; main()", *command[3:]]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=sigint_default,  # noqa: PLW1509 - a test's process, no threads to race
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if int(str(_summary(run).get("steps_completed", 0))) >= 2:
                    break
            except (OSError, ValueError):
                pass
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the run did not complete two steps in 180 s")
        os.kill(process.pid, signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    summary = _summary(run)
    assert summary["status"] == "interrupted"
    reached = summary["interrupted_at_step"]
    assert isinstance(reached, int) and 2 <= reached < 400
    assert reached == summary["steps_completed"] == len(summary["losses"])  # type: ignore[arg-type]
    assert f"the run was interrupted at step {reached}" in err
    assert "Traceback" not in err
