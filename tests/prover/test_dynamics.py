"""Verdicts under the protocol's dynamics (docs/semantics.rst, "Dynamics"): crashes, ejections,
framings and standby workers entering positions, each case worked out by hand."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from ruamel.yaml import YAML

from stagewarden.prover import GuaranteeResult, verify
from stagewarden.spec import load_text


def spec_text(**overrides: Any) -> str:
    """The takeover spec of the semantics page, with sections overridden."""
    doc: dict[str, Any] = {
        "version": 1,
        "name": "takeover",
        "topology": {"stages": 4, "standby": 1, "steps": 10, "microbatches": 1},
        "trust": {"honest": [0, 3]},
        "adversary": {"max_malicious": 1, "capabilities": ["tamper_activations"], "faults": {"crash": 1}},
        "defense": {"checks": [{"scheme": "redundant_neighbour"}], "response": ["eject"]},
        "guarantees": [
            {"id": "detection", "kind": "detection"},
            {"id": "damage", "kind": "bounded_damage", "max_undetected": 0, "probability": 1.0},
        ],
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(section), dict):
            doc[section] = {**doc[section], **value}
        else:
            doc[section] = value
    import io

    out = io.StringIO()
    YAML().dump(doc, out)
    return out.getvalue()


def results(**overrides: Any) -> dict[str, GuaranteeResult]:
    """Verify the spec and index its results by guarantee id."""
    report = verify(load_text(spec_text(**overrides), "takeover.yaml"))
    return {g.id: g for g in report.guarantees}


def core_texts(result: GuaranteeResult) -> list[str]:
    """The assumption texts a proof rests on."""
    return [a.text for a in result.assumptions]


def test_a_standby_that_takes_a_crashed_trusted_last_stage_runs_unchecked() -> None:
    """Worker 3:0 (trusted) crashes, the malicious standby enters stage 3, which nothing checks."""
    found = results()
    for gid in ("detection", "damage"):
        assert found[gid].verdict == "violated", gid
    trace = found["detection"].trace
    assert trace is not None
    assert trace["dynamics"]["crashed"] == ["3:0"]
    assert trace["dynamics"]["entered"] == [{"position": "3:0", "standby": "standby:0", "malicious": True}]
    assert [m["worker"] for m in trace["malicious"]] == ["standby:0"]
    assert trace["malicious"][0]["enters"] == "3:0"
    assert "standby:0" in found["detection"].summary


def test_without_crashes_the_trusted_stage_cannot_change_hands() -> None:
    """With no crash fault (and no way to eject an honest stage 3) the takeover is impossible;
    the proof cites the crash assumption."""
    found = results(adversary={"faults": {"crash": 0}})
    assert found["detection"].verdict == "holds"
    assert found["damage"].verdict == "holds"
    assert "at most 0 crashed workers" in core_texts(found["detection"])


def test_without_a_standby_the_crashed_slot_stays_empty() -> None:
    """No standby: the crash empties stage 3 and stops the replica; nothing unchecked runs."""
    found = results(topology={"standby": 0})
    assert found["detection"].verdict == "holds"
    assert any("standby" in text for text in core_texts(found["detection"]))


def test_crash_of_a_trusted_first_stage_lets_a_standby_poison_data() -> None:
    """Stage 0 is trusted, but after it crashes a malicious standby feeds poisoned batches."""
    caps = ["tamper_activations", "poison_data"]
    guarantees = [{"id": "data", "kind": "data_integrity"}]
    found = results(adversary={"capabilities": caps}, guarantees=guarantees)
    assert found["data"].verdict == "violated"
    assert found["data"].trace is not None and found["data"].trace["dynamics"]["crashed"] == ["0:0"]
    assert (
        results(adversary={"capabilities": caps, "faults": {"crash": 0}}, guarantees=guarantees)["data"].verdict
        == "holds"
    )


def test_framing_ejects_a_trusted_worker_and_a_standby_takes_its_place() -> None:
    """Without receipts, malicious stage 1 falsely accuses trusted stage 0, which is ejected; a
    malicious standby enters stage 0 and poisons batches its colluding checker lets through."""
    caps = ["false_accuse", "poison_data", "tamper_activations"]
    guarantees = [{"id": "data", "kind": "data_integrity"}]
    found = results(adversary={"max_malicious": 2, "capabilities": caps, "faults": {"crash": 0}}, guarantees=guarantees)
    assert found["data"].verdict == "violated"
    trace = found["data"].trace
    assert trace is not None and trace["dynamics"]["framed"] == ["0:0"]
    assert {m["worker"] for m in trace["malicious"]} == {"1:0", "standby:0"}
    # Without false accusation, nobody can remove stage 0.
    no_framing = results(
        adversary={"max_malicious": 2, "capabilities": caps[1:], "faults": {"crash": 0}}, guarantees=guarantees
    )
    assert no_framing["data"].verdict == "holds"


def test_damage_with_k_zero_after_a_takeover() -> None:
    """K=0: the standby in stage 3 leaves every one of its units undetected."""
    found = results()
    damage = found["damage"]
    assert damage.verdict == "violated" and damage.figure is not None and damage.figure.value == 1.0
    assert damage.trace is not None and damage.trace["states"][0]["worker"] == "standby:0 (entered 3:0)"


def test_the_horizon_caps_the_damage_under_eject() -> None:
    """One step of one micro-batch leaves a worker 3 units (forward, backward, last update): more
    than 3 undetected is impossible, more than 2 has probability 0.5^3."""
    spot = {
        "checks": [{"scheme": "spot_check", "rate": 0.5, "verifier": "coordinator"}],
        "receipts": True,
        "response": ["eject"],
    }
    found = results(
        topology={"steps": 1, "standby": 0},
        trust={"honest": []},
        adversary={
            "capabilities": ["tamper_activations", "tamper_gradients", "tamper_weights"],
            "faults": {"crash": 0},
        },
        defense=spot,
        guarantees=[
            {"id": "three", "kind": "bounded_damage", "max_undetected": 3, "probability": 1.0},
            {"id": "two", "kind": "bounded_damage", "max_undetected": 2, "probability": 0.9},
        ],
    )
    assert found["three"].verdict == "holds"
    assert found["two"].verdict == "violated"
    assert found["two"].figure is not None and found["two"].figure.exact == "1/8"
    assert found["two"].trace is not None and found["two"].trace["states"][0]["units_available"] == 3


def test_a_crashed_copy_leaves_a_replicated_stage_unchecked() -> None:
    """Replicate with two copies: when the honest copy crashes (no standby), the malicious one
    computes alone and nothing compares it."""
    replicate = {"checks": [{"scheme": "replicate", "factor": 2, "resolve": "majority"}], "response": ["eject"]}
    common = {"topology": {"standby": 0}, "trust": {"honest": []}, "defense": replicate}
    assert results(**common)["detection"].verdict == "violated"
    held = results(**common, adversary={"faults": {"crash": 0}})["detection"]
    assert held.verdict == "holds"


def test_the_last_update_escapes_the_redundant_neighbour() -> None:
    """redundant_neighbour sees a weight tamper at the next forward pass; the horizon's last update
    has none, so one update unit per worker is unchecked."""
    found = results(
        topology={"standby": 0},
        trust={"honest": []},
        adversary={"capabilities": ["tamper_weights"], "faults": {"crash": 0}},
    )
    assert found["detection"].verdict == "violated"
    assert found["detection"].trace is not None and found["detection"].trace["states"][0]["unit"] == "last update"
    assert found["damage"].verdict == "violated"


def test_an_untrusted_coordinator_frames_even_at_budget_zero() -> None:
    """An untrusted coordinator is an adversarial party outside the budget: without receipts it can
    blame an honest worker although no worker is malicious; with receipts it cannot."""
    guarantees = [{"id": "framing", "kind": "no_framing"}]
    common: dict[str, Any] = {"adversary": {"max_malicious": 0, "faults": {"crash": 0}}, "guarantees": guarantees}
    found = results(trust={"honest": [], "coordinator": "untrusted"}, **common)
    assert found["framing"].verdict == "violated"
    assert (
        found["framing"].trace is not None and found["framing"].trace["outcome"]["mechanism"] == "untrusted coordinator"
    )
    receipts = results(trust={"honest": [], "coordinator": "untrusted"}, defense={"receipts": True}, **common)
    assert receipts["framing"].verdict != "violated"


@pytest.mark.parametrize("response", [["eject"], ["rollback", "eject"], ["rollback"], ["skip_stage"]])
def test_every_response_counts_the_standby_try(response: list[str]) -> None:
    """Under every response the malicious standby's units in stage 3 are undetected for sure."""
    found = results(defense={"response": response})
    assert found["damage"].verdict == "violated"
    assert found["damage"].figure is not None and math.isclose(found["damage"].figure.value, 1.0)


