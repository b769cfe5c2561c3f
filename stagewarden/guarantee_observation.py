"""What a training run shows about each guarantee of its spec: consistent with the prover's
verdict, broken, or not checkable from a run.

The ground truth is the attack plan the run records (``config.attack`` in ``summary.json``; none
means every worker ran the code it attested): its malicious stages say who is honest, and its
deterministic firing rule says which units it tampered with (:mod:`stagewarden.run_history`).
A deployment facing real adversaries records no such plan, so there only ``no_framing`` (with
the attack unknown, any detection is a suspect, not a proof) and ``liveness`` are observable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stagewarden.attest.run_record import RunRecord
from stagewarden.confidence import clopper_pearson
from stagewarden.run_history import RunHistory, Unit, attacking_workers, detected, tampered_units
from stagewarden.spec import BoundedDamageGuarantee, LoadedSpec

#: Outcomes of comparing a guarantee with a run.
CONSISTENT = "consistent"
BROKEN = "broken"
NOT_CHECKABLE = "not checkable"
NOT_PROMISED = "not promised"

#: Confidence with which an observed per-unit detection rate refutes a ``detection`` guarantee.
DETECTION_CONFIDENCE = 0.999

#: What a spec assumes or promises that no run directory can show.
UNCHECKED: tuple[str, ...] = (
    "trust assumptions (trust.honest, trust.tee, a trusted coordinator): who is honest is assumed, "
    "not recorded; the run's own attack plan is the only ground truth it has",
    "the adversary's budget, collusion and capabilities: a run shows the one attack it records, "
    "never the worst one the prover quantifies over",
    "probabilities over the horizon: one run is one draw of the adversary's luck and of the sampling "
    "randomness, so a probabilistic guarantee is refuted only by an outcome it excludes (more than K "
    "undetected units, a per-unit detection rate below P at 99.9% confidence)",
    "overhead: the cost model is relative to unprotected training, which a run does not measure "
    "(benchmarks/runtime_overhead.py does)",
)


@dataclasses.dataclass(frozen=True)
class GuaranteeObservation:
    """A guarantee, the prover's verdict on it and what the run shows.

    Attributes:
        id: The guarantee id.
        kind: Its kind.
        verdict: The prover's verdict.
        outcome: :data:`CONSISTENT`, :data:`BROKEN`, :data:`NOT_CHECKABLE` or :data:`NOT_PROMISED`
            (the prover does not say it holds, so no run can break it).
        detail: Why, in words.
    """

    id: str
    kind: str
    verdict: str
    outcome: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)


def attack_capability(attack: dict[str, Any]) -> str:
    """The spec capability an attack plan (JSON) exercises."""
    kind, direction = attack.get("kind"), attack.get("direction", "forward")
    named = {
        "weights": "tamper_weights",
        "optimizer": "tamper_weights",
        "grad_drift": "tamper_weights",  # the stage's own gradients: an update other than the honest one
        "swap_weights": "tamper_weights",
        "poison_data": "poison_data",
        "equivocate": "equivocate",
        "false_accuse": "false_accuse",
    }
    if kind in named:
        return named[str(kind)]
    return "tamper_gradients" if direction == "backward" else "tamper_activations"


@dataclasses.dataclass
class _Tally:
    """The attack's tampered units, split by outcome."""

    in_model: list[Unit] = dataclasses.field(default_factory=list)
    caught: list[Unit] = dataclasses.field(default_factory=list)
    missed: list[Unit] = dataclasses.field(default_factory=list)


def _tally(attack: dict[str, Any], history: RunHistory, config: Any) -> _Tally:
    tally = _Tally()
    poison = attack.get("kind") == "poison_data"
    attackers = attacking_workers(attack, config.to_json())
    for comp in history.computations:
        for unit in tampered_units(attack, comp, config.stages, config.microbatches):
            if comp.kept:
                tally.in_model.append(unit)
            (tally.caught if detected(unit, comp, poison, attackers) else tally.missed).append(unit)
    return tally


def _outside_model(loaded: LoadedSpec, attack: dict[str, Any]) -> str | None:
    """Why the recorded attack lies outside the spec's threat model, or ``None``."""
    spec = loaded.spec
    capability = attack_capability(attack)
    if capability not in spec.adversary.capabilities:
        return f"the recorded attack uses {capability}, which the spec's adversary does not have"
    stages = sorted(attack.get("stages", []))
    if len(stages) > spec.malicious_budget:
        return (
            f"the recorded attack has {len(stages)} malicious stages, over the spec's budget of {spec.malicious_budget}"
        )
    honest = {h for h in spec.trust.honest if isinstance(h, int)} | {
        int(h.split(":")[0]) for h in spec.trust.honest if isinstance(h, str) and h.endswith(":0")
    }
    trusted = sorted(honest & set(stages))
    if trusted:
        return f"the recorded attack runs on stage(s) {trusted}, which the spec assumes honest"
    return None


