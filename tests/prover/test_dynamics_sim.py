"""Tests of the dynamics simulator against cases worked by hand from section 4b of the design and
the "Dynamics" section of docs/semantics.rst, and of the exact bounded_damage game against the
reference results."""

from __future__ import annotations

import copy
import random
from collections import Counter
from fractions import Fraction
from math import comb
from typing import Any

from bruteforce import World, brute_force
from damage_game import Mode, best_probability
from dynamics_model import ORIGINAL, VACANT, Simulation
from dynamics_sim import replay_trace, simulate, simulate_unordered
from random_specs import load_data, random_dynamics_spec_data
from test_dynamics_differential import NAMED_SPECS

from stagewarden.spec import Spec

BASE: dict[str, Any] = {
    "version": 1,
    "name": "dynamics-hand-made",
    "topology": {"stages": 4, "replicas": 1, "microbatches": 1, "steps": 2, "standby": 1},
    "trust": {"honest": [0, 3], "tee": [], "coordinator": "trusted"},
    "adversary": {
        "max_malicious": 1,
        "collusion": True,
        "capabilities": ["tamper_activations"],
        "faults": {"crash": 1},
    },
    "defense": {"receipts": False, "checks": [{"scheme": "redundant_neighbour"}], "response": ["eject"]},
}

DETECT = {"id": "detect", "kind": "detection"}
FRAMING = {"id": "framing", "kind": "no_framing"}
LIVE = {"id": "live", "kind": "liveness"}


def make(guarantees: list[dict[str, Any]], **sections: dict[str, Any]) -> Spec:
    """BASE with each given section's keys replaced, loaded through the YAML loader."""
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data[section].update(values)
    data["guarantees"] = guarantees
    return load_data(data, "<dynamics>.yaml").spec


def damage(k: int, probability: float | str = 1.0) -> dict[str, Any]:
    return {"id": "damage", "kind": "bounded_damage", "max_undetected": k, "probability": probability}


def test_standby_enters_unchecked_last_stage_after_crash() -> None:
    """The trusted worker 3:0 crashes, the malicious standby takes stage 3, which nobody checks."""
    result = simulate(make([DETECT]))["detect"]
    assert result.verdict == "violated"
    assert result.witness == frozenset({"standby:0"})
    assert [(e.kind, e.position) for e in result.events] == [("crash", "3:0"), ("enter", "3:0")]
    assert result.figure == 0


def test_without_crash_the_standby_never_enters() -> None:
    """With no crash and nothing to frame, only a caught malicious original vacates a slot, and
    then the budget is spent: every tamper meets an honest neighbour."""
    result = simulate(make([DETECT], adversary={"faults": {"crash": 0}}))["detect"]
    assert result.verdict == "holds"
    assert result.figure == 1


def test_framing_a_trusted_worker_lets_a_malicious_standby_in() -> None:
    """An untrusted coordinator without receipts frames trusted 3:0; eject hands stage 3 to the
    malicious standby, unchecked. With a trusted coordinator nothing vacates stage 3."""
    upstream = {"checks": [{"scheme": "redundant_neighbour", "input_via": "upstream"}], "data_commitment": True}
    spec = make(
        [DETECT, FRAMING], trust={"coordinator": "untrusted"}, adversary={"faults": {"crash": 0}}, defense=upstream
    )
    results = simulate(spec)
    assert results["detect"].verdict == "violated"
    assert [(e.kind, e.position) for e in results["detect"].events] == [("framed", "3:0"), ("enter", "3:0")]
    assert results["framing"].verdict == "violated"
    trusted = make([DETECT, FRAMING], adversary={"faults": {"crash": 0}}, defense=upstream)
    assert {gid: r.verdict for gid, r in simulate(trusted).items()} == {"detect": "holds", "framing": "holds"}


def test_false_accusation_by_a_standby_needs_it_in_place() -> None:
    """A malicious standby that could frame 2:0 from stage 3 must first enter stage 3 (a crash);
    without the crash it stays idle and nobody is framed."""
    caps = {"capabilities": ["tamper_activations", "false_accuse"]}
    with_crash = make([FRAMING], adversary=caps)
    assert simulate(with_crash)["framing"].verdict == "violated"
    without = make([FRAMING], adversary={**caps, "faults": {"crash": 0}}, trust={"honest": [0, 1, 2, 3]})
    assert simulate(without)["framing"].verdict == "holds"


