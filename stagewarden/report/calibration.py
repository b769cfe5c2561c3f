"""Reading the results of ``benchmarks/detection_calibration.py --json FILE`` for the report: the
spot-check sampler's observed detection latency and undetected damage beside the prover's closed
forms, checked field by field."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from stagewarden.report.errors import ReportError

BENCHMARK = "detection_calibration"
#: The scenario fields the report shows; each must be a number.
SCENARIO_FIELDS = ("stages", "microbatches", "rate", "stage", "per_step", "start", "k_damage", "horizon")


@dataclasses.dataclass(frozen=True)
class CalibrationRow:
    """One compared figure: the prediction, the observation and the observation's confidence interval."""

    figure: str
    predicted: float
    observed: float
    low: float
    high: float

    @property
    def within(self) -> bool:
        """Whether the prediction lies in the observed interval."""
        return self.low <= self.predicted <= self.high

    def to_json(self) -> dict[str, Any]:
        """JSON form, as ``benchmarks/detection_calibration.py`` writes it."""
        return {**dataclasses.asdict(self), "within": self.within}


@dataclasses.dataclass(frozen=True)
class CalibrationScenario:
    """A pipeline, a spot-check rate and an attacker, with its trials' figures.

    Attributes:
        settings: the scenario (``stages``, ``microbatches``, ``rate``, ``stage``, ``per_step``,
            ``start``, ``k_damage``, ``horizon``).
        trials: the trials run.
        censored: trials undetected within the horizon (left out of the latency figures).
        rows: the compared figures.
    """

    settings: dict[str, float]
    trials: int
    censored: int
    rows: tuple[CalibrationRow, ...]

    @property
    def label(self) -> str:
        """A short name, as the benchmark prints it."""
        s = self.settings
        return f"S={s['stages']:g} M={s['microbatches']:g} p={s['rate']:g} k={s['per_step']:g}"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A calibration benchmark result.

    Attributes:
        path: the JSON file.
        confidence: the confidence of every interval.
        seed: the trials' seed, when recorded.
        machine: the machine it ran on, in words.
        scenarios: the simulated scenarios.
        real: the multi-process runs (``--real N``) as recorded, when there were any.
    """

    path: Path
    confidence: float
    seed: int | None
    machine: str
    scenarios: tuple[CalibrationScenario, ...]
    real: dict[str, Any] | None


class _Bad(Exception):
    """A field that is missing or of the wrong type."""


def _number(data: dict[str, Any], key: str, where: str, finite: bool = True) -> float:
    if key not in data:
        raise _Bad(f"{where}{key!r} is missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (finite and not math.isfinite(value)):
        raise _Bad(f"{where}{key!r} must be a {'finite ' if finite else ''}number, not {json.dumps(value)[:60]}")
    return float(value)


def _count(data: dict[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"{where}{key!r} must be a count (an integer, 0 or more), not {json.dumps(value)[:60]}")
    return value


def _row(data: Any, where: str) -> CalibrationRow:
    if not isinstance(data, dict):
        raise _Bad(f"{where[:-1]} must be an object")
    figure = data.get("figure")
    if not isinstance(figure, str) or not figure:
        raise _Bad(f"{where}'figure' must be a non-empty string")
    row = CalibrationRow(
        figure,
        _number(data, "predicted", where),
        _number(data, "observed", where),
        _number(data, "low", where, finite=False),
        _number(data, "high", where, finite=False),
    )
    if math.isnan(row.low) or math.isnan(row.high) or row.low > row.high:
        raise _Bad(f"{where}the interval [{row.low}, {row.high}] is not an interval")
    within = data.get("within")
    if not isinstance(within, bool):
        raise _Bad(f"{where}'within' must be a boolean")
    if within != row.within:
        raise _Bad(
            f"{where}'within' is {json.dumps(within)} but {row.predicted} is {'' if row.within else 'not '}in "
            f"[{row.low}, {row.high}]"
        )
    return row


def _scenario(data: Any, where: str) -> CalibrationScenario:
    if not isinstance(data, dict):
        raise _Bad(f"{where[:-1]} must be an object")
    settings = data.get("scenario")
    if not isinstance(settings, dict):
        raise _Bad(f"{where}'scenario' must be an object")
    values = {key: _number(settings, key, f"{where}scenario.") for key in SCENARIO_FIELDS}
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise _Bad(f"{where}'rows' must be a non-empty list")
    trials = _count(data, "trials", where)
    censored = _count(data, "censored", where)
    if trials == 0 or censored > trials:
        raise _Bad(f"{where}{trials} trial(s) with {censored} censored")
    return CalibrationScenario(
        values, trials, censored, tuple(_row(r, f"{where}rows[{i}].") for i, r in enumerate(rows))
    )


def _real(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _Bad("'real' must be an object or null")
    for key in ("runs", "per_step", "start", "steps", "censored"):
        _count(data, key, "real.")
    for key in ("rate", "predicted_mean_latency"):
        _number(data, key, "real.")
    for key in ("observed_mean_latency", "seconds_per_run"):
        if data.get(key) is not None:
            _number(data, key, "real.")
    latencies = data.get("latencies")
    if not isinstance(latencies, list) or any(
        x is not None and (isinstance(x, bool) or not isinstance(x, int)) for x in latencies
    ):
        raise _Bad("'real.latencies' must be a list of integers (or null for a run never caught)")
    return data


def read_calibration(path: str | Path) -> Calibration:
    """Read and check a result file of ``benchmarks/detection_calibration.py --json``.

    Raises:
        ReportError: the file is missing, is not JSON, is not a ``detection_calibration`` result,
            or lacks a field or has one of the wrong type.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"--calibration {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ReportError(f"--calibration {file}: cannot read it: {reason}") from None
    except ValueError as exc:
        raise ReportError(f"--calibration {file}: not JSON: {exc}") from None
    try:
        if not isinstance(data, dict):
            raise _Bad("the top level must be a JSON object")
        if data.get("benchmark") != BENCHMARK:
            raise _Bad(f"'benchmark' must be {BENCHMARK!r}, not {json.dumps(data.get('benchmark'))[:60]}")
        confidence = _number(data, "confidence", "")
        if not 0 < confidence < 1:
            raise _Bad(f"'confidence' must lie between 0 and 1, not {confidence}")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _Bad(f"'seed' must be an integer, not {json.dumps(seed)[:60]}")
        scenarios = data.get("scenarios")
        if not isinstance(scenarios, list) or not scenarios:
            raise _Bad("'scenarios' must be a non-empty list")
        machine = data.get("machine")
        described = ", ".join(f"{k} {v}" for k, v in machine.items()) if isinstance(machine, dict) else ""
        return Calibration(
            file.resolve(),
            confidence,
            seed,
            described,
            tuple(_scenario(s, f"scenarios[{i}].") for i, s in enumerate(scenarios)),
            _real(data.get("real")),
        )
    except _Bad as exc:
        raise ReportError(f"--calibration {file}: {exc}") from None
