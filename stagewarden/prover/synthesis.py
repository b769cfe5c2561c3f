"""Defence synthesis: search the defence space, cheapest first by the ``overhead`` cost model,
for a ``defense:`` block under which the prover shows every guarantee of a spec to hold; or
explain why nothing in the space works.

The threat model (topology, trust, adversary) and the guarantees stay as the spec states them;
only ``defense`` and ``topology.standby`` change. The search order, the space and the pruning
rules are described on the documentation page "Synthesis and diff" (docs/synthesis.rst); the
space itself is :mod:`stagewarden.prover.synthesis_space`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stagewarden.prover.defense_text import defense_yaml
from stagewarden.prover.prover import Limits
from stagewarden.prover.synthesis_result import (
    CONTRADICTORY,
    FOUND,
    GAVE_UP,
    NO_DEFENCE,
    SYNTHESIS_FORMAT_VERSION,
    Candidate,
    CheckKey,
    CostItem,
    Obstacle,
    SynthesisResult,
)
from stagewarden.prover.synthesis_space import (
    MAX_CHECKS,
    REPLICATION_FACTORS,
    SPOT_CHECK_RATES,
    _OutOfTime,
    _Space,
    cost_items,
)
from stagewarden.prover.synthesis_space import _response_reading as _response_reading
from stagewarden.prover.verdict import HOLDS
from stagewarden.spec import LoadedSpec, OverheadGuarantee

__all__ = [
    "CONTRADICTORY",
    "FOUND",
    "GAVE_UP",
    "NO_DEFENCE",
    "SYNTHESIS_FORMAT_VERSION",
    "Candidate",
    "CheckKey",
    "CostItem",
    "MAX_CHECKS",
    "Obstacle",
    "REPLICATION_FACTORS",
    "SPOT_CHECK_RATES",
    "SynthesisResult",
    "cost_items",
    "synthesize",
]


# -- the search -----------------------------------------------------------------------------


def synthesize(
    loaded: LoadedSpec,
    limits: Limits | None = None,
    *,
    max_seconds: float | None = None,
    progress: Callable[[int, Candidate], None] | None = None,
    proof_name: str | None = None,
) -> SynthesisResult:
    """Search the defence space of a spec for the cheapest defence under which every guarantee holds.

    The topology, trust, adversary and guarantees stay as written; candidates for ``defense``
    (and ``topology.standby``) are tried in increasing cost by the ``overhead`` cost model
    (compute, then memory, then fewer features), and the first under which the prover shows
    every guarantee to hold wins. Its proof is a full ``verify`` of the spec text with the
    defence in place, so the assumptions cite real lines.

    Args:
        loaded: the spec.
        limits: solver limits for each guarantee of each candidate.
        max_seconds: wall-clock limit for the whole search; past it the search gives up.
        progress: called with the count and the candidate before each candidate is checked.
        proof_name: the file name the proof cites (where the caller writes ``spec_text``);
            :func:`~stagewarden.prover.defense_text.proof_file` of the spec's by default.

    Returns:
        The defence with its YAML block, cost and proof; or, when none works, the reason and
        an :class:`~stagewarden.prover.synthesis_result.Obstacle` per guarantee.
    """
    started = time.monotonic()
    deadline = started + max_seconds if max_seconds is not None else None
    space = _Space(loaded, limits, deadline, progress)
    if proof_name is not None:
        space.proof_name = proof_name
    ids = [g.id for g in loaded.spec.guarantees]
    result = SynthesisResult(
        GAVE_UP, loaded.file, loaded.spec.name, 0, 0.0, original_standby=loaded.spec.topology.standby
    )
    try:
        outcome = space.search(ids, confirm=True)
    except _OutOfTime:
        result.reason = f"the search ran past its limit of {max_seconds} s before finding a defence"
        result.candidates_tried = len(space.evaluated)
        result.seconds = time.monotonic() - started
        return result
    result.candidates_tried = outcome.tried
    if outcome.disagreements:
        result.notes.append(f"{outcome.disagreements} candidate(s) passed the search but not the full proof")
    if outcome.best is None and space.vacuous:
        result.status = CONTRADICTORY
        result.reason = (
            "the spec's assumptions contradict each other (the prover finds them vacuous): no defence can be proven"
        )
    elif outcome.best is not None:
        cand = outcome.best
        proof_spec, report = space.proof(cand)
        result.status = FOUND
        result.candidate = cand
        result.yaml_block = defense_yaml(cand.defense())
        result.spec_text = proof_spec.text
        result.proof_file = proof_spec.file
        result.defense_lines = _block_lines(proof_spec)
        result.report = report
        result.costs = [CostItem(what, _line_of(proof_spec, path), c, m) for what, path, c, m in cost_items(proof_spec)]
        if outcome.unknown:
            result.notes.append(
                f"the solver gave up on {outcome.unknown} cheaper candidate(s): one of them might also work"
            )
        if cand.standby != loaded.spec.topology.standby:
            result.notes.append(f"set topology.standby to {cand.standby} (the spec has {loaded.spec.topology.standby})")
    else:
        result.status = GAVE_UP if outcome.unknown or outcome.disagreements else NO_DEFENCE
        try:
            _explain(space, result)
        except _OutOfTime:
            result.notes.append(f"the explanation was cut short by the limit of {max_seconds} s")
        if outcome.unknown:
            result.reason = (
                f"the solver gave up on {outcome.unknown} candidate(s) and none of the others works, so a "
                f"defence may be among the undecided ones; {result.reason}"
            )
    result.seconds = time.monotonic() - started
    return result


def _block_lines(loaded: LoadedSpec) -> tuple[int, int] | None:
    """First and last line of the ``defense`` block in a loaded spec."""
    source = loaded.source
    lines = [
        pos[0] + 1 for table in (source.keys, source.values) for path, pos in table.items() if path[:1] == ("defense",)
    ]
    return (min(lines), max(lines)) if lines else None


def _line_of(loaded: LoadedSpec, path: tuple[str | int, ...]) -> str:
    location = loaded.source.value(path)
    return f"{location.file}:{location.line}"


def _cost_text(cand: Candidate) -> str:
    return f"+{float(cand.compute):.3g} compute, +{float(cand.memory):.3g} memory"


def _explain(space: _Space, result: SynthesisResult) -> None:
    """Fill in the reason and one obstacle per guarantee (see
    :class:`~stagewarden.prover.synthesis_result.Obstacle`)."""
    ids = list(space.guarantees)
    bounded = [gid for gid in ids if isinstance(space.guarantees[gid], OverheadGuarantee)]
    others = [gid for gid in ids if gid not in bounded]
    relaxed = space.search(others).best if bounded and others else None
    impossible: list[str] = []
    undecided: list[str] = []
    for gid in ids:
        guarantee = space.guarantees[gid]
        alone = space.search([gid])
        rest = [x for x in ids if x != gid]
        with_rest = space.search(rest).best if rest else None
        obstacle = Obstacle(gid, guarantee.kind, "", cheapest_alone=alone.best)
        if alone.best is None:
            (undecided if alone.unknown else impossible).append(gid)
        if alone.best is None and alone.unknown:
            obstacle.witness = alone.last
            obstacle.message = (
                f"no candidate was shown to make it hold: the solver gave up on {alone.unknown} of the "
                f"{alone.tried} tried"
            )
        elif alone.best is None and alone.last is not None:
            obstacle.witness = alone.last
            obstacle.message = (
                "no defence in the space makes it hold, not even the costliest the search reached "
                f"([{alone.last.describe()}])"
            )
        elif gid in bounded and relaxed is not None:
            obstacle.witness = relaxed
            obstacle.message = (
                f"every defence that makes the other guarantees hold costs more than this bound allows: "
                f"the cheapest, [{relaxed.describe()}], costs {_cost_text(relaxed)}"
            )
        elif with_rest is not None:
            obstacle.witness = with_rest
            obstacle.message = (
                f"under [{with_rest.describe()}], the cheapest defence that makes every other guarantee hold, it fails"
            )
            if alone.best is not None:
                obstacle.message += (
                    f"; on its own it needs at least {_cost_text(alone.best)} ([{alone.best.describe()}])"
                )
        elif alone.best is None:
            obstacle.message = "no defence in the space makes it hold"
        else:
            obstacle.message = (
                f"holds on its own (the cheapest: [{alone.best.describe()}], {_cost_text(alone.best)}); "
                "the conflict lies among the other guarantees"
            )
        if obstacle.witness is not None:
            got = space.proof(obstacle.witness)[1].by_id(gid)
            if got.verdict != HOLDS:
                obstacle.result = got
        result.obstacles.append(obstacle)
    if impossible:
        result.reason = (
            f"no defence in the search space makes {_ids(impossible)} hold: the adversary defeats every "
            "scheme and setting the space offers"
        )
    elif undecided:
        result.reason = f"the solver could not decide {_ids(undecided)} under any candidate"
    elif relaxed is not None:
        result.reason = (
            f"every defence that makes {_ids(others)} hold costs more than {_ids(bounded)} allows; the cheapest, "
            f"[{relaxed.describe()}], costs {_cost_text(relaxed)}"
        )
    else:
        result.reason = "each guarantee can hold on its own, but no single defence in the space makes them all hold"


def _ids(ids: list[str]) -> str:
    return ", ".join(f"'{i}'" for i in ids)
