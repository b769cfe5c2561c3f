"""Tests of the brute-force reference checker against verdicts derived by hand from
docs/semantics.rst and against the worked examples of the spec language reference (section 7)."""

from __future__ import annotations

import copy
import random
from fractions import Fraction
from math import comb
from typing import Any

import pytest
from bruteforce import (
    EXACT_K_LIMIT,
    BruteResult,
    World,
    brute_force,
    eject_probability,
    independent_probability,
    placements,
)
from random_specs import load_data, random_loaded_spec, random_spec, random_spec_data

from stagewarden.spec import Spec, example_text, load_example, load_text

# -- helpers --------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "version": 1,
    "name": "hand-made",
    "topology": {"stages": 3, "replicas": 1, "microbatches": 2, "steps": 10, "standby": 0},
    "trust": {"honest": [], "tee": [], "coordinator": "trusted"},
    "adversary": {"max_malicious": 1, "collusion": True, "capabilities": ["tamper_activations"]},
    "defense": {"receipts": False, "checks": [], "response": ["skip_stage"]},
}


def make(guarantees: list[dict[str, Any]], **sections: dict[str, Any]) -> Spec:
    """BASE with each given section's keys replaced, loaded through the YAML loader."""
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data[section].update(values)
    data["guarantees"] = guarantees
    return load_data(data, "<hand-made>.yaml").spec


def verdicts(spec: Spec) -> dict[str, str]:
    return {gid: result.verdict for gid, result in brute_force(spec).items()}


def variant(example: str, old: str, new: str) -> Spec:
    """A packaged example with one line of its text replaced."""
    text = example_text(example)
    assert old in text
    return load_text(text.replace(old, new), f"<{example}-variant>.yaml").spec


DETECT = {"id": "detect", "kind": "detection"}
FRAMING = {"id": "framing", "kind": "no_framing"}
LIVE = {"id": "live", "kind": "liveness"}
INTEGRITY = {"id": "integrity", "kind": "data_integrity"}


def damage(k: int, p: float | str = 1.0) -> dict[str, Any]:
    return {"id": "damage", "kind": "bounded_damage", "max_undetected": k, "probability": p}


# -- section 7: the worked examples --------------------------------------------------------

SECTION_7 = [
    (
        "paper-redundant-neighbour",
        {"integrity": "holds", "no-framing": "holds", "liveness": "holds", "cheap": "violated"},
    ),
    ("paper-adjacent-collusion", {"integrity": "violated"}),
    ("paper-adjacent-no-collusion", {"integrity": "holds"}),
    ("paper-equivocation-upstream", {"no-framing": "violated"}),
    ("paper-equivocation-receipts", {"no-framing": "holds"}),
    ("paper-equivocation-coordinator", {"no-framing": "holds"}),
    ("paper-eject-no-standby", {"liveness": "violated"}),
    ("paper-eject-standby", {"liveness": "holds"}),
    ("spot-check-rollback", {"damage": "holds", "integrity": "violated"}),
    ("spot-check-eject", {"damage": "violated", "integrity": "violated"}),
    ("tee-attested", {"integrity": "holds"}),
    ("tee-unattested", {"integrity": "violated"}),
    ("robust-aggregation-median", {"integrity": "violated", "damage": "holds"}),
    ("robust-aggregation-median-two", {"damage": "violated"}),
    # integrity of replicate-majority is violated only through the dynamics (the vote first ejects
    # the honest copy), which this static oracle does not follow; the prover's verdict is checked in
    # test_worked_examples
    ("replicate-majority", {"fair": "violated"}),
    ("replicate-referee", {"integrity": "holds", "fair": "holds"}),
    ("paper-checked-worker-relay", {"integrity": "violated"}),
    ("paper-checked-worker-relay-receipts", {"integrity": "holds"}),
]


@pytest.mark.parametrize(("example", "expected"), SECTION_7, ids=[name for name, _ in SECTION_7])
def test_section_7_verdicts(example: str, expected: dict[str, str]) -> None:
    """Each worked example of spec-language.md section 7 gets the verdicts stated there."""
    got = verdicts(load_example(example).spec)
    assert {gid: got[gid] for gid in expected} == expected