def test_damage_after_takeover() -> None:
    """K=0: the malicious standby in stage 3 tampers unchecked, so one undetected unit is certain;
    without the crash every malicious original is caught at its first tamper."""
    assert simulate(make([damage(0)]))["damage"].figure == 1
    held = simulate(make([damage(0)], adversary={"faults": {"crash": 0}}))["damage"]
    assert held.verdict == "holds" and held.figure == 0


def test_one_step_one_microbatch_has_three_units() -> None:
    """Steps 1, micro-batches 1, eject, no checks: a worker has F, B and the last update, so more
    than 3 undetected units is impossible and more than 2 is certain."""
    caps = ["tamper_activations", "tamper_gradients", "tamper_weights"]
    sections: dict[str, dict[str, Any]] = {
        "topology": {"steps": 1, "microbatches": 1, "standby": 0},
        "adversary": {"capabilities": caps, "faults": {"crash": 0}},
        "defense": {"checks": []},
    }
    results = simulate(make([damage(3), {**damage(2), "id": "two"}], **sections))
    assert results["damage"].verdict == "holds" and results["damage"].figure == 0
    assert results["two"].verdict == "violated" and results["two"].figure == 1


def test_last_update_escapes_redundant_neighbour() -> None:
    """tamper_weights under redundant_neighbour: the last update is never checked."""
    spec = make([DETECT], adversary={"capabilities": ["tamper_weights"], "faults": {"crash": 0}})
    result = simulate(spec)["detect"]
    assert result.verdict == "violated" and result.figure == 0


def test_replicate_with_one_copy_crashed() -> None:
    """k=2: crash the honest copy and the malicious copy runs alone, unchecked."""
    sections: dict[str, dict[str, Any]] = {
        "topology": {"stages": 2, "standby": 0},
        "trust": {"honest": []},
        "defense": {"checks": [{"scheme": "replicate", "factor": 2}], "response": ["skip_stage"]},
    }
    crashed = simulate(make([DETECT], **sections))["detect"]
    assert crashed.verdict == "violated"
    assert [e.kind for e in crashed.events] == ["crash"]
    no_crash = simulate(make([DETECT], **{**sections, "adversary": {"faults": {"crash": 0}}}))["detect"]
    assert no_crash.verdict == "holds" and no_crash.figure == 1


def test_liveness_counts_standby_and_replicate_copies() -> None:
    """Crashes alone empty a stage only when they outnumber its copies plus the standby pool."""
    sections: dict[str, dict[str, Any]] = {
        "topology": {"stages": 2, "standby": 1},
        "trust": {"honest": [0, 1]},
        "defense": {"checks": [{"scheme": "replicate", "factor": 2}], "response": ["skip_stage"]},
    }
    two = simulate(make([LIVE], **sections, adversary={"faults": {"crash": 2}}))["live"]
    assert two.verdict == "holds"
    three = simulate(make([LIVE], **sections, adversary={"faults": {"crash": 3}}))["live"]
    assert three.verdict == "violated"
    assert sum(e.kind == "crash" for e in three.events) == 3


def test_halted_replica_computes_nothing() -> None:
    """A vacant non-replicated position halts its replica: no unit of it runs meanwhile."""
    spec = make([DETECT], trust={"honest": []}, topology={"standby": 0})
    sim = Simulation(World(spec), frozenset({"1:0"}))
    occ = (ORIGINAL, ORIGINAL, VACANT, ORIGINAL)  # 2:0 crashed
    assert not sim.running(occ, 0)
    assert list(sim.tamper_levels((occ, (), 1), {"tamper_activations"})) == []
    assert [d for *_, d in sim.tamper_levels(sim.initial, {"tamper_activations"})] == [1]


def test_game_rollback_with_eject_is_one_try() -> None:
    """One try at level p under rollback and eject: (1-p)^(K+1), the page's reference result."""
    p = Fraction(1, 20)
    for k in range(4):
        assert best_probability([((1 - p, 8),)], k, Mode(undo=True, remove=True)) == (1 - p) ** (k + 1)
    assert best_probability([((1 - p, 2),)], 2, Mode(undo=True, remove=True)) == 0  # horizon cap


def test_game_eject_alone_is_negative_binomial() -> None:
    """f tries at level d with units enough, eject without rollback: Pr[NegBin(f, d) >= K+1]."""
    d, f, k = Fraction(1, 4), 2, 2
    expected = sum(comb(k + f, j) * d**j * (1 - d) ** (k + f - j) for j in range(f))
    tries = [((1 - d, k + f + 1),)] * f
    assert best_probability(tries, k, Mode(undo=False, remove=True)) == expected


