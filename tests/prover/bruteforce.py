"""An explicit-enumeration model checker for small specs: the reference the Z3 prover is
differentially tested against.

It implements docs/semantics.rst ("The prover's model") in the most direct way: enumerate every
placement of at most ``B`` malicious workers among the corruptible ones (:mod:`brute_world`),
evaluate each rule of that page in plain Python for the placement (:mod:`brute_placement`), and
combine, with the damage series of :mod:`brute_damage`. It is meant to be read next to the page,
not to be fast; it handles specs with a handful of stages, replicas, copies and standby workers.

Readings of points that the page leaves open are marked ``Reading:`` in the comments.
"""

from __future__ import annotations

from fractions import Fraction

from brute_damage import EXACT_K_LIMIT, eject_probability, independent_probability, rollback_probability
from brute_placement import Placement
from brute_world import TAMPERING, BruteResult, Worker, World, _exact, placements

from stagewarden.spec import (
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    NoFramingGuarantee,
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    Spec,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

__all__ = [
    "EXACT_K_LIMIT",
    "BruteResult",
    "Worker",
    "World",
    "brute_force",
    "eject_probability",
    "independent_probability",
    "overhead_cost",
    "placements",
]


def _detection(world: World, g: DetectionGuarantee) -> BruteResult:
    P = probability_fraction(g.probability)
    scope = set(g.of) if g.of is not None else set(TAMPERING)
    usable = scope & world.capabilities & set(TAMPERING)  # capabilities the adversary lacks cannot be used
    worst: Fraction = Fraction(1)
    witness = None
    for malicious in placements(world):
        pl = Placement(world, malicious)
        ds = [d for w in pl.malicious_computing() for _, _, d in pl.tamper_options(w, usable)]
        # Reading: SDC units count even where the adversary has nothing, and whatever `of` says.
        if world.sdc:
            ds += [d for _, _, d in pl.sdc_options()]
        if ds:
            worst = min(worst, min(ds))
            if witness is None and min(ds) < P:
                witness = malicious
    return BruteResult("violated" if witness is not None else "holds", worst, witness)


def _bounded_damage(world: World, g: BoundedDamageGuarantee) -> BruteResult:
    P = probability_fraction(g.probability)
    K = g.max_undetected
    worst: Fraction | float = Fraction(0)
    witness = None
    cache: dict[tuple[tuple[Fraction, int], ...], Fraction | float] = {}
    for malicious in placements(world):
        pl = Placement(world, malicious)
        if world.robust and pl.touched_replicas() <= world.masked:
            pr: Fraction | float = Fraction(0)  # every tamper is outvoted
        else:
            profile = sorted(pl.damage_profile())
            key = tuple(profile)
            if key not in cache:
                if "rollback" in world.response:
                    cache[key] = rollback_probability(profile, K)
                elif "eject" in world.response:
                    cache[key] = eject_probability(profile, K)
                else:
                    cache[key] = independent_probability(profile, K)
            pr = cache[key]
        worst = max(worst, pr)
        if witness is None and pr > 1 - P:
            witness = malicious
    return BruteResult("violated" if witness is not None else "holds", worst, witness)


def _no_framing(world: World) -> BruteResult:
    for malicious in placements(world):
        if Placement(world, malicious).framing():
            return BruteResult("violated", None, malicious)
    return BruteResult("holds", None, None)


def _liveness(world: World) -> BruteResult:
    for malicious in placements(world):
        pl = Placement(world, malicious)
        if pl.stall() or pl.empty_slots():
            return BruteResult("violated", None, malicious)
    return BruteResult("holds", None, None)


def _data_integrity(world: World) -> BruteResult:
    if "poison_data" in world.capabilities:
        for malicious in placements(world):
            pl = Placement(world, malicious)
            for w in pl.malicious_computing():
                if w.stage == 0 and pl.d_poison(w) < 1:
                    return BruteResult("violated", None, malicious)
    return BruteResult("holds", None, None)


def overhead_cost(world: World) -> tuple[Fraction, Fraction]:
    """(extra compute, extra memory) by the cost model table."""
    compute = Fraction(0)
    memory = Fraction(0)
    for check in world.checks:
        if isinstance(check, RedundantNeighbourCheck):
            compute += Fraction(world.S - 1, world.S)
            memory += Fraction(world.S - 1, world.S)
        elif isinstance(check, SpotCheck):
            compute += _exact(check.rate)
        elif isinstance(check, ReplicateCheck):
            compute += check.factor - 1
            memory += check.factor - 1
        elif isinstance(check, StatisticalCheck):
            compute += Fraction(1, 100)  # Reading: per statistical check
    if world.receipts:
        compute += Fraction(1, 100)
    return compute, memory


def _overhead(world: World, g: OverheadGuarantee) -> BruteResult:
    compute, memory = overhead_cost(world)
    over = compute > _exact(g.max_compute) or (g.max_memory is not None and memory > _exact(g.max_memory))
    return BruteResult("violated" if over else "holds", compute, None)


def brute_force(spec: Spec) -> dict[str, BruteResult]:
    """Decide every guarantee of ``spec`` by enumerating placements; keyed by guarantee id."""
    world = World(spec)
    out: dict[str, BruteResult] = {}
    for g in spec.guarantees:
        if isinstance(g, DetectionGuarantee):
            out[g.id] = _detection(world, g)
        elif isinstance(g, BoundedDamageGuarantee):
            out[g.id] = _bounded_damage(world, g)
        elif isinstance(g, NoFramingGuarantee):
            out[g.id] = _no_framing(world)
        elif isinstance(g, LivenessGuarantee):
            out[g.id] = _liveness(world)
        elif isinstance(g, DataIntegrityGuarantee):
            out[g.id] = _data_integrity(world)
        else:
            assert isinstance(g, OverheadGuarantee)
            out[g.id] = _overhead(world, g)
    return out