def test_example_1_figures() -> None:
    """Example 1: every middle-stage tamper is detected with certainty; overhead is 5/6."""
    results = brute_force(load_example("paper-redundant-neighbour").spec)
    assert results["integrity"] == BruteResult("holds", Fraction(1), None)
    assert results["cheap"].figure == Fraction(5, 6)
    assert results["cheap"].witness is None


def test_example_2_counterexample_is_adjacent_pair() -> None:
    """Example 2: the counterexample is two adjacent middle stages, s tampers and s+1 covers."""
    result = brute_force(load_example("paper-adjacent-collusion").spec)["integrity"]
    assert result.figure == 0
    assert result.witness is not None and len(result.witness) == 2
    stages = sorted(int(name.split(":")[0]) for name in result.witness)
    assert stages[1] == stages[0] + 1 and 1 <= stages[0] <= 3


def test_example_3_counterexample_is_malicious_upstream() -> None:
    """Example 3: one malicious middle stage that feeds an honest checked middle stage."""
    result = brute_force(load_example("paper-equivocation-upstream").spec)["no-framing"]
    assert result.witness is not None and len(result.witness) == 1
    (name,) = result.witness
    assert 1 <= int(name.split(":")[0]) <= 3


def test_example_4_eject_counterexample_has_one_worker() -> None:
    """Example 4: one catchable malicious worker empties its slot when nobody can take over."""
    result = brute_force(load_example("paper-eject-no-standby").spec)["liveness"]
    assert result.witness is not None and len(result.witness) == 1


def test_example_5_rollback_figure() -> None:
    """Example 5 with rollback: three workers give 1-(1-0.95^301)^3, one gives 0.95^301 (~1.97e-7)."""
    q = Fraction(19, 20) ** 301
    three = brute_force(load_example("spot-check-rollback").spec)
    assert three["damage"].figure == 1 - (1 - q) ** 3
    assert three["integrity"].figure == Fraction(1, 20)
    one = brute_force(variant("spot-check-rollback", "max_malicious: 3", "max_malicious: 1"))
    assert one["damage"].figure == q
    assert float(q) == pytest.approx(1.97e-7, rel=0.01)


def test_example_5_eject_figure() -> None:
    """Example 5 with eject: the worst placement is the NegBin(3, 0.05) tail, about 2.6e-5."""
    result = brute_force(load_example("spot-check-eject").spec)["damage"]
    closed = sum(comb(300 + 3, j) * Fraction(1, 20) ** j * Fraction(19, 20) ** (300 + 3 - j) for j in range(3))
    assert float(result.figure) == pytest.approx(float(closed), rel=1e-9)
    assert float(result.figure) == pytest.approx(2.6e-5, rel=0.02)
    # Two workers already exceed 1e-6, so the smallest counterexample has two.
    assert result.witness is not None and len(result.witness) == 2


def test_example_6_tee_leaves_adversary_nothing() -> None:
    """Example 6: attested TEEs leave no corruptible worker, so the only placement is empty."""
    world = World(load_example("tee-attested").spec)
    assert list(placements(world)) == [frozenset()]
    unattested = brute_force(load_example("tee-unattested").spec)["integrity"]
    assert unattested.figure == 0 and unattested.witness is not None and len(unattested.witness) == 1


def test_example_7_masking_figures() -> None:
    """Example 7: one corrupted replica of four is outvoted; two in different replicas are not."""
    one = brute_force(load_example("robust-aggregation-median").spec)
    assert one["damage"].figure == 0 and one["integrity"].figure == 0
    two = brute_force(load_example("robust-aggregation-median-two").spec)["damage"]
    assert two.figure == 1
    assert two.witness is not None
    replicas = {name.split(":")[1] for name in two.witness}
    assert len(replicas) == 2


