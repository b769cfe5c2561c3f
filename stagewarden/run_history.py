"""What happened in a training run, rebuilt from its ``events.jsonl``: every computation of every
step (which were kept in the model, which were discarded after a detection or undone by a
restored checkpoint), every spot-check sample, and, for a run that records the attack it
mounted, every unit that attack tampered with.

The reconstruction follows the coordinator's loop: a step is computed (attempt 0), each detection
is answered by a response that either recomputes the step (attempt + 1, possibly with a stage
bypassed) or returns to a checkpoint (attempt 0 of the checkpoint's step), and a ``step`` event
marks the computation that was kept.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The event log a run directory holds.
EVENTS_FILE = "events.jsonl"
#: Unit kinds in the order the coordinator lists them for sampling.
UNIT_KINDS = ("forward", "backward", "update")

#: A unit: (stage, step, micro-batch, kind); update units have micro-batch 0.
Unit = tuple[int, int, int, str]


@dataclasses.dataclass
class Computation:
    """One computation (attempt) of a step.

    Attributes:
        step: The step.
        attempt: How many times the step had been recomputed before (0 for the first computation
            after the step was reached, also after a return to a checkpoint).
        bypass: The stage left out of it (its worker computed nothing), if any.
        detections: The detections recorded for it.
        kept: Whether its result stayed in the model (no detection, and no later checkpoint
            restore went back before it).
        replaced: The ``(stage, pipeline)`` slots whose first worker had been ejected before it (a
            standby computed them; the pipeline is 0 in a run of one pipeline).
        retired: The pipelines taken out of the run before it (their workers computed nothing).
    """

    step: int
    attempt: int
    bypass: int | None = None
    detections: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kept: bool = False
    replaced: frozenset[tuple[int, int]] = frozenset()
    retired: frozenset[int] = frozenset()

    @property
    def updated(self) -> bool:
        """Whether the stages applied their updates (the coordinator updates only when no forward,
        backward or link check failed)."""
        return all(d.get("unit_kind") == "update" for d in self.detections)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One spot-check reveal: what the coordinator committed to, revealed and sampled.

    Attributes:
        step: The step.
        attempt: The attempt (from the commitment that precedes the reveal), if known.
        bypass: The stage left out of the sample (bypassed), if any.
        commitment: The commitment published before the step, if logged.
        secret: The revealed secret.
        receipts_digest: The digest of the step's receipts the randomness was derived from.
        sampled: The sampled units as (stage, micro-batch, kind).
    """

    step: int
    attempt: int | None
    bypass: int | None
    commitment: bytes | None
    secret: bytes
    receipts_digest: bytes
    sampled: tuple[tuple[int, int, str], ...]


@dataclasses.dataclass
class RunHistory:
    """A run's computations, samples, responses and end, in event order.

    Attributes:
        computations: Every computation of a step that the events show.
        samples: Every spot-check reveal.
        responses: Every ``response`` event.
        stopped: The reason of a ``run_stopped`` event, if the run stopped.
        problems: Lines of the event log that could not be read.
    """

    computations: list[Computation] = dataclasses.field(default_factory=list)
    samples: list[Sample] = dataclasses.field(default_factory=list)
    responses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def detections(self) -> list[tuple[Computation, dict[str, Any]]]:
        """Every detection with the computation it was made in."""
        return [(c, d) for c in self.computations for d in c.detections]


