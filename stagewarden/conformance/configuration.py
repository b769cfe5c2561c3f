"""Conformance check 1, configuration: every setting the spec determines (stages, replicas,
micro-batches, standby, horizon, receipts, attestation, checks and spot-check rate, response,
checkpoints) against the run's configuration. A departure that can weaken a guarantee is an error;
one that leaves the run at least as protected (a higher rate, extra standby) is a warning."""

from __future__ import annotations

import math

from stagewarden.attest.audit import Severity
from stagewarden.conformance.findings import ConformanceCode
from stagewarden.conformance.run import RunUnderCheck
from stagewarden.spec import RedundantNeighbourCheck, ReplicateCheck, RobustAggregationCheck, SpotCheck


def check_configuration(run: RunUnderCheck) -> None:
    """A finding for each setting of the spec the run's configuration departs from."""
    spec, c, top = run.spec, run.config, run.spec.topology
    file = "summary.json"
    for code, name, ours, theirs, path in (
        (ConformanceCode.SPEC_STAGES, "stages", run.summary.stages, top.stages, ("topology", "stages")),
        # the record counts pipelines (replicas x replicate copies); the configuration, replicas
        (ConformanceCode.SPEC_REPLICAS, "replicas", c.replicas, top.replicas, ("topology", "replicas")),
        (
            ConformanceCode.SPEC_MICROBATCHES,
            "micro-batches",
            run.summary.micro_batches,
            top.microbatches,
            ("topology", "microbatches"),
        ),
    ):
        if ours != theirs:
            run.add(code, f"the run has {ours} {name}, the spec {theirs}", spec=run.at(*path), file=file)
    if c.standby != top.standby:
        fewer = c.standby < top.standby
        run.add(
            ConformanceCode.SPEC_STANDBY,
            f"the run has {c.standby} standby worker(s), the spec {top.standby}"
            + ("" if fewer else " (more spares than the spec counts on)"),
            severity=Severity.ERROR if fewer else Severity.WARNING,
            spec=run.at("topology", "standby"),
            file=file,
        )
    if c.steps > top.steps:
        run.add(
            ConformanceCode.SPEC_HORIZON,
            f"the run is configured for {c.steps} steps, beyond the spec's horizon of {top.steps}: "
            "the guarantees say nothing about the steps after it",
            spec=run.at("topology", "steps"),
            file=file,
        )
    d = spec.defense
    for code, name, ours, theirs in (
        (ConformanceCode.SPEC_RECEIPTS, "receipts", c.receipts, d.receipts),
        (ConformanceCode.SPEC_ATTESTATION, "attestation", c.attestation, d.attestation),
    ):
        if ours != theirs:
            run.add(
                code,
                f"{name} are {'on' if ours else 'off'} in the run, {'on' if theirs else 'off'} in the spec",
                severity=Severity.ERROR if theirs else Severity.WARNING,
                spec=run.at("defense", name),
                file=file,
            )
    if d.data_commitment:
        weakens = "poison_data" in spec.adversary.capabilities
        run.add(
            ConformanceCode.SPEC_CHECK,
            "the spec commits the training data, which the runtime does not: poisoned batches are caught "
            "only on spot-checked stage-0 units",
            severity=Severity.ERROR if weakens else Severity.WARNING,
            spec=run.at("defense", "data_commitment"),
            file=file,
        )
    _check_checks(run, file)
    _check_response(run, file)


