"""How a training run ended, in the words its summary table and its report use: why it stopped,
what the responses were, and, for a run that records the attack it mounted, how many units that
attack tampered with, how many were detected and how many stayed in the model.

A run that completed beside an attack that went undetected is never called just ``completed``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from stagewarden.attest.run_record import RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import ResponseRecord
from stagewarden.run_history import (
    EVENTS_FILE,
    attacking_workers,
    detected,
    read_events,
    reconstruct,
    tampered_units,
)


@dataclasses.dataclass(frozen=True)
class AttackOutcome:
    """What a recorded attack did to a run.

    Attributes:
        description: The attack in words (kind, stages, direction, rate, first step).
        tampered: Units the malicious workers tampered with, over every computation.
        detected: Of those, the ones a detection named.
        in_model: Tampered units of computations that stayed in the model (undetected).
    """

    description: str
    tampered: int
    detected: int
    in_model: int

    def line(self) -> str:
        """One line for a summary table."""
        return (
            f"{self.description}: {self.tampered} tampered unit(s), {self.detected} detected, "
            f"{self.in_model} in the model"
        )


def describe_attack(attack: dict[str, Any]) -> str:
    """An attack plan (JSON, as ``RunConfig.attack`` records it) in words."""
    stages = ",".join(str(s) for s in sorted(attack.get("stages", [])))
    direction = attack.get("direction", "forward")
    return (
        f"{attack.get('kind')} ({direction}) on stage {stages} at rate {float(attack.get('rate', 1.0)):g} "
        f"from step {attack.get('start', 0)}"
    )


def attack_outcome(run_dir: Path, record: RunRecord) -> AttackOutcome | None:
    """The outcome of the attack the run record's configuration names (``None`` without one, or
    without a readable ``events.jsonl`` to count from)."""
    attack = record.training.config.get("attack") if record.training is not None else None
    if not isinstance(attack, dict):
        return None
    try:
        events, _ = read_events(run_dir / EVENTS_FILE)
    except OSError:
        return None
    history = reconstruct(events)
    stages, microbatches = record.stages, record.micro_batches
    poison = attack.get("kind") == "poison_data"
    attackers = attacking_workers(attack, record.training.config) if record.training is not None else None
    tampered = found = in_model = 0
    for computation in history.computations:
        for unit in tampered_units(attack, computation, stages, microbatches):
            tampered += 1
            found += detected(unit, computation, poison, attackers)
            in_model += computation.kept
    return AttackOutcome(describe_attack(attack), tampered, found, in_model)


def status_line(training: TrainingRecord, outcome: AttackOutcome | None) -> str:
    """The run's status with the reason it stopped, and a warning when it completed with
    tampered units in the model."""
    status, reason = training.status, training.stop_reason
    if status != "completed" and reason:
        return f"{status}: {reason}"
    if status == "completed" and outcome is not None and outcome.in_model:
        if outcome.detected == 0:
            return f"completed, but the attack went undetected: {outcome.in_model} tampered unit(s) in the model"
        return f"completed, with {outcome.in_model} undetected tampered unit(s) in the model"
    return status


def responses_line(responses: list[ResponseRecord]) -> str:
    """The responses of a run, grouped by what was done: ``skip_stage of stage 1 x 38 (steps 1-79)``."""
    if not responses:
        return "-"
    groups: Counter[tuple[str, Any]] = Counter()
    steps: dict[tuple[str, Any], list[int]] = {}
    for entry in responses:
        plan = entry.plan
        what = (plan.response, plan.bypass_stage or plan.standby)
        groups[what] += 1
        steps.setdefault(what, []).append(entry.step)
    parts = []
    for (response, detail), count in groups.items():
        where = steps[(response, detail)]
        at = f"step {where[0]}" if len(set(where)) == 1 else f"steps {min(where)}-{max(where)}"
        extra = ""
        if isinstance(detail, int) and not isinstance(detail, bool):
            extra = f" bypassing stage {detail}"
        elif isinstance(detail, str):
            extra = f" to {detail}"
        parts.append(f"{response}{extra} x {count} ({at})")
    return ", ".join(parts)
