"""Conformance of a training run to its threat-model spec: does the run directory show the system
the prover reasoned about, and did it keep the promises the prover says hold?

:func:`check_conformance` compares a run directory (``summary.json``, ``events.jsonl`` and the
offline audit's findings) with a loaded spec and returns a :class:`ConformanceReport`:

1. configuration: every setting the spec determines (stages, replicas, micro-batches, standby,
   horizon, receipts, attestation, checks and spot-check rate, response, checkpoints) against
   the run's configuration; a departure that can weaken a guarantee is an error, one that leaves
   the run at least as protected (a higher rate, extra standby) a warning;
2. attestation: with ``defense.attestation`` every worker of the run has attestation results and
   the audit rejected none of them;
3. spot checks: the sampled fraction of the eligible units against the spec's rate, within an exact
   two-sided Clopper-Pearson interval (99.9% by default), and each logged sample recomputed from
   the revealed secret as the coordinator draws it;
4. responses: every detection was answered by a response the spec lists, carried out;
5. guarantees: each guarantee the prover says holds, against what the run shows (see
   :func:`stagewarden.guarantee_observation.observe_guarantees`), or the reason it cannot be
   checked from a run.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path
from typing import Any

from stagewarden.attest.audit import AuditReport, Severity
from stagewarden.attest.rundir import RunDir
from stagewarden.confidence import clopper_pearson
from stagewarden.guarantee_observation import UNCHECKED, GuaranteeObservation, observe_guarantees
from stagewarden.run_history import EVENTS_FILE, RunHistory, eligible_units, read_events, reconstruct
from stagewarden.spec import LoadedSpec, RedundantNeighbourCheck, SpotCheck

#: Default confidence of the interval the observed spot-check rate is judged by.
RATE_CONFIDENCE = 0.999
#: Error codes of the attestation layer that mean a worker's attestation was not accepted.
ATTESTATION_CODES = frozenset(
    {
        "RESULT_MALFORMED",
        "RESULT_SIGNATURE",
        "RESULT_NOT_YET_VALID",
        "RESULT_EXPIRED",
        "RESULT_STATUS",
        "RESULT_NONCE",
        "RESULT_KEY_MISMATCH",
        "WORKER_NOT_ADMITTED",
        "KEY_UNATTESTED",
    }
)


class ConformanceError(ValueError):
    """A run directory whose configuration cannot be read, so it cannot be compared with a spec."""


class ConformanceCode(enum.StrEnum):
    """Stable codes of conformance findings (they never change meaning)."""

    SPEC_STAGES = "SPEC_STAGES"
    SPEC_REPLICAS = "SPEC_REPLICAS"
    SPEC_MICROBATCHES = "SPEC_MICROBATCHES"
    SPEC_STANDBY = "SPEC_STANDBY"
    SPEC_HORIZON = "SPEC_HORIZON"
    SPEC_RECEIPTS = "SPEC_RECEIPTS"
    SPEC_ATTESTATION = "SPEC_ATTESTATION"
    SPEC_CHECK = "SPEC_CHECK"
    SPEC_RATE = "SPEC_RATE"
    SPEC_RESPONSE = "SPEC_RESPONSE"
    SPEC_CHECKPOINTS = "SPEC_CHECKPOINTS"
    WORKER_UNATTESTED = "WORKER_UNATTESTED"
    RATE_OBSERVED = "RATE_OBSERVED"
    SAMPLE_MISMATCH = "SAMPLE_MISMATCH"
    SAMPLE_COUNTS = "SAMPLE_COUNTS"
    DETECTION_UNANSWERED = "DETECTION_UNANSWERED"
    RESPONSE_DEPARTURE = "RESPONSE_DEPARTURE"
    GUARANTEE_BROKEN = "GUARANTEE_BROKEN"
    EVENTS_UNREADABLE = "EVENTS_UNREADABLE"


@dataclasses.dataclass(frozen=True)
class ConformanceFinding:
    """One way the run departs from its spec.

    Attributes:
        code: What kind of departure.
        severity: Error (fails the audit) or warning.
        message: What departs, in words.
        spec: The spec location (``file:line:column``) of the setting or guarantee concerned.
        file: The run directory file the evidence is in.
        workers: Workers the finding names.
        step: The step concerned.
        stage: The stage concerned.
        guarantee: The guarantee id concerned.
    """

    code: ConformanceCode
    severity: Severity
    message: str
    spec: str | None = None
    file: str | None = None
    workers: tuple[str, ...] = ()
    step: int | None = None
    stage: int | None = None
    guarantee: str | None = None

    @property
    def where(self) -> str:
        """A short location: the spec position, then the run file, stage and step."""
        parts = [p for p in (self.spec, self.file) if p]
        if self.guarantee:
            parts.append(f"guarantee={self.guarantee}")
        if self.stage is not None:
            parts.append(f"stage={self.stage}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The finding with the audit finding's keys (``null`` where they do not apply) plus
        ``spec`` and ``guarantee``."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "message": self.message,
            "workers": list(self.workers),
            "file": self.file,
            "record": None,
            "offset": None,
            "step": self.step,
            "micro_batch": None,
            "unit": None,
            "stage": self.stage,
            "spec": self.spec,
            "guarantee": self.guarantee,
        }


@dataclasses.dataclass(frozen=True)
class RateObservation:
    """The spot-check rate the run shows.

    Attributes:
        sampled: Units sampled.
        eligible: Units that could have been sampled.
        interval: The Clopper-Pearson interval of the rate.
        confidence: Its confidence.
        expected: The spec's rate.
        source: Where the counts come from (``events.jsonl``, or estimated from ``summary.json``).
    """

    sampled: int
    eligible: int
    interval: tuple[float, float]
    confidence: float
    expected: float
    source: str

    @property
    def rate(self) -> float:
        """The observed rate."""
        return self.sampled / self.eligible

    @property
    def consistent(self) -> bool:
        """Whether the spec's rate lies in the interval."""
        return self.interval[0] <= self.expected <= self.interval[1]

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "sampled": self.sampled,
            "eligible": self.eligible,
            "rate": self.rate,
            "interval": list(self.interval),
            "confidence": self.confidence,
            "expected": self.expected,
            "consistent": self.consistent,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class ConformanceReport:
    """The outcome of checking a run against a spec.

    Attributes:
        spec_file: The spec's file.
        spec_name: Its name.
        findings: The departures found.
        guarantees: Each guarantee and what the run shows about it.
        rate: The observed spot-check rate (``None`` when the spec has no spot check).
        attack: The attack plan the run records (its ground truth), or ``None`` for none.
        unchecked: What the spec assumes that no run can show.
    """

    spec_file: str
    spec_name: str
    findings: tuple[ConformanceFinding, ...]
    guarantees: tuple[GuaranteeObservation, ...]
    rate: RateObservation | None
    attack: dict[str, Any] | None
    unchecked: tuple[str, ...]

    @property
    def errors(self) -> tuple[ConformanceFinding, ...]:
        """The error findings."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def clean(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The ``conformance`` object of the audit's JSON report."""
        return {
            "spec": self.spec_file,
            "name": self.spec_name,
            "clean": self.clean,
            "rate": None if self.rate is None else self.rate.to_json(),
            "attack": self.attack,
            "guarantees": [g.to_json() for g in self.guarantees],
            "unchecked": list(self.unchecked),
        }


