"""Reading the output of ``stagewarden replay`` for the report: ``replay.json``, checked field by
field, and its two run directories (the attack under the spec's defence and under the proposed one).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath
from typing import Any

from stagewarden.report.errors import ReportError
from stagewarden.report.runs import RunData, read_run

REPLAY_FILE = "replay.json"
FORMAT = "stagewarden.replay"
VERSION = 1
#: The counts each observation of ``replay.json`` holds.
COUNTERS = ("detections", "tampered", "undetected", "in_model", "framed")


@dataclasses.dataclass(frozen=True)
class ReplayRun:
    """One run of a replay: what ``replay.json`` says about it, and the run directory itself.

    Attributes:
        outcome: for the attack run, whether it shows what the trace predicts; for the run under
            the proposed defence, whether the defence stops the attack.
        detail: the observation in words.
        counts: the counters named in ``COUNTERS``.
        run: the run directory, read.
    """

    outcome: bool
    detail: str
    counts: dict[str, int]
    run: RunData


@dataclasses.dataclass(frozen=True)
class ReplayData:
    """A replay (``stagewarden replay --out OUT``) as the report shows it.

    Attributes:
        path: the ``replay.json`` file.
        spec: the spec the replay was made from.
        guarantee: the replayed guarantee's id.
        kind: its kind.
        trace: the trace's description of the attack.
        prediction: what the trace predicts a run shows.
        mapping: how the trace became a run configuration, in words.
        attack: the run under the spec's defence.
        defended: the run under the proposed defence, if one was run.
        defence: the proposed defence block (YAML), if one was run.
    """

    path: Path
    spec: str
    guarantee: str
    kind: str
    trace: str
    prediction: str
    mapping: tuple[str, ...]
    attack: ReplayRun
    defended: ReplayRun | None
    defence: str | None

    @property
    def runs(self) -> list[RunData]:
        """The replay's run directories, the attack first."""
        return [self.attack.run] + ([self.defended.run] if self.defended is not None else [])


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    dict: "an object",
    list: "a list",
    type(None): "null",
}


class _Bad(Exception):
    """A field of ``replay.json`` that is missing or of the wrong type."""


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise _Bad(f"{where}{key!r} is missing")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, not to a JSON reader: a flag is never a count and vice versa.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise _Bad(f"{where}{key!r} must be {names}, not {json.dumps(value)[:60]}")
    return value


def _run_dir(folder: Path, name: str, where: str) -> Path:
    part = PurePosixPath(name)
    if not name or part.is_absolute() or len(part.parts) != 1 or name in (".", ".."):
        raise _Bad(f"{where}'run' must name a folder next to replay.json, not {name!r}")
    return folder / name


def _run(folder: Path, data: dict[str, Any], key: str, outcome: str, title: str) -> ReplayRun:
    where = f"{key}."
    run = _run_dir(folder, _field(data, "run", str, where), where)
    flag = _field(data, outcome, bool, where)
    detail = _field(data, "detail", str, where)
    counts = {}
    for name in COUNTERS:
        value = _field(data, name, int, where)
        if value < 0:
            raise _Bad(f"{where}{name!r} must not be negative, not {value}")
        counts[name] = value
    if "shows" in data:
        _field(data, "shows", bool, where)
    if not run.is_dir():
        raise _Bad(f"{where}run names {run}, which is not a directory")
    try:
        read = read_run(run)
    except ReportError as exc:
        raise _Bad(f"the {key} run directory cannot be read: {exc.message.removeprefix('--run ')}") from None
    read.name = f"{folder.name}/{run.name}"
    read.title = title
    return ReplayRun(flag, detail, counts, read)


def read_replay(path: str | Path) -> ReplayData:
    """Read and check the output folder of ``stagewarden replay`` (or its ``replay.json``).

    Raises:
        ReportError: the file is missing, is not JSON, is not a version 1 ``stagewarden.replay``
            record, lacks a field or has one of the wrong type, or a run directory it names cannot be read.
    """
    given = Path(path)
    file = given / REPLAY_FILE if given.is_dir() else given
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"--replay {file}: no such file (give the --out folder of `stagewarden replay`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ReportError(f"--replay {file}: cannot read it: {reason}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"--replay {file}: not JSON: {exc}") from None
    try:
        if not isinstance(data, dict):
            raise _Bad("the top level must be a JSON object")
        if data.get("format") != FORMAT:
            raise _Bad(f"'format' must be {FORMAT!r}, not {json.dumps(data.get('format'))}")
        version = _field(data, "version", int, "")
        if version != VERSION:
            raise _Bad(f"version {version} is not supported (this stagewarden reads version {VERSION})")
        strings = {key: _field(data, key, str, "") for key in ("spec", "guarantee", "kind", "trace", "prediction")}
        mapping = _field(data, "mapping", list, "")
        for i, note in enumerate(mapping):
            if not isinstance(note, str):
                raise _Bad(f"'mapping'[{i}] must be a string, not {json.dumps(note)[:60]}")
        folder = file.parent
        guarantee = strings["guarantee"]
        attack_data = _field(data, "attack", dict, "")
        attack = _run(folder, attack_data, "attack", "shows_prediction", f"replay {guarantee}: attack, spec's defence")
        defended_data = _field(data, "defended", (dict, type(None)), "")
        defended, defence = None, None
        if defended_data is not None:
            defence = _field(defended_data, "defence", str, "defended.")
            title = f"replay {guarantee}: attack, proposed defence"
            if defended_data.get("run") is not None or not isinstance(defended_data.get("removed"), str):
                defended = _run(folder, defended_data, "defended", "caught", title)
            # else the proposed defence removes the attack's capability: there is no second run
    except _Bad as exc:
        raise ReportError(f"--replay {file}: {exc}") from None
    return ReplayData(
        path=file.resolve(),
        mapping=tuple(mapping),
        attack=attack,
        defended=defended,
        defence=defence,
        **strings,
    )