def _check_checks(run: RunUnderCheck, file: str) -> None:
    c, checks = run.config, run.spec.defense.checks
    spot = next(((i, x) for i, x in enumerate(checks) if isinstance(x, SpotCheck)), None)
    for i, check in enumerate(checks):
        if isinstance(check, RedundantNeighbourCheck):
            _check_neighbour(run, i, check, file)
        elif isinstance(check, ReplicateCheck):
            _check_replicate(run, i, check, file)
        elif isinstance(check, RobustAggregationCheck):
            if c.aggregation != check.rule:
                run.add(
                    ConformanceCode.SPEC_CHECK,
                    f"the spec aggregates the replicas' updates with {check.rule}; the run with {c.aggregation}",
                    spec=run.at("defense", "checks", i, "rule"),
                    file=file,
                )
        elif not isinstance(check, SpotCheck):
            run.add(
                ConformanceCode.SPEC_CHECK,
                f"the spec's {check.scheme} check is not carried out by the runtime, yet the prover's "
                "verdicts count it",
                spec=run.at("defense", "checks", i),
                file=file,
            )
    if c.verification == "redundant_neighbour" and not any(isinstance(x, RedundantNeighbourCheck) for x in checks):
        run.add(
            ConformanceCode.SPEC_CHECK,
            "the run has every stage's units recomputed by its neighbour, a check the spec does not have",
            severity=Severity.WARNING,
            spec=run.at("defense"),
            file=file,
        )
    if c.verification == "replicate" and not any(isinstance(x, ReplicateCheck) for x in checks):
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the run computes every unit {c.replicate_factor} times and compares the copies, a check the spec "
            "does not have",
            severity=Severity.WARNING,
            spec=run.at("defense"),
            file=file,
        )
    if spot is None:
        if c.verification == "spot_check":
            run.add(
                ConformanceCode.SPEC_CHECK,
                f"the run spot-checks units at rate {c.spot_check_rate}, a check the spec does not have",
                severity=Severity.WARNING,
                spec=run.at("defense"),
                file=file,
            )
        return
    i, check = spot
    if c.verification != "spot_check":
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the spec spot-checks units at rate {check.rate}; the run verifies nothing "
            f"(verification {c.verification})",
            spec=run.at("defense", "checks", i),
            file=file,
        )
        return
    if check.verifier != "coordinator":
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the spec's spot checks are re-executed by a {check.verifier} verifier; the run's by the coordinator",
            severity=Severity.WARNING,
            spec=run.at("defense", "checks", i, "verifier"),
            file=file,
        )
    if not math.isclose(c.spot_check_rate, check.rate, rel_tol=1e-12, abs_tol=0.0):
        lower = c.spot_check_rate < check.rate
        overhead = any(g.kind == "overhead" for g in run.spec.guarantees)
        run.add(
            ConformanceCode.SPEC_RATE,
            f"the run spot-checks at rate {c.spot_check_rate}, the spec at {check.rate}"
            + ("" if lower else " (more checks: the overhead verdict no longer covers the run)" if overhead else ""),
            severity=Severity.ERROR if lower or overhead else Severity.WARNING,
            spec=run.at("defense", "checks", i, "rate"),
            file=file,
        )


def _check_neighbour(run: RunUnderCheck, index: int, check: RedundantNeighbourCheck, file: str) -> None:
    c = run.config
    if c.verification != "redundant_neighbour":
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the spec's redundant_neighbour check is not carried out by the run (verification "
            f"{c.verification}), yet the prover's verdicts count it",
            spec=run.at("defense", "checks", index),
            file=file,
        )
        return
    ran = getattr(c, "input_via", "coordinator")
    if ran != check.input_via:
        strength = {"checked_worker": 0, "upstream": 1, "coordinator": 2}
        weaker = strength.get(ran, 0) < strength[check.input_via]
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the run's checkers get their input via {ran}, the spec's via {check.input_via}",
            severity=Severity.ERROR if weaker else Severity.WARNING,
            spec=run.at("defense", "checks", index, "input_via"),
            file=file,
        )


def _check_response(run: RunUnderCheck, file: str) -> None:
    c, d = run.config, run.spec.defense
    if c.response not in d.response:
        run.add(
            ConformanceCode.SPEC_RESPONSE,
            f"the run responds to a detection with {c.response}; the spec allows {', '.join(d.response)}",
            spec=run.at("defense", "response"),
            file=file,
        )
    elif "rollback" in d.response and c.response != "rollback":
        run.add(
            ConformanceCode.SPEC_RESPONSE,
            f"the spec lists rollback, so the prover counts tampered units as undone by it; the run "
            f"responds with {c.response}, which does not audit and roll back to before the first tampered step",
            severity=Severity.WARNING,
            spec=run.at("defense", "response"),
            file=file,
        )
    if c.checkpoint_every > 0 and c.checkpoint_every > d.checkpoint_every:
        run.add(
            ConformanceCode.SPEC_CHECKPOINTS,
            f"the run writes a verified checkpoint every {c.checkpoint_every} steps, the spec every "
            f"{d.checkpoint_every}",
            severity=Severity.WARNING,
            spec=run.at("defense", "checkpoint_every"),
            file=file,
        )


def _check_replicate(run: RunUnderCheck, i: int, check: ReplicateCheck, file: str) -> None:
    """The spec's ``replicate`` check against the run's: the same factor (fewer copies weaken a
    majority; more are a warning) and the same way of resolving a disagreement."""
    c = run.config
    if c.verification != "replicate":
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the spec has every unit computed by {check.factor} copies; the run verifies with {c.verification}",
            spec=run.at("defense", "checks", i),
            file=file,
        )
        return
    if c.replicate_factor != check.factor:
        fewer = c.replicate_factor < check.factor
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the run computes every unit {c.replicate_factor} times, the spec {check.factor} times",
            severity=Severity.ERROR if fewer else Severity.WARNING,
            spec=run.at("defense", "checks", i, "factor"),
            file=file,
        )
    if c.replicate_resolve != check.resolve:
        run.add(
            ConformanceCode.SPEC_CHECK,
            f"the spec resolves a disagreement between copies by {check.resolve}; the run by {c.replicate_resolve}",
            spec=run.at("defense", "checks", i, "resolve"),
            file=file,
        )
