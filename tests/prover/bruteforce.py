"""An explicit-enumeration model checker for small specs: the reference the Z3 prover is
differentially tested against.

It implements docs/semantics.rst ("The prover's model") in the most direct way: enumerate every
placement of at most ``B`` malicious workers among the corruptible ones, evaluate each rule of
that page in plain Python for the placement, and combine. It is meant to be read next to the page,
not to be fast; it handles specs with a handful of stages, replicas, copies and standby workers.

Readings of points that the page leaves open are marked ``Reading:`` in the comments.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from stagewarden.spec import (
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    NoFramingGuarantee,
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    Spec,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

__all__ = ["BruteResult", "Worker", "World", "brute_force", "placements"]

#: Unit kinds: forward, backward, update.
F, B, U = "F", "B", "U"

#: The five tampering capabilities and the unit kinds each acts on (semantics.rst table).
#: ``poison_data`` acts on the F units of stage-0 workers only (handled where it is used).
CAPABILITY_UNITS: dict[str, tuple[str, ...]] = {
    "tamper_activations": (F,),
    "tamper_gradients": (B,),
    "tamper_weights": (U,),
    "poison_data": (F,),
    "equivocate": (F, B),
}
TAMPERING = tuple(CAPABILITY_UNITS)

#: Unit kinds each check scheme covers (robust_aggregation detects nothing).
CHECK_COVERS: dict[str, tuple[str, ...]] = {
    "redundant_neighbour": (F, B, U),
    "spot_check": (F, B, U),
    "replicate": (F, B, U),
    "statistical": (F, B),
    "robust_aggregation": (),
}

#: Above this ``max_undetected`` the damage series are summed in floating point.
EXACT_K_LIMIT = 60

#: A probability: exact, or a float where the series are long.
Prob = Fraction | float
#: A distribution of a count on 0..top, the last entry meaning ">= top".
Dist = list[Any]

_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


@dataclass(frozen=True)
class BruteResult:
    """The brute-force verdict of one guarantee.

    Attributes:
        verdict: ``"holds"`` or ``"violated"``.
        figure: detection: the minimum detection probability; bounded_damage: the worst
            Pr[more than K undetected]; overhead: the extra compute fraction; else None.
        witness: the malicious workers of a violating placement with the fewest of them
            (None when the guarantee holds, or for overhead).
    """

    verdict: str
    figure: Fraction | float | None
    witness: frozenset[str] | None


@dataclass(frozen=True)
class Worker:
    """One worker: a computing worker of slot ``stage:replica`` (copy 0 is the primary), or a
    standby worker (stage and replica None)."""

    name: str
    stage: int | None
    replica: int | None
    copy: int = 0

    @property
    def computing(self) -> bool:
        return self.stage is not None

    @property
    def slot(self) -> tuple[int, int] | None:
        if self.stage is None or self.replica is None:
            return None
        return (self.stage, self.replica)


def _exact(value: float) -> Fraction:
    """The decimal the user wrote (0.05 is 1/20, not its binary approximation)."""
    return Fraction(str(value))


class World:
    """The fixed facts of a spec: workers, trust, budget, checks (semantics.rst, first section)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        topo, trust, adv, defense = spec.topology, spec.trust, spec.adversary, spec.defense
        self.S: int = topo.stages
        self.R: int = topo.replicas
        self.M: int = topo.microbatches
        self.H: int = topo.steps
        self.K_standby: int = topo.standby
        self.checks = list(defense.checks)
        self.rn = next((c for c in self.checks if isinstance(c, RedundantNeighbourCheck)), None)
        self.replicate = next((c for c in self.checks if isinstance(c, ReplicateCheck)), None)
        self.robust = any(isinstance(c, RobustAggregationCheck) for c in self.checks)
        rules = [c.rule for c in self.checks if isinstance(c, RobustAggregationCheck)]
        # outvoted by construction: fewer than half for the median and the trimmed mean; krum's f
        # with R >= 2f + 3 (written out here, not taken from the prover)
        self.masked = 0 if not rules else max(0, (self.R - 3) // 2 if rules[0] == "krum" else (self.R - 1) // 2)
        self.spots = [c for c in self.checks if isinstance(c, SpotCheck)]
        self.statisticals = [c for c in self.checks if isinstance(c, StatisticalCheck)]
        self.k = self.replicate.factor if self.replicate is not None else 1
        self.receipts: bool = defense.receipts
        self.attestation: bool = defense.attestation
        self.data_commitment: bool = defense.data_commitment
        self.response = set(defense.response)
        self.coordinator_trusted = trust.coordinator == "trusted"
        self.collusion: bool = adv.collusion
        self.tee_compromise: bool = adv.tee_compromise
        self.capabilities: set[str] = set(adv.capabilities)
        self.crash: int = adv.faults.crash
        self.sdc = probability_fraction(adv.faults.silent_corruption) > 0

        # Workers, in a fixed order: slots by stage then replica, primary then copies; standby.
        self.workers: list[Worker] = []
        for s in range(self.S):
            for r in range(self.R):
                self.workers.append(Worker(f"{s}:{r}", s, r, 0))
                for j in range(1, self.k):
                    self.workers.append(Worker(f"{s}:{r}#{j}", s, r, j))
        for i in range(self.K_standby):
            self.workers.append(Worker(f"standby:{i}", None, None))
        self.by_name = {w.name: w for w in self.workers}
        self.computing = [w for w in self.workers if w.computing]
        self.N = len(self.computing)
        self.total = len(self.workers)
        assert self.total == self.S * self.R * self.k + self.K_standby

        # Budget: an integer, or a percentage of all workers rounded down.
        budget = adv.max_malicious
        if isinstance(budget, int):
            self.budget = budget
        else:
            match = _PERCENT_RE.match(budget)
            assert match is not None
            self.budget = math.floor(Fraction(match.group(1)) * self.total / 100)

        # Trust entries name slots; an entry covers every worker of the slot.
        self.honest_slots = self._slots(list(trust.honest))
        self.tee_slots = self._slots(list(trust.tee))
        self.tee_counts = self.attestation and not self.tee_compromise

    def _slots(self, refs: list[int | str]) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for ref in refs:
            if isinstance(ref, int):
                out.update((ref, r) for r in range(self.R))
            else:
                stage, replica = ref.split(":")
                out.add((int(stage), int(replica)))
        return out

    def corruptible(self, w: Worker) -> bool:
        """Not made honest by an active assumption (standby workers are never covered)."""
        if w.slot is None:
            return True
        if w.slot in self.honest_slots:
            return False
        if w.slot in self.tee_slots and self.tee_counts:
            return False
        return True

    def slot_workers(self, s: int, r: int) -> list[Worker]:
        return [w for w in self.computing if w.slot == (s, r)]

    def primary(self, s: int, r: int) -> Worker:
        return self.by_name[f"{s}:{r}"]

    def units(self, kind: str) -> int:
        """Units of one kind a computing worker runs over the horizon."""
        return self.H * self.M if kind in (F, B) else self.H


def placements(world: World) -> Iterator[frozenset[str]]:
    """Every placement, fewest malicious workers first: each subset of the corruptible workers
    of size 0..B."""
    corruptible = [w.name for w in world.workers if world.corruptible(w)]
    for size in range(0, min(world.budget, len(corruptible)) + 1):
        for combo in itertools.combinations(corruptible, size):
            yield frozenset(combo)


class Placement:
    """One placement: the rules of semantics.rst evaluated for a set of malicious workers."""

    def __init__(self, world: World, malicious: frozenset[str]) -> None:
        self.world = world
        self.malicious = malicious

    # -- who is who ---------------------------------------------------------------------

    def is_malicious(self, w: Worker) -> bool:
        return w.name in self.malicious

    def covers(self, x: Worker, w: Worker) -> bool:
        """``x`` covers for tampering worker ``w``: malicious, collusion on, not ``w`` itself."""
        return self.is_malicious(x) and self.world.collusion and x.name != w.name

    def malicious_computing(self) -> list[Worker]:
        return [w for w in self.world.computing if self.is_malicious(w)]

    def malicious_standby(self) -> list[Worker]:
        return [w for w in self.world.workers if not w.computing and self.is_malicious(w)]

    def honest_computing(self) -> list[Worker]:
        return [w for w in self.world.computing if not self.is_malicious(w)]

    # -- per-check detection probabilities -------------------------------------------------

    def rn_input_genuine(self, w: Worker) -> bool:
        """Whether the redundant_neighbour checker's copy of ``w``'s input is genuine."""
        world = self.world
        assert world.rn is not None and w.stage is not None and w.replica is not None
        s, r, via = w.stage, w.replica, world.rn.input_via
        if world.receipts:
            return True
        if via == "coordinator" and world.coordinator_trusted:
            return True
        if via == "upstream" and s >= 1 and not self.covers(world.primary(s - 1, r), w):
            return True
        if s == 0:
            # Reading: the data_commitment disjunct applies at stage 0 whatever input_via is.
            if via in ("coordinator", "upstream") and world.coordinator_trusted:
                return True
            if world.data_commitment:
                return True
        return False

    def d_redundant_neighbour(self, w: Worker) -> Fraction:
        world = self.world
        assert w.stage is not None and w.replica is not None
        if w.stage > world.S - 2:
            return Fraction(0)  # stage S-1 is unchecked
        checker = world.primary(w.stage + 1, w.replica)
        if self.covers(checker, w):
            return Fraction(0)
        if not self.rn_input_genuine(w):
            return Fraction(0)
        return Fraction(1)

    def d_spot_check(self, check: SpotCheck, w: Worker) -> Fraction:
        world = self.world
        p = _exact(check.rate)
        if not world.receipts:
            return Fraction(0)
        if check.verifier == "coordinator":
            return p if world.coordinator_trusted else Fraction(0)
        if check.verifier == "tee":
            return p if world.attestation and not world.tee_compromise else Fraction(0)
        # peer: uniform over the other N - 1 computing workers.
        if not world.collusion:
            return p
        others = [x for x in world.computing if x.name != w.name]
        honest_others = [x for x in others if not self.is_malicious(x)]
        # For a malicious w this is p * (N - m) / (N - 1); for an SDC unit of a non-malicious
        # w it is p * (N - 1 - m) / (N - 1) (Reading: the verifier is honest or not).
        return p * Fraction(len(honest_others), len(others))

    def d_replicate(self, w: Worker) -> Fraction:
        assert w.stage is not None and w.replica is not None
        others = [x for x in self.world.slot_workers(w.stage, w.replica) if x.name != w.name]
        if all(self.covers(x, w) for x in others):
            return Fraction(0)
        return Fraction(1)

    def d_statistical(self, check: StatisticalCheck) -> Fraction:
        if self.world.coordinator_trusted and _exact(check.min_deviation) == 0:
            return _exact(check.power)
        return Fraction(0)

    def d_check(self, check: object, w: Worker) -> Fraction:
        if isinstance(check, RedundantNeighbourCheck):
            return self.d_redundant_neighbour(w)
        if isinstance(check, SpotCheck):
            return self.d_spot_check(check, w)
        if isinstance(check, ReplicateCheck):
            return self.d_replicate(w)
        if isinstance(check, StatisticalCheck):
            return self.d_statistical(check)
        assert isinstance(check, RobustAggregationCheck)
        return Fraction(0)

    def d_by_checks(self, w: Worker, unit: str) -> Fraction:
        """``1 - prod_i (1 - d_i)`` over the checks that cover this unit kind."""
        miss = Fraction(1)
        for check in self.world.checks:
            if unit in CHECK_COVERS[check.scheme]:
                miss *= 1 - self.d_check(check, w)
        return 1 - miss

    # -- capabilities detected outside the checks --------------------------------------

    def poison_detected_by_commitment(self, w: Worker) -> bool:
        world = self.world
        assert w.stage == 0 and w.replica is not None
        if not world.data_commitment:
            return False
        if world.coordinator_trusted:
            return True
        if world.rn is not None and not self.covers(world.primary(1, w.replica), w):
            return True
        if world.replicate is not None:
            others = [x for x in world.slot_workers(0, w.replica) if x.name != w.name]
            if any(not self.covers(x, w) for x in others):
                return True
        return False

    def d_poison(self, w: Worker) -> Fraction:
        if self.poison_detected_by_commitment(w):
            return Fraction(1)
        if self.world.replicate is not None:
            return self.d_replicate(w)
        return Fraction(0)

    def d_equivocate(self) -> Fraction:
        world = self.world
        return Fraction(1) if world.receipts and world.coordinator_trusted else Fraction(0)

    def unit_detection(self, w: Worker, capability: str, unit: str) -> Fraction:
        """``d`` for a unit of kind ``unit`` that ``w`` tampers with using ``capability``."""
        if capability == "equivocate":
            return self.d_equivocate()
        if capability == "poison_data":
            return self.d_poison(w)
        return self.d_by_checks(w, unit)

    def tamper_options(self, w: Worker, capabilities: set[str]) -> list[tuple[str, str, Fraction]]:
        """Every (capability, unit kind, d) that malicious computing worker ``w`` can use."""
        out = []
        for capability in TAMPERING:
            if capability not in capabilities:
                continue
            if capability == "poison_data" and w.stage != 0:
                continue
            for unit in CAPABILITY_UNITS[capability]:
                out.append((capability, unit, self.unit_detection(w, capability, unit)))
        return out

    def sdc_options(self) -> list[tuple[Worker, str, Fraction]]:
        """SDC units: a wrong F, B or U unit of each non-malicious computing worker."""
        return [(w, unit, self.d_by_checks(w, unit)) for w in self.honest_computing() for unit in (F, B, U)]

    # -- no_framing ----------------------------------------------------------------------

    def framing(self) -> list[tuple[str, str]]:
        """Every (mechanism, honest victim) through which an honest computing worker can be
        blamed in this placement."""
        world = self.world
        caps = world.capabilities
        out: list[tuple[str, str]] = []

        def honest_of_slot(s: int, r: int) -> list[Worker]:
            return [x for x in world.slot_workers(s, r) if not self.is_malicious(x)]

        # Equivocation.
        if "equivocate" in caps and not world.receipts and world.rn is not None and world.rn.input_via == "upstream":
            for s in range(1, world.S - 1):
                for r in range(world.R):
                    if self.is_malicious(world.primary(s - 1, r)):
                        out += [("equivocation", x.name) for x in honest_of_slot(s, r)]

        # False accusation.
        if "false_accuse" in caps and (not world.receipts or not world.coordinator_trusted):
            if world.rn is not None:
                for s in range(0, world.S - 1):
                    for r in range(world.R):
                        if self.is_malicious(world.primary(s + 1, r)):
                            out += [("false_accuse:redundant_neighbour", x.name) for x in honest_of_slot(s, r)]
            if any(c.verifier == "peer" for c in world.spots):
                for accuser in self.malicious_computing():
                    out += [("false_accuse:peer", x.name) for x in self.honest_computing() if x.name != accuser.name]
            if world.replicate is not None:
                for s in range(world.S):
                    for r in range(world.R):
                        slot = world.slot_workers(s, r)
                        if any(self.is_malicious(x) for x in slot):
                            out += [("false_accuse:replicate", x.name) for x in honest_of_slot(s, r)]

        # Outvoting.
        rep = world.replicate
        if (
            rep is not None
            and caps & {"tamper_activations", "tamper_gradients", "tamper_weights"}
            and (rep.resolve == "majority" or not world.coordinator_trusted)
        ):
            for s in range(world.S):
                for r in range(world.R):
                    slot = world.slot_workers(s, r)
                    bad = [x for x in slot if self.is_malicious(x)]
                    good = [x for x in slot if not self.is_malicious(x)]
                    agree = len(bad) == 1 or (len(bad) > 1 and world.collusion)
                    if good and bad and agree and 2 * len(bad) >= world.k:
                        out += [("outvoting", x.name) for x in good]

        # An untrusted coordinator without receipts: an adversarial party outside the budget that
        # decides blame, so it can blame any honest worker, even at budget 0.
        if not world.coordinator_trusted and not world.receipts:
            out += [("untrusted_coordinator", x.name) for x in self.honest_computing()]
        return out

    # -- liveness ----------------------------------------------------------------------

    def catchable_at(self, stage: int) -> bool:
        """A malicious worker of this stage that wants to be caught can be (nobody covers,
        inputs genuine): some held tampering capability meets a check with d_i > 0."""
        world = self.world
        caps = world.capabilities
        for capability in ("tamper_activations", "tamper_gradients", "tamper_weights"):
            if capability not in caps:
                continue
            if world.rn is not None and stage <= world.S - 2:
                return True
            for spot in world.spots:
                if not world.receipts:
                    continue
                if spot.verifier == "coordinator" and world.coordinator_trusted:
                    return True
                if spot.verifier == "tee" and world.attestation and not world.tee_compromise:
                    return True
                if spot.verifier == "peer":
                    return True
            if world.replicate is not None:
                return True
            if capability != "tamper_weights":
                for stat in world.statisticals:
                    # Reading: a worker that wants to be caught deviates by more than
                    # min_deviation, so only the power and the coordinator matter.
                    if world.coordinator_trusted and _exact(stat.power) > 0:
                        return True
        if "poison_data" in caps and stage == 0:
            if world.data_commitment and (
                world.coordinator_trusted or world.rn is not None or world.replicate is not None
            ):
                return True
            if world.replicate is not None:
                return True
        if "equivocate" in caps and world.receipts and world.coordinator_trusted:
            return True
        return False

    def removable_computing(self, w: Worker) -> bool:
        assert w.stage is not None
        return "withhold" in self.world.capabilities or self.catchable_at(w.stage)

    def removable_standby(self) -> bool:
        """Decision: a malicious standby counts as removable when it has withhold or when any
        corruptible slot would make it catchable."""
        world = self.world
        if "withhold" in world.capabilities:
            return True
        corruptible_slots = {w.slot for w in world.computing if world.corruptible(w)}
        return any(slot is not None and self.catchable_at(slot[0]) for slot in corruptible_slots)

    def stall(self) -> bool:
        """(a): no eject and no skip_stage, and a malicious worker withholds or has a unit
        detected with certainty (every step is redone or rolled back forever)."""
        world = self.world
        if "eject" in world.response or "skip_stage" in world.response:
            return False
        # Reading: only computing workers stall the job (an idle standby is never waited on).
        for w in self.malicious_computing():
            if "withhold" in world.capabilities:
                return True
            if any(d == 1 for _, _, d in self.tamper_options(w, world.capabilities)):
                return True
        return False

    def empty_slots(self) -> bool:
        """(b): every replica left with a slot without a worker."""
        world = self.world
        R, K = world.R, world.K_standby
        if "eject" not in world.response:
            return world.crash >= R + K
        framed_replicas = set()
        for _, victim in self.framing():
            replica = world.by_name[victim].replica
            assert replica is not None
            framed_replicas.add(replica)
        a = {r: 0 for r in range(R)}
        for w in self.malicious_computing():
            assert w.replica is not None
            if self.removable_computing(w):
                a[w.replica] += 1
        flexible = world.crash + sum(1 for _ in self.malicious_standby() if self.removable_standby())
        if framed_replicas:
            return flexible >= len([r for r in range(R) if r not in framed_replicas and a[r] == 0])
        return sum(a.values()) + flexible >= R + K and flexible >= len([r for r in range(R) if a[r] == 0])

    # -- bounded_damage ----------------------------------------------------------------

    def damage_profile(self) -> list[tuple[Fraction, int]]:
        """(d_w, U_w) for each malicious computing worker with something to tamper with."""
        world = self.world
        out = []
        for w in self.malicious_computing():
            options = self.tamper_options(w, world.capabilities)
            if not options:
                continue
            d_w = min(d for _, _, d in options)
            kinds = {unit for _, unit, d in options if d == d_w}
            out.append((d_w, sum(world.units(kind) for kind in kinds)))
        return out

    def touched_replicas(self) -> int:
        return len({w.replica for w in self.malicious_computing()})


# -- damage probabilities -------------------------------------------------------------------


def _truncated_convolve(a: Dist, b: Dist, top: int) -> Dist:
    """Distribution of X + Y for X ~ a and Y ~ b on 0..top, where index ``top`` means ">= top"."""
    zero = a[0] * 0
    out = [zero] * (top + 1)
    for i, pa in enumerate(a):
        for j, pb in enumerate(b):
            out[min(i + j, top)] += pa * pb
    return out


def _point(value: int, top: int, one: Prob) -> Dist:
    dist = [one * 0] * (top + 1)
    dist[min(value, top)] = one
    return dist


def rollback_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction:
    """``1 - prod_w (1 - (1 - d_w)^(K+1))``, and 0 when ``sum_w U_w < K + 1``."""
    if sum(units for _, units in profile) < K + 1:
        return Fraction(0)
    keep = Fraction(1)
    for d, _ in profile:
        keep *= 1 - (1 - d) ** (K + 1)
    return 1 - keep


def eject_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction | float:
    """``Pr[sum_w G_w >= K+1]``, G_w the failures before the first success of probability d_w
    (``U_w`` for d_w = 0), by explicit truncated convolution."""
    top = K + 1
    exact = K <= EXACT_K_LIMIT
    one: Fraction | float = Fraction(1) if exact else 1.0
    total = _point(0, top, one)
    for d, units in profile:
        dd: Fraction | float = d if exact else float(d)
        if d == 0:
            dist = _point(units, top, one)
        else:
            dist = [(1 - dd) ** g * dd for g in range(top)] + [(1 - dd) ** top]
        total = _truncated_convolve(total, dist, top)
    result: Prob = total[top]
    return result


def _binomial_truncated(n: int, q: Prob, top: int, exact: bool) -> Dist:
    """Bin(n, q) on 0..top with the tail lumped at ``top``."""
    if exact:
        exact_pmf = [
            Fraction(math.comb(n, j)) * Fraction(q) ** j * (1 - Fraction(q)) ** (n - j) if j <= n else Fraction(0)
            for j in range(top)
        ]
        return exact_pmf + [1 - sum(exact_pmf, Fraction(0))]
    qf = float(q)
    pmf: list[float] = []
    for j in range(top):
        if j > n:
            pmf.append(0.0)
        elif qf == 0.0:
            pmf.append(1.0 if j == 0 else 0.0)
        elif qf == 1.0:
            pmf.append(1.0 if j == n else 0.0)
        else:
            log = (
                math.lgamma(n + 1)
                - math.lgamma(j + 1)
                - math.lgamma(n - j + 1)
                + j * math.log(qf)
                + (n - j) * math.log1p(-qf)
            )
            pmf.append(math.exp(log))
    return pmf + [max(0.0, 1.0 - sum(pmf))]


def independent_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction | float:
    """``Pr[sum_w Bin(U_w, 1 - d_w) >= K+1]``."""
    top = K + 1
    exact = K <= EXACT_K_LIMIT
    one: Fraction | float = Fraction(1) if exact else 1.0
    total = _point(0, top, one)
    for d, units in profile:
        total = _truncated_convolve(total, _binomial_truncated(units, 1 - d, top, exact), top)
    result: Prob = total[top]
    return result


# -- the guarantees ------------------------------------------------------------------------


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
