"""The runs ``liveness`` is judged over, as a bounded transition system (docs/semantics.rst,
"Dynamics" and ``liveness``).

A run is a sequence of events over the computing positions: a crash of an occupant, the
ejection of a malicious occupant that withholds or is catchable where it stands, the ejection of
an honest occupant that a framing mechanism blames, and the entry of a free standby worker into
a vacant position. The encoding unrolls ``steps`` events, each of which may also be no event, so
every state a run reaches within ``steps`` events is the last state of some unrolled run. Every
event is irreversible (a removed worker never comes back, a standby worker enters at most once),
so no run has more than ``positions + 2 * standby`` events: with that many steps the unrolling is
complete, and an unsatisfiable violation goal is a proof over every run.

Everything an event needs is read in the state where it happens: a vacant neighbour checks
nothing, a ``replicate`` slot compares the copies that are occupied, a framer must hold its
position when it frames, and a replica with a slot whose copies are all vacant computes nothing
(nobody in it is ejected or framed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import z3

from stagewarden.prover.fastz3 import (
    Term,
    at_least,
    at_most,
    boolean,
    conj,
    constant_name,
    disj,
    holds_in,
    implies,
    neg,
    to_z3,
    true_constants,
)
from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding

#: Removal events, each of one position's occupant (``outvoted`` also removes the malicious copies
#: that tied the vote).
_EVENT_KINDS = ("crash", "eject", "framed", "outvoted")
#: Unit kinds each tampering capability that a check can catch acts on (``L`` is the last update).
_TAMPER_KINDS = {"tamper_activations": ("F",), "tamper_gradients": ("B",), "tamper_weights": ("U", "L")}


def _count_at_least(terms: list[Term], n: int) -> Term:
    """At least ``n`` of ``terms`` hold, folded to a Python constant when they all are."""
    known = sum(1 for t in terms if t is True)
    rest = [to_z3(t) for t in terms if not isinstance(t, bool)]
    n -= known
    if n <= 0:
        return True
    if len(rest) < n:
        return False
    # Count each Python object once before asking Z3 for its id (a probe state repeats one
    # object over every position; asking for an id costs microseconds).
    objects: dict[int, tuple[z3.BoolRef, int]] = {}
    for t in rest:
        term, weight = objects.get(id(t), (t, 0))
        objects[id(t)] = (term, weight + 1)
    weights: dict[int, tuple[z3.BoolRef, int]] = {}
    for t, count in objects.values():
        term, weight = weights.get(t.get_id(), (t, 0))
        weights[t.get_id()] = (term, weight + count)
    if len(weights) < len(rest):
        return z3.PbGe(list(weights.values()), n)
    return at_least(rest, n)


def _count_at_most(terms: list[Term], n: int) -> Term:
    """At most ``n`` of ``terms`` hold, folded like :func:`_count_at_least`."""
    known = sum(1 for t in terms if t is True)
    rest = [to_z3(t) for t in terms if not isinstance(t, bool)]
    n -= known
    if n < 0:
        return False
    if len(rest) <= n:
        return True
    return at_most(rest, n)


@dataclass(frozen=True)
class RunEvent:
    """One event of a run: ``crash``, ``eject`` (a convict), ``framed`` (an honest occupant
    ejected after a framing) or ``enter`` (a standby worker takes a vacant position)."""

    step: int
    kind: str
    position: str
    worker: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "event": self.kind, "position": self.position, "worker": self.worker}


@dataclass
class _Step:
    """The state after some events: per position, occupied and malicious occupant; per standby
    worker, entered."""

    here: list[Term]
    bad: list[Term]
    used: list[Term]


class LivenessRuns:
    """The unrolled runs of one encoding and the liveness violation over them."""

    def __init__(self, enc: Encoding, steps: int | None = None, tick: Callable[[], object] | None = None) -> None:
        self.enc = enc
        self.tick = tick
        """Called before each unrolled step (the session's deadline check: it raises to stop)."""
        world = self.world = enc.world
        spec = enc.spec
        self.positions = list(world.computing)
        self.index = {w: p for p, w in enumerate(self.positions)}
        self.standby = list(world.standby_workers)
        complete = len(self.positions) + 2 * len(self.standby)
        self.steps = complete if steps is None else min(steps, complete)
        self.horizon_updates = spec.topology.steps >= 2
        self.checks = list(enumerate(spec.defense.checks))
        self.events: list[dict[str, list[z3.BoolRef]]] = []
        self.entries: list[list[list[z3.BoolRef]]] = []
        self.states: list[_Step] = []
        self.constraints: list[Term] = []
        self.crash_events: list[z3.BoolRef] = []

    # -- the state space --------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of event variables the unrolled runs would have (the measure of their cost)."""
        n, k = len(self.positions), len(self.standby)
        return self.steps * n * (4 + k)

    def _slot_copies(self, p: int) -> list[int]:
        w = self.positions[p]
        return [self.index[o] for o in self.world.slots[self.world.slot_of(w)]]

    def _primary(self, stage: int, replica: int) -> int:
        return self.index[self.world.primary(stage, replica)]

    def _running(self, state: _Step, replica: int) -> Term:
        return conj(
            [
                disj([state.here[self.index[o]] for o in self.world.slots[(s, replica)]])
                for s in range(self.world.stages)
            ]
        )

    def _unroll(self) -> None:
        enc, n, k = self.enc, len(self.positions), len(self.standby)
        standby_bad = [enc.mal[w] for w in self.standby]
        state = _Step([True] * n, [enc.mal[w] for w in self.positions], [False] * k)
        self.states.append(state)
        crashes: list[z3.BoolRef] = []
        same = [[to_z3(a) == to_z3(b) for b in standby_bad] for a in standby_bad]
        for t in range(self.steps):
            if self.tick is not None:
                self.tick()
            kinds: dict[str, list[z3.BoolRef]] = {
                kind: [boolean(f"run!{kind}[{t},{p}]") for p in range(n)]
                for kind in ("crash", "eject", "framed", "outvoted")
            }
            enter = [[boolean(f"run!enter[{t},{p},{j}]") for j in range(k)] for p in range(n)]
            self.events.append(kinds)
            self.entries.append(enter)
            every = [v for row in kinds.values() for v in row] + [v for row in enter for v in row]
            if len(every) > 1:
                self.constraints.append(at_most(every, 1))
            if t > 0 and every:
                # Symmetry: events come first, steps without an event only at the end.
                self.constraints.append(implies(disj(every), disj(self._every(t - 1))))
            for p in range(n):
                for j in range(1, k):
                    # Symmetry: a standby worker enters only after the lower-numbered ones of its
                    # kind (malicious or not), which are interchangeable.
                    for i in range(j):
                        self.constraints.append(implies(conj([enter[p][j], same[i][j]]), state.used[i]))
            running = [self._running(state, r) for r in range(self.world.replicas)]
            for p in range(n):
                replica = self.world.slot_of(self.positions[p])[1]
                self.constraints.append(implies(kinds["crash"][p], state.here[p]))
                convict = conj(
                    [
                        enc.response["eject"],
                        state.bad[p],
                        running[replica],
                        disj([enc.cap["withhold"], self.catchable(state, p, certain=False)]),
                    ]
                )
                self.constraints.append(implies(kinds["eject"][p], convict))
                victim = conj(
                    [
                        enc.response["eject"],
                        state.here[p],
                        neg(state.bad[p]),
                        running[replica],
                        self.framed(state, p),
                    ]
                )
                self.constraints.append(implies(kinds["framed"][p], victim))
                tied = conj([enc.response["eject"], state.here[p], neg(state.bad[p]), running[replica]])
                self.constraints.append(implies(kinds["outvoted"][p], conj([tied, self.framed(state, p, tie=True)])))
                for j in range(k):
                    free = conj([neg(state.here[p]), neg(state.used[j]), enc.standby[j]])
                    self.constraints.append(implies(enter[p][j], free))
            crashes += kinds["crash"]
            # A tied vote ejects the malicious copies of the victim's slot with it.
            removed = [
                disj(
                    [kinds[kind][p] for kind in kinds]
                    + [conj([kinds["outvoted"][q], state.bad[p]]) for q in self._slot_copies(p) if q != p]
                )
                for p in range(n)
            ]
            entered = [disj(enter[p]) for p in range(n)]
            state = _Step(
                [disj([conj([state.here[p], neg(removed[p])]), entered[p]]) for p in range(n)],
                [
                    disj(
                        [conj([state.bad[p], neg(removed[p])])]
                        + [conj([enter[p][j], standby_bad[j]]) for j in range(k)]
                    )
                    for p in range(n)
                ],
                [disj([state.used[j]] + [enter[p][j] for p in range(n)]) for j in range(k)],
            )
            self.states.append(state)
        self.crash_events = crashes

    def _every(self, t: int) -> list[z3.BoolRef]:
        kinds, enter = self.events[t], self.entries[t]
        return [v for row in kinds.values() for v in row] + [v for row in enter for v in row]

    # -- what a state allows ----------------------------------------------------------------

    def catchable(self, state: _Step, p: int, certain: bool) -> Term:
        """The malicious occupant of ``p`` can get one of its tampered units detected when it
        wants to be (nobody covers for it, its inputs are genuine), with probability > 0, or with
        certainty when ``certain``; only checks whose checker is present count."""
        enc, world = self.enc, self.world
        stage, replica = world.slot_of(self.positions[p])
        copies = disj([state.here[q] for q in self._slot_copies(p) if q != p])
        # Only a peer verifier needs someone else present (counting costs a pass over positions).
        peer = any(enc.vf[i]["peer"] is not False for i, c in self.checks if isinstance(c, SpotCheck))
        others = _count_at_least(state.here, 2) if peer else False
        downstream = state.here[self._primary(stage + 1, replica)] if stage <= world.stages - 2 else False
        parts: list[Term] = []
        for capability, kinds in _TAMPER_KINDS.items():
            for kind in kinds:
                if kind == "U" and not self.horizon_updates:
                    continue
                detectors: list[Term] = []
                for i, check in self.checks:
                    present = enc.check_present[i]
                    if isinstance(check, RedundantNeighbourCheck) and kind != "L":
                        detectors.append(conj([present, downstream]))
                    elif isinstance(check, ReplicateCheck):
                        detectors.append(conj([present, copies]))
                    elif isinstance(check, SpotCheck) and (not certain or Fraction(str(check.rate)) == 1):
                        vf = enc.vf[i]
                        verifier = disj(
                            [
                                conj([vf["coordinator"], enc.coord_trusted]),
                                conj([vf["tee"], enc.attestation, neg(enc.tee_compromise)]),
                                conj([vf["peer"], others]),
                            ]
                        )
                        detectors.append(conj([present, enc.receipts, verifier]))
                    elif isinstance(check, StatisticalCheck) and kind in ("F", "B"):
                        power = probability_fraction(check.power)
                        if power == 1 or (power > 0 and not certain):
                            detectors.append(conj([present, enc.coord_trusted]))
                parts.append(conj([enc.cap[capability], disj(detectors)]))
        if stage == 0:
            checker = (
                disj(
                    [
                        conj([enc.check_present[i], state.here[self._primary(1, replica)]])
                        for i, check in self.checks
                        if isinstance(check, RedundantNeighbourCheck)
                    ]
                )
                if world.stages > 1
                else False
            )
            replicated = disj(
                [conj([enc.check_present[i], copies]) for i, c in self.checks if isinstance(c, ReplicateCheck)]
            )
            committed = conj([enc.data_commitment, disj([enc.coord_trusted, checker, copies])])
            parts.append(conj([enc.cap["poison_data"], disj([committed, replicated])]))
        parts.append(conj([enc.cap["equivocate"], enc.receipts, enc.coord_trusted]))
        return disj(parts)

    def framed(self, state: _Step, p: int, tie: bool = False) -> Term:
        """Some framing mechanism blames the (honest, present) occupant of ``p``, its framers
        being the malicious occupants present now; with ``tie``, only a ``replicate`` vote that
        the malicious copies tie (it blames both sides, so they are ejected with the victim),
        else every other way, a vote the malicious copies win outright included."""
        enc, world = self.enc, self.world
        stage, replica = world.slot_of(self.positions[p])
        no_referee = disj([neg(enc.receipts), neg(enc.coord_trusted)])
        accuse = conj([enc.cap["false_accuse"], no_referee])
        out: list[Term] = []
        copies = [q for q in self._slot_copies(p) if q != p]
        for i, check in self.checks:
            present = enc.check_present[i]
            if tie and not isinstance(check, ReplicateCheck):
                continue
            if isinstance(check, RedundantNeighbourCheck):
                if 1 <= stage <= world.stages - 2:
                    up, down = self._primary(stage - 1, replica), self._primary(stage + 1, replica)
                    equivocation = [enc.cap["equivocate"], neg(enc.receipts), enc.via_up[i], present]
                    out.append(conj([*equivocation, state.bad[up], state.here[down]]))
                if stage <= world.stages - 2:
                    out.append(conj([accuse, present, state.bad[self._primary(stage + 1, replica)]]))
            elif isinstance(check, SpotCheck) and accuse is not False and enc.vf[i]["peer"] is not False:
                anyone = disj([state.bad[q] for q in range(len(self.positions)) if q != p])
                out.append(conj([accuse, present, enc.vf[i]["peer"], anyone]))
            elif isinstance(check, ReplicateCheck):
                against = [state.bad[q] for q in copies]
                if not tie:
                    out.append(conj([accuse, present, disj(against)]))
                tamper = disj([enc.cap[c] for c in _TAMPER_KINDS])
                vote = conj([present, tamper, disj([neg(enc.referee[i]), neg(enc.coord_trusted)])])
                # The vote is over the copies present: 2 * malicious >= present, that is
                # malicious + malicious + vacant >= copies (the victim is present and honest).
                vacant = [neg(state.here[q]) for q in copies]
                majority = _count_at_least(against + against + vacant, len(copies) + 1) if copies else False
                strict = _count_at_least(against + against + vacant, len(copies) + 2) if copies else False
                agree = disj([enc.collusion, _count_at_most(against, 1)])
                voted = conj([vote, disj(against), agree, majority])
                if tie:
                    return conj([voted, neg(strict)])
                out.append(conj([voted, strict]))
        if tie:
            return False
        out.append(conj([neg(enc.coord_trusted), neg(enc.receipts)]))
        return disj(out)

    # -- the violation ----------------------------------------------------------------------

    def crash_bound(self) -> Term:
        """At most ``faults.crash`` crashes (under the crash assumption in the symbolic form)."""
        allowed = self.enc.spec.adversary.faults.crash
        if len(self.crash_events) <= allowed:
            return True
        bound = at_most(self.crash_events, allowed)
        if self.enc.concrete:
            return bound
        literal = next(a.literal for a in self.enc.assumptions if a.key == "crash")
        return disj([neg(literal), bound])

    def _budget_bound(self, ejections: list[z3.BoolRef]) -> Term:
        budget = self.enc.spec.malicious_budget
        if len(ejections) <= budget:
            return True
        bound = at_most(ejections, budget)
        return bound if self.enc.concrete else disj([neg(self.enc.budget_literal), bound])

    def stall(self, state: _Step) -> Term:
        """(a): neither eject nor skip_stage, and a malicious occupant of a running replica
        withholds or has a unit detected with certainty when it wants to be."""
        enc = self.enc
        gate = conj([neg(enc.response["eject"]), neg(enc.response["skip_stage"])])
        if gate is False:
            return False
        stuck = []
        for p in range(len(self.positions)):
            replica = self.world.slot_of(self.positions[p])[1]
            stuck.append(
                conj(
                    [
                        state.bad[p],
                        self._running(state, replica),
                        disj([enc.cap["withhold"], self.catchable(state, p, certain=True)]),
                    ]
                )
            )
        return conj([gate, disj(stuck)])

    def emptied(self, state: _Step) -> Term:
        """(b): every standby worker has entered (or does not exist) and every replica has a
        slot whose copies are all vacant."""
        pool = conj([disj([state.used[j], neg(self.enc.standby[j])]) for j in range(len(self.standby))])
        return conj([pool] + [neg(self._running(state, r)) for r in range(self.world.replicas)])

    def goal(self) -> tuple[Term, Term, Term]:
        """The violation goal (some run of at most ``steps`` events ends in a stall or with
        every replica emptied), and its two parts in the last state."""
        if not self.states:
            self._unroll()
        last = self.states[-1]
        stall, empty = self.stall(last), self.emptied(last)
        # Implied, and stated so that the solver refutes by counting instead of by search: every
        # removal vacates a position and every entry fills one, so a run that ends with every
        # standby entered and a slot of every replica vacant has at least R * k + K removals;
        # every ejection removes a distinct malicious worker.
        copies = len(self.positions) // (self.world.stages * self.world.replicas)
        need = self.world.replicas * copies
        # With at most C crashes and B malicious workers removed (ejected, or blamed by a tied
        # vote), the framings make up the rest (one cardinality constraint: CDCL refutes a sum
        # of separate ones only by long search).
        absent = [to_z3(neg(e)) for e in self.enc.standby]
        framings = [v for kinds in self.events for v in kinds["framed"] + kinds["outvoted"]]
        budget, allowed = self.enc.spec.malicious_budget, self.enc.spec.adversary.faults.crash
        rest = need + len(absent) - budget - allowed
        framed: Term = at_least(framings + absent, rest) if rest > 0 else True
        if not self.enc.concrete and framed is not True:
            literals = [a.literal for a in self.enc.assumptions if a.key in ("crash", "budget")]
            framed = disj([*(neg(x) for x in literals), framed])
        ejections = [v for kinds in self.events for v in kinds["eject"]]
        goal = conj(
            [
                *self.constraints,
                self.crash_bound(),
                self._budget_bound(ejections),
                disj([stall, conj([empty, framed])]),
            ]
        )
        return goal, stall, empty

    def event_terms(self) -> list[z3.BoolRef]:
        """Every event variable (to find a run with the fewest events)."""
        out: list[z3.BoolRef] = []
        for kinds, enter in zip(self.events, self.entries, strict=True):
            out += [v for row in kinds.values() for v in row] + [v for row in enter for v in row]
        return out

    # -- reading a run back ----------------------------------------------------------------

    def run(self, model: z3.ModelRef, stall: Term) -> LivenessRun:
        """The run ``model`` chooses. Standby workers of the same kind (malicious or not) are
        interchangeable, so each entry names the lowest-numbered free one of its kind."""
        true = true_constants(model)
        world = self.world
        names = [world.workers[w].name for w in self.positions]
        malicious_standby = [constant_name(self.enc.mal[w]) in true for w in self.standby]
        occupant = list(names)
        free = list(range(len(self.standby)))
        events: list[RunEvent] = []
        for before, kinds, enter in zip(self.states, self.events, self.entries, strict=False):
            for kind, row in kinds.items():
                for p, var in enumerate(row):
                    if constant_name(var) in true:
                        events.append(RunEvent(len(events), kind, names[p], occupant[p]))
                        occupant[p] = "vacant"
                        if kind == "outvoted":
                            for q in self._slot_copies(p):
                                if holds_in(model, before.bad[q]):
                                    occupant[q] = "vacant"
            for p, row in enumerate(enter):
                for j, var in enumerate(row):
                    if constant_name(var) in true:
                        first = next(i for i in free if malicious_standby[i] == malicious_standby[j])
                        free.remove(first)
                        name = world.workers[self.standby[first]].name
                        events.append(RunEvent(len(events), "enter", names[p], name))
                        occupant[p] = name
        malicious = [world.workers[w].name for w in range(len(world.workers)) if holds_in(model, self.enc.mal[w])]
        withholds = holds_in(model, self.enc.cap["withhold"])
        staller = None
        if holds_in(model, stall):
            last = self.states[-1]
            staller = next(
                occupant[p]
                for p in range(len(names))
                if holds_in(model, last.bad[p])
                and holds_in(model, self._running(last, world.slot_of(self.positions[p])[1]))
                and (withholds or holds_in(model, self.catchable(last, p, certain=True)))
            )
        final = {names[p]: occupant[p] for p in range(len(names)) if occupant[p] != names[p]}
        return LivenessRun(malicious, events, final, staller, withholds)


@dataclass
class LivenessRun:
    """A run that violates liveness: its placement, its events, the final occupant of every
    position that changed hands, and the stalling worker (None when the run empties every
    replica instead)."""

    malicious: list[str]
    events: list[RunEvent]
    final: dict[str, str]
    staller: str | None
    withholds: bool