def test_rollback_retries_need_k_plus_one_in_a_row() -> None:
    """Rollback without eject: the run probability of K+1 passes in a row, checked against a direct
    enumeration of every detection pattern on a tiny horizon."""
    from itertools import product

    from stagewarden.prover.damage import run_probability

    d = Fraction(1, 3)
    for n in range(1, 8):
        for run in range(1, 4):
            expected = Fraction(0)
            for pattern in product((True, False), repeat=n):  # True: this unit passes
                streak = best = 0
                for passed in pattern:
                    streak = streak + 1 if passed else 0
                    best = max(best, streak)
                if best >= run:
                    weight = Fraction(1)
                    for passed in pattern:
                        weight *= (1 - d) if passed else d
                    expected += weight
            assert run_probability(n, d, run).exact == expected, (n, run)


def test_retries_over_the_largest_horizon_are_bounded_not_enumerated() -> None:
    """Rollback without eject over 10^9 steps: the run probability is bounded in closed form (no
    recurrence over a billion units), and the verdict follows from the bounds."""
    spot = {
        "checks": [{"scheme": "spot_check", "rate": 0.05, "verifier": "coordinator"}],
        "receipts": True,
        "response": ["rollback"],
    }
    found = results(
        topology={"steps": 1_000_000_000, "standby": 0},
        trust={"honest": []},
        adversary={"faults": {"crash": 0}},
        defense=spot,
        guarantees=[{"id": "damage", "kind": "bounded_damage", "max_undetected": 300, "probability": "1 - 1e-6"}],
    )
    # A billion units give the retrying worker a 301-unit run almost surely (lower bound ~0.48).
    assert found["damage"].verdict == "violated"


