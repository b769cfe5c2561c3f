"""Liveness decided by counting removals (:mod:`stagewarden.prover.liveness_count`), the method
that decides large worlds, checked where the explicit-state simulator can check it: on random tiny
specs the state search is switched off through ``Limits.liveness_search_placements``, so the
counts decide every spec whose removal rules are state-independent, and the verdict must equal
the simulator's, with every violating run replayed event by event."""

from __future__ import annotations

import functools
import random
from collections import Counter

from dynamics_sim import replay_trace, simulate
from random_specs import load_data, random_dynamics_spec_data

from stagewarden.prover import Limits, verify
from stagewarden.prover.encoding import Encoding
from stagewarden.prover.liveness_count import NotCountable, RemovalRules, removal_rules
from stagewarden.prover.liveness_runs import LivenessRuns, _Step
from stagewarden.spec import LoadedSpec, load_text

SPECS = 400
DRAW_SEED = 41_2026
#: No placement at all for the state search: every world takes the larger-world paths.
FORCED = Limits(liveness_search_placements=0)


def _liveness_only(seed: int) -> LoadedSpec:
    data = random_dynamics_spec_data(random.Random(seed))
    data["guarantees"] = [{"id": "live", "kind": "liveness"}]
    return load_data(data, f"<seed {seed}>.yaml")


def _rules(loaded: LoadedSpec) -> RemovalRules | None:
    runs = LivenessRuns(Encoding(loaded, concrete=True, dynamics=False))
    try:
        return removal_rules(runs)
    except NotCountable:
        return None


@functools.cache
def _comparison() -> tuple[list[str], Counter[str]]:
    tally: Counter[str] = Counter()
    problems: list[str] = []
    draw = random.Random(DRAW_SEED)
    for seed in (draw.getrandbits(64) for _ in range(SPECS)):
        loaded = _liveness_only(seed)
        counted = _rules(loaded) is not None
        forced = verify(loaded, limits=FORCED).guarantees[0]
        searched = verify(loaded).guarantees[0]
        expected = simulate(loaded.spec)["live"].verdict
        tally[f"{'counted' if counted else 'other'}:{forced.verdict}"] += 1
        if forced.verdict != expected or searched.verdict != expected:
            problems.append(f"seed {seed}: counted {forced.verdict}, searched {searched.verdict}, simulator {expected}")
            continue
        if forced.verdict == "violated":
            assert forced.trace is not None
            problem = replay_trace(loaded.spec, "live", forced.trace)
            if problem is not None:
                problems.append(f"seed {seed}: the counted run does not replay: {problem}")
            tally["replayed"] += 1
    return problems, tally


def test_counting_agrees_with_the_simulator_on_tiny_specs() -> None:
    """With the state search off, every verdict on 400 random tiny specs equals the simulator's
    (and the state search's), and every violating run replays; the counts decide a good share of
    them, both ways."""
    problems, tally = _comparison()
    assert not problems, "\n".join(problems[:5])
    assert tally["counted:violated"] >= 40 and tally["counted:holds"] >= 20, tally
    assert tally["replayed"] >= 40, tally


def test_the_representatives_stand_for_every_position() -> None:
    """The removal rules are evaluated at a few representative positions; on tiny specs the same
    rules, evaluated on the probe state at every position, give the same answers."""
    draw = random.Random(DRAW_SEED + 1)
    checked = 0
    for seed in (draw.getrandbits(64) for _ in range(150)):
        loaded = _liveness_only(seed)
        rules = _rules(loaded)
        if rules is None:
            continue
        checked += 1
        runs = LivenessRuns(Encoding(loaded, concrete=True, dynamics=False))
        enc, n = runs.enc, len(runs.positions)
        withhold = enc.cap["withhold"] is True
        for p, w in enumerate(runs.positions):
            stage = runs.world.slot_of(w)[0]
            for others in (False, True):
                state = _Step([others] * n, [others] * n, [])
                state.here[p] = True
                state.bad[p] = False
                caught = withhold or runs.catchable(state, p, certain=False)
                assert (enc.response["eject"] is True and caught) == rules.ejectable[stage], (seed, p)
                if enc.response["eject"] is True:
                    assert runs.framed(state, p) == rules.framable, (seed, p)
            full = _Step([True] * n, [False] * n, [])
            assert (withhold or runs.catchable(full, p, certain=True)) == rules.certain[stage], (seed, p)
    assert checked >= 30, checked


SCALED = """version: 1
name: scaled-{stages}x{replicas}
topology: {{stages: {stages}, replicas: {replicas}, microbatches: 4, steps: 1000, standby: {standby}}}
trust: {{honest: [0]}}
adversary:
  max_malicious: {budget}
  capabilities: [tamper_activations, tamper_gradients, equivocate, poison_data, false_accuse]
  faults: {{crash: {crash}}}
defense:
  receipts: true
  attestation: true
  data_commitment: true
  checks:
    - scheme: redundant_neighbour
    - scheme: spot_check
      rate: 0.05
  response: [eject, rollback]
guarantees:
  - {{id: live, kind: liveness}}
"""


def _scaled(stages: int, replicas: int, standby: int, budget: int, crash: int) -> LoadedSpec:
    text = SCALED.format(stages=stages, replicas=replicas, standby=standby, budget=budget, crash=crash)
    return load_text(text, "<scaled>.yaml")


def test_a_large_world_is_decided_at_the_exact_threshold() -> None:
    """256 stages x 8 replicas with 8 standby workers and one crash (the benchmark's world,
    scaled down): emptying every replica takes 8 + 8 removals, so budget 15 breaks liveness and
    14 cannot; the violating run is explicit and uses exactly 15 malicious workers."""
    for budget, verdict in ((15, "violated"), (14, "holds")):
        result = verify(_scaled(256, 8, 8, budget, 1)).guarantees[0]
        assert result.verdict == verdict, (budget, result.summary, result.reason)
    result = verify(_scaled(256, 8, 8, 15, 1)).guarantees[0]
    assert result.trace is not None
    assert len(result.trace["malicious"]) == 15
    events = result.trace["dynamics"]["events"]
    assert sum(e["event"] == "enter" for e in events) == 8 and sum(e["event"] == "crash" for e in events) == 1


def test_the_scaled_world_agrees_with_the_simulator_where_it_is_small() -> None:
    """The same family at 2 to 3 stages, where the simulator enumerates every run: the counted
    verdict (state search off) equals the simulator's for every budget, crash count and pool."""
    seen: Counter[str] = Counter()
    for stages, replicas, standby in ((2, 1, 1), (3, 1, 2), (2, 2, 1), (3, 2, 0)):
        for budget in range(0, 4):
            for crash in (0, 1):
                loaded = _scaled(stages, replicas, standby, budget, crash)
                counted = verify(loaded, limits=FORCED).guarantees[0]
                expected = simulate(loaded.spec)["live"].verdict
                assert counted.verdict == expected, (stages, replicas, standby, budget, crash, counted.summary)
                seen[expected] += 1
                if counted.verdict == "violated":
                    assert counted.trace is not None
                    assert replay_trace(loaded.spec, "live", counted.trace) is None
    assert seen["violated"] > 0 and seen["holds"] > 0, seen