def test_game_neither_is_binomial() -> None:
    """skip_stage: every unit is tampered with; more than K pass is a binomial tail."""
    q = Fraction(1, 2)
    assert best_probability([((q, 3),)], 1, Mode(undo=False, remove=False)) == Fraction(4, 8)


def test_game_rollback_without_eject_retries() -> None:
    """Rollback without eject: the try retries until K+1 passes in a row; with 3 attempts and
    K=1, Pr[a run of 2 passes in 3 trials] = q^2 (2 - q)... for q = 1/2 that is 3/8."""
    q = Fraction(1, 2)
    assert best_probability([((q, 3),)], 1, Mode(undo=True, remove=False)) == Fraction(3, 8)


def test_game_splits_the_count_across_tries() -> None:
    """Rollback and eject with a try that has one certain unit and one at 1/2: aiming at K+1 with
    each try alone gives 1/4, but the best strategy needs only one unit of the second try: 1/2."""
    tries = [((Fraction(1), 1),), ((Fraction(1, 2), 4),)]
    assert best_probability(tries, 1, Mode(undo=True, remove=True)) == Fraction(1, 2)


CYCLE: dict[str, dict[str, Any]] = {
    "topology": {"stages": 2, "standby": 2},
    "trust": {"honest": [0, 1]},
    "adversary": {"max_malicious": 2, "capabilities": ["tamper_activations", "false_accuse"], "faults": {"crash": 0}},
    "defense": {"checks": [{"scheme": "replicate", "factor": 2, "resolve": "referee"}]},
}


def test_framing_cycle_is_only_in_the_unordered_reading() -> None:
    """Two honest copies of a replicate slot, each framed by a malicious standby that could only
    enter the other's position after that framing: no order of events realises it, but the
    unordered reading (the prover's) sees a violation, and names it a framing cycle."""
    spec = make([DETECT, FRAMING], **CYCLE)
    exact = simulate(spec)
    assert exact["detect"].verdict == "holds" and exact["framing"].verdict == "holds"
    for gid in ("detect", "framing"):
        verdict, _, cycle = simulate_unordered(spec, gid)
        assert verdict == "violated" and cycle


def test_a_crash_breaks_the_cycle() -> None:
    """With one crash the same attack is realisable in order (crash a copy, a malicious standby
    enters, it frames the other copy, the second standby enters): the exact reading finds it."""
    spec = make([DETECT, FRAMING], **{**CYCLE, "adversary": {**CYCLE["adversary"], "faults": {"crash": 1}}})
    exact = simulate(spec)
    assert exact["detect"].verdict == "violated" and exact["framing"].verdict == "violated"
    assert simulate_unordered(spec, "detect")[0] == "violated"


def takeover_trace(**changes: Any) -> dict[str, Any]:
    """The trace of the S=4 takeover (3:0 crashes, the malicious standby enters stage 3), with
    ``changes`` to its ``dynamics`` entry or its ``malicious`` list."""
    dynamics: dict[str, Any] = {
        "crashed": ["3:0"],
        "ejected": [],
        "framed": [],
        "entered": [{"position": "3:0", "standby": "standby:0", "malicious": True}],
        "vacant": [],
    }
    malicious = changes.pop("malicious", ["standby:0"])
    dynamics.update(changes)
    return {"malicious": [{"worker": name} for name in malicious], "dynamics": dynamics}


def test_replay_accepts_a_genuine_trace() -> None:
    """The takeover's events replay and reach the unchecked tamper."""
    assert replay_trace(make([DETECT]), "detect", takeover_trace()) is None


def test_replay_rejects_forged_traces() -> None:
    """A trace that needs more than the spec allows does not replay: too many malicious workers, a
    trusted one, more crashes than faults.crash, an entry without a vacancy, a framing with no
    mechanism, or events that lead to no violation."""
    spec = make([DETECT])
    forged = {
        "over budget": takeover_trace(malicious=["standby:0", "1:0"]),
        "trusted": takeover_trace(malicious=["3:0"]),
        "two crashes": takeover_trace(crashed=["3:0", "2:0"]),
        "no vacancy": takeover_trace(crashed=[]),
        "framed": takeover_trace(crashed=[], framed=["3:0"]),
        "honest standby": takeover_trace(malicious=["1:0"]),
        "no violation": takeover_trace(malicious=["1:0"], crashed=[], entered=[]),
    }
    for what, trace in forged.items():
        assert replay_trace(spec, "detect", trace) is not None, what


