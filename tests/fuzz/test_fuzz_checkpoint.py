"""Fuzzing checkpoint folders (``runtime/checkpoint.py``: ``read_manifest``, ``load_checkpoint`` and
``latest_verified``, which the coordinator relies on to return to a verified state).

A real checkpoint of a few small tensors is written once; each example copies it and edits it:
the manifest as a document or as bytes, a tensor file's bytes, files swapped, removed or replaced
by a folder, a tensor file rewritten with its manifest entry's file digest updated to match (so
that ``torch.load`` itself reads the edited bytes). Properties: a checkpoint loads or raises
CheckpointError; with its manifest unchanged, one that loads holds exactly the tensors saved (no
edit of a tensor file goes unnoticed); ``latest_verified`` never raises. Inputs that once let a
non-domain exception escape are kept as regression tests at the end of the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch
from fuzzing import FOLDER_SECONDS, mutated_json_text, outcome
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.runtime.checkpoint import (
    MANIFEST,
    CheckpointError,
    latest_verified,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    step_dir,
)

STEP = 3
WEIGHTS = {0: {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}, 1: {"w": torch.ones(4)}}
OPTIMIZER = {0: {"exp_avg.w": torch.full((2, 3), 0.5)}, 1: {}}
FILES = ["weights-0.pt", "weights-1.pt", "optimizer-0.pt", "optimizer-1.pt"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a checkpoint of step 3 (root of the checkpoints)."""
    root = tmp_path_factory.mktemp("checkpoint") / "saved"
    save_checkpoint(root, STEP, WEIGHTS, OPTIMIZER, meta={"run_id": "run-1", "seed": 0})
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoint-fuzz")


_MANIFEST_VALUES = st.one_of(
    json_values,
    st.sampled_from(["weights", "optimizer", "stagewarden-checkpoint", STEP, 0, 1, {}, "00" * 32]),
    st.sampled_from(["weights-0.pt", "weights-٠.pt", "weights-0.pt\n", "optimizer-9.pt", "../weights-0.pt"]),
)


@st.composite
def edits(draw: st.DrawFn, saved: Path) -> tuple[str, str, Any]:
    """(edit, file, argument) of one edit of the checkpoint folder."""
    folder = step_dir(saved, STEP)
    manifest_text = (folder / MANIFEST).read_bytes()
    edit = draw(st.sampled_from(["manifest_tree", "manifest_bytes", "file_bytes", "swap", "remove", "folder", "forge"]))
    name = draw(st.sampled_from([MANIFEST, *FILES]))
    if edit == "manifest_tree":
        return edit, MANIFEST, draw(mutated_tree(json.loads(manifest_text), values=_MANIFEST_VALUES))
    if edit == "manifest_bytes":
        return edit, MANIFEST, draw(st.one_of(mutated_bytes(manifest_text), mutated_json_text(manifest_text)))
    if edit in ("file_bytes", "forge"):
        tensor_file = draw(st.sampled_from(FILES))
        return edit, tensor_file, draw(mutated_bytes((folder / tensor_file).read_bytes(), max_ops=3))
    if edit == "swap":
        return edit, name, draw(st.sampled_from([MANIFEST, *FILES]))
    return edit, name, None


def _apply(folder: Path, edit: str, name: str, argument: Any) -> None:
    target = folder / name
    if edit == "manifest_tree":
        target.write_text(json.dumps(argument, indent=2))
    elif edit in ("manifest_bytes", "file_bytes"):
        target.write_bytes(argument)
    elif edit == "forge":  # rewrite the file and make the manifest's file digest and size match it
        target.write_bytes(argument)
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["files"][name].update(bytes=len(argument), blake3=blake3.blake3(argument).hexdigest())
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    elif edit == "swap":
        other = folder / argument
        a, b = target.read_bytes(), other.read_bytes()
        target.write_bytes(b)
        other.write_bytes(a)
    elif edit == "remove":
        target.unlink()
    elif edit == "folder":
        target.unlink()
        target.mkdir()