def test_synthesis_proposes_only_what_the_dynamics_prove() -> None:
    """On the takeover spec the search must not keep the standby that can enter stage 3 unchecked;
    its proposal, verified again from its own YAML, holds for every guarantee."""
    from stagewarden.prover.synthesis import synthesize

    result = synthesize(load_text(spec_text(), "takeover.yaml")).to_json()
    assert result["status"] == "found"
    reverified = verify(load_text(result["spec_text"], "proposed.yaml"))
    assert {g.id: g.verdict for g in reverified.guarantees} == {"detection": "holds", "damage": "holds"}
    # Keeping the standby would need a check of the last stage as well (a spot check at rate 1,
    # dearer by the cost model); the cheapest fix is to drop the standby the crash lets in.
    assert result["topology"] == {"standby": 0, "was": 1}


def test_a_standby_that_enters_after_a_crash_can_stall_the_job() -> None:
    """Every stage trusted, no eject: a crash lets a malicious standby worker in, and it withholds;
    with neither eject nor skip_stage nobody replaces it. Without the crash it never gets in."""
    spec: dict[str, Any] = {
        "topology": {"stages": 3, "standby": 1},
        "trust": {"honest": [0, 1, 2]},
        "adversary": {"capabilities": ["withhold"], "faults": {"crash": 1}},
        "defense": {"checks": [], "response": ["restart"]},
        "guarantees": [{"id": "live", "kind": "liveness"}],
    }
    live = results(**spec)["live"]
    assert live.verdict == "violated"
    assert live.trace is not None
    assert [m["worker"] for m in live.trace["malicious"]] == ["standby:0"]
    assert live.trace["dynamics"]["crashed"] and live.trace["dynamics"]["entered"][0]["standby"] == "standby:0"
    assert (
        results(**{**spec, "adversary": {"capabilities": ["withhold"], "faults": {"crash": 0}}})["live"].verdict
        == "holds"
    )
