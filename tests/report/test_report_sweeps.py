"""The sensitivity curves are the prover's own figures on modified specs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from stagewarden.prover import verify
from stagewarden.prover.probability import negbin_tail
from stagewarden.report.sweeps import PROBE_DAMAGE, budget_sweep, detection_at_rate, rate_sweep
from stagewarden.spec import load_example


def test_rate_sweep_matches_the_verdict_at_the_spec_rate() -> None:
    """At the spec's own rate the sweep gives the figures of `verify`."""
    loaded = load_example("spot-check-rollback")
    sweep = rate_sweep(loaded)
    assert sweep is not None and sweep.spec_x == 0.05
    point = next(p for p in sweep.points if p.x == 0.05)
    report = verify(loaded)
    assert point.damage == report.by_id(sweep.damage_id).figure.value  # type: ignore[union-attr]
    assert point.detection == report.by_id(sweep.detection_id).figure.value  # type: ignore[union-attr]


def test_rate_sweep_follows_the_eject_closed_form() -> None:
    """With eject, Pr[more than K undetected] at rate p is the negative-binomial tail."""
    loaded = load_example("spot-check-eject")
    sweep = rate_sweep(loaded, rates=(0.02, 0.1))
    assert sweep is not None
    k = sweep.damage_k
    for point in sweep.points:
        expected = negbin_tail(loaded.spec.malicious_budget, Fraction(str(point.x)), k).value
        assert point.damage == pytest.approx(expected, rel=1e-9)
        assert point.detection == pytest.approx(point.x)


def test_budget_sweep_of_the_paper_scheme() -> None:
    """Redundant neighbour: one malicious stage is always caught, two adjacent colluders never."""
    sweep = budget_sweep(load_example("paper-redundant-neighbour"))
    by_budget = {int(p.x): p for p in sweep.points}
    assert by_budget[0].detection is None and by_budget[0].damage == 0.0  # nobody can tamper
    assert by_budget[1].detection == 1.0 and by_budget[1].detection_verdict == "holds"
    assert by_budget[2].detection == 0.0 and by_budget[2].detection_verdict == "violated"
    assert sweep.damage_id == PROBE_DAMAGE and sweep.probes == ["bounded_damage"]


def test_no_spot_check_no_rate_sweep() -> None:
    """A spec without a spot check has no rate curve."""
    assert rate_sweep(load_example("paper-redundant-neighbour")) is None


def test_detection_at_rate_is_monotone() -> None:
    """A higher spot-check rate never lowers the prover's per-unit detection probability."""
    loaded = load_example("demo")
    values = [detection_at_rate(loaded, r) for r in (0.01, 0.05, 0.2, 1.0)]
    assert values == sorted(values)  # type: ignore[type-var]
    assert values[1] == pytest.approx(0.05)
