"""Counterexample traces as data, in the style of ITF traces: metadata, parameters, the malicious
workers and their roles, and a list of states, each the action one worker takes at one step and
micro-batch and what the checks make of it. The runtime replays these as attacks.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import z3

from stagewarden.prover.encoding import Effect
from stagewarden.prover.explain import effect_reason
from stagewarden.prover.fastz3 import Term, constant_name, holds_in, true_constants
from stagewarden.prover.figure_text import format_comparison, format_pair
from stagewarden.prover.probability import Prob, format_probability
from stagewarden.spec import Spec

if TYPE_CHECKING:
    from stagewarden.prover.session import SolverSession

#: Version of the trace JSON format.
TRACE_VERSION = 1
KIND_NAMES = {"F": "forward", "B": "backward", "U": "update", "L": "last update"}


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def params(spec: Spec) -> dict[str, Any]:
    """The topology the trace lives in."""
    t = spec.topology
    return {
        "stages": t.stages,
        "replicas": t.replicas,
        "microbatches": t.microbatches,
        "steps": t.steps,
        "standby": t.standby,
        "replication_factor": spec.replication_factor,
    }


def meta(prover: SolverSession, guarantee: Any, description: str) -> dict[str, Any]:
    """The ``#meta`` object of a trace."""
    return {
        "format": "stagewarden-trace",
        "version": TRACE_VERSION,
        "spec": prover.loaded.file,
        "guarantee": guarantee.id,
        "kind": guarantee.kind,
        "description": description,
    }


def _true(model: z3.ModelRef, expr: Term) -> bool:
    return holds_in(model, expr)


def _held(prover: SolverSession, model: z3.ModelRef) -> list[str]:
    return [c for c, var in prover.enc.cap.items() if _true(model, var)]


def occupancy_events(prover: SolverSession, model: z3.ModelRef) -> tuple[dict[str, list[Any]], dict[int, int]]:
    """The run's events as ``model`` summarises them (crashed, ejected as convicts, ejected after
    being framed, standby entries, positions left vacant), and for every position a malicious
    standby worker entered, that worker's index."""
    enc = prover.enc
    occ, world = enc.occupancy, enc.world
    events: dict[str, list[Any]] = {"crashed": [], "ejected": [], "framed": [], "entered": [], "vacant": []}
    holders: dict[int, int] = {}
    if not occ.active:
        return events, holders
    true = true_constants(model)
    malicious_standby = [w for w in world.standby_workers if constant_name(enc.mal[w]) in true]
    honest_standby = [w for w in world.standby_workers if constant_name(enc.mal[w]) not in true]
    vacated_now = [w for w, v in occ.vacated.items() if constant_name(v) in true]
    # A crash needs no framer in place: where the crash budget has room, a vacancy the model
    # explains by a framing is told as a crash, so that no framing waits on a standby worker
    # that can only enter after it (the summary does not order the two).
    spare = prover.spec.adversary.faults.crash - sum(1 for w in vacated_now if constant_name(occ.crashed[w]) in true)
    for w in vacated_now:
        name = world.workers[w].name
        crashed = constant_name(occ.crashed[w]) in true
        if not crashed and constant_name(enc.mal[w]) not in true and spare > 0:
            crashed, spare = True, spare - 1
        if crashed:
            events["crashed"].append(name)
        elif constant_name(enc.mal[w]) in true:
            events["ejected"].append(name)
        else:
            events["framed"].append(name)
        if constant_name(occ.entered_malicious[w]) in true and malicious_standby:
            standby = malicious_standby.pop(0)
            holders[w] = standby
            events["entered"].append({"position": name, "standby": world.workers[standby].name, "malicious": True})
        elif constant_name(occ.entered[w]) in true and honest_standby:
            standby = honest_standby.pop(0)
            events["entered"].append({"position": name, "standby": world.workers[standby].name, "malicious": False})
        else:
            events["vacant"].append(name)
    return events, holders


def holder_name(prover: SolverSession, model: z3.ModelRef, w: int) -> str:
    """The malicious worker that acts in position ``w``: its original occupant, or the malicious
    standby worker that entered it."""
    world = prover.enc.world
    if _true(model, prover.enc.mal[w]):
        return world.workers[w].name
    _, holders = occupancy_events(prover, model)
    return world.workers[holders[w]].name if w in holders else world.workers[w].name


def _malicious_roles(prover: SolverSession, model: z3.ModelRef, roles: dict[int, str]) -> list[dict[str, Any]]:
    """Every malicious worker of the placement with its role; a role given to a position whose
    malicious occupant is an entered standby worker goes to that standby worker."""
    world = prover.enc.world
    held = _held(prover, model)
    _, holders = occupancy_events(prover, model)
    by_worker: dict[int, str] = {}
    for w, role in roles.items():
        target = w if _true(model, prover.enc.mal[w]) or w not in holders else holders[w]
        by_worker.setdefault(target, role)
    out = []
    for w in prover._malicious(model):
        entry: dict[str, Any] = {
            "worker": world.workers[w].name,
            "role": by_worker.get(w, "idle"),
            "capabilities": held,
        }
        position = next((p for p, s in holders.items() if s == w), None)
        if position is not None:
            entry["enters"] = world.workers[position].name
        out.append(entry)
    return out