def spec_settings(loaded: LoadedSpec) -> dict[str, Any]:
    """The run configuration a spec determines, as ``stagewarden train --spec`` maps it (without
    its flags): topology, receipts, attestation, the verification mode (a spot check first, else a
    redundant-neighbour check), the first response and the checkpoint interval."""
    spec = loaded.spec
    spot = [c for c in spec.defense.checks if isinstance(c, SpotCheck)]
    neighbour = [c for c in spec.defense.checks if isinstance(c, RedundantNeighbourCheck)]
    extra: dict[str, Any] = {}
    if spot:
        extra = {"verification": "spot_check", "spot_check_rate": spot[0].rate}
    elif neighbour:
        extra = {"verification": "redundant_neighbour", "input_via": neighbour[0].input_via}
    return {
        **extra,
        "stages": spec.topology.stages,
        "microbatches": spec.topology.microbatches,
        "standby": spec.topology.standby,
        "receipts": spec.defense.receipts,
        "attestation": spec.defense.attestation,
        "response": spec.defense.response[0],
        "checkpoint_every": spec.defense.checkpoint_every,
    }


class _Checker:
    def __init__(self, run_dir: Path, loaded: LoadedSpec, audit: AuditReport | None, confidence: float) -> None:
        self.run_dir = run_dir
        self.loaded = loaded
        self.spec = loaded.spec
        self.audit = audit
        self.confidence = confidence
        self.findings: list[ConformanceFinding] = []
        self.summary = RunDir(run_dir).summary
        config = self.summary.extra.get("config")
        if not isinstance(config, dict):
            raise ConformanceError(f"{run_dir}/summary.json records no run configuration ('config')")
        from stagewarden.runtime.config import ConfigError, RunConfig

        try:
            self.config = RunConfig.from_json(config)
        except ConfigError as exc:
            raise ConformanceError(f"{run_dir}/summary.json: {exc}") from None
        self.history: RunHistory | None = None
        events = run_dir / EVENTS_FILE
        if events.exists():
            try:
                parsed, problems = read_events(events)
            except OSError as exc:
                raise ConformanceError(f"cannot read {events}: {exc.strerror or exc}") from None
            self.history = reconstruct(parsed)
            for problem in problems + self.history.problems:
                self.add(ConformanceCode.EVENTS_UNREADABLE, problem, severity=Severity.WARNING, file=EVENTS_FILE)

    def at(self, *path: str | int) -> str:
        """The ``file:line:column`` of a spec setting (of the nearest enclosing value if defaulted)."""
        return str(self.loaded.source.value(tuple(path)))

    def add(self, code: ConformanceCode, message: str, *, severity: Severity = Severity.ERROR, **where: Any) -> None:
        self.findings.append(ConformanceFinding(code, severity, message, **where))

    # -- 1. configuration ---------------------------------------------------------------------

    def check_configuration(self) -> None:
        spec, c, top = self.spec, self.config, self.spec.topology
        file = "summary.json"
        for code, name, ours, theirs, path in (
            (ConformanceCode.SPEC_STAGES, "stages", self.summary.stages, top.stages, ("topology", "stages")),
            (ConformanceCode.SPEC_REPLICAS, "replicas", self.summary.replicas, top.replicas, ("topology", "replicas")),
            (
                ConformanceCode.SPEC_MICROBATCHES,
                "micro-batches",
                self.summary.micro_batches,
                top.microbatches,
                ("topology", "microbatches"),
            ),
        ):
            if ours != theirs:
                self.add(code, f"the run has {ours} {name}, the spec {theirs}", spec=self.at(*path), file=file)
        if c.standby != top.standby:
            fewer = c.standby < top.standby
            self.add(
                ConformanceCode.SPEC_STANDBY,
                f"the run has {c.standby} standby worker(s), the spec {top.standby}"
                + ("" if fewer else " (more spares than the spec counts on)"),
                severity=Severity.ERROR if fewer else Severity.WARNING,
                spec=self.at("topology", "standby"),
                file=file,
            )
        if c.steps > top.steps:
            self.add(
                ConformanceCode.SPEC_HORIZON,
                f"the run is configured for {c.steps} steps, beyond the spec's horizon of {top.steps}: "
                "the guarantees say nothing about the steps after it",
                spec=self.at("topology", "steps"),
                file=file,
            )
        d = spec.defense
        for code, name, ours, theirs in (
            (ConformanceCode.SPEC_RECEIPTS, "receipts", c.receipts, d.receipts),
            (ConformanceCode.SPEC_ATTESTATION, "attestation", c.attestation, d.attestation),
        ):
            if ours != theirs:
                self.add(
                    code,
                    f"{name} are {'on' if ours else 'off'} in the run, {'on' if theirs else 'off'} in the spec",
                    severity=Severity.ERROR if theirs else Severity.WARNING,
                    spec=self.at("defense", name),
                    file=file,
                )
        if d.data_commitment:
            weakens = "poison_data" in spec.adversary.capabilities
            self.add(
                ConformanceCode.SPEC_CHECK,
                "the spec commits the training data, which the runtime does not: poisoned batches are caught "
                "only on spot-checked stage-0 units",
                severity=Severity.ERROR if weakens else Severity.WARNING,
                spec=self.at("defense", "data_commitment"),
                file=file,
            )
        self._check_checks(file)
        self._check_response(file)

    def _check_checks(self, file: str) -> None:
        c, checks = self.config, self.spec.defense.checks
        spot = next(((i, x) for i, x in enumerate(checks) if isinstance(x, SpotCheck)), None)
        for i, check in enumerate(checks):
            if isinstance(check, RedundantNeighbourCheck):
                self._check_neighbour(i, check, file)
            elif not isinstance(check, SpotCheck):
                self.add(
                    ConformanceCode.SPEC_CHECK,
                    f"the spec's {check.scheme} check is not carried out by the runtime, yet the prover's "
                    "verdicts count it",
                    spec=self.at("defense", "checks", i),
                    file=file,
                )
        if c.verification == "redundant_neighbour" and not any(isinstance(x, RedundantNeighbourCheck) for x in checks):
            self.add(
                ConformanceCode.SPEC_CHECK,
                "the run has every stage's units recomputed by its neighbour, a check the spec does not have",
                severity=Severity.WARNING,
                spec=self.at("defense"),
                file=file,
            )
        if spot is None:
            if c.verification == "spot_check":
                self.add(
                    ConformanceCode.SPEC_CHECK,
                    f"the run spot-checks units at rate {c.spot_check_rate}, a check the spec does not have",
                    severity=Severity.WARNING,
                    spec=self.at("defense"),
                    file=file,
                )
            return
        i, check = spot
        if c.verification != "spot_check":
            self.add(
                ConformanceCode.SPEC_CHECK,
                f"the spec spot-checks units at rate {check.rate}; the run verifies nothing "
                f"(verification {c.verification})",
                spec=self.at("defense", "checks", i),
                file=file,
            )
            return
        if check.verifier != "coordinator":
            self.add(
                ConformanceCode.SPEC_CHECK,
                f"the spec's spot checks are re-executed by a {check.verifier} verifier; the run's by the coordinator",
                severity=Severity.WARNING,
                spec=self.at("defense", "checks", i, "verifier"),
                file=file,
            )
        if not math.isclose(c.spot_check_rate, check.rate, rel_tol=1e-12, abs_tol=0.0):
            lower = c.spot_check_rate < check.rate
            overhead = any(g.kind == "overhead" for g in self.spec.guarantees)
            self.add(
                ConformanceCode.SPEC_RATE,
                f"the run spot-checks at rate {c.spot_check_rate}, the spec at {check.rate}"
                + (
                    "" if lower else " (more checks: the overhead verdict no longer covers the run)" if overhead else ""
                ),
                severity=Severity.ERROR if lower or overhead else Severity.WARNING,
                spec=self.at("defense", "checks", i, "rate"),
                file=file,
            )

    def _check_neighbour(self, index: int, check: RedundantNeighbourCheck, file: str) -> None:
        c = self.config
        if c.verification != "redundant_neighbour":
            self.add(
                ConformanceCode.SPEC_CHECK,
                f"the spec's redundant_neighbour check is not carried out by the run (verification "
                f"{c.verification}), yet the prover's verdicts count it",
                spec=self.at("defense", "checks", index),
                file=file,
            )
            return
        ran = getattr(c, "input_via", "coordinator")
        if ran != check.input_via:
            strength = {"checked_worker": 0, "upstream": 1, "coordinator": 2}
            weaker = strength.get(ran, 0) < strength[check.input_via]
            self.add(
                ConformanceCode.SPEC_CHECK,
                f"the run's checkers get their input via {ran}, the spec's via {check.input_via}",
                severity=Severity.ERROR if weaker else Severity.WARNING,
                spec=self.at("defense", "checks", index, "input_via"),
                file=file,
            )

    def _check_response(self, file: str) -> None:
        c, d = self.config, self.spec.defense
        if c.response not in d.response:
            self.add(
                ConformanceCode.SPEC_RESPONSE,
                f"the run responds to a detection with {c.response}; the spec allows {', '.join(d.response)}",
                spec=self.at("defense", "response"),
                file=file,
            )
        elif "rollback" in d.response and c.response != "rollback":
            self.add(
                ConformanceCode.SPEC_RESPONSE,
                f"the spec lists rollback, so the prover counts tampered units as undone by it; the run "
                f"responds with {c.response}, which does not audit and roll back to before the first tampered step",
                severity=Severity.WARNING,
                spec=self.at("defense", "response"),
                file=file,
            )
        if c.checkpoint_every > 0 and c.checkpoint_every > d.checkpoint_every:
            self.add(
                ConformanceCode.SPEC_CHECKPOINTS,
                f"the run writes a verified checkpoint every {c.checkpoint_every} steps, the spec every "
                f"{d.checkpoint_every}",
                severity=Severity.WARNING,
                spec=self.at("defense", "checkpoint_every"),
                file=file,
            )

    # -- 2. attestation -------------------------------------------------------------------------

    def check_attestation(self) -> None:
        if not self.spec.defense.attestation:
            return
        run = RunDir(self.run_dir)
        rejected: dict[str, list[str]] = {}
        for f in self.audit.findings if self.audit is not None else ():
            if str(f.code) in ATTESTATION_CODES:
                for w in f.workers:
                    rejected.setdefault(w, []).append(str(f.code))
        for worker in self.summary.workers:
            if not run.results(worker.id):
                why = "has no attestation result"
            elif worker.id in rejected:
                why = f"has attestation the audit rejects ({', '.join(sorted(set(rejected[worker.id])))})"
            else:
                continue
            self.add(
                ConformanceCode.WORKER_UNATTESTED,
                f"the spec requires attestation, but worker {worker.id} {why}",
                spec=self.at("defense", "attestation"),
                file=f"attestation/{worker.id}.ear",
                workers=(worker.id,),
                stage=worker.stage,
            )

    # -- 3. spot-check rate -------------------------------------------------------------------------

    def check_rate(self) -> RateObservation | None:
        spot = next((x for x in self.spec.defense.checks if isinstance(x, SpotCheck)), None)
        if spot is None or self.config.verification != "spot_check":
            return None
        recorded = self.summary.extra.get("spot_check")
        recorded_sampled = recorded.get("units_sampled") if isinstance(recorded, dict) else None
        if self.history is not None and self.history.samples:
            sampled, eligible = self._recompute_samples()
            source = EVENTS_FILE
            if type(recorded_sampled) is int and recorded_sampled != sampled:
                self.add(
                    ConformanceCode.SAMPLE_COUNTS,
                    f"summary.json counts {recorded_sampled} sampled units, {EVENTS_FILE} {sampled}",
                    file="summary.json",
                )
        else:
            units = self.summary.extra.get("units")
            forward = units.get("forward") if isinstance(units, dict) else None
            if type(recorded_sampled) is not int or type(forward) is not int or forward <= 0:
                return None
            sampled = recorded_sampled
            m = self.config.microbatches
            eligible = forward * (2 * m + 1) // m
            source = "summary.json (eligible units estimated from the forward receipts)"
        if eligible <= 0 or not 0 <= sampled <= eligible:
            self.add(
                ConformanceCode.SAMPLE_COUNTS,
                f"{sampled} sampled units out of {eligible} eligible is not a proportion",
                file="summary.json",
            )
            return None
        i = next(i for i, x in enumerate(self.spec.defense.checks) if isinstance(x, SpotCheck))
        observed = RateObservation(
            sampled, eligible, clopper_pearson(sampled, eligible, self.confidence), self.confidence, spot.rate, source
        )
        if not observed.consistent:
            low, high = observed.interval
            self.add(
                ConformanceCode.RATE_OBSERVED,
                f"{sampled} of {eligible} eligible units were spot-checked (rate {observed.rate:.4g}); the "
                f"{self.confidence:.1%} Clopper-Pearson interval [{low:.4g}, {high:.4g}] excludes the spec's "
                f"rate {spot.rate}",
                spec=self.at("defense", "checks", i, "rate"),
                file=source.split(" ")[0],
            )
        return observed

    def _recompute_samples(self) -> tuple[int, int]:
        """Recompute every logged sample from its commitment, secret and receipts digest with the
        coordinator's sampling function; return (sampled, eligible) over all reveals."""
        from stagewarden.runtime.spotcheck import SpotCheckError, sample_units, sampling_randomness

        assert self.history is not None
        c = self.config
        sampled = eligible = 0
        for sample in self.history.samples:
            units = eligible_units(c.stages, c.microbatches, sample.bypass)
            sampled += len(sample.sampled)
            eligible += len(units)
            if sample.commitment is None:
                continue
            try:
                randomness = sampling_randomness(sample.commitment, sample.step, sample.secret, sample.receipts_digest)
            except SpotCheckError as exc:
                self.add(ConformanceCode.SAMPLE_MISMATCH, str(exc), file=EVENTS_FILE, step=sample.step)
                continue
            expected = sample_units(units, c.spot_check_rate, randomness)
            if sorted(expected) != sorted(sample.sampled):
                self.add(
                    ConformanceCode.SAMPLE_MISMATCH,
                    f"the units sampled at step {sample.step} are not those the revealed secret draws at rate "
                    f"{c.spot_check_rate} ({len(sample.sampled)} logged, {len(expected)} drawn)",
                    file=EVENTS_FILE,
                    step=sample.step,
                )
        return sampled, eligible

    # -- 4. responses ------------------------------------------------------------------------------

    def check_responses(self) -> None:
        allowed = self.spec.defense.response
        spec_at = self.at("defense", "response")
        responses = self.history.responses if self.history is not None else self.summary.extra.get("responses", [])
        replacements = self.summary.extra.get("replacements", [])
        for r in responses if isinstance(responses, list) else []:
            plan = r.get("plan") if isinstance(r, dict) else None
            if not isinstance(plan, dict):
                continue
            step, done = r.get("step"), plan.get("response")
            if done not in allowed:
                fell = plan.get("fallback_from")
                self.add(
                    ConformanceCode.RESPONSE_DEPARTURE,
                    f"the detection at step {step} was answered with {done}"
                    + (f" (falling back from {fell}: {plan.get('reason', '')})" if fell else "")
                    + f"; the spec allows {', '.join(allowed)}",
                    spec=spec_at,
                    step=step if type(step) is int else None,
                    stage=plan.get("stage"),
                    workers=(str(plan.get("convict")),),
                )
            standby = plan.get("standby")
            if standby and not any(
                isinstance(x, dict) and x.get("worker") == plan.get("convict") and x.get("by") == standby
                for x in replacements
                if isinstance(replacements, list)
            ):
                self.add(
                    ConformanceCode.RESPONSE_DEPARTURE,
                    f"the response at step {step} hands stage {plan.get('stage')} to {standby}, but summary.json "
                    "records no such replacement",
                    file="summary.json",
                    step=step if type(step) is int else None,
                    workers=(str(plan.get("convict")), str(standby)),
                )
        self._check_answered(responses if isinstance(responses, list) else [])

    def _check_answered(self, responses: list[Any]) -> None:
        stopped = self.history.stopped if self.history is not None else None
        tail = (
            f"; the run stopped: {stopped}"
            if stopped
            else f"; the run ended with status {self.summary.extra.get('status')}"
        )
        if self.history is not None:
            answered = {(r.get("step"), r.get("attempt")) for r in responses if isinstance(r, dict)}
            groups = {(c.step, c.attempt): c for c, _ in self.history.detections}
            missing = [(key, c) for key, c in groups.items() if key not in answered]
            for (step, attempt), c in missing:
                first = c.detections[0]
                self.add(
                    ConformanceCode.DETECTION_UNANSWERED,
                    f"the detection at step {step} (computation {attempt + 1}) of stage {first.get('stage')} "
                    f"({first.get('check')}) was not answered by a response" + tail,
                    spec=self.at("defense", "response"),
                    file=EVENTS_FILE,
                    step=step,
                    stage=first.get("stage"),
                )
            return
        detections = self.summary.extra.get("detections", [])
        steps = {r.get("step") for r in responses if isinstance(r, dict)}
        for d in detections if isinstance(detections, list) else []:
            if isinstance(d, dict) and d.get("step") not in steps:
                self.add(
                    ConformanceCode.DETECTION_UNANSWERED,
                    f"the detection at step {d.get('step')} of stage {d.get('stage')} was not answered by a response"
                    + tail,
                    spec=self.at("defense", "response"),
                    file="summary.json",
                    step=d.get("step"),
                    stage=d.get("stage"),
                )


