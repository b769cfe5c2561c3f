"""Verified checkpoints: atomic writes, digest-checked loads, torn writes, pruning."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor
from stagewarden.runtime.checkpoint import (
    MANIFEST,
    CheckpointError,
    latest_verified,
    list_steps,
    load_checkpoint,
    prune,
    save_checkpoint,
    step_dir,
)
from stagewarden.runtime.model import GPTConfig, build_stages
from stagewarden.runtime.spotcheck import export_optimizer_state
from stagewarden.runtime.units import TrainConfig, make_optimizer, optimizer_step

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)


def _states() -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict[str, torch.Tensor]]]:
    stages = build_stages(CONFIG, 2, seed=0)
    weights, optim = {}, {}
    for s in stages:
        opt = make_optimizer(s, TrainConfig())
        for p in s.parameters():
            p.grad = torch.full_like(p, 0.01)
        optimizer_step(opt)
        weights[s.index] = {k: v.clone() for k, v in s.state_dict().items()}
        optim[s.index] = export_optimizer_state(s, opt)
    return weights, optim


@pytest.fixture(scope="module")
def states() -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict[str, torch.Tensor]]]:
    return _states()


def test_round_trip_is_bitwise(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """A saved checkpoint loads back with bitwise the same weights, optimizer state and metadata."""
    weights, optim = states
    info = save_checkpoint(tmp_path, 5, weights, optim, {"run": "r1", "seed": 0})
    ckpt = load_checkpoint(tmp_path, 5)
    assert ckpt.info == info and ckpt.info.meta == {"run": "r1", "seed": 0}
    for s in weights:
        assert digest_state_dict(ckpt.stage_states[s]) == digest_state_dict(weights[s])
        assert digest_state_dict(ckpt.optimizer_states[s]) == digest_state_dict(optim[s])
        assert info.weights_digests[s] == digest_state_dict(weights[s]).hex()
    assert not [p.name for p in step_dir(tmp_path, 5).iterdir() if p.name.endswith(".tmp")]


def test_digests_the_caller_has_give_the_same_manifest(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """Tensor digests passed in (some of them) are used as they are, and the manifest is the one
    written without them; a wrong one makes a checkpoint that fails verification on load."""
    weights, optim = states
    plain = save_checkpoint(tmp_path / "plain", 1, weights, optim)
    known = {s: {"weights": {k: digest_tensor(v) for k, v in w.items()}} for s, w in weights.items()}
    known[0]["optimizer"] = {k: digest_tensor(v) for k, v in list(optim[0].items())[:3]}
    given = save_checkpoint(tmp_path / "given", 1, weights, optim, digests=known)
    assert (step_dir(tmp_path / "plain", 1) / MANIFEST).read_bytes() == (
        step_dir(tmp_path / "given", 1) / MANIFEST
    ).read_bytes()
    assert given.manifest_digest == plain.manifest_digest
    name = next(iter(weights[0]))
    wrong = {0: {"weights": {name: bytes(32)}}}
    save_checkpoint(tmp_path / "wrong", 1, weights, optim, digests=wrong)
    with pytest.raises(CheckpointError, match=f"tensor {name!r} does not match its digest"):
        load_checkpoint(tmp_path / "wrong", 1)


def test_a_tampered_file_is_detected_and_named(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """Changing one byte of a weights file raises a CheckpointError naming that file."""
    save_checkpoint(tmp_path, 1, *states)
    path = step_dir(tmp_path, 1) / "weights-1.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights-1\.pt.*does not match"):
        load_checkpoint(tmp_path, 1)


def test_a_truncated_file_is_detected_and_named(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """A truncated optimizer file raises a CheckpointError naming it."""
    save_checkpoint(tmp_path, 1, *states)
    path = step_dir(tmp_path, 1) / "optimizer-0.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"optimizer-0\.pt.*truncated"):
        load_checkpoint(tmp_path, 1)


def test_a_manifest_mismatch_is_detected(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """A manifest whose tensor digest was changed no longer verifies; neither does a missing listed file."""
    save_checkpoint(tmp_path, 2, *states)
    mpath = step_dir(tmp_path, 2) / MANIFEST
    manifest = json.loads(mpath.read_text())
    entry = manifest["files"]["weights-0.pt"]
    first = sorted(entry["tensors"])[0]
    entry["tensors"][first] = "00" * 32
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"weights-0\.pt: tensor '{first}' does not match"):
        load_checkpoint(tmp_path, 2)
    (step_dir(tmp_path, 2) / "weights-0.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path, 2)


def test_a_torn_write_is_ignored(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """A later step folder with only a leftover temporary file and no manifest is skipped by latest_verified."""
    save_checkpoint(tmp_path, 3, *states)
    torn = step_dir(tmp_path, 4)
    torn.mkdir()
    (torn / ".weights-0.pt.abc.tmp").write_bytes(b"partial")
    (step_dir(tmp_path, 3) / ".optimizer-1.pt.xyz.tmp").write_bytes(b"partial")
    assert list_steps(tmp_path) == [3]
    found = latest_verified(tmp_path)
    assert found is not None and found.info.step == 3


def test_latest_verified_skips_corrupt_and_respects_before_step(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """latest_verified returns the newest verifying checkpoint strictly before before_step, or None."""
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, *states)
    (step_dir(tmp_path, 3) / "weights-0.pt").write_bytes(b"junk")
    assert latest_verified(tmp_path).info.step == 2  # type: ignore[union-attr]
    assert latest_verified(tmp_path, before_step=2).info.step == 1  # type: ignore[union-attr]
    assert latest_verified(tmp_path, before_step=1) is None
    assert latest_verified(tmp_path / "nowhere") is None


def test_a_pickle_payload_is_never_executed(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """A file whose manifest digests match but that holds an arbitrary pickle is refused by weights_only loading."""
    save_checkpoint(tmp_path, 1, *states)
    folder = step_dir(tmp_path, 1)
    buffer = io.BytesIO()
    torch.save({"x": torch.ones(1), "obj": pickle.PickleError("x")}, buffer)
    data = buffer.getvalue()
    (folder / "weights-0.pt").write_bytes(data)
    manifest = json.loads((folder / MANIFEST).read_text())
    import blake3

    manifest["files"]["weights-0.pt"].update(bytes=len(data), blake3=blake3.blake3(data).hexdigest())
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"weights-0\.pt: cannot be read as a tensor file"):
        load_checkpoint(tmp_path, 1)


def test_prune_keeps_the_newest(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """prune keeps the N newest complete checkpoints and removes older ones and older torn folders."""
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {0: states[0][0]}, {})
    step_dir(tmp_path, 0).mkdir()
    assert prune(tmp_path, 2) == [0, 1, 2]
    assert list_steps(tmp_path) == [3, 4]
    with pytest.raises(CheckpointError, match="at least one"):
        prune(tmp_path, 0)


def test_bad_saves_are_refused(tmp_path: Path, states: tuple[dict, dict]) -> None:
    """Saving over a complete checkpoint, non-JSON metadata or non-tensor values raises a CheckpointError."""
    save_checkpoint(tmp_path, 1, *states)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tmp_path, 1, *states)
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 2, *states, meta={"x": object()})
    with pytest.raises(CheckpointError, match="tensor under a string name"):
        save_checkpoint(tmp_path, 3, {0: {"w": [1, 2]}}, {})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="no checkpoint of step 9"):
        load_checkpoint(tmp_path, 9)
