"""The positions of a spec and the events that change who holds them: the state space of the
dynamics simulator (:mod:`dynamics_sim`).

It implements section 4b of the spec-language design ("Dynamics") and the "Dynamics" section of
docs/semantics.rst directly, not the prover's summary encoding. A state is the occupant of every
position, the position each standby worker entered (if any), and the crashes used; the events are
crashes, ejections of convicts, ejections after framing and standby entries. Honest standby
workers are interchangeable, and so are malicious ones, so only the lowest-numbered free worker
of each kind is offered for an entry.

Readings of points that the page leaves open are marked ``Reading:`` in the comments.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

from bruteforce import World

from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    SpotCheck,
    StatisticalCheck,
)

__all__ = ["ORIGINAL", "VACANT", "Event", "SimResult", "Simulation", "State", "exact_decimal"]

F, B, U, L = "F", "B", "U", "L"
KINDS = (F, B, U, L)

#: Unit kinds each tampering capability acts on (``tamper_weights``: every update, the last one
#: included; ``poison_data``: stage 0 only, handled where it is used).
CAPABILITY_KINDS: dict[str, tuple[str, ...]] = {
    "tamper_activations": (F,),
    "tamper_gradients": (B,),
    "tamper_weights": (U, L),
    "poison_data": (F,),
    "equivocate": (F, B),
}
TAMPERING = tuple(CAPABILITY_KINDS)

#: Unit kinds each check covers: redundant_neighbour sees a weight tamper only at the next
#: forward, so never the last update.
CHECK_KINDS: dict[str, tuple[str, ...]] = {
    "redundant_neighbour": (F, B, U),
    "spot_check": (F, B, U, L),
    "replicate": (F, B, U, L),
    "statistical": (F, B),
    "robust_aggregation": (),
}

# Not -1 and -2: CPython hashes both to -2, and occupancy tuples would all collide.
ORIGINAL = -3  # the position's original worker
VACANT = -4  # nobody
FREE = -1  # a standby worker that has not entered a position

#: (occupant per position, position entered per standby worker, crashes used).
State = tuple[tuple[int, ...], tuple[int, ...], int]


@dataclass(frozen=True)
class Event:
    """One transition: ``crash``, ``eject`` (a convict), ``framed`` (an honest worker ejected
    after being framed), ``outvoted`` (an honest worker ejected by a tied ``replicate`` vote,
    with the malicious copies that tied it) or ``enter`` (a standby worker takes a vacant
    position)."""

    kind: str
    position: str
    worker: str

    def __str__(self) -> str:
        return f"{self.kind} {self.worker} @ {self.position}"


@dataclass
class SimResult:
    """The simulator's verdict on one guarantee, with a witness run where it is violated."""

    verdict: str
    figure: Fraction | None = None
    witness: frozenset[str] | None = None
    events: list[Event] = field(default_factory=list)


@cache
def exact_decimal(value: float) -> Fraction:
    """The decimal the user wrote (0.05 is 1/20, not its binary approximation)."""
    return Fraction(str(value))


