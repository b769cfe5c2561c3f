"""Differential test of the prover's dynamics: on 500 random tiny specs with standby workers,
crash faults, framing (false accusation, equivocation, outvoting, an untrusted coordinator),
rollback without eject and replicate, `stagewarden.prover.verify` agrees with the explicit-state
simulator (:mod:`dynamics_sim`), and every violation trace it gives replays in the simulator.

The specs come from the seeded generator of :mod:`random_specs`, one per seed of a fixed
sequence (:data:`DRAW_SEED`), so every run, whatever else is imported, compares the same 500; a
disagreement names its seed. (A derandomized Hypothesis drawing is not stable enough for this:
Hypothesis mixes in integer constants of every local module imported so far, so its 500 seeds
changed with which test modules ran before and with any edit to the code.) Soundness is strict
(never "holds" where the simulator finds a violation). A violation's figure is the simulator's
worst case exactly for ``detection``, and for ``bounded_damage`` a probability some run of the
simulator reaches; every violation trace replays, a detection trace down to its figure. Two
differences are allowed, as docs/semantics.rst documents them: a violation that only a *cycle of
framings through standby entries* produces (the prover reads those framings unordered; the
simulator computes that reading too and the prover must equal it), and bounded_damage "unknown"
where only the prover's bound exceeds the threshold (counted, and at most 10% of the
bounded_damage verdicts).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from dynamics_sim import SimResult, replay_trace, simulate, simulate_unordered
from random_specs import random_loaded_spec

from stagewarden.prover import GuaranteeResult, verify
from stagewarden.spec import LoadedSpec, load_text

SPECS = 500
#: Seed of the sequence the specs' own seeds are drawn from.
DRAW_SEED = 20260


#: Hand-made specs, each the smallest found for one way the prover and the simulator have
#: differed: they are compared on every run beside the random ones.
NAMED_SPECS: dict[str, str] = {
    "damage-rollback-tries": """\
version: 1
name: damage-tries-add-up-rollback
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [equivocate], faults: {crash: 0}}
defense: {receipts: false, checks: [], response: [rollback]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 3, probability: 0.99}
""",
    "damage-rollback-eject-tries": """\
version: 1
name: damage-tries-add-up-rollback-eject
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [equivocate], faults: {crash: 0}}
defense: {receipts: false, checks: [], response: [rollback, eject]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 3, probability: 0.99}
""",
    "liveness-standby-stall": """\
version: 1
name: stall-by-entered-standby
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 1}
trust: {honest: [0, 1], tee: [], coordinator: trusted}
adversary: {max_malicious: 1, collusion: false, capabilities: [withhold], faults: {crash: 1}}
defense: {receipts: false, checks: [], response: [rollback]}
guarantees:
- {id: live, kind: liveness}
""",
    "liveness-replicate-copies": """\
version: 1
name: liveness-replicate-copies
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 0, collusion: false, capabilities: [withhold], faults: {crash: 1}}
defense: {receipts: false, checks: [{scheme: replicate, factor: 3, resolve: majority}], response: [eject]}
guarantees:
- {id: live, kind: liveness}
""",
    "no-framing-vote-over-occupied-copies": """\
version: 1
name: outvoting-over-fewer-copies
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 1, collusion: false, capabilities: [tamper_weights], faults: {crash: 1}}
defense: {receipts: false, checks: [{scheme: replicate, factor: 3, resolve: majority}], response: [rollback]}
guarantees:
- {id: framing, kind: no_framing}
""",
    "detection-peer-entered-standby": """\
version: 1
name: peer-check-of-an-entered-standby
topology: {stages: 3, replicas: 1, microbatches: 1, steps: 1, standby: 1}
trust: {honest: [0, 1, 2], tee: [], coordinator: trusted}
adversary: {max_malicious: 1, collusion: true, capabilities: [tamper_gradients], faults: {crash: 1}}
defense: {receipts: true, checks: [{scheme: spot_check, rate: 0.25, verifier: peer}], response: [restart]}
guarantees:
- {id: detect, kind: detection, probability: 0.3}
""",
    "damage-levels-differ": """\
