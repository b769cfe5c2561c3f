"""The counterexample of a ``liveness`` violation: the run that stalls the job or empties every
replica, as an ordered list of events the simulator and the runtime can replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stagewarden.prover.liveness_runs import LivenessRun, LivenessRuns, RunEvent
from stagewarden.prover.trace import meta, params

if TYPE_CHECKING:
    from stagewarden.prover.session import SolverSession

_DETAIL = {
    "crash": "crash-stops",
    "eject": "is detected (or goes silent) and is ejected",
    "framed": "is framed and ejected",
    "outvoted": "is outvoted in a tied replicate vote and ejected, with the malicious copies that tied it",
    "enter": "takes the vacant position",
}

#: What the worker of each event does (an ejected convict tampers where it is caught, or goes
#: silent).
_ACTION = {"crash": "crash", "eject": "tamper or withhold", "framed": "frame", "outvoted": "frame", "enter": "enter"}
_GROUP = {"crash": "crashed", "eject": "ejected", "framed": "framed", "outvoted": "framed"}


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _summary(events: list[RunEvent], final: dict[str, str], positions: list[str]) -> dict[str, list[Any]]:
    """The run's events grouped as the other traces group them (what left each position's
    original occupant, the entries, the positions left vacant), with the ordered events."""
    out: dict[str, list[Any]] = {"crashed": [], "ejected": [], "framed": [], "entered": [], "vacant": []}
    standby = {e.worker for e in events if e.kind == "enter"}
    for e in events:
        if e.kind == "enter":
            out["entered"].append({"position": e.position, "standby": e.worker})
        elif e.worker not in standby:
            out[{"crash": "crashed", "eject": "ejected", "framed": "framed", "outvoted": "framed"}[e.kind]].append(
                e.position
            )
    out["vacant"] = [p for p in positions if final.get(p) == "vacant"]
    out["events"] = [e.as_dict() for e in events]
    return out


def liveness_trace(prover: SolverSession, runs: LivenessRuns, run: LivenessRun, guarantee: Any) -> dict[str, Any]:
    """Trace of ``run``: its events in order, then the stall if there is one."""
    enc, world = prover.enc, prover.enc.world
    events, malicious = run.events, set(run.malicious)
    roles: dict[str, str] = {}
    states: list[dict[str, Any]] = []
    for e in events:
        states.append({"#index": len(states), "worker": e.worker, "action": _ACTION[e.kind], "detail": _DETAIL[e.kind]})
        if e.kind == "eject":
            roles.setdefault(e.worker, "gets itself ejected")
        elif e.kind == "enter" and e.worker in malicious:
            roles.setdefault(e.worker, f"enters {e.position}")
    held = [c for c, on in enc.cap.items() if on is True]
    if run.staller is not None:
        staller = run.staller
        forced = "/".join(r for r in ("rollback", "restart") if enc.response[r] is True) or "restart"
        if run.withholds:
            roles[staller] = "withholds"
            detail = "stops answering; with neither eject nor skip_stage in the response nobody replaces it"
            description = f"worker {staller} withholds and the job waits for it forever"
        else:
            roles[staller] = "tamperer"
            detail = f"tampers at every step; each tamper is detected with certainty and the step is {forced}, forever"
            description = f"worker {staller} forces a {forced} at every step: no progress"
        action = "withhold" if run.withholds else "tamper"
        states.append({"#index": len(states), "worker": staller, "action": action, "detail": detail})
    else:
        removals = sum(1 for e in events if e.kind != "enter")
        crashes = sum(1 for e in events if e.kind == "crash")
        description = (
            f"{_n(removals, 'removal')} ({_n(crashes, 'crash', 'crashes')}) against {_n(world.replicas, 'replica')} "
            f"and {_n(len(runs.standby), 'standby worker')}: every replica loses a stage"
        )
    order = [w.name for w in world.workers]
    positions = [world.workers[w].name for w in runs.positions]
    return {
        "#meta": meta(prover, guarantee, description),
        "params": params(prover.spec),
        "malicious": [
            {"worker": name, "role": roles.get(name, "idle"), "capabilities": held}
            for name in sorted(malicious, key=order.index)
        ],
        "vars": ["worker", "action", "detail"],
        "states": states,
        "outcome": {"progress": False},
        "dynamics": _summary(events, run.final, positions),
    }