def with_dynamics(prover: SolverSession, model: z3.ModelRef, trace: dict[str, Any]) -> dict[str, Any]:
    """``trace`` with its ``dynamics`` entry: the events the counterexample needs."""
    trace["dynamics"], _ = occupancy_events(prover, model)
    return trace


def _checker_of(prover: SolverSession, w: int, effect: Effect) -> str:
    world = prover.enc.world
    s, r = world.slot_of(w)
    spec = prover.spec
    if effect.label == "redundant_neighbour":
        return world.workers[world.primary(s + 1, r)].name
    if effect.label.startswith("spot_check") and effect.check is not None:
        check = spec.defense.checks[effect.check]
        return str(getattr(check, "verifier", "coordinator"))
    if effect.label == "replicate":
        return "the other copies of slot " + f"{s}:{r}"
    return "coordinator"


def detection_trace(
    prover: SolverSession,
    model: z3.ModelRef,
    guarantee: Any,
    w: int,
    capability: str,
    kind: str,
    rows: list[tuple[Effect, bool, Fraction]],
    d: Fraction,
    bound: Fraction,
    sdc: bool,
) -> dict[str, Any]:
    """Trace of one tampered (or silently corrupted) unit that escapes the required detection."""
    enc, world = prover.enc, prover.enc.world
    worker = world.workers[w].name if sdc else holder_name(prover, model, w)
    roles: dict[int, str] = {} if sdc else {w: "tamperer"}
    checks = []
    for effect, on, value in rows:
        if not on and not enc._possible(effect):
            continue  # a spot-check variant for a verifier the spec does not use
        reason = effect_reason(enc, model, w, effect, on, value)
        checks.append(
            {
                "check": effect.label,
                "index": effect.check,
                "checker": _checker_of(prover, w, effect),
                "result": "catches" if on else "passes",
                "probability": format_probability(float(value if on else 0)),
                "why": reason,
            }
        )
        if effect.label == "redundant_neighbour" and not on:
            s, r = world.slot_of(w)
            checker = world.primary(s + 1, r)
            if _true(model, enc.covers(checker, w)):
                roles[checker] = "covers"
            elif s >= 1 and _true(model, enc.covers(world.primary(s - 1, r), w)):
                roles[world.primary(s - 1, r)] = "forges the checker's input"
        if effect.label == "replicate" and not on:
            for o in world.slots[world.slot_of(w)]:
                if o != w:
                    roles[o] = "covers"
    if not rows:
        checks.append(
            {
                "check": None,
                "index": None,
                "checker": None,
                "result": "passes",
                "probability": "0",
                "why": "no check of the protocol covers this unit",
            }
        )
    action = "silent_corruption" if sdc else capability
    state = {
        "#index": 0,
        "step": 0 if kind != "L" else prover.spec.topology.steps - 1,
        "microbatch": 0 if kind in ("F", "B") else None,
        "worker": worker,
        "unit": KIND_NAMES[kind],
        "action": action,
        "checks": checks,
        "detection_probability": format_probability(float(d)),
    }
    shown_d, shown_bound = format_pair(d, bound)
    description = (
        f"{'an honest worker' if sdc else 'malicious worker'} {worker} "
        f"{'suffers silent corruption of' if sdc else 'uses ' + capability + ' on'} "
        f"its {KIND_NAMES[kind]} unit; it is detected with probability {shown_d}, "
        f"below the required {shown_bound}"
    )
    return with_dynamics(
        prover,
        model,
        {
            "#meta": meta(prover, guarantee, description),
            "params": params(prover.spec),
            "malicious": _malicious_roles(prover, model, roles),
            "vars": ["step", "microbatch", "worker", "unit", "action", "checks"],
            "states": [state],
            "outcome": {"detection_probability": float(d), "required": float(bound)},
        },
    )