@fuzz_settings(0.5)
@given(st.data())
@example(None).via("a folder where a tensor file should be")
def test_edited_checkpoints(saved: Path, workdir: Path, data: st.DataObject | None) -> None:
    """An edited checkpoint loads or raises CheckpointError; with the manifest untouched, one that
    loads holds exactly the saved tensors; the newest verified checkpoint is found without raising."""
    edit, name, argument = data.draw(edits(saved)) if data is not None else ("folder", "weights-1.pt", None)
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(saved, root)
    folder = step_dir(root, STEP)
    _apply(folder, edit, name, argument)
    original_manifest = (step_dir(saved, STEP) / MANIFEST).read_bytes()
    read, error = outcome(read_manifest, root, STEP, errors=CheckpointError)
    loaded, load_error = outcome(load_checkpoint, root, STEP, errors=CheckpointError, limit=FOLDER_SECONDS)
    latest, _ = outcome(latest_verified, root, errors=(), limit=FOLDER_SECONDS)
    if error is not None:
        assert load_error is not None and str(error).startswith(str(folder / MANIFEST))
    else:
        assert read is not None and read[1] == (folder / MANIFEST).read_bytes()
    if loaded is None:
        assert isinstance(load_error, CheckpointError) and str(load_error) and latest is None
        return
    assert latest is not None and latest.info.step == loaded.info.step == STEP
    if (folder / MANIFEST).read_bytes() == original_manifest:
        for saved_states, loaded_states in ((WEIGHTS, loaded.stage_states), (OPTIMIZER, loaded.optimizer_states)):
            assert saved_states.keys() == loaded_states.keys()
            for stage, state in saved_states.items():
                assert state.keys() == loaded_states[stage].keys()
                assert all(torch.equal(state[k], loaded_states[stage][k]) for k in state)


# -- regressions: inputs that once let a non-domain exception escape -------------------------------


def _manifest(saved: Path, root: Path, text: str) -> None:
    shutil.copytree(saved, root)
    (step_dir(root, STEP) / MANIFEST).write_text(text)


def test_deeply_nested_manifest(saved: Path, tmp_path: Path) -> None:
    """Nesting past the recursion limit: CheckpointError, not RecursionError."""
    _manifest(saved, tmp_path / "root", "[" * 100_000)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(tmp_path / "root", STEP)


def test_integer_past_the_digit_limit(saved: Path, tmp_path: Path) -> None:
    """An integer longer than Python's 4300-digit limit: CheckpointError, not ValueError."""
    _manifest(saved, tmp_path / "root", '{"step": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_manifest(tmp_path / "root", STEP)


def test_folder_in_place_of_a_tensor_file(saved: Path, tmp_path: Path) -> None:
    """A folder where a tensor file should be: CheckpointError, not IsADirectoryError."""
    shutil.copytree(saved, tmp_path / "root")
    target = step_dir(tmp_path / "root", STEP) / "weights-0.pt"
    target.unlink()
    target.mkdir()
    with pytest.raises(CheckpointError, match="weights-0.pt: cannot be read"):
        load_checkpoint(tmp_path / "root", STEP)
    assert latest_verified(tmp_path / "root") is None


def test_folder_in_place_of_the_manifest(saved: Path, tmp_path: Path) -> None:
    """A folder where the manifest should be: CheckpointError, not IsADirectoryError."""
    shutil.copytree(saved, tmp_path / "root")
    target = step_dir(tmp_path / "root", STEP) / MANIFEST
    target.unlink()
    target.mkdir()
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_manifest(tmp_path / "root", STEP)


@pytest.mark.parametrize(
    "name",
    ["weights-\u0660.pt", "weights-\uff10.pt", "weights-" + "9" * 10 + ".pt", "weights-" + "9" * 5000 + ".pt"],
    ids=["arabic-indic-digit", "fullwidth-digit", "ten-digits", "past-the-digit-limit"],
)
def test_tensor_file_name_not_ascii_or_too_long(saved: Path, tmp_path: Path, name: str) -> None:
    """A manifest entry whose stage is not 1 to 9 ASCII digits is a malformed entry (``int()``
    would read a non-ASCII digit as a stage, and raise ValueError on one past the digit limit)."""
    root = tmp_path / "root"
    shutil.copytree(saved, root)
    path = step_dir(root, STEP) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][name] = manifest["files"].pop("weights-0.pt")
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(CheckpointError, match="malformed entry for file"):
        read_manifest(root, STEP)
    with pytest.raises(CheckpointError, match="malformed entry for file"):
        load_checkpoint(root, STEP)