def test_example_2_with_collusion_false_holds_with_certainty() -> None:
    """Example 2 without collusion: a malicious checker checks honestly, so d = 1."""
    assert brute_force(load_example("paper-adjacent-no-collusion").spec)["integrity"].figure == 1


# -- hand-made specs, one per tricky rule ---------------------------------------------------


def test_peer_verifier_with_collusion() -> None:
    """Peer spot check with collusion: d = p (N - m) / (N - 1); with N = 3: 1/2 for one, 1/4 for two."""
    guarantees = [
        {"id": "half", "kind": "detection", "probability": 0.5},
        {"id": "quarter", "kind": "detection", "probability": 0.25},
    ]
    defense = {"receipts": True, "checks": [{"scheme": "spot_check", "rate": 0.5, "verifier": "peer"}]}
    results = brute_force(make(guarantees, adversary={"max_malicious": 2}, defense=defense))
    assert results["half"].verdict == "violated" and results["half"].figure == Fraction(1, 4)
    assert results["half"].witness is not None and len(results["half"].witness) == 2
    assert results["quarter"].verdict == "holds"
    alone = brute_force(make(guarantees, adversary={"max_malicious": 2, "collusion": False}, defense=defense))
    assert alone["half"] == BruteResult("holds", Fraction(1, 2), None)


def test_replicate_majority_tie_frames() -> None:
    """Replicate k=2 majority: one malicious copy ties with the honest one and both are blamed."""
    rep2 = {"checks": [{"scheme": "replicate", "factor": 2, "resolve": "majority"}]}
    results = brute_force(make([FRAMING, DETECT], defense=rep2))
    assert results["framing"].verdict == "violated"
    assert results["framing"].witness is not None and len(results["framing"].witness) == 1
    assert results["detect"].figure == 1  # the honest copy disagrees: detected
    rep3 = {"checks": [{"scheme": "replicate", "factor": 3, "resolve": "majority"}]}
    assert verdicts(make([FRAMING], defense=rep3)) == {"framing": "holds"}  # 1 of 3 is no majority
    two = brute_force(make([FRAMING], defense=rep3, adversary={"max_malicious": 2}))["framing"]
    assert two.verdict == "violated"
    assert two.witness is not None and len({name.split("#")[0] for name in two.witness}) == 1  # one slot
    # Without collusion two malicious copies do not agree on one wrong value.
    assert verdicts(make([FRAMING], defense=rep3, adversary={"max_malicious": 2, "collusion": False})) == {
        "framing": "holds"
    }


def test_replicate_referee_depends_on_coordinator() -> None:
    """Replicate with a referee: a trusted coordinator re-executes; an untrusted one lets the tie frame."""
    referee = {"receipts": True, "checks": [{"scheme": "replicate", "factor": 2, "resolve": "referee"}]}
    assert verdicts(make([FRAMING], defense=referee)) == {"framing": "holds"}
    untrusted = make([FRAMING], defense=referee, trust={"coordinator": "untrusted"})
    assert verdicts(untrusted) == {"framing": "violated"}  # outvoting; receipts rule out the coordinator's own word


def test_false_accuse_with_receipts_and_trusted_coordinator() -> None:
    """false_accuse frames only without receipts or with an untrusted coordinator (no referee)."""
    caps = {"capabilities": ["tamper_activations", "false_accuse"]}
    rn = {"checks": [{"scheme": "redundant_neighbour"}]}
    assert verdicts(make([FRAMING], adversary=caps, defense={**rn, "receipts": True})) == {"framing": "holds"}
    no_receipts = brute_force(make([FRAMING], adversary=caps, defense=rn))["framing"]
    # The first checker in worker order is 1:0, which checks 0:0.
    assert no_receipts == BruteResult("violated", None, frozenset({"1:0"}))
    untrusted = make([FRAMING], adversary=caps, defense={**rn, "receipts": True}, trust={"coordinator": "untrusted"})
    assert verdicts(untrusted) == {"framing": "violated"}


