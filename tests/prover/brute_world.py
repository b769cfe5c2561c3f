"""The brute-force checker's world (:mod:`bruteforce`): the fixed facts of a spec (workers, trust,
budget, checks) and every placement of malicious workers.

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

from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    Spec,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

__all__ = ["CAPABILITY_UNITS", "CHECK_COVERS", "TAMPERING", "BruteResult", "Worker", "World", "placements"]

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