def test_stall_needs_a_unit_caught_with_certainty() -> None:
    """Under restart a weights tamperer that wants to be caught is, at every step, by its
    neighbour's copy, even behind a checked_worker relay (it forwards the genuine input); with one
    step its only update is the last one, which no neighbour sees, so nothing is redone."""
    sections: dict[str, dict[str, Any]] = {
        "topology": {"stages": 2, "standby": 0},
        "trust": {"honest": []},
        "adversary": {"capabilities": ["tamper_weights"], "faults": {"crash": 0}},
        "defense": {
            "checks": [{"scheme": "redundant_neighbour", "input_via": "checked_worker"}],
            "response": ["restart"],
        },
    }
    assert simulate(make([LIVE], **sections))["live"].verdict == "violated"
    one_step = simulate(make([LIVE], **{**sections, "topology": {"stages": 2, "standby": 0, "steps": 1}}))
    assert one_step["live"].verdict == "holds"


def test_an_entered_standby_can_stall() -> None:
    """Without eject or skip_stage, a malicious standby that enters after a crash and withholds
    stalls the job, although every original worker is trusted."""
    sections: dict[str, dict[str, Any]] = {
        "topology": {"stages": 2, "standby": 1},
        "trust": {"honest": [0, 1]},
        "adversary": {"capabilities": ["withhold"], "faults": {"crash": 1}},
        "defense": {"checks": [], "response": ["rollback"]},
    }
    result = simulate(make([LIVE], **sections))["live"]
    assert result.verdict == "violated" and result.witness == frozenset({"standby:0"})
    no_crash = make([LIVE], **{**sections, "adversary": {"capabilities": ["withhold"], "faults": {"crash": 0}}})
    assert simulate(no_crash)["live"].verdict == "holds"


def test_without_dynamics_the_simulator_is_the_static_model() -> None:
    """Where nothing can move (no standby, no crash, no eject) and no rule changed (a trusted
    coordinator, no weight tamper, no silent corruption), the simulator and the brute-force
    checker of the static model agree on detection (figure included), no_framing and data_integrity."""
    rng = random.Random(7)
    compared = Counter[str]()
    for _ in range(150):
        data = random_dynamics_spec_data(rng)
        data["topology"]["standby"] = 0
        data["trust"]["coordinator"] = "trusted"
        data["adversary"]["faults"] = {"crash": 0, "silent_corruption": 0.0}
        capabilities = [c for c in data["adversary"]["capabilities"] if c != "tamper_weights"]
        data["adversary"]["capabilities"] = capabilities or ["tamper_activations"]
        data["defense"]["response"] = [r for r in data["defense"]["response"] if r != "eject"] or ["skip_stage"]
        data["guarantees"] = [
            g for g in data["guarantees"] if g["kind"] in ("detection", "no_framing", "data_integrity")
        ]
        if not data["guarantees"]:
            continue
        spec = load_data(data).spec
        static, dynamic = brute_force(spec), simulate(spec)
        for gid, expected in static.items():
            assert dynamic[gid].verdict == expected.verdict, (gid, spec)
            if expected.figure is not None:
                assert dynamic[gid].figure == expected.figure, (gid, spec)
            compared[expected.verdict] += 1
    assert compared["holds"] > 10 and compared["violated"] > 10, compared


def test_a_detection_figure_no_state_reaches_fails_the_replay() -> None:
    """A detection trace whose events replay is still refused when no state they reach gives its
    unit the reported figure: 3:0's crash halts the only replica, so the peer check of 0:0's last
    update never reads 1/8 (two of three peers honest, one colluding: 1/6)."""
    from stagewarden.prover import verify
    from stagewarden.spec import load_text

    loaded = load_text(NAMED_SPECS["detection-peer-vacancy-halts-its-replica"], "<peer-vacancy>.yaml")
    assert simulate(loaded.spec)["detect"].figure == Fraction(1, 6)
    result = verify(loaded).by_id("detect")
    assert result.verdict == "violated" and result.figure is not None and result.figure.exact == "1/6"
    trace = result.trace
    assert trace is not None and trace["states"][0]["unit"] == "last update"
    assert replay_trace(loaded.spec, "detect", trace, Fraction(1, 6)) is None
    forged = copy.deepcopy(trace)
    forged["malicious"].append({"worker": "1:0", "role": "idle", "capabilities": ["tamper_weights"]})
    forged["dynamics"] = {"crashed": ["3:0"], "ejected": [], "framed": [], "entered": [], "vacant": ["3:0"]}
    problem = replay_trace(loaded.spec, "detect", forged, Fraction(1, 8))
    assert problem is not None and "figure 1/8" in problem, problem