def test_false_accuse_by_peer_verifier() -> None:
    """With a peer spot check any malicious computing worker may verify, and accuse, an honest one."""
    caps = {"capabilities": ["tamper_activations", "false_accuse"]}
    peer = {"checks": [{"scheme": "spot_check", "rate": 0.05, "verifier": "peer"}]}
    result = brute_force(make([FRAMING], adversary=caps, defense=peer))["framing"]
    assert result == BruteResult("violated", None, frozenset({"0:0"}))
    assert verdicts(make([FRAMING], adversary=caps, defense={**peer, "receipts": True})) == {"framing": "holds"}


def test_statistical_with_min_deviation() -> None:
    """Statistical detection gives q only at a trusted coordinator with min_deviation 0, and never for U."""
    guarantees = [
        {"id": "acts", "kind": "detection", "of": ["tamper_activations"], "probability": 0.9},
        {"id": "all", "kind": "detection", "probability": 0.5},
    ]
    caps = {"capabilities": ["tamper_activations", "tamper_weights"]}
    stat0 = {"checks": [{"scheme": "statistical", "power": 0.9, "min_deviation": 0.0}]}
    results = brute_force(make(guarantees, adversary=caps, defense=stat0))
    assert results["acts"] == BruteResult("holds", Fraction(9, 10), None)
    assert results["all"].verdict == "violated" and results["all"].figure == 0  # weights are not covered
    stat1 = {"checks": [{"scheme": "statistical", "power": 0.9, "min_deviation": 0.1}]}
    assert brute_force(make(guarantees, adversary=caps, defense=stat1))["acts"].figure == 0
    untrusted = make(guarantees, adversary=caps, defense=stat0, trust={"coordinator": "untrusted"})
    assert brute_force(untrusted)["acts"].figure == 0


def test_poison_data_with_data_commitment() -> None:
    """poison_data is caught with certainty by data_commitment checked by a trusted coordinator or an honest checker."""
    topo = {"stages": 2}
    trust = {"honest": [1]}
    caps = {"capabilities": ["poison_data"]}
    guarantees = [INTEGRITY, DETECT]
    committed = brute_force(
        make(guarantees, topology=topo, trust=trust, adversary=caps, defense={"data_commitment": True})
    )
    assert committed["integrity"].verdict == "holds" and committed["detect"].figure == 1
    bare = brute_force(make(guarantees, topology=topo, trust=trust, adversary=caps))
    assert bare["integrity"] == BruteResult("violated", None, frozenset({"0:0"}))
    assert bare["detect"].figure == 0
    # A spot check re-executes from the committed (poisoned) batch: no help.
    spot = {"receipts": True, "checks": [{"scheme": "spot_check", "rate": 1.0, "verifier": "coordinator"}]}
    assert verdicts(make([INTEGRITY], topology=topo, trust=trust, adversary=caps, defense=spot)) == {
        "integrity": "violated"
    }
    # Untrusted coordinator: the commitment counts only when an honest checker of stage 0 checks it.
    untrusted = {**trust, "coordinator": "untrusted"}
    alone = make([INTEGRITY], topology=topo, trust=untrusted, adversary=caps, defense={"data_commitment": True})
    assert verdicts(alone) == {"integrity": "violated"}
    rn = {"data_commitment": True, "checks": [{"scheme": "redundant_neighbour"}]}
    assert verdicts(make([INTEGRITY], topology=topo, trust=untrusted, adversary=caps, defense=rn)) == {
        "integrity": "holds"
    }
    # Replicate catches poisoning on its own when the other copy is honest.
    rep = {"checks": [{"scheme": "replicate", "factor": 2}]}
    assert verdicts(make([INTEGRITY], topology=topo, trust=trust, adversary=caps, defense=rep)) == {
        "integrity": "holds"
    }


