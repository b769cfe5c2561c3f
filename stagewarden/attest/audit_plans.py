"""The responses a run declares, as the offline audit reads them: the computations of each step,
the steps a standby served, and the stages a response froze or bypassed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .headers import TransferKind
from .run_record import TrainingRecord
from .run_record_parts import Replacement

# One response as the declarations below read it (``PlanFacts``): its step, and its plan's
# ``redo_from_step``, ``bypass_stage`` and ``frozen_stages`` (unchecked where it comes from raw JSON).
PlanFacts = tuple[int, Any, Any, Any]


def _response_plans(responses: Any) -> Iterator[PlanFacts]:
    """The ``PlanFacts`` of every well-formed entry of a raw ``responses`` list (the
    runtime's own records, before they are written)."""
    if not isinstance(responses, list):
        return
    for entry in responses:
        if isinstance(entry, dict) and isinstance(entry.get("plan"), dict):
            step, plan = entry.get("step"), entry["plan"]
            if type(step) is int and step >= 0:
                yield step, plan.get("redo_from_step"), plan.get("bypass_stage"), plan.get("frozen_stages")


def recorded_plans(training: TrainingRecord | None) -> list[PlanFacts]:
    """The ``PlanFacts`` of every response of a run record."""
    if training is None:
        return []
    return [(r.step, r.plan.redo_from_step, r.plan.bypass_stage, r.plan.frozen_stages) for r in training.responses]


def declared_attempts(responses: Any, resumes: Any = None) -> dict[int, int]:
    """How many times each step was computed, from raw ``responses`` and ``resumes`` lists.

    Each response entry whose ``plan`` redoes training from ``redo_from_step`` after a detection
    at ``step`` adds one computation to every step from the first to the second; so does each
    resume entry (a run resumed after a crash or a worker fault) for every step from its
    ``from_step`` to its ``redo_to_step``. Entries of any other shape are ignored, so lists
    without either allow one computation per step. :func:`recorded_attempts` reads a run record.
    """
    spans: list[tuple[Any, Any]] = [(first, step) for step, first, _, _ in _response_plans(responses)]
    if isinstance(resumes, list):
        spans += [(r.get("from_step"), r.get("redo_to_step")) for r in resumes if isinstance(r, dict)]
    return _attempts(spans)


def recorded_attempts(training: TrainingRecord | None) -> dict[int, int]:
    """:func:`declared_attempts` of a run record's responses and resumes."""
    return _attempts(training.recomputed_spans() if training is not None else [])


def _attempts(spans: Iterable[tuple[Any, Any]]) -> dict[int, int]:
    attempts: dict[int, int] = {}
    for first, last in spans:
        if type(first) is not int or type(last) is not int or not 0 <= first <= last or last - first > 1_000_000:
            continue
        for t in range(first, last + 1):
            attempts[t] = attempts.get(t, 1) + 1
    return attempts


def retired_pipelines(training: TrainingRecord | None) -> dict[int, int]:
    """The pipelines a response took out of the run (a convict with no standby left to replace it,
    in a run of several pipelines), each with the step from which its workers compute nothing:
    the plan's ``redo_from_step``, where the other pipelines went back to."""
    retired: dict[int, int] = {}
    if training is None:
        return retired
    for response in training.responses:
        pipeline = response.plan.retired_pipeline
        if pipeline is not None:
            retired[pipeline] = min(response.plan.redo_from_step, retired.get(pipeline, response.plan.redo_from_step))
    return retired


def served_steps(replacements: Iterable[Replacement], steps: int) -> dict[str, tuple[int, int]]:
    """The steps each replaced or replacing worker is expected to have receipts for, from a run
    record's replacements: the ejected worker ``[0, from_step)``, its replacement
    ``[from_step, steps)``. Without replacements every worker is expected at every step.
    """
    spans: dict[str, tuple[int, int]] = {}
    for entry in replacements:
        start = entry.from_step
        spans[entry.worker] = (spans.get(entry.worker, (0, steps))[0], min(start, steps))
        spans[entry.by] = (min(start, steps), steps)
    return spans


def declared_frozen(responses: Any) -> dict[int, int]:
    """The stages whose updates a response froze, each with the first step it froze, from a raw
    ``responses`` list (:func:`frozen_stages` takes ``PlanFacts``).

    A frozen stage (``skip_stage``) signs no update receipts from that step on, so the audit does
    not report them missing.
    """
    return frozen_stages(_response_plans(responses))


def frozen_stages(plans: Iterable[PlanFacts]) -> dict[int, int]:
    """:func:`declared_frozen` of the responses' ``PlanFacts``."""
    frozen: dict[int, int] = {}
    for step, _, _, stages in plans:
        if not isinstance(stages, list):
            continue
        for stage in stages:
            if type(stage) is int and stage >= 0:
                frozen[stage] = min(step, frozen.get(stage, step))
    return frozen


def declared_bypasses(responses: Any) -> dict[tuple[int, int], int]:
    """The stage each recomputation bypassed, by ``(step, attempt)``, from a raw ``responses`` list
    (:func:`bypasses` takes ``PlanFacts``).

    A plan with a ``bypass_stage`` recomputes its ``redo_from_step`` once more with that stage left
    out: its neighbours exchange tensors directly (headers naming a receiver two stages away) and
    the bypassed worker signs nothing for that computation. The attempt is the number of
    computations of that step the responses before it declared, as :func:`declared_attempts` counts.
    """
    return bypasses(_response_plans(responses))


def bypasses(plans: Iterable[PlanFacts]) -> dict[tuple[int, int], int]:
    """:func:`declared_bypasses` of the responses' ``PlanFacts``."""
    counts: dict[int, int] = {}
    found: dict[tuple[int, int], int] = {}
    for step, first, stage, _ in plans:
        if type(first) is not int or not 0 <= first <= step or step - first > 1_000_000:
            continue
        for t in range(first, step + 1):
            counts[t] = counts.get(t, 1) + 1
        if type(stage) is int and stage >= 1:
            found[(first, counts[first] - 1)] = stage
    return found


def route_neighbour(stage: int, kind: TransferKind, bypassed: int | None) -> int:
    """The stage a ``kind`` transfer from ``stage`` goes to, past a ``bypassed`` stage."""
    step = 1 if kind is TransferKind.ACTIVATION else -1
    receiver = stage + step
    return receiver + step if receiver == bypassed else receiver
