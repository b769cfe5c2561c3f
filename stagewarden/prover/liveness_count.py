"""``liveness`` decided by counting removals, for worlds of any size whose removal rules do not
depend on the run's state (docs/semantics.rst, ``liveness``, "Deciding by counting").

The runs of :mod:`stagewarden.prover.liveness_runs` are read through their own rules
(:meth:`LivenessRuns.catchable`, :meth:`LivenessRuns.framed`), evaluated once per *position
class* on a probe state whose occupancy is symbolic. Where every class's answer folds to a Python
constant, whether an occupant may be removed depends only on its class, its kind (malicious or
honest) and on its replica running at that moment; a violating run is then a matter of counts
(removals against crashes, budget and standby workers), which :func:`decide` settles exactly
and turns into an explicit run. Otherwise :class:`NotCountable` says why, and the caller falls
back to the state search or the unrolling.
"""

from __future__ import annotations

from dataclasses import dataclass

from stagewarden.prover.fastz3 import Term, boolean
from stagewarden.prover.liveness_runs import LivenessRun, LivenessRuns, RunEvent, _Step
from stagewarden.prover.liveness_search import corruptible_positions


class NotCountable(Exception):
    """Some removal rule of this world depends on the run's state (who else is present or
    malicious), so the counts alone do not decide liveness."""


@dataclass(frozen=True)
class RemovalRules:
    """What removes an occupant, per stage, in every state of every run (with ``eject``)."""

    #: ``ejectable[s]``: a malicious occupant of stage ``s`` may be ejected while its replica runs.
    ejectable: list[bool]
    #: An honest occupant of any position may be framed and ejected while its replica runs.
    framable: bool
    #: ``certain[s]``: a malicious occupant of stage ``s`` in a full running replica withholds or
    #: is caught with certainty (what a stall needs, without ``eject`` and ``skip_stage``).
    certain: list[bool]


def _representatives(runs: LivenessRuns) -> dict[int, list[int]]:
    """Positions to evaluate the rules at, per stage they stand for: every copy of the slots of
    replica 0 in stages 0, 1, S-2 and S-1. The rules read a position's stage only through
    ``stage == 0``, ``stage <= S-2`` and ``1 <= stage <= S-2``, and its replica and copy only
    through the slots around it, so every stage in 1..S-2 is ruled like stage 1 (and like S-2:
    both are evaluated, and a difference is refused)."""
    world = runs.world
    stages = world.stages
    wanted = sorted({0, stages - 1} | ({1, stages - 2} if stages >= 3 else set()))
    return {s: [runs.index[w] for w in world.slots[(s, 0)]] for s in wanted}


def _stage_rule(values: dict[int, bool], stages: int) -> list[bool]:
    """A per-stage rule from its value at the representative stages (mid stages as stage 1)."""
    if stages >= 3 and values[1] != values[stages - 2]:
        raise NotCountable("the rules of the middle stages differ")
    return [values[s] if s in values else values[1] for s in range(stages)]


def removal_rules(runs: LivenessRuns) -> RemovalRules:
    """The removal rules of every position class, or :class:`NotCountable`.

    The probe state has every other position's occupancy and malice as one shared symbolic
    variable each. The rules fold a Python constant only where an operand is one, and that
    folding does not depend on whether two operands are the same variable, so a rule that folds
    to a constant here folds to the same constant with a distinct variable per position: it
    holds, or fails, in every state."""
    enc = runs.enc
    n = len(runs.positions)
    here_var, bad_var = boolean("liveness!probe_here"), boolean("liveness!probe_bad")
    eject = enc.response["eject"] is True
    withhold = enc.cap["withhold"] is True
    full = _Step([True] * n, [False] * n, [])
    ejectable: dict[int, bool] = {}
    certain: dict[int, bool] = {}
    framable: set[bool] = set()
    for stage, positions in _representatives(runs).items():
        caught: set[bool] = set()
        sure: set[bool] = set()
        for p in positions:
            here: list[Term] = [here_var] * n
            here[p] = True
            if not withhold:
                catchable = runs.catchable(_Step(here, [bad_var] * n, []), p, certain=False)
                if not isinstance(catchable, bool):
                    raise NotCountable(f"whether a malicious worker of stage {stage} is caught depends on the run")
                caught.add(catchable)
                certainly = runs.catchable(full, p, certain=True)
                assert isinstance(certainly, bool), "a concrete state gives a constant"
                sure.add(certainly)
            else:
                caught.add(True)
                sure.add(True)
            if eject:
                bad: list[Term] = [bad_var] * n
                bad[p] = False
                honest = _Step(here, bad, [])
                framed, tied = runs.framed(honest, p), runs.framed(honest, p, tie=True)
                if not isinstance(framed, bool) or tied is not False:
                    raise NotCountable(f"whether an honest worker of stage {stage} can be framed depends on the run")
                framable.add(framed)
        if len(caught) > 1 or len(sure) > 1:
            raise NotCountable(f"the copies of a stage-{stage} slot are ruled differently")
        ejectable[stage] = eject and caught.pop()
        certain[stage] = sure.pop()
    if len(framable) > 1:
        raise NotCountable("some positions can be framed and others cannot")
    stages = runs.world.stages
    return RemovalRules(_stage_rule(ejectable, stages), bool(framable and framable.pop()), _stage_rule(certain, stages))


