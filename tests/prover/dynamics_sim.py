"""An explicit-state simulator of who holds each position over a run: the reference the prover's
dynamics are differentially tested against.

For every placement over all workers (original occupants within trust, and standby workers) it
explores every sequence of events (:mod:`dynamics_model`) by breadth-first search and judges every
guarantee in every reachable state, as section 4b of the spec-language design and the "Dynamics"
section of docs/semantics.rst say; bounded_damage follows each run's tries and solves the
tampering game exactly (:mod:`damage_game`). It also answers with framings *unordered* (a position
counts as malicious for framing and covering when a malicious worker holds it at some point of
the run), the prover's documented conservative reading, and replays the events of a prover trace.

Readings of points that the page leaves open are marked ``Reading:`` in the comments.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from fractions import Fraction

from bruteforce import World, overhead_cost, placements
from damage_game import Try, best_probability, mode_of
from dynamics_model import (
    KINDS,
    ORIGINAL,
    TAMPERING,
    VACANT,
    B,
    Event,
    F,
    L,
    SimResult,
    Simulation,
    State,
    U,
    exact_decimal,
)

from stagewarden.spec import (
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    NoFramingGuarantee,
    OverheadGuarantee,
    Spec,
    probability_fraction,
)

__all__ = [
    "Event",
    "SimResult",
    "Simulation",
    "damage_probability",
    "damage_profiles",
    "simulate",
    "simulate_placement",
]


#: A run's tries: (worker, lowest d per kind F, B, U, L or None where it never tampers) by name.
Levels = tuple[tuple[str, tuple[Fraction | None, ...]], ...]


def _dominates(a: Levels, b: Levels) -> bool:
    """Every try of ``b`` is a try of ``a`` at levels no higher (so ``a`` is worth as much)."""
    mine = dict(a)
    for name, row in b:
        own = mine.get(name)
        if own is None:
            return False
        for x, y in zip(own, row, strict=True):
            if y is not None and (x is None or x > y):
                return False
    return True


def damage_profiles(sim: Simulation) -> list[tuple[Levels, list[Event]]]:
    """The tries of every run of this placement, up to dominance, each with a run that gives it.

    A run's tries are the malicious workers that occupy a position at some point, each at the
    lowest detection level per unit kind it meets in a state of the run where it occupies a
    position of a running replica (Reading: the adversary tampers with each kind when the run's
    state suits it best; the page's "checkers counted as malicious when they are malicious at some
    point" is the unordered form of this). Runs are followed state by state; a run that reaches a
    state with tries no better than another run's there is dropped (the game is monotone in both)."""
    tampering = sim.caps & set(TAMPERING)
    if not tampering or not (sim.bad_original or sim.bad_standby):
        return [((), [])]
    moves: dict[State, list[tuple[Event, State]]] = {}
    seen: dict[State, list[Levels]] = {}
    Node = tuple[State, Levels]
    start: Node = (sim.initial, ())
    parents: dict[Node, tuple[Node, Event] | None] = {start: None}
    found: dict[Levels, Node] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        state, before = node
        levels = {name: list(row) for name, row in before}
        for p, _, kind, d in sim.tamper_levels(state, tampering):
            row = levels.setdefault(sim.occupant_name(state[0], p), [None, None, None, None])
            i = KINDS.index(kind)
            old = row[i]
            row[i] = d if old is None else min(old, d)
        key: Levels = tuple(sorted((name, tuple(row)) for name, row in levels.items()))
        known = seen.setdefault(state, [])
        if any(_dominates(other, key) for other in known):
            continue
        known.append(key)
        found.setdefault(key, node)
        if state not in moves:
            moves[state] = list(sim.successors(state))
        for event, after in moves[state]:
            child = (after, key)
            if child not in parents:
                parents[child] = (node, event)
                queue.append(child)
    out = []
    for key, node in found.items():
        if any(other != key and _dominates(other, key) for other in found):
            continue
        events: list[Event] = []
        step = parents[node]
        while step is not None:
            events.append(step[1])
            step = parents[step[0]]
        out.append((key, events[::-1]))
    return out


def damage_probability(world: World, key: Levels, max_undetected: int) -> Fraction:
    """The adversary's best Pr for one run's tries; every try gets its position's units of the
    horizon (the page's horizon cap): F and B H*M each, U H-1, L one (Reading: two tries in one
    position each get the whole horizon, as the page's per-try cap says)."""
    units = {F: world.H * world.M, B: world.H * world.M, U: world.H - 1, L: 1}
    tries: list[Try] = [
        tuple((1 - d, units[kind]) for kind, d in zip(KINDS, row, strict=True) if d is not None) for _, row in key
    ]
    return best_probability(tries, max_undetected, mode_of(world.response))


def _state_levels(sim: Simulation, state: State) -> Levels:
    rows: dict[str, list[Fraction | None]] = {}
    for p, _, kind, d in sim.tamper_levels(state, sim.caps & set(TAMPERING)):
        row = rows.setdefault(sim.occupant_name(state[0], p), [None, None, None, None])
        i = KINDS.index(kind)
        old = row[i]
        row[i] = d if old is None else min(old, d)
    return tuple(sorted((name, tuple(row)) for name, row in rows.items()))


def _worst_damage(
    sim: Simulation, parents: dict[State, tuple[State, Event] | None], max_undetected: int
) -> tuple[Fraction, list[Event]]:
    """The worst Pr over the runs of one placement. Shortcut: the best single state's tries are
    achievable, and every worker's lowest level in any state bounds every run; where the two
    agree that is the answer, else the runs are followed (:func:`damage_profiles`)."""
    world = sim.world
    best, best_state = Fraction(0), sim.initial
    bound: dict[str, list[Fraction | None]] = {}
    values: dict[Levels, Fraction] = {}
    for state in parents:
        key = _state_levels(sim, state)
        if key not in values:
            values[key] = damage_probability(world, key, max_undetected)
        if values[key] > best:
            best, best_state = values[key], state
        for name, row in key:
            low = bound.setdefault(name, [None, None, None, None])
            for i, d in enumerate(row):
                if d is not None and (low[i] is None or d < low[i]):  # type: ignore[operator]
                    low[i] = d
    ceiling = damage_probability(world, tuple(sorted((n, tuple(r)) for n, r in bound.items())), max_undetected)
    if ceiling == best:
        return best, Simulation.path(parents, best_state)
    worst, events = Fraction(0), []
    for key, run in damage_profiles(sim):
        value = damage_probability(world, key, max_undetected)
        if value > worst:
            worst, events = value, run
    return worst, events


# -- the guarantees ------------------------------------------------------------------------


def _first(
    sim: Simulation, parents: dict[State, tuple[State, Event] | None], test: Callable[[State], bool]
) -> State | None:
    return next((state for state in parents if test(state)), None)


def simulate_placement(world: World, malicious: frozenset[str], spec: Spec) -> dict[str, SimResult]:
    """Every guarantee of ``spec`` judged over the runs of one placement."""
    sim = Simulation(world, malicious)
    parents = sim.explore()
    out: dict[str, SimResult] = {}
    for g in spec.guarantees:
        bad: State | None = None
        figure: Fraction | None = None
        if isinstance(g, DetectionGuarantee):
            bound = probability_fraction(g.probability)
            scope = (set(g.of) if g.of is not None else set(TAMPERING)) & sim.caps
            figure = Fraction(1)
            lowest: dict[tuple[int, ...], Fraction | None] = {}
            for state in parents:
                occ = state[0]
                if occ not in lowest:
                    ds = [d for _, _, _, d in sim.tamper_levels(state, scope)]
                    if world.sdc:
                        ds += list(sim.sdc_levels(state))
                    lowest[occ] = min(ds) if ds else None
                low = lowest[occ]
                if low is not None and low < figure:
                    figure = low
                if bad is None and low is not None and low < bound:
                    bad = state
        elif isinstance(g, BoundedDamageGuarantee):
            pr, events = _worst_damage(sim, parents, g.max_undetected)
            violated = pr > 1 - probability_fraction(g.probability)
            out[g.id] = SimResult("violated" if violated else "holds", pr, malicious if violated else None, events)
            continue
        elif isinstance(g, NoFramingGuarantee):
            bad = _first(sim, parents, sim.framed)
        elif isinstance(g, LivenessGuarantee):
            bad = _first(sim, parents, lambda state: sim.stalls(state) or sim.emptied(state))
        elif isinstance(g, DataIntegrityGuarantee):
            bad = _first(sim, parents, sim.poisoned)
        else:
            assert isinstance(g, OverheadGuarantee)
            compute, memory = overhead_cost(world)
            over = compute > exact_decimal(g.max_compute) or (
                g.max_memory is not None and memory > exact_decimal(g.max_memory)
            )
            out[g.id] = SimResult("violated" if over else "holds", compute)
            continue
        if bad is None:
            out[g.id] = SimResult("holds", figure)
        else:
            out[g.id] = SimResult("violated", figure, malicious, Simulation.path(parents, bad))
    return out


def simulate(spec: Spec) -> dict[str, SimResult]:
    """Every guarantee of ``spec`` over every placement (fewest malicious workers first) and every
    run; keyed by guarantee id. A violation's witness is the first placement that shows it."""
    world = World(spec)
    combined: dict[str, SimResult] = {}
    for malicious in placements(world):
        for gid, result in simulate_placement(world, malicious, spec).items():
            seen = combined.get(gid)
            if seen is None:
                combined[gid] = result
                continue
            if seen.verdict == "holds" and result.verdict == "violated":
                seen.verdict, seen.witness, seen.events = "violated", result.witness, result.events
            if result.figure is not None and seen.figure is not None:
                kind = next(g.kind for g in spec.guarantees if g.id == gid)
                if kind == "detection":
                    seen.figure = min(seen.figure, result.figure)
                elif kind == "bounded_damage":
                    seen.figure = max(seen.figure, result.figure)
    return combined


# -- framings unordered --------------------------------------------------------------------


def _violates(sim: Simulation, g: object, state: State, view: frozenset[int] | None) -> bool:
    """Whether ``state`` shows a violation of guarantee ``g`` (not bounded_damage or overhead)."""
    if isinstance(g, DetectionGuarantee):
        bound = probability_fraction(g.probability)
        scope = (set(g.of) if g.of is not None else set(TAMPERING)) & sim.caps
        ds = [d for _, _, _, d in sim.tamper_levels(state, scope, view)]
        if sim.world.sdc:
            ds += list(sim.sdc_levels(state))
        return bool(ds) and min(ds) < bound
    if isinstance(g, NoFramingGuarantee):
        return sim.framed(state, view)
    if isinstance(g, LivenessGuarantee):
        return sim.stalls(state) or sim.emptied(state)
    assert isinstance(g, DataIntegrityGuarantee)
    return sim.poisoned(state, view)


def _completable(
    sim: Simulation, parents: dict[State, tuple[State, Event] | None], extras: frozenset[int], view: frozenset[int]
) -> set[State]:
    """The states from which a run goes on to put a malicious standby worker in every position
    of ``extras`` (the unordered view counts them malicious for the whole run)."""
    edges: dict[State, list[State]] = {state: [] for state in parents}
    for state in parents:
        for _, after in sim.successors(state, view):
            if after in edges:
                edges[after].append(state)
    done = [s for s in parents if extras <= {s[1][i] for i in sim.bad_standby}]
    good, queue = set(done), deque(done)
    while queue:
        for before in edges[queue.popleft()]:
            if before not in good:
                good.add(before)
                queue.append(before)
    return good


def _entering_only(sim: Simulation, extras: frozenset[int]) -> Callable[[Event], bool]:
    """Events that keep the unordered view consistent: malicious standby workers enter only the
    positions the view counts as theirs."""

    def allow(event: Event) -> bool:
        return event.kind != "enter" or event.worker not in sim.malicious or sim.index[event.position] in extras

    return allow


def simulate_unordered(spec: Spec, guarantee_id: str) -> tuple[str, list[Event], bool]:
    """One guarantee (detection, no_framing, liveness or data_integrity) with framings and
    covering unordered, as the prover's encoding reads them: a position counts as malicious for
    the whole run when its original occupant is malicious or a malicious standby worker enters it
    at some point. Returns the verdict, a witness run, and whether that run needs a *framing
    cycle* (two positions vacated by framings that each need the malicious standby worker that
    later enters the other: no order of events realises it)."""
    world = World(spec)
    g = next(x for x in spec.guarantees if x.id == guarantee_id)
    for malicious in placements(world):
        sim = Simulation(world, malicious)
        base = frozenset(sim.bad_original)
        others = [p for p in range(len(sim.positions)) if p not in base]
        for size in range(len(sim.bad_standby) + 1):
            for extras_tuple in itertools.combinations(others, size):
                extras = frozenset(extras_tuple)
                view = base | extras

                parents = sim.explore(view, _entering_only(sim, extras))
                good = _completable(sim, parents, extras, view)
                for state in parents:
                    if state in good and _violates(sim, g, state, view):
                        run = Simulation.path(parents, state)
                        return "violated", run, _framing_cycle(sim, parents, state, extras)
    return "holds", [], False


def _framing_cycle(
    sim: Simulation, parents: dict[State, tuple[State, Event] | None], state: State, extras: frozenset[int]
) -> bool:
    """Whether the run to ``state``, completed until every position of ``extras`` has had its
    malicious standby worker, needs a cycle of framings: some worker is ejected by a framing that
    only the unordered view allows (its framer is a standby worker that enters later), and every
    position a malicious standby enters was vacated by a framing, so no order of the events puts
    a framer in place before the framing it makes."""
    view = frozenset(sim.bad_original) | extras
    later = sim.explore(view, _entering_only(sim, extras), state)
    done = next((s for s in later if extras <= {s[1][i] for i in sim.bad_standby}), None)
    if done is None:
        return False
    run: list[tuple[State, Event]] = []
    for tree, end in ((later, done), (parents, state)):
        step = tree[end]
        while step is not None:
            run.append(step)
            step = tree[step[0]]
    ahead = [
        sim.index[e.position]
        for before, e in run
        if e.kind in ("framed", "outvoted") and not sim.framings(before[0], sim.index[e.position])
    ]
    framed = {sim.index[e.position] for _, e in run if e.kind in ("framed", "outvoted")}
    return bool(ahead) and set(ahead) <= extras and extras <= framed


# -- replaying a prover trace --------------------------------------------------------------


def replay_trace(spec: Spec, guarantee_id: str, trace: dict[str, object], figure: Fraction | None = None) -> str | None:
    """Check a prover trace against the simulator: its malicious workers are within the budget
    and trust, and its events (``trace["dynamics"]``: crashed, ejected, framed, entered, vacant)
    are executable in some order and lead to a state where the claimed violation happens. With
    ``figure`` the trace's figure must be realised too: a detection trace's unit has exactly that
    detection probability in some state the events reach, and a bounded_damage figure is at most
    what the runs of those events reach. Returns None when it all holds, else what fails."""
    world = World(spec)
    names = [str(m["worker"]) for m in trace.get("malicious", [])]  # type: ignore[attr-defined]
    if len(set(names)) > world.budget:
        return f"{len(set(names))} malicious workers exceed the budget {world.budget}"
    for name in names:
        worker = world.by_name.get(name)
        if worker is None or not world.corruptible(worker):
            return f"{name} cannot be malicious"
    malicious = frozenset(names)
    sim = Simulation(world, malicious)
    dynamics = trace.get("dynamics") or {}
    assert isinstance(dynamics, dict)
    if "events" in dynamics:
        return _replay_in_order(sim, spec, guarantee_id, dynamics["events"])
    crashed, ejected, framed = (set(dynamics.get(k, [])) for k in ("crashed", "ejected", "framed"))
    entered = {str(e["position"]): bool(e["malicious"]) for e in dynamics.get("entered", [])}
    vacant = set(dynamics.get("vacant", []))

    def allow(event: Event) -> bool:
        if event.kind == "enter":
            return entered.get(event.position) == (event.worker in malicious)
        wanted = {"crash": crashed, "eject": ejected, "framed": framed, "outvoted": framed}[event.kind]
        return event.position in wanted and event.worker == event.position

    parents = sim.explore(None, allow)
    removed = crashed | ejected | framed
    g = next(x for x in spec.guarantees if x.id == guarantee_id)

    def matches(state: State) -> bool:
        occ, entered_at, _ = state
        for p, name in enumerate(sim.names):
            gone = occ[p] != ORIGINAL
            if gone != (name in removed):
                return False
            if name in vacant and occ[p] != VACANT:
                return False
        positions = {sim.names[q] for q in entered_at if q >= 0}
        return positions == set(entered)

    if not any(matches(state) for state in parents):
        return f"no order of the events {dynamics} is executable"
    if isinstance(g, BoundedDamageGuarantee):
        pr, _ = _worst_damage(sim, parents, g.max_undetected)
        ok = pr > 1 - probability_fraction(g.probability)
        if ok and figure is not None and figure > pr:
            return f"the events replay, but their runs reach a damage probability of {pr}, not the figure {figure}"
    else:
        ok = any(_violates(sim, g, state, None) for state in parents)
        if ok and figure is not None and isinstance(g, DetectionGuarantee):
            return _unrealised_detection(sim, parents, trace, figure)
    return None if ok else "the events replay, but no state they reach shows the violation"


#: A trace's unit names and the unit kinds they stand for.
_UNIT_KINDS = {"forward": F, "backward": B, "update": U, "last update": L}


def _unrealised_detection(
    sim: Simulation, parents: dict[State, tuple[State, Event] | None], trace: dict[str, object], figure: Fraction
) -> str | None:
    """None when some state the trace's events reach gives its unit (the worker it names, the
    unit kind, the capability or silent corruption) exactly the detection probability
    ``figure``; else what fails."""
    states = trace.get("states")
    assert isinstance(states, list) and states, trace
    unit = states[0]
    kind, action, worker = _UNIT_KINDS[unit["unit"]], unit["action"], unit["worker"]
    # Malicious standby workers are interchangeable (a run may need two to enter one position in
    # turn, which a trace shows as one entry): a standby worker's unit is its position's.
    entries = {str(m["worker"]): str(m["enters"]) for m in trace.get("malicious", []) if "enters" in m}  # type: ignore[attr-defined]
    position = entries.get(worker)
    for state in parents:
        occ = state[0]
        if action == "silent_corruption":
            for p, name in enumerate(sim.names):
                running = sim.running(occ, sim.positions[p][1])
                if name == worker and sim.honest(occ, p) and running and sim.d_checks(occ, p, kind, None) == figure:
                    return None
            continue
        for p, capability, k, d in sim.tamper_levels(state, {action}):
            if (capability, k, d) != (action, kind, figure):
                continue
            if sim.occupant_name(occ, p) == worker or (position == sim.names[p] and occ[p] in sim.bad_standby):
                return None
    return f"no state the events reach gives {worker}'s {unit['unit']} unit ({action}) the figure {figure}"


def _replay_in_order(sim: Simulation, spec: Spec, guarantee_id: str, events: list[dict[str, object]]) -> str | None:
    """Replay a run given as ordered events ({"event", "position", "worker"}): each must be a
    transition the simulator allows in the state the earlier ones reach, and the last state
    must show the violation."""
    state = sim.initial
    for number, wanted in enumerate(events):
        key = (wanted.get("event"), wanted.get("position"), wanted.get("worker"))
        step = next(
            (after for event, after in sim.successors(state) if (event.kind, event.position, event.worker) == key),
            None,
        )
        if step is None:
            return f"event {number} ({' '.join(map(str, key))}) is not possible after the events before it"
        state = step
    g = next(x for x in spec.guarantees if x.id == guarantee_id)
    if isinstance(g, BoundedDamageGuarantee | OverheadGuarantee):
        return "ordered events are only given for a violation shown in a state"
    if not _violates(sim, g, state, None):
        return "the events replay, but the state they reach shows no violation"
    return None
