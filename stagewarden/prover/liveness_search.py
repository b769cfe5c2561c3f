"""The runs of :mod:`stagewarden.prover.liveness_runs` searched state by state, for worlds small
enough to enumerate: every placement within budget and trust (malicious standby workers are the
lowest-numbered ones, since standby workers are interchangeable), then every run of that
placement, breadth first.

The rules of a state are the unrolling's own (:meth:`LivenessRuns.catchable`,
:meth:`LivenessRuns.framed`, :meth:`LivenessRuns.stall`), evaluated on Python constants: on the
concrete encoding every spec fact is one, so the search and the unrolling cannot read the
dynamics differently. The search decides where the unrolled formula is slow to refute (a
refutation must rule out every interleaving of the events; the search visits each state once).
"""

from __future__ import annotations

import itertools
from collections import deque
from math import comb

from stagewarden.prover.liveness_runs import LivenessRun, LivenessRuns, RunEvent, _Step

#: Occupant codes of a position in a search state.
ORIGINAL, VACANT, HONEST_STANDBY, MALICIOUS_STANDBY = 0, 1, 2, 3

#: The search is used while the placements times the positions stay within this many, and it
#: gives up (the unrolled formula decides) past ``STATE_LIMIT`` states.
PLACEMENT_LIMIT = 4000
STATE_LIMIT = 200_000

#: (occupant code per position, honest standby workers entered, malicious ones entered).
_State = tuple[tuple[int, ...], int, int]


class TooLarge(Exception):
    """The world has too many placements or states for the search."""


def corruptible_positions(runs: LivenessRuns) -> list[int]:
    """The positions whose original occupant may be malicious (trust entries apply to original
    occupants only, and a TEE entry only with attestation and no TEE compromise), in order."""
    enc = runs.enc
    world = enc.world
    safe: set[int] = set()
    for ref in enc.spec.trust.honest:
        safe.update(world.covered(ref))
    if enc.attestation is True and enc.tee_compromise is False:
        for ref in enc.spec.trust.tee:
            safe.update(world.covered(ref))
    return [p for p, w in enumerate(runs.positions) if w not in safe]


def search(runs: LivenessRuns, placement_limit: int = PLACEMENT_LIMIT) -> LivenessRun | None:
    """A violating run with the fewest malicious workers, then the fewest events; None when
    liveness holds. Raises :class:`TooLarge` when the world is too large to enumerate (more
    than ``placement_limit`` placements times positions)."""
    enc = runs.enc
    assert enc.concrete, "the search reads spec facts as Python constants"
    budget = enc.spec.malicious_budget
    standby = len(runs.standby)
    corruptible = corruptible_positions(runs)
    # Counted until the limit is passed: the full count has tens of thousands of digits in the
    # largest worlds (too slow to sum, and too long to print).
    most = placement_limit * 8 // max(1, len(runs.positions))
    count = 0
    for size in range(budget + 1):
        for m in range(min(size, standby) + 1):
            count += comb(len(corruptible), size - m)
            if count > most:
                raise TooLarge(f"more than {most} placements")
    visited = 0
    seen: set[object] = set()
    for size in range(budget + 1):
        for m in range(min(size, standby) + 1):
            for chosen in itertools.combinations(corruptible, size - m):
                key = (_shape(runs, chosen), m)
                if key in seen:
                    continue
                seen.add(key)
                found, states = _explore(runs, frozenset(chosen), m)
                visited += states
                if visited > STATE_LIMIT:
                    raise TooLarge(f"more than {STATE_LIMIT} states")
                if found is not None:
                    return found
    return None


def _shape(runs: LivenessRuns, chosen: tuple[int, ...]) -> object:
    """The placement up to the world's symmetries: the copies of a slot other than its primary
    (which the neighbour check and the equivocation relay single out) are alike, since trust
    entries name slots or stages, and so are the replicas when every trust entry names a whole
    stage; the runs of two placements of one shape are the same up to renaming."""
    world = runs.world
    counts = [[0] * world.stages for _ in range(world.replicas)]
    for p in chosen:
        w = runs.positions[p]
        stage, replica = world.slot_of(w)
        # The primary counts apart from the other copies (no slot has a thousand copies).
        counts[replica][stage] += 1000 if world.workers[w].copy == 0 else 1
    rows = [tuple(row) for row in counts]
    spec = runs.enc.spec
    if all(isinstance(ref, int) for ref in [*spec.trust.honest, *spec.trust.tee]):
        return tuple(sorted(rows))
    return tuple(rows)