class Simulation:
    """Every run of one placement: positions, events, and the rules judged in a state."""

    def __init__(self, world: World, malicious: frozenset[str]) -> None:
        self.world = world
        self.malicious = malicious
        self.S, self.R, self.k = world.S, world.R, world.k
        self.positions: list[tuple[int, int, int]] = [
            (s, r, j) for s in range(self.S) for r in range(self.R) for j in range(self.k)
        ]
        self.names = [f"{s}:{r}" + (f"#{j}" if j else "") for s, r, j in self.positions]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.standby_names = [f"standby:{i}" for i in range(world.K_standby)]
        self.bad_original = frozenset(i for i, name in enumerate(self.names) if name in malicious)
        self.bad_standby = frozenset(i for i, name in enumerate(self.standby_names) if name in malicious)
        self.caps = world.capabilities
        self.eject = "eject" in world.response
        self.initial: State = ((ORIGINAL,) * len(self.positions), (FREE,) * world.K_standby, 0)
        self.slots = [[self.pos(s, r, j) for j in range(self.k)] for s, r, _ in self.positions]
        self.replica_slots = [
            [[self.pos(s, r, j) for j in range(self.k)] for s in range(self.S)] for r in range(self.R)
        ]
        self._running: dict[tuple[int, ...], tuple[bool, ...]] = {}
        self._levels: dict[object, list[tuple[int, str, str, Fraction]]] = {}

    # -- positions -----------------------------------------------------------------------

    def pos(self, s: int, r: int, j: int = 0) -> int:
        return (s * self.R + r) * self.k + j

    def slot(self, p: int) -> list[int]:
        return self.slots[p]

    def occupant_name(self, occ: tuple[int, ...], p: int) -> str:
        return self.names[p] if occ[p] == ORIGINAL else self.standby_names[occ[p]]

    def bad(self, occ: tuple[int, ...], p: int) -> bool:
        """The position's current occupant is malicious (False when it is vacant)."""
        o = occ[p]
        if o == ORIGINAL:
            return p in self.bad_original
        return o >= 0 and o in self.bad_standby

    def honest(self, occ: tuple[int, ...], p: int) -> bool:
        return occ[p] != VACANT and not self.bad(occ, p)

    def running(self, occ: tuple[int, ...], r: int) -> bool:
        """Every slot of replica ``r`` has an occupied copy (a vacant non-replicated position
        halts its replica; a replicate slot runs on its occupied copies)."""
        runs = self._running.get(occ)
        if runs is None:
            runs = tuple(
                all(any(occ[q] != VACANT for q in slot) for slot in self.replica_slots[replica])
                for replica in range(self.R)
            )
            self._running[occ] = runs
        return runs[r]

    # -- detection probabilities in a state ----------------------------------------------

    def covers(self, occ: tuple[int, ...], q: int, p: int, view: frozenset[int] | None) -> bool:
        """The occupant of ``q`` covers for the tamperer at ``p``. ``view``, when given, is the
        set of positions counted as malicious (the unordered reading); else the current
        occupants decide."""
        if q == p or occ[q] == VACANT or not self.world.collusion:
            return False
        return q in view if view is not None else self.bad(occ, q)

    def d_redundant_neighbour(self, occ: tuple[int, ...], p: int, view: frozenset[int] | None) -> Fraction:
        world, (s, r, _) = self.world, self.positions[p]
        assert world.rn is not None
        if s > self.S - 2:
            return Fraction(0)
        checker = self.pos(s + 1, r)
        # Reading: the check is made by the primary position of slot (s+1):r; vacant, nobody checks.
        if occ[checker] == VACANT or self.covers(occ, checker, p, view):
            return Fraction(0)
        via = world.rn.input_via
        genuine = world.receipts or (via == "coordinator" and world.coordinator_trusted)
        if via == "upstream" and s >= 1 and not self.covers(occ, self.pos(s - 1, r), p, view):
            genuine = True
        if s == 0 and ((via in ("coordinator", "upstream") and world.coordinator_trusted) or world.data_commitment):
            genuine = True
        return Fraction(1) if genuine else Fraction(0)

    def d_spot_check(self, check: SpotCheck, occ: tuple[int, ...], p: int, view: frozenset[int] | None) -> Fraction:
        world, rate = self.world, exact_decimal(check.rate)
        if not world.receipts:
            return Fraction(0)
        if check.verifier == "coordinator":
            return rate if world.coordinator_trusted else Fraction(0)
        if check.verifier == "tee":
            return rate if world.attestation and not world.tee_compromise else Fraction(0)
        # Reading: the peer verifier is drawn from the other current occupants.
        others = [q for q in range(len(occ)) if q != p and occ[q] != VACANT]
        if not others:
            return Fraction(0)
        honest = [q for q in others if not self.covers(occ, q, p, view)]
        return rate * Fraction(len(honest), len(others))

    def d_replicate(self, occ: tuple[int, ...], p: int, view: frozenset[int] | None) -> Fraction:
        others = [q for q in self.slot(p) if q != p and occ[q] != VACANT]
        if not others or all(self.covers(occ, q, p, view) for q in others):
            return Fraction(0)
        return Fraction(1)

    def d_checks(self, occ: tuple[int, ...], p: int, kind: str, view: frozenset[int] | None) -> Fraction:
        miss = Fraction(1)
        for check in self.world.checks:
            if kind not in CHECK_KINDS[check.scheme]:
                continue
            if isinstance(check, RedundantNeighbourCheck):
                d = self.d_redundant_neighbour(occ, p, view)
            elif isinstance(check, SpotCheck):
                d = self.d_spot_check(check, occ, p, view)
            elif isinstance(check, ReplicateCheck):
                d = self.d_replicate(occ, p, view)
            elif isinstance(check, StatisticalCheck):
                good = self.world.coordinator_trusted and exact_decimal(check.min_deviation) == 0
                d = exact_decimal(check.power) if good else Fraction(0)
            else:
                d = Fraction(0)
            miss *= 1 - d
        return 1 - miss

    def d_poison(self, occ: tuple[int, ...], p: int, view: frozenset[int] | None) -> Fraction:
        world, (_, r, _) = self.world, self.positions[p]
        if world.data_commitment:
            if world.coordinator_trusted:
                return Fraction(1)
            checker = self.pos(1, r)
            if world.rn is not None and occ[checker] != VACANT and not self.covers(occ, checker, p, view):
                return Fraction(1)
            others = [q for q in self.slot(p) if q != p and occ[q] != VACANT]
            if world.replicate is not None and any(not self.covers(occ, q, p, view) for q in others):
                return Fraction(1)
        return self.d_replicate(occ, p, view) if world.replicate is not None else Fraction(0)

    def kinds_in_horizon(self) -> tuple[str, ...]:
        """Unit kinds a position computes over the horizon (Reading: at H=1 the only update is the
        last one, so there is no U unit, and redundant_neighbour sees no weight tamper at all)."""
        return KINDS if self.world.H >= 2 else (F, B, L)

    def options(
        self, occ: tuple[int, ...], p: int, capabilities: set[str], view: frozenset[int] | None = None
    ) -> list[tuple[str, str, Fraction]]:
        """Every (capability, kind, d) the malicious occupant of ``p`` can use in this state."""
        stage = self.positions[p][0]
        out = []
        for capability in TAMPERING:
            if capability not in capabilities or (capability == "poison_data" and stage != 0):
                continue
            for kind in CAPABILITY_KINDS[capability]:
                if kind not in self.kinds_in_horizon():
                    continue
                if capability == "equivocate":
                    good = self.world.receipts and self.world.coordinator_trusted
                    d = Fraction(1) if good else Fraction(0)
                elif capability == "poison_data":
                    d = self.d_poison(occ, p, view)
                else:
                    d = self.d_checks(occ, p, kind, view)
                out.append((capability, kind, d))
        return out

    def exposure(self, occ: tuple[int, ...], p: int) -> list[Fraction]:
        """For every unit kind the malicious occupant of ``p`` can tamper with, the probability
        that the present checks detect it when it *wants* to be caught: nobody covers for it and
        its inputs are genuine (the page's "catchable", used for ejection and for stalls)."""
        world, (s, r, _) = self.world, self.positions[p]
        kinds = self.kinds_in_horizon()
        copies = any(q != p and occ[q] != VACANT for q in self.slot(p))
        others = any(q != p and occ[q] != VACANT for q in range(len(occ)))
        out = []
        for capability in ("tamper_activations", "tamper_gradients", "tamper_weights"):
            if capability not in self.caps:
                continue
            for kind in (k for k in CAPABILITY_KINDS[capability] if k in kinds):
                miss = Fraction(1)
                if world.rn is not None and kind != L and s <= self.S - 2 and occ[self.pos(s + 1, r)] != VACANT:
                    miss = Fraction(0)
                for spot in world.spots if world.receipts else []:
                    good = (
                        (spot.verifier == "coordinator" and world.coordinator_trusted)
                        or (spot.verifier == "tee" and world.attestation and not world.tee_compromise)
                        or (spot.verifier == "peer" and others)
                    )
                    if good:
                        miss *= 1 - exact_decimal(spot.rate)
                if world.replicate is not None and copies:
                    miss = Fraction(0)
                if kind in (F, B) and world.coordinator_trusted:
                    # Reading: a worker that wants to be caught deviates by more than
                    # min_deviation, so only the power and the coordinator matter.
                    for stat in world.statisticals:
                        miss *= 1 - exact_decimal(stat.power)
                out.append(1 - miss)
        if "poison_data" in self.caps and s == 0:
            checker_there = world.rn is not None and occ[self.pos(1, r)] != VACANT
            committed = world.data_commitment and (world.coordinator_trusted or checker_there or copies)
            out.append(Fraction(1) if committed or (world.replicate is not None and copies) else Fraction(0))
        if "equivocate" in self.caps:
            out.append(Fraction(1) if world.receipts and world.coordinator_trusted else Fraction(0))
        return out

    def catchable(self, occ: tuple[int, ...], p: int) -> bool:
        """A malicious occupant that wants to be caught can be: some present check detects one of
        its tampered units with d_i > 0 when nobody covers for it and its inputs are genuine."""
        return any(d > 0 for d in self.exposure(occ, p))

    # -- framing -------------------------------------------------------------------------

    def framings(self, occ: tuple[int, ...], victim: int, view: frozenset[int] | None = None) -> list[str]:
        """The framing mechanisms that apply to the honest occupant of ``victim`` (none when its
        replica is halted: Reading, a blame needs a unit of the victim). Framers are the current
        malicious occupants, or the positions in ``view`` (the unordered reading)."""
        world, caps = self.world, self.caps
        s, r, _ = self.positions[victim]
        if not self.honest(occ, victim) or not self.running(occ, r):
            return []

        def framer(q: int) -> bool:
            if view is not None:
                return q != victim and q in view
            return self.bad(occ, q)

        out = []
        rn, rep = world.rn, world.replicate
        if "equivocate" in caps and not world.receipts and rn is not None and rn.input_via == "upstream":
            if 1 <= s <= self.S - 2 and framer(self.pos(s - 1, r)) and occ[self.pos(s + 1, r)] != VACANT:
                out.append("equivocation")
        if "false_accuse" in caps and (not world.receipts or not world.coordinator_trusted):
            if rn is not None and s <= self.S - 2 and occ[self.pos(s + 1, r)] != VACANT and framer(self.pos(s + 1, r)):
                out.append("false_accuse:redundant_neighbour")
            if any(c.verifier == "peer" for c in world.spots):
                if any(q != victim and occ[q] != VACANT and framer(q) for q in range(len(occ))):
                    out.append("false_accuse:peer")
            if rep is not None and any(q != victim and occ[q] != VACANT and framer(q) for q in self.slot(victim)):
                out.append("false_accuse:replicate")
        if self.vote(occ, victim, view) is not None:
            out.append("outvoting")
        if not world.coordinator_trusted and not world.receipts:
            # Reading: it blames anyone; it ejects only when the response has eject (successors).
            out.append("untrusted_coordinator")
        return out

    def vote(self, occ: tuple[int, ...], victim: int, view: frozenset[int] | None = None) -> list[int] | None:
        """When a ``replicate`` vote outvotes the honest occupant of ``victim``: the malicious
        copies that a tie blames with it (the docs' Decision: a tie blames both sides), empty
        when they hold a strict majority; None when the vote does not outvote it."""
        world, rep = self.world, self.world.replicate
        tampering = self.caps & {"tamper_activations", "tamper_gradients", "tamper_weights"}
        if rep is None or not tampering or (rep.resolve != "majority" and world.coordinator_trusted):
            return None
        present = [q for q in self.slot(victim) if occ[q] != VACANT]
        bad = [q for q in present if q != victim and (q in view if view is not None else self.bad(occ, q))]
        agree = len(bad) == 1 or (len(bad) > 1 and world.collusion)
        # Reading: the vote is over the copies that are occupied (a majority over fewer copies).
        if not bad or not agree or 2 * len(bad) < len(present):
            return None
        return bad if 2 * len(bad) == len(present) else []

    # -- events --------------------------------------------------------------------------

    def successors(self, state: State, view: frozenset[int] | None = None) -> Iterator[tuple[Event, State]]:
        occ, entered, crashes = state
        world = self.world
        for p, o in enumerate(occ):
            if o == VACANT:
                continue
            who = self.occupant_name(occ, p)
            vacated = occ[:p] + (VACANT,) + occ[p + 1 :]
            # Reading: crashes hit occupants; an idle standby that crashes is the same as one that
            # enters a vacant position and crashes there (same crash, same pool left).
            if crashes < world.crash:
                yield Event("crash", self.names[p], who), (vacated, entered, crashes + 1)
            # Reading: an ejection needs the occupant's replica to run (a halted replica computes
            # and answers nothing, so nothing convicts or frames its workers).
            if not self.eject or not self.running(occ, self.positions[p][1]):
                continue
            if self.bad(occ, p):
                if "withhold" in self.caps or self.catchable(occ, p):
                    yield Event("eject", self.names[p], who), (vacated, entered, crashes)
                continue
            mechanisms = self.framings(occ, p, view)
            tied = self.vote(occ, p, view) if "outvoting" in mechanisms else None
            if mechanisms and (tied is None or not tied or len(mechanisms) > 1):
                yield Event("framed", self.names[p], who), (vacated, entered, crashes)
            if tied:
                # A tied vote blames both sides: the malicious copies go with their victim.
                both = tuple(VACANT if q == p or q in tied else o for q, o in enumerate(occ))
                yield Event("outvoted", self.names[p], who), (both, entered, crashes)
        free_bad = [i for i in self.bad_standby if entered[i] == FREE]
        free_good = [i for i in range(len(entered)) if entered[i] == FREE and i not in self.bad_standby]
        candidates = [min(group) for group in (free_bad, free_good) if group]
        for p, o in enumerate(occ):
            if o != VACANT:
                continue
            for i in candidates:
                new_occ = occ[:p] + (i,) + occ[p + 1 :]
                new_entered = entered[:i] + (p,) + entered[i + 1 :]
                yield Event("enter", self.names[p], self.standby_names[i]), (new_occ, new_entered, crashes)

    def explore(
        self,
        view: frozenset[int] | None = None,
        allow: Callable[[Event], bool] | None = None,
        start: State | None = None,
    ) -> dict[State, tuple[State, Event] | None]:
        """Every reachable state, with the transition that first reached it (breadth first).

        ``allow``, when given, keeps only the events it accepts (to replay a trace); ``start``
        replaces the initial state.
        A state that differs from a known one only by more crashes used is left out: whatever
        it reaches, the known one reaches too, and the rules judge occupants, not crashes."""
        first = self.initial if start is None else start
        parents: dict[State, tuple[State, Event] | None] = {first: None}
        fewest: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {first[:2]: first[2]}
        queue = deque([first])
        while queue:
            state = queue.popleft()
            if fewest[state[:2]] < state[2]:
                continue  # superseded by the same occupants with fewer crashes
            for event, after in self.successors(state, view):
                if allow is not None and not allow(event):
                    continue
                known = fewest.get(after[:2])
                if known is None or after[2] < known:
                    fewest[after[:2]] = after[2]
                    parents[after] = (state, event)
                    queue.append(after)
        return parents

    @staticmethod
    def path(parents: dict[State, tuple[State, Event] | None], state: State) -> list[Event]:
        events: list[Event] = []
        step = parents[state]
        while step is not None:
            previous, event = step
            events.append(event)
            step = parents[previous]
        return events[::-1]

    # -- judging a state -----------------------------------------------------------------

    def tamper_levels(
        self, state: State, capabilities: set[str], view: frozenset[int] | None = None
    ) -> Iterator[tuple[int, str, str, Fraction]]:
        """(position, capability, kind, d) of every malicious occupant of a running replica."""
        occ = state[0]
        cache_key = (occ, frozenset(capabilities), view)
        levels = self._levels.get(cache_key)
        if levels is None:
            levels = [
                (p, capability, kind, d)
                for p in range(len(occ))
                if self.bad(occ, p) and self.running(occ, self.positions[p][1])
                for capability, kind, d in self.options(occ, p, capabilities, view)
            ]
            self._levels[cache_key] = levels
        yield from levels

    def sdc_levels(self, state: State) -> Iterator[Fraction]:
        """d of a silently corrupted unit of every honest occupant of a running replica
        (Reading: the last update is one of its update units)."""
        occ = state[0]
        for p in range(len(occ)):
            if self.honest(occ, p) and self.running(occ, self.positions[p][1]):
                for kind in self.kinds_in_horizon():
                    yield self.d_checks(occ, p, kind, None)

    def stalls(self, state: State) -> bool:
        """Liveness (a): with neither eject nor skip_stage, a malicious occupant of a running
        replica withholds, or has a unit that is detected with certainty when it wants to be
        (Reading: a worker that wants the job redone forever gets itself caught, so its inputs
        are genuine and nobody covers for it; the page's "d = 1" read as it wants it)."""
        response = self.world.response
        if "eject" in response or "skip_stage" in response:
            return False
        occ = state[0]
        for p in range(len(occ)):
            if self.bad(occ, p) and self.running(occ, self.positions[p][1]):
                if "withhold" in self.caps or any(d == 1 for d in self.exposure(occ, p)):
                    return True
        return False

    def emptied(self, state: State) -> bool:
        """Liveness (b): every replica has a slot with no occupied copy and no standby is free
        (Reading: a free standby, honest or not, would refill a slot, so a run is stuck only once
        the pool is spent; a replicate slot is empty only when all its copies are)."""
        occ, entered, _ = state
        return FREE not in entered and not any(self.running(occ, r) for r in range(self.R))

    def poisoned(self, state: State, view: frozenset[int] | None = None) -> bool:
        if "poison_data" not in self.caps:
            return False
        occ = state[0]
        return any(
            self.bad(occ, p)
            and self.positions[p][0] == 0
            and self.running(occ, self.positions[p][1])
            and self.d_poison(occ, p, view) < 1
            for p in range(len(occ))
        )

    def framed(self, state: State, view: frozenset[int] | None = None) -> bool:
        return any(self.framings(state[0], p, view) for p in range(len(state[0])))
