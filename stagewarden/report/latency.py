"""Predicted against observed detection latency of spot-checked runs under attack.

The latency is counted in tampered units: the position, in (step, micro-batch) order, of the
first tampered unit that a check caught. With per-unit detection probability ``p`` and
independent samples (the prover's model), the latency is geometric:
``Pr[L = k] = (1 - p)^(k - 1) p``. A run that is never caught is censored at the number of units
it tampered with.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from stagewarden.report.runs import RunData

if TYPE_CHECKING:
    from stagewarden.runtime.attacks import AttackPlan


@dataclasses.dataclass(frozen=True)
class Latency:
    """One run's observed latency beside the prediction.

    Attributes:
        run: the run's name.
        p: the per-unit detection probability the prover predicts for the run's rate.
        observed: tampered units up to and including the first caught one (``None``: not caught).
        tampered: tampered units the run saw up to the end (the censoring point when not caught).
        cdf: ``Pr[L <= observed]`` under the prediction (or ``Pr[L > tampered]`` when not caught).
        mean: the predicted mean ``1 / p``.
        unit: the unit kind the attack tampers with.
    """

    run: str
    p: float
    observed: int | None
    tampered: int
    cdf: float
    mean: float
    unit: str


def _unit_kind(plan: AttackPlan) -> str | None:
    from stagewarden.runtime.attacks import TENSOR_KINDS, AttackKind, Direction

    if plan.kind in TENSOR_KINDS or plan.kind is AttackKind.EQUIVOCATE:
        return "forward" if plan.direction is Direction.FORWARD else "backward"
    if plan.kind is AttackKind.WEIGHTS:
        return "update"
    if plan.kind is AttackKind.GRAD_DRIFT:
        return "backward"
    if plan.kind is AttackKind.POISON_DATA:
        return "forward"
    return None


def tampered_units(plan: AttackPlan, stop_step: int, microbatches: int, unit: str) -> list[tuple[int, int, int]]:
    """Every (step, micro-batch, stage) the plan tampers with in steps ``0 .. stop_step - 1``, in order."""
    batches = [0] if unit == "update" else list(range(microbatches))
    return [(t, m, s) for t in range(stop_step) for m in batches for s in sorted(plan.stages) if plan.active(s, t, m)]


def observed_latency(run: RunData, p: float) -> Latency | str:
    """The run's latency and its place in the predicted distribution, or why it has none."""
    attack = run.attack
    if attack is None:
        return "the run has no attack"
    if run.config.get("verification") != "spot_check":
        return "the run does not spot-check"
    from stagewarden.runtime.attacks import AttackKind, AttackPlan  # imports torch: only for runs under attack

    try:
        plan = AttackPlan.from_json(attack)
    except ValueError as exc:
        return f"the run's attack plan cannot be read: {exc}"
    if plan.kind is AttackKind.OPTIMIZER:
        return "attack kind optimizer is caught by the update receipts' optimizer-state chain, not by sampling"
    if plan.kind is AttackKind.SWAP_WEIGHTS:
        return "attack kind swap_weights is caught by the receipts' weights chain, not by sampling"
    unit = _unit_kind(plan)
    if unit is None:
        return f"attack kind {plan.kind.value} tampers with no unit a spot check re-executes"
    if not 0 < p < 1:
        return f"the predicted per-unit detection probability is {p:g}: the latency is not random"
    microbatches, steps = run.record.micro_batches, run.training.steps_completed
    attacker_ids = _attacker_workers(run, plan)
    caught = next((d for d in run.detections if d.worker in attacker_ids or d.stage in plan.stages), None)
    if caught is not None:
        step, mb = caught.step, caught.microbatch
        units = tampered_units(plan, step + 1, microbatches, unit)
        before = [u for u in units if (u[0], u[1]) <= (step, mb)]
        observed = max(1, len(before))
        return Latency(run.name, p, observed, len(units), 1.0 - (1.0 - p) ** observed, 1.0 / p, unit)
    units = tampered_units(plan, steps, microbatches, unit)
    return Latency(run.name, p, None, len(units), (1.0 - p) ** len(units), 1.0 / p, unit)


def _attacker_workers(run: RunData, plan: AttackPlan) -> set[str]:
    return {w.id for w in run.record.workers if w.stage in plan.stages and not w.id.startswith("standby")}


def geometric_pmf(p: float, upto: int) -> list[float]:
    """``Pr[L = k]`` for ``k = 1 .. upto``."""
    log_q = math.log1p(-p)
    return [p * math.exp((k - 1) * log_q) for k in range(1, upto + 1)]
