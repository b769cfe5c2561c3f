"""Checkpoint retention: a run keeps its newest verified checkpoints (and step 0's) and deletes the
others as it goes, manifest first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed_helpers import tiny_config

from stagewarden.runtime.checkpoint import MANIFEST, delete_checkpoint, list_steps, retired_checkpoints, step_dir
from stagewarden.runtime.config import ConfigError
from stagewarden.runtime.launch import launch_local


def test_retired_checkpoints_keep_the_newest_and_step_0() -> None:
    """keep=2 retires all but the two newest and step 0; keep=0 retires nothing."""
    assert retired_checkpoints([0, 1, 2, 3, 4], 2) == [1, 2]
    assert retired_checkpoints([0, 5], 1) == []
    assert retired_checkpoints([3, 4, 5], 1) == [3, 4]
    assert retired_checkpoints([0, 1, 2, 3], 0) == []
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        tiny_config(keep_checkpoints=-1)


def test_a_deleted_checkpoint_never_reads_as_complete(tmp_path: Path) -> None:
    """The manifest goes first: a delete stopped after it leaves a folder list_steps ignores."""
    folder = step_dir(tmp_path, 3)
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text("{}")
    (folder / "stage0.weights").write_bytes(b"x")
    assert list_steps(tmp_path) == [3]
    (folder / MANIFEST).unlink()  # as if the delete stopped here
    assert list_steps(tmp_path) == [] and list_steps(tmp_path, complete=False) == [3]
    delete_checkpoint(tmp_path, 3)
    assert not folder.exists()


def test_a_run_prunes_its_checkpoints_as_it_goes(tmp_path: Path) -> None:
    """5 steps with a checkpoint after each and keep_checkpoints 2: only steps 0, 3 and 4 stay on
    disk and in the summary; every pruned one is an event; the run resumes from the newest."""
    run = tmp_path / "run"
    summary = launch_local(tiny_config(steps=5, keep_checkpoints=2), run).summary
    assert summary["status"] == "completed"
    assert summary["checkpoints"] == [0, 3, 4]
    assert list_steps(run / "checkpoints", complete=False) == [0, 3, 4]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "checkpoint_pruned"] == [1, 2]