def test_liveness_stall_under_restart() -> None:
    """Without eject or skip_stage, a certain detection (or withhold) redoes every step forever."""
    topo = {"stages": 4}
    trust = {"honest": [0, 3]}
    rn = {"checks": [{"scheme": "redundant_neighbour"}]}
    restart = brute_force(make([LIVE], topology=topo, trust=trust, defense={**rn, "response": ["restart"]}))["live"]
    assert restart == BruteResult("violated", None, frozenset({"1:0"}))
    assert verdicts(make([LIVE], topology=topo, trust=trust, defense={**rn, "response": ["skip_stage"]})) == {
        "live": "holds"
    }
    # A detection that is not certain only slows the job down.
    spot = {"receipts": True, "response": ["restart"], "checks": [{"scheme": "spot_check", "rate": 0.5}]}
    assert verdicts(make([LIVE], topology=topo, trust=trust, defense=spot)) == {"live": "holds"}
    withhold = make(
        [LIVE], topology=topo, trust=trust, adversary={"capabilities": ["withhold"]}, defense={"response": ["rollback"]}
    )
    assert verdicts(withhold) == {"live": "violated"}


def test_liveness_with_crashes_and_standby() -> None:
    """Crashes and ejections empty every replica only when they outnumber replicas plus standby."""

    def live(
        topology: dict[str, Any], adversary: dict[str, Any], response: list[str], trust: dict[str, Any] | None = None
    ) -> BruteResult:
        spec = make(
            [LIVE],
            topology=topology,
            trust=trust or {},
            adversary={"capabilities": ["withhold"], **adversary},
            defense={"response": response},
        )
        return brute_force(spec)["live"]

    crash1 = {"max_malicious": 0, "faults": {"crash": 1}}
    assert live({"standby": 0}, crash1, ["skip_stage"]) == BruteResult("violated", None, frozenset())
    assert live({"standby": 1}, crash1, ["skip_stage"]).verdict == "holds"
    # eject: a withholding worker plus one crash against one replica and one standby.
    assert live({"standby": 1}, {"max_malicious": 1, "faults": {"crash": 1}}, ["eject"]).verdict == "violated"
    assert live({"standby": 1}, crash1, ["eject"]).verdict == "holds"
    # Two replicas: each needs its own removal; the crash is the flexible one.
    assert live({"replicas": 2}, {"max_malicious": 1, "faults": {"crash": 1}}, ["eject"]).verdict == "violated"
    assert live({"replicas": 2}, {"max_malicious": 1}, ["eject"]).verdict == "holds"
    # A malicious standby that withholds is a flexible removal too (one corruptible computing worker).
    one_slot = {"honest": [1, 2]}
    two = live({"standby": 1}, {"max_malicious": 2}, ["eject"], one_slot)
    assert two == BruteResult("violated", None, frozenset({"0:0", "standby:0"}))
    assert live({"standby": 1}, {"max_malicious": 1}, ["eject"], one_slot).verdict == "holds"


def test_liveness_framing_consumes_standby() -> None:
    """With eject, a replica where an honest worker can be framed is emptied whatever the standby."""
    spec = make(
        [LIVE],
        topology={"standby": 2},
        adversary={"capabilities": ["false_accuse"]},
        defense={"response": ["eject"], "checks": [{"scheme": "redundant_neighbour"}]},
    )
    assert brute_force(spec)["live"] == BruteResult("violated", None, frozenset({"1:0"}))


def test_masking_with_three_replicas() -> None:
    """robust_aggregation over 3 replicas masks one corrupted replica, not two."""
    topo = {"stages": 2, "replicas": 3}
    robust = {"response": ["eject"], "checks": [{"scheme": "robust_aggregation", "rule": "median"}]}
    one = brute_force(make([damage(0)], topology=topo, defense=robust))["damage"]
    assert one == BruteResult("holds", Fraction(0), None)
    two = brute_force(make([damage(0)], topology=topo, defense=robust, adversary={"max_malicious": 2}))["damage"]
    assert two.verdict == "violated" and two.figure == 1
    assert two.witness is not None and len({name.split(":")[1] for name in two.witness}) == 2


