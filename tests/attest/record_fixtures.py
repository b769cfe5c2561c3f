"""Run records for tests: the training part a synthetic run lacks, built from a real run's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stagewarden.attest.run_record import RunRecord, TrainingRecord

#: A real ``stagewarden demo`` run's record (4 stages, 5 steps, one detection answered by eject).
RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "attacked" / "summary.json"


def recorded_data() -> dict[str, Any]:
    """The JSON object of :data:`RECORDED`."""
    data: dict[str, Any] = json.loads(RECORDED.read_text(encoding="utf-8"))
    return data


def with_training(record: RunRecord, **config: Any) -> RunRecord:
    """``record`` with an honest training part of its shape: no detection, no response, ``config``
    merged over the recorded run's configuration."""
    data = recorded_data()
    training = {k: v for k, v in data.items() if k not in RunRecord.model_fields and k not in ("format", "version")}
    training.update(
        config={**training["config"], **config},
        steps_completed=record.steps,
        losses=[1.0] * record.steps,
        detections=[],
        responses=[],
        replacements=[],
        false_alarms=0,
        stage_busy_seconds=[0.0] * record.stages,
        final_weights={"stages": [None] * record.stages, "digest": None},
        standby=[],
    )
    return record.model_copy(update={"training": TrainingRecord.model_validate(training)})