@dataclass(frozen=True)
class Counted:
    """What the counts decide: a violating run with the fewest malicious workers, then the
    fewest events, or None (liveness holds) and why no run exists."""

    run: LivenessRun | None
    why: str


def decide(runs: LivenessRuns) -> Counted:
    """Liveness decided by the counts; raises :class:`NotCountable` where they do not decide."""
    enc = runs.enc
    assert enc.concrete, "the counts read spec facts as Python constants"
    rules = removal_rules(runs)
    outcomes = [_emptied(runs, rules), _stall(runs, rules)]
    candidates = [run for run in outcomes if isinstance(run, LivenessRun)]
    if not candidates:
        return Counted(None, "; ".join(str(why) for why in outcomes))
    return Counted(min(candidates, key=lambda run: (len(run.malicious), len(run.events))), "")


class _Builder:
    """Events of a run under construction, naming each position's occupant as it changes."""

    def __init__(self, runs: LivenessRuns) -> None:
        self.names = [runs.world.workers[w].name for w in runs.positions]
        self.occupant = list(self.names)
        self.events: list[RunEvent] = []

    def add(self, kind: str, p: int, worker: str | None = None) -> None:
        if kind == "enter":
            assert worker is not None
            self.occupant[p] = worker
            self.events.append(RunEvent(len(self.events), kind, self.names[p], worker))
            return
        self.events.append(RunEvent(len(self.events), kind, self.names[p], self.occupant[p]))
        self.occupant[p] = "vacant"

    def run(self, malicious: list[str], staller: str | None, withholds: bool) -> LivenessRun:
        final = {name: now for name, now in zip(self.names, self.occupant, strict=True) if now != name}
        return LivenessRun(malicious, self.events, final, staller, withholds)