def observe_guarantees(
    loaded: LoadedSpec, config: Any, summary: RunRecord, history: RunHistory | None
) -> tuple[list[GuaranteeObservation], list[tuple[GuaranteeObservation, str]]]:
    """Run the prover on the spec and compare every guarantee it says holds with the run.

    Args:
        loaded: The spec.
        config: The run's :class:`~stagewarden.runtime.config.RunConfig`.
        summary: The run's record (``summary.json``).
        history: The run's history from ``events.jsonl`` (``None`` when the run has none).

    Returns:
        An observation per guarantee, and the broken ones with the spec location of each.
    """
    from stagewarden.prover import HOLDS, verify

    report = verify(loaded)
    attack: dict[str, Any] | None = config.attack
    malicious = set(attack.get("stages", [])) if attack else set()
    outside = _outside_model(loaded, attack) if attack else None
    tally = _tally(attack, history, config) if attack and history else None
    status = summary.training.status if summary.training is not None else None
    observations: list[GuaranteeObservation] = []
    broken: list[tuple[GuaranteeObservation, str]] = []
    for index, (guarantee, result) in enumerate(zip(loaded.spec.guarantees, report.guarantees, strict=True)):
        kind = guarantee.kind
        if result.verdict != HOLDS:
            outcome, detail = NOT_PROMISED, f"the prover's verdict is {result.verdict}: the spec does not promise it"
        elif kind == "no_framing":
            outcome, detail = _no_framing(summary, history, malicious)
        elif kind == "liveness":
            if outside:
                outcome, detail = NOT_CHECKABLE, outside
            elif status == "completed":
                outcome, detail = CONSISTENT, f"the run completed all {summary.steps} steps"
            elif status == "stopped":
                reason = history.stopped if history is not None and history.stopped else "no reason recorded"
                outcome, detail = BROKEN, f"training stopped before the end: {reason}"
            else:
                outcome, detail = NOT_CHECKABLE, f"the run ended with status {status}, not for a reason the spec models"
        elif kind == "overhead":
            outcome, detail = NOT_CHECKABLE, "the run does not measure unprotected training to compare with"
        elif attack is None:
            outcome, detail = CONSISTENT, "the run records no attack: no unit was tampered with"
        elif outside:
            outcome, detail = NOT_CHECKABLE, outside
        elif tally is None:
            outcome, detail = NOT_CHECKABLE, "events.jsonl is missing: which computations were kept is unknown"
        elif isinstance(guarantee, BoundedDamageGuarantee):
            k, n = guarantee.max_undetected, len(tally.in_model)
            outcome = BROKEN if n > k else CONSISTENT
            detail = f"{n} tampered unit(s) stayed in the model undetected (K = {k})"
            if n > k and result.figure is not None:
                detail += f", an outcome the prover bounds at probability {result.figure.value:.3g}"
        elif kind == "data_integrity":
            poisoned = len(tally.in_model) if attack.get("kind") == "poison_data" else 0
            outcome = BROKEN if poisoned else CONSISTENT
            detail = f"{poisoned} poisoned micro-batch(es) reached the model"
        else:  # detection
            outcome, detail = _detection(loaded, guarantee, attack, tally)
        observation = GuaranteeObservation(guarantee.id, kind, result.verdict, outcome, detail)
        observations.append(observation)
        if outcome == BROKEN:
            broken.append((observation, str(loaded.source.value(("guarantees", index)))))
    return observations, broken


def _no_framing(summary: RunRecord, history: RunHistory | None, malicious: set[int]) -> tuple[str, str]:
    training = summary.training
    if history is not None:
        blamed = [(d.get("stage"), d.get("step"), d.get("worker")) for _, d in history.detections]
    else:
        recorded = training.detections if training is not None else []
        blamed = [(d.stage, d.step, d.worker) for d in recorded]
    framed = [b for b in blamed if b[0] not in malicious]
    false_alarms = training.false_alarms if training is not None else 0
    if framed:
        stage, step, worker = framed[0]
        return BROKEN, (
            f"{len(framed)} detection(s) blame a stage the run's attack plan does not make malicious "
            f"(first: worker {worker}, stage {stage}, step {step})"
        )
    if false_alarms > 0:
        return BROKEN, f"summary.json counts {false_alarms} false alarm(s)"
    return CONSISTENT, f"{len(blamed)} detection(s), each blaming a malicious stage"


def _detection(loaded: LoadedSpec, guarantee: Any, attack: dict[str, Any], tally: _Tally) -> tuple[str, str]:
    capability = attack_capability(attack)
    scope = guarantee.of or [c for c in loaded.spec.adversary.capabilities if c not in ("withhold", "false_accuse")]
    if capability not in scope:
        return CONSISTENT, f"the recorded attack uses {capability}, outside the guarantee's scope"
    p = float(guarantee.probability) if not isinstance(guarantee.probability, str) else None
    if p is None:
        from stagewarden.spec import probability_fraction

        p = float(probability_fraction(guarantee.probability))
    caught, missed = len(tally.caught), len(tally.missed)
    n = caught + missed
    if n == 0:
        return CONSISTENT, "the attack tampered with no unit"
    said = f"{caught} of {n} tampered unit(s) detected"
    if p >= 1.0:
        return (BROKEN, f"{said}: {missed} went undetected") if missed else (CONSISTENT, said)
    low, high = clopper_pearson(caught, n, DETECTION_CONFIDENCE)
    if high < p:
        return BROKEN, f"{said}; the {DETECTION_CONFIDENCE:.1%} interval [{low:.3g}, {high:.3g}] lies below P = {p}"
    return CONSISTENT, f"{said}; the {DETECTION_CONFIDENCE:.1%} interval [{low:.3g}, {high:.3g}] admits P = {p}"