def _explore(runs: LivenessRuns, bad_originals: frozenset[int], bad_standby: int) -> tuple[LivenessRun | None, int]:
    """Breadth-first search of the runs of one placement."""
    enc, world = runs.enc, runs.world
    n, total = len(runs.positions), len(runs.standby)
    honest_standby = total - bad_standby
    crash_limit = enc.spec.adversary.faults.crash
    eject = enc.response["eject"] is True

    def step(occ: tuple[int, ...]) -> _Step:
        here: list[bool] = [o != VACANT for o in occ]
        bad: list[bool] = [(o == ORIGINAL and p in bad_originals) or o == MALICIOUS_STANDBY for p, o in enumerate(occ)]
        return _Step(list(here), list(bad), [])

    replica_of = [world.slot_of(w)[1] for w in runs.positions]
    start: _State = ((ORIGINAL,) * n, 0, 0)
    fewest: dict[_State, int] = {start: 0}
    parents: dict[tuple[_State, int], tuple[tuple[_State, int], tuple[str, int]] | None] = {(start, 0): None}
    queue = deque([(start, 0)])
    while queue:
        node = queue.popleft()
        state, crashes = node
        if fewest[state] < crashes:
            continue
        occ, used_honest, used_bad = state
        now = step(occ)
        running = [runs._running(now, r) is True for r in range(world.replicas)]
        stall = runs.stall(now) is True
        empty = used_honest == honest_standby and used_bad == bad_standby and not any(running)
        if stall or empty:
            return _violation(runs, bad_originals, bad_standby, parents, node, now, stall), len(fewest)
        moves: list[tuple[str, int, _State, int]] = []
        for p, o in enumerate(occ):
            if o == VACANT:
                if used_honest < honest_standby:
                    moves.append(("enter-honest", p, _put(occ, p, HONEST_STANDBY, used_honest + 1, used_bad), crashes))
                if used_bad < bad_standby:
                    moves.append(("enter-bad", p, _put(occ, p, MALICIOUS_STANDBY, used_honest, used_bad + 1), crashes))
                continue
            vacated = _put(occ, p, VACANT, used_honest, used_bad)
            if crashes < crash_limit:
                moves.append(("crash", p, vacated, crashes + 1))
            if not eject or not running[replica_of[p]]:
                continue
            if now.bad[p]:
                if enc.cap["withhold"] is True or runs.catchable(now, p, certain=False) is True:
                    moves.append(("eject", p, vacated, crashes))
                continue
            if runs.framed(now, p) is True:
                moves.append(("framed", p, vacated, crashes))
            if runs.framed(now, p, tie=True) is True:
                # A tied vote ejects the malicious copies of the slot with the victim.
                slot = set(runs._slot_copies(p))
                both = tuple(VACANT if q == p or (q in slot and now.bad[q]) else o for q, o in enumerate(occ))
                moves.append(("outvoted", p, (both, used_honest, used_bad), crashes))
        for kind, p, after, used in moves:
            known = fewest.get(after)
            if known is None or used < known:
                fewest[after] = used
                parents[(after, used)] = (node, (kind, p))
                queue.append((after, used))
        if len(fewest) > STATE_LIMIT:
            raise TooLarge(f"more than {STATE_LIMIT} states")
    return None, len(fewest)


def _put(occ: tuple[int, ...], p: int, code: int, used_honest: int, used_bad: int) -> _State:
    return (occ[:p] + (code,) + occ[p + 1 :], used_honest, used_bad)


def _violation(
    runs: LivenessRuns,
    bad_originals: frozenset[int],
    bad_standby: int,
    parents: dict[tuple[_State, int], tuple[tuple[_State, int], tuple[str, int]] | None],
    node: tuple[_State, int],
    last: _Step,
    stall: bool,
) -> LivenessRun:
    """The run to ``node`` as events, naming every occupant: malicious standby workers are the
    lowest-numbered ones and enter in order, honest ones after them."""
    world, enc = runs.world, runs.enc
    moves: list[tuple[str, int]] = []
    step = parents[node]
    while step is not None:
        moves.append(step[1])
        step = parents[step[0]]
    moves.reverse()
    names = [world.workers[w].name for w in runs.positions]
    standby_names = [world.workers[w].name for w in runs.standby]
    malicious = [names[p] for p in sorted(bad_originals)] + standby_names[:bad_standby]
    bad_names = set(malicious)
    occupant = list(names)
    next_bad, next_honest = 0, bad_standby
    events: list[RunEvent] = []
    for kind, p in moves:
        if kind.startswith("enter"):
            if kind == "enter-bad":
                worker, next_bad = standby_names[next_bad], next_bad + 1
            else:
                worker, next_honest = standby_names[next_honest], next_honest + 1
            events.append(RunEvent(len(events), "enter", names[p], worker))
            occupant[p] = worker
        else:
            events.append(RunEvent(len(events), kind, names[p], occupant[p]))
            if kind == "outvoted":
                for q in runs._slot_copies(p):
                    if occupant[q] in bad_names:
                        occupant[q] = "vacant"
            occupant[p] = "vacant"
    staller = None
    withholds = enc.cap["withhold"] is True
    if stall:
        staller = next(
            occupant[p]
            for p in range(len(names))
            if last.bad[p]
            and runs._running(last, world.slot_of(runs.positions[p])[1]) is True
            and (withholds or runs.catchable(last, p, certain=True) is True)
        )
    final = {names[p]: occupant[p] for p in range(len(names)) if occupant[p] != names[p]}
    return LivenessRun(malicious, events, final, staller, withholds)