version: 1
name: damage-rollback-eject-levels-differ
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [tamper_weights, tamper_gradients], faults: {crash: 0}}
defense: {receipts: false, checks: [{scheme: statistical, power: 0.9, min_deviation: 0.0}], response: [eject, rollback]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 2, probability: 0.5}
""",
    "damage-horizon-cap-per-try": """\
version: 1
name: damage-horizon-cap-per-try
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [tamper_gradients], faults: {crash: 0}}
defense: {receipts: true, checks: [{scheme: spot_check, rate: 0.25, verifier: peer}], response: [eject, rollback]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 1, probability: 0.3}
""",
    "liveness-trace-events": """\
version: 1
name: liveness-trace-lists-no-crash
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 0, collusion: false, capabilities: [false_accuse], faults: {crash: 1}}
defense: {receipts: false, checks: [], response: [eject]}
guarantees:
- {id: live, kind: liveness}
""",
    "stall-unchecked-last-update": """\
version: 1
name: stall-coordinator
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 1, collusion: false, capabilities: [tamper_weights], faults: {crash: 0}}
defense: {receipts: false, checks: [{scheme: redundant_neighbour, input_via: coordinator}], response: [restart]}
guarantees:
- {id: live, kind: liveness}
""",
    "damage-rollback-retries-underestimate": """\
version: 1
name: rollback-retries-two-tries
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [tamper_weights, tamper_gradients], faults: {crash: 0}}
defense: {receipts: true, checks: [{scheme: spot_check, rate: 0.25, verifier: peer}], response: [rollback]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 1, probability: 0.08}
""",
    "damage-rollback-eject-split": """\
version: 1
name: rollback-eject-two-tries-split-the-count
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 2, standby: 0}
trust: {honest: [], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: false, capabilities: [tamper_activations], faults: {crash: 0}}
defense: {receipts: true, checks: [{scheme: spot_check, rate: 0.5, verifier: coordinator}], response: [rollback, eject]}
guarantees:
- {id: damage, kind: bounded_damage, max_undetected: 1, probability: 0.53}
""",
    "detection-peer-vacancy-halts-its-replica": """\
version: 1
name: peer-vacancy-in-the-checked-units-replica
topology: {stages: 4, replicas: 1, microbatches: 1, steps: 1, standby: 2}
trust: {honest: ["3:0", 2], tee: [], coordinator: trusted}
adversary: {max_malicious: 2, collusion: true, capabilities: [tamper_weights], faults: {crash: 1}}
defense: {receipts: true, checks: [{scheme: spot_check, rate: 0.25, verifier: peer}], response: [skip_stage]}
guarantees:
- {id: detect, kind: detection, probability: 1.0}
""",
    "vote-over-vacancies-no-order-makes": """\