def damage_trace(
    prover: SolverSession, model: z3.ModelRef, guarantee: Any, rows: list[dict[str, Any]], prob: Prob, bound: Fraction
) -> dict[str, Any]:
    """Trace of the worst placement for bounded_damage: each malicious worker's strategy."""
    spec = prover.spec
    k = guarantee.max_undetected
    response = spec.defense.response
    if "rollback" in response and "eject" in response:
        plan, count = (
            "tamper with K+1 consecutive units of its weakest kind, then stop (a detection rolls back its whole try "
            "and ejects it)",
            k + 1,
        )
    elif "rollback" in response:
        plan, count = (
            (
                "tamper with its weakest units until its share of K+1 pass in a row, then stop; each detection "
                "rolls its units back, it stays in place and starts again, until the horizon ends"
            ),
            None,
        )
    elif "eject" in response:
        plan, count = (
            "tamper with its weakest units first, and on until it is caught and ejected (never, where nothing "
            "detects it)",
            None,
        )
    else:
        plan, count = "tamper with every unit it can; nobody is removed", None
    states = []
    roles = {}
    world = prover.enc.world
    for index, row in enumerate(rows):
        kinds = row["kinds"]
        weakest = min(kinds, key=lambda x: kinds[x]["detection"])
        states.append(
            {
                "#index": index,
                "step": 0,
                "microbatch": 0 if weakest in ("F", "B") else None,
                "worker": row["worker"],
                "unit": KIND_NAMES[weakest],
                "action": kinds[weakest]["capability"],
                "count": count,
                "detection_probability": format_probability(row["detection"]),
                "units_available": row["units"],
            }
        )
        name = str(row["worker"]).split(" ", 1)[0]
        roles[world.by_name(name).index] = "tamperer"
    description = (
        f"{len(rows)} malicious worker(s) each {plan}: more than {k} tampered units stay undetected with "
        f"probability {format_comparison(prob, '>', bound)}"
    )
    return with_dynamics(
        prover,
        model,
        {
            "#meta": meta(prover, guarantee, description),
            "params": params(spec),
            "malicious": _malicious_roles(prover, model, roles),
            "vars": ["step", "microbatch", "worker", "unit", "action", "count"],
            "states": states,
            "outcome": {"probability": prob.value, "bound": float(bound), "max_undetected": k, "strategy": plan},
        },
    )


def framing_trace(
    prover: SolverSession, model: z3.ModelRef, guarantee: Any, mechanism: str, victim: int, attackers: list[int]
) -> dict[str, Any]:
    """Trace of an honest worker being blamed."""
    enc, world = prover.enc, prover.enc.world
    name = world.workers[victim].name
    if not attackers and mechanism.endswith("peer verifier"):
        attackers = [a for a in world.computing if a != victim]
    active = [a for a in attackers if _true(model, enc.occupancy.occupied_malicious[a])]
    roles = {a: mechanism for a in active}
    states: list[dict[str, Any]] = []
    s, r = world.slot_of(victim)
    if mechanism == "equivocation":
        up = holder_name(prover, model, active[0])
        checker = world.workers[world.primary(s + 1, r)].name
        states.append(
            {
                "#index": 0,
                "step": 0,
                "microbatch": 0,
                "worker": up,
                "unit": "forward",
                "action": "equivocate",
                "detail": f"sends activation X to {name} and a different X' to {checker}, {name}'s checker",
            }
        )
        states.append(
            {
                "#index": 1,
                "step": 0,
                "microbatch": 0,
                "worker": checker,
                "unit": "forward",
                "action": "recompute",
                "detail": f"recomputes {name}'s forward from X', finds a mismatch and blames {name} "
                f"(no receipts show that {up} sent two messages)",
            }
        )
    elif mechanism.startswith("false accusation"):
        accuser = holder_name(prover, model, active[0]) if active else "a malicious worker"
        states.append(
            {
                "#index": 0,
                "step": 0,
                "microbatch": 0,
                "worker": accuser,
                "unit": "forward",
                "action": "false_accuse",
                "detail": f"claims that {name}'s forward unit failed its check; "
                + (
                    "without receipts nothing shows the unit was right"
                    if not _true(model, enc.receipts)
                    else "no trusted referee re-executes the unit"
                ),
            }
        )
    elif mechanism == "outvoting":
        voters = ", ".join(holder_name(prover, model, a) for a in active)
        states.append(
            {
                "#index": 0,
                "step": 0,
                "microbatch": 0,
                "worker": voters,
                "unit": "forward",
                "action": "tamper_activations",
                "detail": f"{voters} return the same wrong output; the vote in slot {s}:{r} goes against honest {name}",
            }
        )
    else:
        states.append(
            {
                "#index": 0,
                "step": 0,
                "microbatch": 0,
                "worker": "coordinator",
                "unit": "forward",
                "action": "false_accuse",
                "detail": f"the untrusted coordinator reports that {name} failed a check; without receipts its word "
                "is the only evidence",
            }
        )
    description = f"honest worker {name} is blamed through {mechanism}"
    return with_dynamics(
        prover,
        model,
        {
            "#meta": meta(prover, guarantee, description),
            "params": params(prover.spec),
            "malicious": _malicious_roles(prover, model, roles),
            "vars": ["step", "microbatch", "worker", "unit", "action", "detail"],
            "states": states,
            "outcome": {"blamed": name, "mechanism": mechanism},
        },
    )
