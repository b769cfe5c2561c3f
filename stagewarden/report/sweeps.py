"""Sensitivity of the verdicts: the prover re-run on copies of the spec in which one parameter
(the spot-check rate, or the adversary's budget) takes other values.

Every point is a figure the prover itself computes for the modified spec (its closed forms,
exact where they can be), so the curves follow the same semantics as the verdicts. Where the
spec states no ``detection`` or ``bounded_damage`` guarantee, a probe guarantee is added for the
sweep only (``detection`` of every tampering capability; ``bounded_damage`` with ``K = 0``,
i.e. the probability that any tampered unit stays undetected) and the caption says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from stagewarden.prover import Prover
from stagewarden.spec import BoundedDamageGuarantee, DetectionGuarantee, LoadedSpec, Spec, SpotCheck

PROBE_DETECTION = "report-probe-detection"
PROBE_DAMAGE = "report-probe-damage"
#: Spot-check rates of the rate sweep (the spec's own rate is added).
RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
#: The budget sweep stops here (or at the number of workers).
MAX_BUDGET = 12


@dataclasses.dataclass(frozen=True)
class Point:
    """One swept value and the prover's figures there (``None``: no figure, e.g. nobody can tamper)."""

    x: float
    detection: float | None
    damage: float | None
    detection_verdict: str
    damage_verdict: str


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parameter swept over values, with the spec's own value marked."""

    parameter: str
    points: list[Point]
    spec_x: float
    detection_id: str
    damage_id: str
    damage_k: int
    probes: list[str]
    note: str = ""


def _targets(spec: Spec) -> tuple[str, str, int, list[Any], list[str]]:
    """Which guarantees give the detection and damage figures, adding probes where missing."""
    detection = next((g for g in spec.guarantees if g.kind == "detection"), None)
    damage = next((g for g in spec.guarantees if g.kind == "bounded_damage"), None)
    extra: list[Any] = []
    probes: list[str] = []
    if detection is None:
        extra.append(DetectionGuarantee.model_validate({"id": PROBE_DETECTION, "kind": "detection"}))
        probes.append("detection")
    if damage is None:
        extra.append(
            BoundedDamageGuarantee.model_validate(
                {"id": PROBE_DAMAGE, "kind": "bounded_damage", "max_undetected": 0, "probability": 1.0}
            )
        )
        probes.append("bounded_damage")
    k = damage.max_undetected if isinstance(damage, BoundedDamageGuarantee) else 0
    return (detection.id if detection else PROBE_DETECTION, damage.id if damage else PROBE_DAMAGE, k, extra, probes)


def _point(loaded: LoadedSpec, spec: Spec, x: float, detection_id: str, damage_id: str) -> Point:
    prover = Prover(LoadedSpec(spec, loaded.source, loaded.text))
    det, dam = prover.check(detection_id), prover.check(damage_id)
    det_value = det.figure.value if det.figure is not None else None
    dam_value = dam.figure.value if dam.figure is not None else (0.0 if dam.trivially else None)
    return Point(x, det_value, dam_value, det.verdict, dam.verdict)


def with_rate(spec: Spec, rate: float) -> Spec:
    """``spec`` with every spot check sampling at ``rate``."""
    checks = [c.model_copy(update={"rate": rate}) if isinstance(c, SpotCheck) else c for c in spec.defense.checks]
    return spec.model_copy(update={"defense": spec.defense.model_copy(update={"checks": checks})})


def detection_at_rate(loaded: LoadedSpec, rate: float) -> float | None:
    """The prover's worst-case per-unit detection probability of the spec with its spot checks at ``rate``."""
    spec = loaded.spec
    detection_id, _, _, extra, _ = _targets(spec)
    swept = with_rate(spec, rate).model_copy(update={"guarantees": [*spec.guarantees, *extra]})
    result = Prover(LoadedSpec(swept, loaded.source, loaded.text)).check(detection_id)
    return result.figure.value if result.figure is not None else None


def rate_sweep(loaded: LoadedSpec, rates: Sequence[float] = RATES) -> Sweep | None:
    """The figures against the spot-check rate; ``None`` when the spec has no spot check."""
    spec = loaded.spec
    spot = [c for c in spec.defense.checks if isinstance(c, SpotCheck)]
    if not spot:
        return None
    detection_id, damage_id, k, extra, probes = _targets(spec)
    values = sorted({*rates, spot[0].rate})
    points = []
    for rate in values:
        swept = with_rate(spec, rate).model_copy(update={"guarantees": [*spec.guarantees, *extra]})
        points.append(_point(loaded, swept, rate, detection_id, damage_id))
    note = "every spot check of the spec is set to the swept rate" if len(spot) > 1 else ""
    return Sweep("spot-check rate p", points, spot[0].rate, detection_id, damage_id, k, probes, note)


def budget_sweep(loaded: LoadedSpec) -> Sweep:
    """The figures against the adversary's budget (malicious workers), 0 up to the number of workers."""
    spec = loaded.spec
    detection_id, damage_id, k, extra, probes = _targets(spec)
    top = min(spec.total_workers, max(MAX_BUDGET, spec.malicious_budget))
    points = []
    for budget in range(0, top + 1):
        adversary = spec.adversary.model_copy(update={"max_malicious": budget})
        swept = spec.model_copy(update={"adversary": adversary, "guarantees": [*spec.guarantees, *extra]})
        points.append(_point(loaded, swept, float(budget), detection_id, damage_id))
    note = f"budgets above {top} are not shown" if top < spec.total_workers else ""
    return Sweep(
        "malicious workers (adversary budget)",
        points,
        float(spec.malicious_budget),
        detection_id,
        damage_id,
        k,
        probes,
        note,
    )