def test_untrusted_coordinator() -> None:
    """An untrusted coordinator relays nothing genuine and its word alone can frame; receipts restore both."""
    trust = {"honest": [2], "coordinator": "untrusted"}
    rn = {"checks": [{"scheme": "redundant_neighbour", "input_via": "coordinator"}]}
    results = brute_force(make([DETECT, FRAMING], trust=trust, defense=rn))
    assert results["detect"] == BruteResult("violated", Fraction(0), frozenset({"0:0"}))
    assert results["framing"].verdict == "violated"
    with_receipts = brute_force(make([DETECT, FRAMING], trust=trust, defense={**rn, "receipts": True}))
    assert with_receipts["detect"] == BruteResult("holds", Fraction(1), None)
    assert with_receipts["framing"].verdict == "holds"


def test_silent_corruption() -> None:
    """SDC units of non-malicious workers are held to the detection bound; a colluding copy lets them pass."""
    faults = {"max_malicious": 0, "faults": {"silent_corruption": 0.001}}
    bare = brute_force(make([DETECT, damage(0)], adversary=faults))
    assert bare["detect"] == BruteResult("violated", Fraction(0), frozenset())
    assert bare["damage"] == BruteResult("holds", Fraction(0), None)  # SDC counts for detection only
    rep = {"checks": [{"scheme": "replicate", "factor": 2}]}
    assert brute_force(make([DETECT], adversary=faults, defense=rep))["detect"] == BruteResult(
        "holds", Fraction(1), None
    )
    covered = brute_force(make([DETECT], adversary={**faults, "max_malicious": 1}, defense=rep))["detect"]
    assert covered.verdict == "violated" and covered.figure == 0
    assert covered.witness is not None and len(covered.witness) == 1
    quiet = brute_force(make([DETECT], adversary={"max_malicious": 0}))["detect"]
    assert quiet == BruteResult("holds", Fraction(1), None)  # no adversary, no SDC: trivially


def test_rollback_horizon_cap_is_on_the_sum() -> None:
    """Rollback: 0 when all workers together have fewer than K+1 units, else 1 - prod(1 - (1-d)^(K+1))."""
    topo = {"stages": 2, "steps": 1, "microbatches": 1}
    spot = {"receipts": True, "response": ["rollback"], "checks": [{"scheme": "spot_check", "rate": 0.5}]}
    one = brute_force(make([damage(1)], topology=topo, defense=spot))["damage"]
    assert one == BruteResult("holds", Fraction(0), None)  # U_w = 1 F unit < K + 1 = 2
    two = brute_force(make([damage(1)], topology=topo, defense=spot, adversary={"max_malicious": 2}))["damage"]
    assert two.figure == 1 - (1 - Fraction(1, 4)) ** 2
    assert two.verdict == "violated" and two.witness == frozenset({"0:0", "1:0"})


def test_skip_stage_binomial() -> None:
    """skip_stage: each tamper is an independent trial, Pr[sum Bin(U_w, 1 - d_w) >= K+1]."""
    topo = {"stages": 2, "steps": 1, "microbatches": 1}
    spot = {"receipts": True, "response": ["skip_stage"], "checks": [{"scheme": "spot_check", "rate": 0.5}]}
    assert brute_force(make([damage(0)], topology=topo, defense=spot))["damage"].figure == Fraction(1, 2)
    two = {"max_malicious": 2}
    assert brute_force(make([damage(0)], topology=topo, defense=spot, adversary=two))["damage"].figure == Fraction(3, 4)
    assert brute_force(make([damage(1)], topology=topo, defense=spot, adversary=two))["damage"].figure == Fraction(1, 4)


def test_damage_uses_lowest_detection_units() -> None:
    """A worker tampers only with its least-detected unit kinds: U (d=0 under statistical) over H units."""
    topo = {"stages": 2, "steps": 3, "microbatches": 2}
    caps = {"capabilities": ["tamper_activations", "tamper_weights"]}
    stat = {"response": ["eject"], "checks": [{"scheme": "statistical", "power": 1.0, "min_deviation": 0.0}]}
    # d_w = 0 on U units only: 3 units, never caught.
    assert brute_force(make([damage(2)], topology=topo, adversary=caps, defense=stat))["damage"].figure == 1
    assert brute_force(make([damage(3)], topology=topo, adversary=caps, defense=stat))["damage"].figure == 0


