"""Conformance check 3, spot checks: the sampled fraction of the eligible units against the spec's
rate, within an exact two-sided Clopper-Pearson interval, and each logged sample recomputed from
the revealed secret as the coordinator draws it."""

from __future__ import annotations

from stagewarden.confidence import clopper_pearson
from stagewarden.conformance.findings import ConformanceCode, RateObservation
from stagewarden.conformance.run import RunUnderCheck
from stagewarden.run_history import EVENTS_FILE, eligible_units
from stagewarden.spec import SpotCheck

#: Default confidence of the interval the observed spot-check rate is judged by.
RATE_CONFIDENCE = 0.999


def check_rate(run: RunUnderCheck) -> RateObservation | None:
    """The spot-check rate the run shows (``None`` without a spot check or the counts), with a
    finding when the spec's rate lies outside its interval or a logged sample is not the one drawn."""
    spot = next((x for x in run.spec.defense.checks if isinstance(x, SpotCheck)), None)
    if spot is None or run.config.verification != "spot_check":
        return None
    recorded = run.training.spot_check
    recorded_sampled = recorded.units_sampled if recorded is not None else None
    if run.history is not None and run.history.samples:
        sampled, eligible = _recompute_samples(run)
        source = EVENTS_FILE
        if recorded_sampled is not None and recorded_sampled != sampled:
            run.add(
                ConformanceCode.SAMPLE_COUNTS,
                f"summary.json counts {recorded_sampled} sampled units, {EVENTS_FILE} {sampled}",
                file="summary.json",
            )
    else:
        forward = run.training.units.forward
        if recorded_sampled is None or forward <= 0:
            return None
        sampled = recorded_sampled
        m = run.config.microbatches
        eligible = forward * (2 * m + 1) // m
        source = "summary.json (eligible units estimated from the forward receipts)"
    if eligible <= 0 or not 0 <= sampled <= eligible:
        run.add(
            ConformanceCode.SAMPLE_COUNTS,
            f"{sampled} sampled units out of {eligible} eligible is not a proportion",
            file="summary.json",
        )
        return None
    i = next(i for i, x in enumerate(run.spec.defense.checks) if isinstance(x, SpotCheck))
    observed = RateObservation(
        sampled, eligible, clopper_pearson(sampled, eligible, run.confidence), run.confidence, spot.rate, source
    )
    if not observed.consistent:
        low, high = observed.interval
        run.add(
            ConformanceCode.RATE_OBSERVED,
            f"{sampled} of {eligible} eligible units were spot-checked (rate {observed.rate:.4g}); the "
            f"{run.confidence:.1%} Clopper-Pearson interval [{low:.4g}, {high:.4g}] excludes the spec's "
            f"rate {spot.rate}",
            spec=run.at("defense", "checks", i, "rate"),
            file=source.split(" ")[0],
        )
    return observed


def _recompute_samples(run: RunUnderCheck) -> tuple[int, int]:
    """Recompute every logged sample from its commitment, secret and receipts digest with the
    coordinator's sampling function; return (sampled, eligible) over all reveals."""
    from stagewarden.runtime.compare import SpotCheckError
    from stagewarden.runtime.spotcheck import sample_units, sampling_randomness

    assert run.history is not None
    c = run.config
    sampled = eligible = 0
    for sample in run.history.samples:
        units = eligible_units(c.stages, c.microbatches, sample.bypass)
        sampled += len(sample.sampled)
        eligible += len(units)
        if sample.commitment is None:
            continue
        try:
            randomness = sampling_randomness(sample.commitment, sample.step, sample.secret, sample.receipts_digest)
        except SpotCheckError as exc:
            run.add(ConformanceCode.SAMPLE_MISMATCH, str(exc), file=EVENTS_FILE, step=sample.step)
            continue
        expected = sample_units(units, c.spot_check_rate, randomness)
        if sorted(expected) != sorted(sample.sampled):
            run.add(
                ConformanceCode.SAMPLE_MISMATCH,
                f"the units sampled at step {sample.step} are not those the revealed secret draws at rate "
                f"{c.spot_check_rate} ({len(sample.sampled)} logged, {len(expected)} drawn)",
                file=EVENTS_FILE,
                step=sample.step,
            )
    return sampled, eligible
