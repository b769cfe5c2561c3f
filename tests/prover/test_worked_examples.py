"""The worked examples of the spec language design (section 7) come out as stated, numbers
included."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from stagewarden.prover import Report, verify
from stagewarden.spec import load_example, load_text

_CACHE: dict[str, Report] = {}


def report(name: str) -> Report:
    """The prover's report for a packaged example (computed once per test session)."""
    if name not in _CACHE:
        _CACHE[name] = verify(load_example(name))
    return _CACHE[name]


def verdicts(name: str) -> dict[str, str]:
    """Guarantee id -> verdict for a packaged example."""
    return {g.id: g.verdict for g in report(name).guarantees}


def assumption_keys(name: str, guarantee: str) -> set[str]:
    """Keys of the assumptions a holding guarantee rests on."""
    return {a.key for a in report(name).by_id(guarantee).assumptions}


def test_example1_paper_scheme() -> None:
    """Example 1: detection, no_framing and liveness hold; overhead 0.25 is violated at 5/6."""
    assert verdicts("paper-redundant-neighbour") == {
        "integrity": "holds",
        "no-framing": "holds",
        "liveness": "holds",
        "cheap": "violated",
    }
    cheap = report("paper-redundant-neighbour").by_id("cheap")
    assert cheap.figure is not None and cheap.figure.exact == "5/6"
    keys = assumption_keys("paper-redundant-neighbour", "integrity")
    assert {"check:0", "budget", "honest:1"} <= keys  # the check, one malicious stage, the unchecked last stage honest
    assert "response:skip_stage" in assumption_keys("paper-redundant-neighbour", "liveness")


def test_example1_explanations_cite_spec_lines() -> None:
    """Every assumption of a holding guarantee names the example and a line number."""
    for result in report("paper-redundant-neighbour").guarantees:
        for a in result.assumptions:
            file, line = a.location.rsplit(":", 1)
            assert file == "example:paper-redundant-neighbour" and int(line) >= 1


def test_example2_adjacent_collusion() -> None:
    """Example 2: two colluding stages break detection with the adjacent pattern (s, s+1), 1 <= s <= 3."""
    result = report("paper-adjacent-collusion").by_id("integrity")
    assert result.verdict == "violated"
    assert result.trace is not None
    roles = {m["worker"]: m["role"] for m in result.trace["malicious"]}
    assert sorted(roles.values()) == ["covers", "tamperer"]
    tamperer = next(int(w.split(":")[0]) for w, r in roles.items() if r == "tamperer")
    coverer = next(int(w.split(":")[0]) for w, r in roles.items() if r == "covers")
    assert coverer == tamperer + 1 and 1 <= tamperer <= 3
    assert result.figure is not None and result.figure.value == 0.0


def test_example2_without_collusion_holds() -> None:
    """Example 2 variant: without collusion, detection holds and rests on the no-collusion assumption."""
    assert verdicts("paper-adjacent-no-collusion")["integrity"] == "holds"
    assert "collusion" in assumption_keys("paper-adjacent-no-collusion", "integrity")


def test_example3_equivocation_framing() -> None:
    """Example 3: upstream relay + equivocation frames an honest stage; receipts or the coordinator relay fix it."""
    result = report("paper-equivocation-upstream").by_id("no-framing")
    assert result.verdict == "violated"
    assert result.trace is not None
    assert result.trace["outcome"]["mechanism"] == "equivocation"
    equivocator = result.trace["malicious"][0]["worker"]
    blamed = result.trace["outcome"]["blamed"]
    assert int(blamed.split(":")[0]) == int(equivocator.split(":")[0]) + 1
    assert verdicts("paper-equivocation-receipts") == {"no-framing": "holds"}
    assert verdicts("paper-equivocation-coordinator") == {"no-framing": "holds"}
    assert "receipts" in assumption_keys("paper-equivocation-receipts", "no-framing")


def test_example4_ejection_liveness() -> None:
    """Example 4: eject without a standby breaks liveness; one standby restores it."""
    assert verdicts("paper-eject-no-standby") == {"liveness": "violated"}
    assert verdicts("paper-eject-standby") == {"liveness": "holds"}
    assert "standby" in assumption_keys("paper-eject-standby", "liveness")