def test_eject_convolution_matches_negbin_closed_form() -> None:
    """The explicit convolution of geometric tails equals sum_{j<f} C(K+f, j) d^j (1-d)^(K+f-j)."""
    for f in (1, 2, 3):
        for d in (Fraction(1, 20), Fraction(1, 2), Fraction(9, 10)):
            for K in (0, 1, 4):
                closed = sum(comb(K + f, j) * d**j * (1 - d) ** (K + f - j) for j in range(f))
                assert eject_probability([(d, 10**6)] * f, K) == closed
    # A never-caught worker contributes exactly its U_w units.
    assert eject_probability([(Fraction(0), 2)], 1) == 1
    assert eject_probability([(Fraction(0), 1)], 1) == 0
    assert eject_probability([(Fraction(0), 1), (Fraction(1, 2), 5)], 1) == Fraction(1, 2)


def test_long_series_in_floating_point() -> None:
    """Above EXACT_K_LIMIT the eject and skip_stage series are floats that match the exact sums."""
    K = EXACT_K_LIMIT + 1
    d = Fraction(1, 20)
    closed = sum(comb(K + 2, j) * d**j * (1 - d) ** (K + 2 - j) for j in range(2))
    eject = eject_probability([(d, 10**6), (d, 10**6)], K)
    assert isinstance(eject, float) and eject == pytest.approx(float(closed), rel=1e-9)
    exact = sum(Fraction(comb(200, j), 2**200) for j in range(K + 1, 201))
    skip = independent_probability([(Fraction(1, 2), 200)], K)
    assert isinstance(skip, float) and skip == pytest.approx(float(exact), rel=1e-9)
    assert independent_probability([(Fraction(0), 200), (Fraction(1), 500)], K) == pytest.approx(1.0)
    assert independent_probability([(Fraction(0), 10)], K) == pytest.approx(0.0)


def test_tee_compromise_and_tee_verifier() -> None:
    """TEE workers and the TEE verifier count only with attestation and without tee_compromise."""
    tee = {"honest": [2], "tee": [0, 1]}
    assert verdicts(make([DETECT], trust=tee, defense={"attestation": True})) == {"detect": "holds"}
    compromised = make([DETECT], trust=tee, defense={"attestation": True}, adversary={"tee_compromise": True})
    assert verdicts(compromised) == {"detect": "violated"}
    spot = {"receipts": True, "attestation": True, "checks": [{"scheme": "spot_check", "rate": 0.5, "verifier": "tee"}]}
    assert brute_force(make([DETECT], defense=spot))["detect"].figure == Fraction(1, 2)
    assert brute_force(make([DETECT], defense=spot, adversary={"tee_compromise": True}))["detect"].figure == 0


def test_equivocation_detection_needs_receipts_and_trusted_coordinator() -> None:
    """Equivocation is caught with certainty only by receipt linkage at a trusted coordinator."""
    caps = {"capabilities": ["equivocate"]}
    rn = {"checks": [{"scheme": "redundant_neighbour"}], "receipts": True}
    assert brute_force(make([DETECT], adversary=caps, defense=rn))["detect"].figure == 1
    assert brute_force(make([DETECT], adversary=caps, defense={**rn, "receipts": False}))["detect"].figure == 0
    untrusted = make([DETECT], adversary=caps, defense=rn, trust={"coordinator": "untrusted"})
    assert brute_force(untrusted)["detect"].figure == 0


def test_checked_worker_relay_at_stage_zero_with_commitment() -> None:
    """Reading: at stage 0 a committed batch is a genuine input even when relayed by the checked worker."""
    topo = {"stages": 2}
    trust = {"honest": [1]}
    relay = {"checks": [{"scheme": "redundant_neighbour", "input_via": "checked_worker"}]}
    assert brute_force(make([DETECT], topology=topo, trust=trust, defense=relay))["detect"].figure == 0
    committed = make([DETECT], topology=topo, trust=trust, defense={**relay, "data_commitment": True})
    assert brute_force(committed)["detect"].figure == 1