def _emptied(runs: LivenessRuns, rules: RemovalRules) -> LivenessRun | str:
    """The cheapest run that leaves a slot of every replica vacant with every standby worker
    entered (docs/semantics.rst gives the count and why it is exact), or why there is none.

    Every removal vacates a position and every entry fills one, so such a run has at least
    ``R * k + K`` removals; each is a framing (free when honest occupants can be framed), the
    ejection of a distinct malicious worker where its stage is ejectable, or a crash."""
    world, enc = runs.world, runs.enc
    replicas, k = world.replicas, enc.spec.replication_factor
    standby = [world.workers[w].name for w in runs.standby]
    budget, crashes = enc.spec.malicious_budget, enc.spec.adversary.faults.crash
    corruptible = set(corruptible_positions(runs))
    # Per replica, the slot to empty: an ejectable stage whose slot may be malicious if any
    # (trust entries name whole slots, so its copies are all corruptible or none), the lowest.
    slots: list[tuple[int, bool]] = []
    for r in range(replicas):
        paid = next(
            (s for s in range(world.stages) if rules.ejectable[s] and runs.index[world.primary(s, r)] in corruptible),
            None,
        )
        if paid is not None:
            slots.append((paid, True))
        else:
            slots.append((next((s for s in range(world.stages) if rules.ejectable[s]), 0), False))
    build = _Builder(runs)
    if rules.framable:
        # Every removal is a framing: no malicious worker, no crash.
        order = _removal_order(runs, slots)
        for number, p in enumerate(order):
            build.add("framed", p)
            if number == 0:
                for name in standby:
                    build.add("enter", p, name)
                    build.add("framed", p)
        return build.run([], None, False)
    standby_paid = any(rules.ejectable)
    crash_only = sum(k for _, paid in slots if not paid) + (0 if standby_paid else len(standby))
    removals = replicas * k + len(standby)
    if crash_only > crashes:
        only = f"{crash_only} removals that only a crash can make"
        return f"emptying every replica needs {only}, and at most {_crashes(crashes)} are allowed"
    if removals > budget + crashes:
        return (
            f"emptying every replica needs {removals} removals ({replicas * k} positions and {len(standby)} standby "
            f"workers), but {budget} malicious workers and {_crashes(crashes)} make at most {budget + crashes}"
        )
    # Crashes go first (they cost no malicious worker): to the removals only a crash can make,
    # then to standby workers, then to slot copies that could have been ejected.
    spare = min(crashes, removals) - crash_only
    crashed_standby = min(spare, len(standby)) if standby_paid else len(standby)
    spare -= crashed_standby if standby_paid else 0
    malicious_standby = len(standby) - crashed_standby
    order = _removal_order(runs, slots)
    paid_copies = {p for r, (s, paid) in enumerate(slots) if paid for p in _copies(runs, s, r)}
    malicious: list[str] = []
    for number, p in enumerate(order):
        if p in paid_copies and spare <= 0:
            malicious.append(build.names[p])
            build.add("eject", p)
        else:
            spare -= 1 if p in paid_copies else 0
            build.add("crash", p)
        if number == 0:
            # Every standby worker cycles through the first vacancy: the malicious ones (the
            # lowest-numbered: standby workers are interchangeable) are ejected, the others crash.
            for j, name in enumerate(standby):
                build.add("enter", p, name)
                if j < malicious_standby:
                    malicious.append(name)
                    build.add("eject", p)
                else:
                    build.add("crash", p)
    return build.run(malicious, None, False)


def _crashes(count: int) -> str:
    return f"{count} crash" if count == 1 else f"{count} crashes"


def _copies(runs: LivenessRuns, stage: int, replica: int) -> list[int]:
    return [runs.index[w] for w in runs.world.slots[(stage, replica)]]


def _removal_order(runs: LivenessRuns, slots: list[tuple[int, bool]]) -> list[int]:
    """The positions to vacate, replica by replica: the first is where standby workers cycle."""
    return [p for r, (s, _) in enumerate(slots) for p in _copies(runs, s, r)]


def _stall(runs: LivenessRuns, rules: RemovalRules) -> LivenessRun | str:
    """The cheapest run to a stall, or why there is none: without ``eject`` and ``skip_stage``, one malicious
    occupant of a full replica that withholds or is caught with certainty. Being caught is
    monotone in who is present, so the full state is the best place for it: a malicious original
    (no event), or a malicious standby worker that enters after a crash."""
    enc, world = runs.enc, runs.world
    if enc.response["eject"] is True or enc.response["skip_stage"] is True:
        return "no stall: the response replaces or skips a stalling worker"
    if enc.spec.malicious_budget < 1:
        return "no stall: no worker may be malicious"
    withholds = enc.cap["withhold"] is True
    corruptible = corruptible_positions(runs)
    stages = [s for s in range(world.stages) if rules.certain[s]]
    for p in corruptible:
        if rules.certain[world.slot_of(runs.positions[p])[0]]:
            name = world.workers[runs.positions[p]].name
            return _Builder(runs).run([name], name, withholds)
    if not stages:
        return "no stall: no malicious worker withholds or is caught with certainty"
    if enc.spec.adversary.faults.crash < 1 or not runs.standby:
        return "no stall: the stages where a malicious worker would stall the job are trusted"
    p = runs.index[world.primary(stages[0], 0)]
    entrant = world.workers[runs.standby[0]].name
    build = _Builder(runs)
    build.add("crash", p)
    build.add("enter", p, entrant)
    return build.run([entrant], entrant, withholds)