def read_events(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of an ``events.jsonl`` file and a note for each line that is not a JSON object.

    The file is read as a stream within the limits of :mod:`stagewarden.attest.run_limits` (a
    regular file, no link, FIFO or device; its size, line length and line count bounded).

    Raises:
        OSError: The file cannot be read, or is beyond those limits (one line that says why).
    """
    from stagewarden.attest.run_lines import read_event_lines
    from stagewarden.attest.run_record import RunDirError

    events, problems = [], []
    lines = read_event_lines(Path(path))
    try:
        for number, raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the JSON decoder goes
                problems.append(f"{EVENTS_FILE} line {number} is not JSON")
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                events.append(event)
            else:
                problems.append(f"{EVENTS_FILE} line {number} is not an event object")
    except RunDirError as exc:
        raise OSError(exc.message) from None
    return events, problems


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _hex(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None


def reconstruct(events: Iterable[dict[str, Any]]) -> RunHistory:
    """Rebuild a run's history from its events (see the module docstring)."""
    history = RunHistory()
    by_key: dict[tuple[int, int], Computation] = {}
    attempt, bypass = 0, None
    commitment: dict[str, Any] | None = None
    replaced: set[tuple[int, int]] = set()
    retired: set[int] = set()

    def computation(step: int, at: int) -> Computation:
        key = (step, at)
        found = by_key.get(key)
        if found is None:
            found = Computation(step, at, bypass, replaced=frozenset(replaced), retired=frozenset(retired))
            by_key[key] = found
            history.computations.append(found)
        return found

    for event in events:
        kind = event["event"]
        step = _int(event.get("step"))
        if kind == "spot_check_commitment":
            commitment = event
        elif kind == "spot_check_reveal" and step is not None:
            secret, digest = _hex(event.get("secret")), _hex(event.get("receipts_digest"))
            raw = event.get("sampled")
            if secret is None or digest is None or not isinstance(raw, list):
                history.problems.append(f"a spot_check_reveal event of step {step} is malformed")
                continue
            sampled = tuple(
                (u["stage"], u["micro_batch"], u["kind"])
                for u in raw
                if isinstance(u, dict)
                and _int(u.get("stage")) is not None
                and _int(u.get("micro_batch")) is not None
                and isinstance(u.get("kind"), str)
            )
            same = commitment is not None and commitment.get("step") == step
            history.samples.append(
                Sample(
                    step,
                    _int(commitment.get("attempt")) if same and commitment else None,
                    bypass,
                    _hex(commitment.get("commitment")) if same and commitment else None,
                    secret,
                    digest,
                    sampled,
                )
            )
            commitment = None
        elif kind == "detection" and step is not None:
            computation(step, _int(event.get("attempt")) or 0).detections.append(event)
        elif kind == "response":
            history.responses.append(event)
            plan = event.get("plan") if isinstance(event.get("plan"), dict) else {}
            assert isinstance(plan, dict)
            back = _int(plan.get("checkpoint_step"))
            attempt = 0 if back is not None else (_int(event.get("attempt")) or 0) + 1
            bypass = _int(plan.get("bypass_stage"))
        elif kind == "restored_checkpoint" and step is not None:
            for c in history.computations:
                if c.step >= step:
                    c.kept = False
                    by_key.pop((c.step, c.attempt), None)
        elif kind == "step" and step is not None:
            done = computation(step, attempt)
            done.kept = not done.detections
            attempt, bypass = 0, None
        elif kind == "ejected" and _int(event.get("stage")) is not None:
            replaced.add((event["stage"], _int(event.get("replica")) or 0))
        elif kind == "pipeline_retired" and _int(event.get("pipeline")) is not None:
            retired.add(event["pipeline"])
        elif kind == "run_stopped":
            history.stopped = str(event.get("reason", ""))
    return history


def eligible_units(stages: int, microbatches: int, bypass: int | None) -> list[tuple[int, int, str]]:
    """The units the coordinator samples from in one computation, in its canonical order: the
    forward and backward unit of every micro-batch and the update unit of every stage that is not
    bypassed."""
    return [
        (s, m, kind)
        for s in range(stages)
        if s != bypass
        for m in range(microbatches)
        for kind in UNIT_KINDS
        if kind != "update" or m == 0
    ]


def tampered_units(attack: Any, computation: Computation, stages: int, microbatches: int) -> list[Unit]:
    """The units an attack plan (JSON, as ``RunConfig.attack`` records it) tampered with in one
    computation, by the plan's own deterministic firing rule, counting only what the malicious
    workers computed: nothing of a stage bypassed in that computation (its worker computed
    nothing), nothing of a stage whose worker had been ejected (a standby, which runs no attack,
    computed it), nothing of a pipeline taken out of the run; each attacking pipeline (the plan's
    ``pipelines``) tampers on its own, so a unit is counted once per pipeline that tampered with it.

    Tensor attacks and ``equivocate`` tamper with the forward (or backward) message of their
    stages, ``poison_data`` with stage 0's forward input, ``weights`` with the update (only when
    the update ran and the stage was not bypassed), ``optimizer`` with the update's input (the
    same, from step 1 on), ``grad_drift`` with the backward units it fires on (the same),
    ``swap_weights`` with the step it fires on (named by its first unit, stage by stage; every
    computation of the step but one that bypasses the stage).
    ``replay`` cannot fire on the run's very first message (step 0, attempt 0, micro-batch 0).
    A worker replaced after a fault on resume is not modelled (only ejections are in the events).
    """
    from stagewarden.runtime.attacks import TENSOR_KINDS, AttackKind, AttackPlan, Direction

    plan = AttackPlan.from_json(attack)
    t, a = computation.step, computation.attempt
    out: list[Unit] = []
    positions = [(s, p) for s in sorted(x for x in plan.stages if x < stages) for p in sorted(plan.pipelines)]
    for s, p in positions:
        if s == computation.bypass or (s, p) in computation.replaced or p in computation.retired:
            continue
        if plan.kind in TENSOR_KINDS or plan.kind is AttackKind.EQUIVOCATE:
            kind = "backward" if plan.direction is Direction.BACKWARD else "forward"  # input: the forward
            for m in range(microbatches):
                first = plan.kind is AttackKind.REPLAY and (t, a, m) == (0, 0, 0)
                if plan.active(s, t, m, a) and not first:
                    out.append((s, t, m, kind))
        elif plan.kind is AttackKind.POISON_DATA:
            out += [(s, t, m, "forward") for m in range(microbatches) if plan.active(s, t, m, a)]
        elif plan.kind is AttackKind.SWAP_WEIGHTS:
            # fired at the step's first computation; a restore of the step brings the weights back
            if plan.active(s, t, 0):
                out.append((s, t, 0, "forward"))
        elif plan.kind is AttackKind.GRAD_DRIFT:
            # the gradients a bypassed stage accumulates go nowhere: its update is frozen
            if computation.updated:
                out += [(s, t, m, "backward") for m in range(microbatches) if plan.active(s, t, m, a)]
        elif plan.kind is AttackKind.WEIGHTS or (plan.kind is AttackKind.OPTIMIZER and t > 0):
            # optimizer: tampers with the update's input; at step 0 a stage has no state to tamper with
            if computation.updated and plan.active(s, t, 0, a):
                out.append((s, t, 0, "update"))
    return out


def attacking_workers(attack: Any, config: Any) -> frozenset[str]:
    """The ids of the workers an attack plan makes malicious in a run of configuration ``config``
    (JSON, as ``summary.json`` records it): the first workers of its stages in its pipelines."""
    from stagewarden.runtime.attacks import AttackPlan
    from stagewarden.runtime.config import RunConfig

    plan, layout = AttackPlan.from_json(attack), RunConfig.from_json(config).layout
    return frozenset(
        layout.worker_id(layout.slot(s, p)) for s in plan.stages if s < layout.stages for p in plan.pipelines
    )


def detected(unit: Unit, computation: Computation, poison: bool, attackers: frozenset[str] | None = None) -> bool:
    """Whether a detection of ``computation`` names ``unit`` (for ``poison_data``, any unit of
    stage 0 of the same micro-batch: the data check runs on its forward and backward units); with
    ``attackers``, only a detection that blames one of them counts (a ``replicate`` majority of
    colluding copies blames the honest copy of the same unit)."""
    s, t, m, kind = unit
    for d in computation.detections:
        if attackers is not None and d.get("worker") not in attackers:
            continue
        if d.get("stage") == s and d.get("step") == t and d.get("microbatch") == m:
            if poison or d.get("unit_kind") == kind:
                return True
    return False