def test_example5_spot_check_numbers() -> None:
    """Example 5: one worker's try under rollback and eject passes 301 units with 0.95^301 ~ 1.97e-7;
    three workers can bank units in turns, which no closed form bounds below the bound: rollback
    with ejection is unknown (the best strategy shown to exist stays within the bound, the sound
    bound does not); eject alone is violated (~2.6e-5)."""
    q = Fraction(19, 20) ** 301
    assert math.isclose(float(q), 1.97e-7, rel_tol=5e-3)
    rollback = report("spot-check-rollback").by_id("damage")
    assert rollback.verdict == "unknown"
    assert "the best strategy shown to exist reaches" in rollback.summary
    eject = report("spot-check-eject").by_id("damage")
    assert eject.verdict == "violated"
    p, f, k = Fraction(1, 20), 3, 300
    negbin = sum(math.comb(k + f, j) * p**j * (1 - p) ** (k + f - j) for j in range(f))
    assert eject.figure is not None and math.isclose(eject.figure.value, float(negbin), rel_tol=1e-12)
    assert math.isclose(eject.figure.value, 2.6e-5, rel_tol=0.03)
    for name in ("spot-check-rollback", "spot-check-eject"):
        detection = report(name).by_id("integrity")
        assert detection.verdict == "violated" and detection.figure is not None and detection.figure.exact == "1/20"
    # The bound for rollback with ejection is what eject alone allows.
    assert rollback.figure is not None and math.isclose(rollback.figure.value, float(negbin), rel_tol=1e-12)
    one = verify(
        load_text(load_example("spot-check-rollback").text.replace("max_malicious: 3", "max_malicious: 1"), "one.yaml")
    )
    single = one.by_id("damage")
    assert single.verdict == "holds" and single.figure is not None
    assert math.isclose(single.figure.value, float(q), rel_tol=1e-12)


def test_example5_rollback_alone_lets_the_convict_retry() -> None:
    """Rollback without ejection leaves the convict in place: it retries until a run of passes
    since its last detection is long enough, and the three workers' runs add up. Each aiming at
    its share (101, 100, 100 units in a row within its 8,000 units) is a strategy that exists,
    and it alone breaks the bound."""
    from stagewarden.prover.damage import run_probability

    loaded = load_text(
        load_example("spot-check-rollback").text.replace("response: [rollback, eject]", "response: [rollback]"),
        "x.yaml",
    )
    result = verify(loaded).by_id("damage")
    assert result.verdict == "violated"
    d = Fraction(1, 20)
    split = run_probability(8000, d, 101).value * run_probability(8000, d, 100).value ** 2
    assert result.figure is not None and math.isclose(result.figure.value, split, rel_tol=1e-9)
    assert "at least" in result.summary
    # Far above the single-try figure the reference result gives.
    assert result.figure.value > 1000 * float(1 - (1 - Fraction(19, 20) ** 301) ** 3)


def test_example6_tee() -> None:
    """Example 6: attested TEEs make detection hold (trivially, naming TEE and attestation); without
    attestation it is violated with a note."""
    attested = report("tee-attested").by_id("integrity")
    assert attested.verdict == "holds" and attested.trivially
    keys = assumption_keys("tee-attested", "integrity")
    assert "attestation" in keys and "tee_compromise" in keys and any(k.startswith("tee:") for k in keys)
    unattested = report("tee-unattested").by_id("integrity")
    assert unattested.verdict == "violated"
    assert any("attestation" in note for note in unattested.notes)


def test_example7_robust_aggregation() -> None:
    """Example 7: masking is not detection; one corrupted replica of four is outvoted, two are not."""
    assert verdicts("robust-aggregation-median") == {"integrity": "violated", "damage": "holds"}
    assert "check:0" in assumption_keys("robust-aggregation-median", "damage")
    assert verdicts("robust-aggregation-median-two") == {"integrity": "violated", "damage": "violated"}


def test_example9_replicate() -> None:
    """Example 9: two colluding copies outvote the honest third under a majority vote, and do not
    under a referee."""
    assert verdicts("replicate-majority") == {"integrity": "violated", "fair": "violated"}
    assert verdicts("replicate-referee") == {"integrity": "holds", "fair": "holds"}


def test_example8_checked_worker_relay() -> None:
    """Example 8: relaying the check's input through the checked stage defeats detection with one
    malicious stage; receipts fix it."""
    result = report("paper-checked-worker-relay").by_id("integrity")
    assert result.verdict == "violated"
    assert result.trace is not None and len(result.trace["malicious"]) == 1
    assert verdicts("paper-checked-worker-relay-receipts") == {"integrity": "holds"}
    assert "receipts" in assumption_keys("paper-checked-worker-relay-receipts", "integrity")


@pytest.mark.parametrize("name", ["demo"])
def test_demo_spec_holds(name: str) -> None:
    """The demo protocol's guarantees all hold."""
    assert set(verdicts(name).values()) == {"holds"}