version: 1
name: vote-over-vacancies-no-order-makes
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 1}
trust: {honest: [0, 1], tee: [], coordinator: trusted}
adversary: {max_malicious: 1, collusion: false, capabilities: [tamper_gradients], faults: {crash: 1}}
defense: {receipts: false, checks: [{scheme: replicate, factor: 3, resolve: majority}], response: [eject]}
guarantees:
- {id: framing, kind: no_framing}
""",
}


@dataclass
class Disagreement:
    """One guarantee on which the prover and the simulator differ."""

    index: int
    guarantee: str
    prover: str
    simulator: str
    detail: str
    text: str

    def __str__(self) -> str:
        return (
            f"spec {self.index}, {self.guarantee}: prover {self.prover}, simulator {self.simulator} "
            f"({self.detail})\n{self.text}"
        )


def _figures_differ(result: GuaranteeResult, reference: SimResult) -> bool:
    """A detection figure, holding or violated, is the adversary's best: the simulator's worst
    detection probability exactly (docs/semantics.rst, "Verdicts"). A violated bounded_damage
    figure is the damage of a strategy the prover shows to exist, so it may fall short of the
    simulator's best damage but never exceed it (a figure above it would be no run's)."""
    if result.figure is None or reference.figure is None:
        return False
    value, exact = result.figure.value, float(reference.figure)
    tolerance = 1e-9 * max(1.0, abs(exact))
    if result.kind == "detection":
        return bool(abs(exact - value) > tolerance)
    if result.kind == "bounded_damage" and result.verdict == "violated":
        return bool(value > exact + tolerance)
    return False


def _exact_figure(result: GuaranteeResult) -> Fraction | None:
    """The figure as the exact fraction the verdict gives (None where it gives none)."""
    if result.figure is None or result.figure.exact is None:
        return None
    return Fraction(result.figure.exact)


def compare(index: int, loaded: LoadedSpec, tally: Counter[str]) -> list[Disagreement]:
    """Every disagreement between the prover and the simulator on one spec."""
    expected = simulate(loaded.spec)
    out = []
    for result in verify(loaded).guarantees:
        reference = expected[result.id]
        tally[f"{result.kind}:{result.verdict}"] += 1

        def disagree(detail: str, result: GuaranteeResult = result, reference: SimResult = reference) -> None:
            out.append(Disagreement(index, result.id, result.verdict, reference.verdict, detail, loaded.text))

        if result.verdict == "unknown":
            if result.kind == "bounded_damage":
                tally["damage-unknown"] += 1
            else:
                disagree("unknown outside bounded_damage")
            continue
        if result.verdict == "holds" and reference.verdict == "violated":
            events = ", ".join(map(str, reference.events)) or "no events"
            disagree(f"UNSOUND: malicious {sorted(reference.witness or [])}, run: {events}, figure {reference.figure}")
            continue
        if result.verdict == "violated" and reference.verdict == "holds":
            if result.kind in ("bounded_damage", "overhead"):
                disagree(f"figure {result.figure.value if result.figure else None} vs {reference.figure}")
                continue
            unordered, run, cycle = simulate_unordered(loaded.spec, result.id)
            if unordered == "violated" and cycle:
                tally["framing-cycle"] += 1
            else:
                detail = "unordered reading also holds" if unordered == "holds" else "not a framing cycle"
                disagree(f"{detail}; unordered run: {', '.join(map(str, run)) or 'none'}")
            continue
        if result.verdict != reference.verdict:
            disagree("verdicts differ")
            continue
        if _figures_differ(result, reference):
            disagree(f"figure {result.figure.value if result.figure else None} vs {reference.figure}")
            continue
        if result.verdict == "violated" and result.trace is not None and "dynamics" in result.trace:
            tally["traces-replayed"] += 1
            problem = replay_trace(loaded.spec, result.id, result.trace, _exact_figure(result))
            if problem is not None:
                disagree(f"trace does not replay: {problem}")
    return out


def drawn_seeds() -> list[int]:
    """The seeds of the random specs: the same :data:`SPECS` on every run."""
    draw = random.Random(DRAW_SEED)
    return [draw.getrandbits(64) for _ in range(SPECS)]


@functools.cache
def _comparison() -> tuple[list[Disagreement], Counter[str]]:
    """Every disagreement on the random and the named specs, and the tally (computed once for
    the tests of this module, which run on one worker). Every spec is compared (nothing stops at
    the first disagreement), so both tests read all 500."""
    tally: Counter[str] = Counter()
    disagreements: list[Disagreement] = []
    for seed in drawn_seeds():
        tally["specs"] += 1
        disagreements.extend(compare(seed, random_loaded_spec(random.Random(seed), dynamics=True), tally))
    for index, (name, text) in enumerate(NAMED_SPECS.items()):
        disagreements.extend(compare(index, load_text(text, f"<{name}>.yaml"), tally))
    return disagreements, tally


def test_the_prover_never_says_holds_where_the_simulator_finds_a_violation() -> None:
    """Soundness, strictly: on the same specs no "holds" (nor a holding figure) is refuted by a run
    the simulator finds, whatever else differs."""
    disagreements, tally = _comparison()
    unsound = [d for d in disagreements if d.prover == "holds" and d.simulator == "violated"]
    assert not unsound, "\n".join(map(str, unsound[:2]))
    assert tally["bounded_damage:holds"] > 0 and tally["detection:holds"] > 0, tally


def test_prover_agrees_with_dynamics_simulator() -> None:
    """On 500 random tiny specs and the named ones every verdict agrees with the simulator, up to
    the documented framing cycles and bounded_damage unknowns, and every violation trace replays."""
    disagreements, tally = _comparison()
    kinds = Counter(
        d.guarantee.split("-", 1)[-1] + f": prover {d.prover}, simulator {d.simulator}" for d in disagreements
    )
    assert not disagreements, f"{len(disagreements)} disagreements {dict(kinds)}; first:\n" + "\n".join(
        map(str, disagreements[:2])
    )
    assert tally["specs"] >= SPECS, tally
    # Unknowns stay a small minority of the bounded_damage verdicts: 33 to 38 of about 605 on
    # these specs, more on a loaded machine (the searches behind them have wall-clock limits).
    damage = tally["bounded_damage:holds"] + tally["bounded_damage:violated"] + tally["damage-unknown"]
    assert tally["damage-unknown"] <= 0.1 * damage, tally
    # The specs exercise both verdicts of every guarantee kind, and traces are replayed.
    for kind in ("detection", "bounded_damage", "no_framing", "liveness", "data_integrity"):
        assert tally[f"{kind}:holds"] > 0 and tally[f"{kind}:violated"] > 0, (kind, tally)
    assert tally["traces-replayed"] > 0, tally


CYCLE_SPEC = """\
version: 1
name: framing-cycle
topology: {stages: 2, replicas: 1, microbatches: 1, steps: 1, standby: 2}
trust: {honest: [0, 1], coordinator: trusted}
adversary: {max_malicious: 2, capabilities: [tamper_activations, false_accuse], faults: {crash: 0}}
defense: {receipts: false, checks: [{scheme: replicate, factor: 2, resolve: referee}], response: [eject]}
guarantees:
- {id: detect, kind: detection}
- {id: framing, kind: no_framing}
"""


def test_framing_cycle_is_the_documented_exception() -> None:
    """Two trusted copies, each framed by a malicious standby that can only enter the other's
    position after that framing: no order of events realises it, so the simulator holds; the
    prover's unordered reading reports the violation, and the comparison accepts it by name."""
    loaded = load_text(CYCLE_SPEC, "<framing-cycle>.yaml")
    exact = simulate(loaded.spec)
    assert exact["detect"].verdict == "holds" and exact["framing"].verdict == "holds"
    tally: Counter[str] = Counter()
    disagreements = compare(0, loaded, tally)
    prover = {r.id: r.verdict for r in verify(loaded).guarantees}
    if prover == {"detect": "violated", "framing": "violated"}:
        assert not disagreements and tally["framing-cycle"] == 2
    else:
        assert prover == {"detect": "holds", "framing": "holds"}, prover  # the exact answer is allowed too


def _verdicts(loaded: LoadedSpec) -> list[dict[str, object]]:
    """Everything a verdict shows but its wall-clock seconds and the assumptions of a proof
    (one minimal set among several, which docs/semantics.rst says may differ)."""
    out = []
    for result in verify(loaded).guarantees:
        data = result.to_json()
        data.pop("seconds", None)
        data.pop("assumptions", None)
        out.append(data)
    return out


def test_counterexamples_do_not_depend_on_what_was_verified_before() -> None:
    """The same spec gives the same verdicts, figures, summaries and traces whether it is verified
    before or after the others (Z3's shared context, and with it every solver's search, differs between the
    two passes)."""
    specs = [random_loaded_spec(random.Random(seed), dynamics=True) for seed in drawn_seeds()[:40]]
    forward = [_verdicts(loaded) for loaded in specs]
    backward = [_verdicts(loaded) for loaded in reversed(specs)][::-1]
    for seed, one, other in zip(drawn_seeds(), forward, backward, strict=False):
        assert one == other, seed
    violated = [g for spec in forward for g in spec if g["verdict"] == "violated" and g.get("trace")]
    assert len(violated) > 20, len(violated)