def check_conformance(
    run_dir: str | Path,
    loaded: LoadedSpec,
    audit: AuditReport | None = None,
    *,
    confidence: float = RATE_CONFIDENCE,
) -> ConformanceReport:
    """Check a run directory against a loaded spec (see the module docstring).

    Args:
        run_dir: The run directory.
        loaded: The spec, as :func:`stagewarden.spec.load_spec` returns it.
        audit: The offline audit of the same directory, whose attestation findings count for
            check 2; without it only the presence of attestation results is checked.
        confidence: The confidence of the interval the observed spot-check rate is judged by.

    Raises:
        ConformanceError: The run's configuration cannot be read.
        stagewarden.attest.rundir.RunDirError: The run directory or its summary cannot be read.
    """
    checker = _Checker(Path(run_dir), loaded, audit, confidence)
    checker.check_configuration()
    checker.check_attestation()
    rate = checker.check_rate()
    checker.check_responses()
    observations, broken = observe_guarantees(loaded, checker.config, checker.summary, checker.history)
    for obs, spec_at in broken:
        checker.add(
            ConformanceCode.GUARANTEE_BROKEN,
            f"the prover says {obs.id} ({obs.kind}) holds, but the run breaks it: {obs.detail}",
            spec=spec_at,
            guarantee=obs.id,
        )
    return ConformanceReport(
        spec_file=loaded.file,
        spec_name=loaded.spec.name,
        findings=tuple(checker.findings),
        guarantees=tuple(observations),
        rate=rate,
        attack=checker.config.attack,
        unchecked=UNCHECKED,
    )
