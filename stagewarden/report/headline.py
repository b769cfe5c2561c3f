"""The headline of a report's runs, for its front page: for each run, what was caught, when, by
which check, and what happened next; or that nothing was, over how many steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stagewarden.report import rst
from stagewarden.report.runs import RunData


def _steps(run: RunData) -> int:
    return run.training.steps_completed


def _check_name(check: Any) -> str:
    names = {"spot_check": "the spot check", "redundant_neighbour": "the redundant-neighbour check"}
    return names.get(str(check), f"the {rst.text(str(check).replace('_', ' '))} check" if check else "a check")


def _response(run: RunData, step: int) -> str:
    """What the run did about the detection at ``step``: its response plan, in words."""
    for response in run.training.responses:
        if response.step != step:
            continue
        plan = response.plan
        parts = [f"response {rst.text(plan.response)}"]
        if plan.ejected:
            parts.append(f"{rst.text(plan.ejected)} ejected")
        if plan.standby is not None:
            parts.append(f"standby {rst.text(plan.standby)} took stage {rst.text(plan.stage)}")
        if plan.checkpoint_step is not None:
            parts.append(f"training resumed from the verified checkpoint of step {rst.text(plan.checkpoint_step)}")
        return "; then " + ", ".join(parts)
    return ""


def _audit(run: RunData) -> str:
    report = run.audit.report
    if report is None:
        return "the audit could not run"
    if report.clean:
        return f"the audit of its {report.receipts} receipts is clean"
    return f"the audit **failed** ({len(report.errors)} error findings)"


def run_headline(run: RunData) -> str:
    """One run in a sentence or two of reStructuredText."""
    steps, status = _steps(run), run.training.status
    attack = run.attack
    detections = sorted(run.detections, key=lambda d: d.step)
    end = f"The run {rst.text(status)} after {steps} steps; {_audit(run)}."
    if not detections:
        if attack is None:
            return f"no attack and no detection in {steps} steps. {end}"
        return f"the attack ({rst.text(run.attack_text)}) was **not detected** in {steps} steps. {end}"
    first = detections[0]
    step = first.step
    unit = f"{rst.text(first.unit_kind)} unit"
    where = f"at step {rst.text(step)}, micro-batch {rst.text(first.microbatch)}"
    caught = f"{_check_name(first.check)} caught worker {rst.text(first.worker)} {where} ({unit})"
    if attack is not None:
        start = int(attack.get("start", 0) or 0)
        lag = step - start
        when = "in the step it began" if lag == 0 else f"{lag} step{'s' if lag != 1 else ''} after it began"
        head = f"the attack ({rst.text(run.attack_text)}): {caught}, {when}"
    else:
        head = f"with no attack mounted, {caught}: a **false alarm**"
    more = f" ({len(detections)} detections in all)" if len(detections) > 1 else ""
    return f"{head}{more}{_response(run, step)}. {end}"


def headline_section(runs: Sequence[RunData], docs: Sequence[str]) -> list[str]:
    """The front page's section on the runs: one bullet per run, linked to its page."""
    if not runs:
        return []
    out = [rst.heading("What the runs show", "-")]
    for run, doc in zip(runs, docs, strict=True):
        out += [f"* :doc:`{rst.text(run.short_name)} <{doc}>` ({rst.text(run.defence_text)}): {run_headline(run)}"]
    return out + [""]
