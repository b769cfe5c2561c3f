"""Verified checkpoints: every stage's weights and optimizer state, written crash-safely, read back checked.

A checkpoint of step ``t`` is a folder ``step-<t, 9 digits>`` holding one file per stage and kind
(``weights-<s>.pt``, ``optimizer-<s>.pt``, each a flat dict of tensors written by ``torch.save``)
and ``manifest.json``. Each file is written to a temporary file, fsynced and renamed; the
manifest, which holds the BLAKE3 digest of every file's bytes and of every tensor
(:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of each file,
:func:`~stagewarden.attest.tensor_digest.digest_tensor` of each tensor), is written the same
way and last. A folder without a manifest is an interrupted write and is ignored. Reading checks
the file digest before ``torch.load(..., weights_only=True)`` (nothing is unpickled) and every
tensor digest after.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import blake3
import torch

from stagewarden.attest.files import atomic_write_bytes, atomic_write_text
from stagewarden.attest.tensor_digest import digest_tensor, weights_digest

FORMAT = "stagewarden-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step-(\d{9,18})$", re.ASCII)
_FILE_RE = re.compile(r"^(weights|optimizer)-(\d{1,9})\.pt$", re.ASCII)

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or trusted: the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What the manifest of one checkpoint says.

    Attributes:
        step: Training steps completed when the checkpoint was taken (the weights before step ``step``).
        path: The checkpoint folder.
        weights_digests: Stage index to the hex
            :func:`~stagewarden.attest.tensor_digest.digest_state_dict` of its weights.
        manifest_digest: Hex BLAKE3 digest of the manifest file's bytes.
        meta: The JSON metadata given at save time.
    """

    step: int
    path: Path
    weights_digests: dict[int, str]
    manifest_digest: str
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded and verified checkpoint.

    Attributes:
        info: The manifest's summary.
        stage_states: Stage index to its weights.
        optimizer_states: Stage index to its flat optimizer state
            (:func:`stagewarden.runtime.reexecute.export_optimizer_state`).
    """

    info: CheckpointInfo
    stage_states: dict[int, StateDict]
    optimizer_states: dict[int, StateDict]


def step_dir(root: str | os.PathLike[str], step: int) -> Path:
    """The folder of the checkpoint of ``step`` under ``root``."""
    return Path(root) / f"step-{step:09d}"


def _check_state(state: Mapping[str, Any], what: str) -> None:
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: every entry must be a tensor under a string name, got {name!r}")


def _encode(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    stage_states: Mapping[int, Mapping[str, torch.Tensor]],
    optimizer_states: Mapping[int, Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any] | None = None,
    digests: Mapping[int, Mapping[str, Mapping[str, bytes]]] | None = None,
) -> CheckpointInfo:
    """Write a checkpoint of ``step`` atomically: the tensor files, then the manifest.

    Args:
        root: The checkpoint folder of the run; created if missing.
        step: Training steps completed.
        stage_states: Stage index to its weights (a state dict).
        optimizer_states: Stage index to its flat optimizer state (may be empty dicts).
        meta: JSON-serialisable metadata (run id, seed, config, ...).
        digests: Tensor digests (:func:`~stagewarden.attest.tensor_digest.digest_tensor`) the
            caller already has, by stage, kind (``weights``, ``optimizer``) and name; a tensor
            without one is digested here. The caller vouches for them (the coordinator computed
            them as it received the tensors); :func:`load_checkpoint` digests every tensor again.

    Raises:
        CheckpointError: A state is not a dict of tensors, the metadata is not JSON, or a
            complete checkpoint of this step already exists.
    """
    if step < 0:
        raise CheckpointError(f"a checkpoint step must be >= 0, got {step}")
    meta_dict = dict(meta or {})
    try:
        json.dumps(meta_dict, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {error}") from None
    folder = step_dir(root, step)
    if (folder / MANIFEST).exists():
        raise CheckpointError(f"{folder / MANIFEST}: a checkpoint of step {step} already exists")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for kind, states in (("weights", stage_states), ("optimizer", optimizer_states)):
        for stage, state in sorted(states.items()):
            name = f"{kind}-{int(stage)}.pt"
            _check_state(state, str(folder / name))
            data = _encode(state)
            atomic_write_bytes(folder / name, data)
            given = (digests or {}).get(stage, {}).get(kind, {})
            tensors = {k: given.get(k) or digest_tensor(v) for k, v in sorted(state.items())}
            files[name] = {
                "kind": kind,
                "stage": int(stage),
                "bytes": len(data),
                "blake3": blake3.blake3(data).hexdigest(),
                "digest": weights_digest(tensors).hex(),
                "tensors": {k: d.hex() for k, d in tensors.items()},
            }
    manifest = {"format": FORMAT, "version": VERSION, "step": step, "meta": meta_dict, "files": files}
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(folder / MANIFEST, text)
    return _info(folder, manifest, text.encode("utf-8"))


def _info(folder: Path, manifest: Mapping[str, Any], raw: bytes) -> CheckpointInfo:
    weights = {int(f["stage"]): str(f["digest"]) for f in manifest["files"].values() if f["kind"] == "weights"}
    return CheckpointInfo(
        step=int(manifest["step"]),
        path=folder,
        weights_digests=weights,
        manifest_digest=blake3.blake3(raw).hexdigest(),
        meta=dict(manifest["meta"]),
    )


def read_manifest(root: str | os.PathLike[str], step: int) -> tuple[dict[str, Any], bytes]:
    """The parsed manifest of ``step`` and its raw bytes, checked for shape.

    Raises:
        CheckpointError: The manifest is missing, not JSON, of another format or version, or malformed.
    """
    path = step_dir(root, step) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint of step {step} (the manifest is missing)") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({str(error)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: manifest version {manifest.get('version')!r}, this build reads {VERSION}")
    if manifest.get("step") != step:
        raise CheckpointError(f"{path}: the manifest is for step {manifest.get('step')!r}, not {step}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("meta"), dict):
        raise CheckpointError(f"{path}: the manifest lacks its 'files' or 'meta' table")
    for name, entry in files.items():
        match = _FILE_RE.match(str(name))
        if (
            match is None
            or not isinstance(entry, dict)
            or entry.get("kind") != match.group(1)
            or entry.get("stage") != int(match.group(2))
            or not isinstance(entry.get("tensors"), dict)
            or not isinstance(entry.get("blake3"), str)
            or not isinstance(entry.get("digest"), str)
        ):
            raise CheckpointError(f"{path}: malformed entry for file {name!r}")
    return manifest, raw


def _load_file(path: Path, entry: Mapping[str, Any]) -> StateDict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the manifest lists it)") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) != entry.get("bytes"):
        raise CheckpointError(f"{path}: {len(data)} bytes, the manifest says {entry.get('bytes')} (truncated?)")
    if blake3.blake3(data).hexdigest() != entry["blake3"]:
        raise CheckpointError(f"{path}: the file's BLAKE3 digest does not match the manifest (tampered or corrupt)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a digest-verified file that still does not load: report, never trace back
        raise CheckpointError(f"{path}: cannot be read as a tensor file ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    _check_state(state, str(path))
    expected: dict[str, str] = entry["tensors"]
    if set(state) != set(expected):
        raise CheckpointError(f"{path}: its tensor names differ from the manifest's")
    digests = {name: digest_tensor(value) for name, value in state.items()}
    for name, digest in digests.items():
        if digest.hex() != expected[name]:
            raise CheckpointError(f"{path}: tensor {name!r} does not match its digest in the manifest")
    if weights_digest(digests).hex() != entry["digest"]:
        raise CheckpointError(f"{path}: the weights digest does not match the manifest")
    return state


def load_checkpoint(root: str | os.PathLike[str], step: int) -> Checkpoint:
    """Load the checkpoint of ``step`` and verify every file and tensor against its manifest.

    Raises:
        CheckpointError: Naming the file that is missing, truncated, tampered or malformed.
    """
    manifest, raw = read_manifest(root, step)
    folder = step_dir(root, step)
    weights: dict[int, StateDict] = {}
    optimizer: dict[int, StateDict] = {}
    for name, entry in sorted(manifest["files"].items()):
        state = _load_file(folder / name, entry)
        (weights if entry["kind"] == "weights" else optimizer)[int(entry["stage"])] = state
    return Checkpoint(_info(folder, manifest, raw), weights, optimizer)


def list_steps(root: str | os.PathLike[str], complete: bool = True) -> list[int]:
    """Steps with a checkpoint folder that has a manifest (complete writes), ascending; not verified.
    With ``complete=False``, the steps of every checkpoint folder, interrupted writes included."""
    base = Path(root)
    if not base.is_dir():
        return []
    steps = []
    for child in base.iterdir():
        match = _STEP_RE.match(child.name)
        if match and (not complete or (child / MANIFEST).is_file()):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_verified(root: str | os.PathLike[str], before_step: int | None = None) -> Checkpoint | None:
    """The newest checkpoint that loads and verifies, optionally of a step below ``before_step``.

    Incomplete folders (no manifest: an interrupted write) and checkpoints that fail
    verification are skipped. ``None`` if there is none.
    """
    limit = math.inf if before_step is None else before_step
    for step in reversed(list_steps(root)):
        if step >= limit:
            continue
        try:
            return load_checkpoint(root, step)
        except CheckpointError:
            continue
    return None


def delete_checkpoint(root: str | os.PathLike[str], step: int) -> None:
    """Delete the checkpoint of ``step``: its manifest first, so an interrupted delete leaves a
    folder that reads as incomplete, never one that looks complete with files missing."""
    folder = step_dir(root, step)
    (folder / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def retired_checkpoints(steps: list[int], keep: int) -> list[int]:
    """Of the recorded checkpoint ``steps`` (ascending), those a run keeping its ``keep`` newest
    (``0``: all) deletes: every one but those and step 0's, the initial state a rollback can
    always return to."""
    if keep <= 0:
        return []
    kept = set(steps[-keep:]) | {0}
    return [s for s in steps if s not in kept]


def prune(root: str | os.PathLike[str], keep: int) -> list[int]:
    """Delete all but the ``keep`` newest complete checkpoints, and incomplete folders older than them.

    A checkpoint's manifest is removed first, so an interrupted prune leaves a folder that reads
    as incomplete, never one that looks complete with files missing.

    Returns:
        The steps whose folders were removed.

    Raises:
        CheckpointError: ``keep`` is below 1.
    """
    if keep < 1:
        raise CheckpointError(f"keep at least one checkpoint, got keep={keep}")
    complete = list_steps(root)
    kept = complete[-keep:]
    oldest_kept = kept[0] if kept else math.inf
    removed = []
    base = Path(root)
    if not base.is_dir():
        return []
    for child in sorted(base.iterdir()):
        match = _STEP_RE.match(child.name)
        if not match or not child.is_dir():
            continue
        step = int(match.group(1))
        if step in kept or step >= oldest_kept:
            continue
        (child / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(child)
        removed.append(step)
    return removed
