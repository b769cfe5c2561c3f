"""Conformance check 4, responses: every detection was answered by a response the spec lists,
and carried out (a hand-over to a standby is recorded as a replacement)."""

from __future__ import annotations

from typing import Any

from stagewarden.conformance.findings import ConformanceCode
from stagewarden.conformance.run import RunUnderCheck
from stagewarden.run_history import EVENTS_FILE


def check_responses(run: RunUnderCheck) -> None:
    """A finding for each response the spec does not list or that was not carried out, and for
    each detection left unanswered."""
    allowed = run.spec.defense.response
    spec_at = run.at("defense", "response")
    responses: list[Any] = (
        run.history.responses
        if run.history is not None
        else [r.model_dump(mode="python") for r in run.training.responses]
    )
    replacements = run.training.replacements
    for r in responses if isinstance(responses, list) else []:
        plan = r.get("plan") if isinstance(r, dict) else None
        if not isinstance(plan, dict):
            continue
        step, done = r.get("step"), plan.get("response")
        if done not in allowed:
            fell = plan.get("fallback_from")
            run.add(
                ConformanceCode.RESPONSE_DEPARTURE,
                f"the detection at step {step} was answered with {done}"
                + (f" (falling back from {fell}: {plan.get('reason', '')})" if fell else "")
                + f"; the spec allows {', '.join(allowed)}",
                spec=spec_at,
                step=step if type(step) is int else None,
                stage=plan.get("stage"),
                workers=(str(plan.get("convict")),),
            )
        retired = plan.get("retired_pipeline")
        if type(retired) is int and run.config.verification == "replicate" and run.config.stages > 1:
            # the spec's dynamics remove the convict's copy only; the runtime took its whole copy of
            # the pipeline out, so every other stage ran with one copy fewer than the prover counts
            run.add(
                ConformanceCode.RESPONSE_DEPARTURE,
                f"the response at step {step} took the convict's whole copy of the pipeline (pipeline {retired}) "
                "out of the run, for want of a standby: the other stages then compared one copy fewer than the "
                "spec's replicate check counts on, so a verdict that relies on their copies does not cover the "
                "rest of the run",
                spec=spec_at,
                step=step if type(step) is int else None,
                stage=plan.get("stage"),
                workers=(str(plan.get("convict")),),
            )
        standby = plan.get("standby")
        if standby and not any(x.worker == plan.get("convict") and x.by == standby for x in replacements):
            run.add(
                ConformanceCode.RESPONSE_DEPARTURE,
                f"the response at step {step} hands stage {plan.get('stage')} to {standby}, but summary.json "
                "records no such replacement",
                file="summary.json",
                step=step if type(step) is int else None,
                workers=(str(plan.get("convict")), str(standby)),
            )
    _check_answered(run, responses if isinstance(responses, list) else [])


def _check_answered(run: RunUnderCheck, responses: list[Any]) -> None:
    stopped = run.history.stopped if run.history is not None else None
    tail = f"; the run stopped: {stopped}" if stopped else f"; the run ended with status {run.training.status}"
    if run.history is not None:
        answered = {(r.get("step"), r.get("attempt")) for r in responses if isinstance(r, dict)}
        groups = {(c.step, c.attempt): c for c, _ in run.history.detections}
        missing = [(key, c) for key, c in groups.items() if key not in answered]
        for (step, attempt), c in missing:
            first = c.detections[0]
            run.add(
                ConformanceCode.DETECTION_UNANSWERED,
                f"the detection at step {step} (computation {attempt + 1}) of stage {first.get('stage')} "
                f"({first.get('check')}) was not answered by a response" + tail,
                spec=run.at("defense", "response"),
                file=EVENTS_FILE,
                step=step,
                stage=first.get("stage"),
            )
        return
    steps = {r.get("step") for r in responses if isinstance(r, dict)}
    for d in run.training.detections:
        if d.step not in steps:
            run.add(
                ConformanceCode.DETECTION_UNANSWERED,
                f"the detection at step {d.step} of stage {d.stage} was not answered by a response" + tail,
                spec=run.at("defense", "response"),
                file="summary.json",
                step=d.step,
                stage=d.stage,
            )