def test_percentage_budget_and_overhead() -> None:
    """A percentage budget is taken of all workers rounded down; overhead sums the cost table."""
    spec = make(
        [{"id": "cost", "kind": "overhead", "max_compute": 3.0, "max_memory": 1.5}],
        topology={"stages": 2, "standby": 1},
        adversary={"max_malicious": "40%"},
        defense={
            "receipts": True,
            "checks": [
                {"scheme": "replicate", "factor": 3},
                {"scheme": "spot_check", "rate": 0.05},
                {"scheme": "statistical", "power": 0.5, "min_deviation": 0.0},
            ],
        },
    )
    world = World(spec)
    assert world.total == 7 and world.budget == 2  # 2 stages x 3 copies + 1 standby; 40% of 7
    assert max(len(p) for p in placements(world)) == 2
    cost = brute_force(spec)["cost"]
    assert cost == BruteResult("violated", Fraction(207, 100), None)  # memory 2 > 1.5


# -- the random generator --------------------------------------------------------------------


def test_random_specs_are_distinct_and_valid() -> None:
    """random_spec gives 300 distinct loader-valid specs, each within the brute force's reach (its
    speed is the prover-scale benchmark's business, not a test's)."""
    rng = random.Random(20240601)
    specs = [random_spec(rng) for _ in range(300)]
    assert len({spec.model_dump_json(exclude={"name"}) for spec in specs}) == 300
    for spec in specs:
        world = World(spec)
        assert (world.total, world.budget) == (spec.total_workers, spec.malicious_budget)
        assert world.budget <= 2
        results = brute_force(spec)
        assert set(results) == {g.id for g in spec.guarantees}
        assert all(r.verdict in ("holds", "violated") for r in results.values())


def test_random_specs_cover_the_language() -> None:
    """Across many random specs every scheme, guarantee kind and both verdicts occur."""
    rng = random.Random(7)
    schemes: set[str] = set()
    kinds: dict[str, set[str]] = {}
    for _ in range(150):
        spec = Spec.model_validate(random_spec_data(rng))  # loader validity is tested above
        schemes.update(c.scheme for c in spec.defense.checks)
        results = brute_force(spec)
        for g in spec.guarantees:
            kinds.setdefault(g.kind, set()).add(results[g.id].verdict)
    assert schemes == {"redundant_neighbour", "spot_check", "replicate", "statistical", "robust_aggregation"}
    assert all(found == {"holds", "violated"} for found in kinds.values()), kinds
    assert len(kinds) == 6


def test_random_loaded_spec_text_reloads() -> None:
    """random_loaded_spec keeps its YAML text, which loads back to the same spec."""
    loaded = random_loaded_spec(random.Random(3))
    assert load_text(loaded.text).spec == loaded.spec


def test_krum_outvotes_a_corrupted_replica_only_from_five_replicas() -> None:
    """Krum guarantees to outvote f corrupted replicas only with R >= 2f + 3: with four replicas
    one corrupted replica is not masked (the prover and the oracle agree: damage violated), with
    five it is; the median of four masks it. The spec's count is the runtime's rule's own."""
    from stagewarden.prover import verify
    from stagewarden.runtime.aggregation import tolerated

    text = example_text("robust-aggregation-median")
    assert "replicas: 4" in text and "rule: median" in text
    for replicas, rule, masked in ((4, "krum", False), (5, "krum", True), (4, "median", True)):
        edited = text.replace("replicas: 4", f"replicas: {replicas}").replace("rule: median", f"rule: {rule}")
        loaded = load_text(edited)
        check = loaded.spec.defense.checks[0]
        assert check.masks(replicas) == tolerated(rule, replicas)  # type: ignore[union-attr]
        oracle = brute_force(loaded.spec)["damage"]
        assert (oracle.figure == 0) is masked
        proved = next(g for g in verify(loaded, ["damage"]).guarantees)
        assert proved.verdict == ("holds" if masked else "violated")
