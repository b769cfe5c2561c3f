"""One placement of the brute-force checker (:mod:`bruteforce`): the rules of docs/semantics.rst
evaluated in plain Python for a fixed set of malicious workers.

Readings of points that the page leaves open are marked ``Reading:`` in the comments.
"""

from __future__ import annotations

from fractions import Fraction

from brute_world import CAPABILITY_UNITS, CHECK_COVERS, TAMPERING, B, F, U, Worker, World, _exact

from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    SpotCheck,
    StatisticalCheck,
)

__all__ = ["Placement"]


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
