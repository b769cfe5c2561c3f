"""Pipeline schedules as plain data: one list of actions per stage, checkable without processes.

A worker runs its stage's list in order. ``F``/``B`` are the forward and backward of one
micro-batch, ``SEND_*``/``RECV_*`` move its activation (``_F``, to the next stage) or the
gradient of that activation (``_B``, to the previous stage), and ``UPDATE`` applies the
optimizer step once every backward of the step is done. Messages on one link are matched in
order, as point-to-point messages without tags are.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from stagewarden.runtime.errors import ScheduleError


class ActionKind(enum.StrEnum):
    """What a worker does in one action."""

    F = "F"
    """Forward of one micro-batch; on the last stage also the logits and the loss."""
    B = "B"
    """Backward of one micro-batch, accumulating parameter gradients."""
    SEND_F = "SEND_F"
    """Send the micro-batch's output activation to the next stage."""
    RECV_F = "RECV_F"
    """Receive the micro-batch's input activation from the previous stage."""
    SEND_B = "SEND_B"
    """Send the gradient of the micro-batch's input activation to the previous stage."""
    RECV_B = "RECV_B"
    """Receive the gradient of the micro-batch's output activation from the next stage."""
    UPDATE = "UPDATE"
    """Optimizer step on the accumulated gradients, then clear them."""


_COMPUTE = (ActionKind.F, ActionKind.B)
_PEER_OFFSET = {ActionKind.SEND_F: 1, ActionKind.RECV_F: -1, ActionKind.SEND_B: -1, ActionKind.RECV_B: 1}


@dataclass(frozen=True)
class Action:
    """One step of one stage's schedule.

    Attributes:
        kind: What to do.
        stage: The stage that does it.
        microbatch: The micro-batch it concerns; ``None`` for ``UPDATE``.
    """

    kind: ActionKind
    stage: int
    microbatch: int | None = None

    @property
    def peer(self) -> int | None:
        """The stage on the other end of a send or receive; ``None`` for other actions."""
        offset = _PEER_OFFSET.get(self.kind)
        return None if offset is None else self.stage + offset

    def __str__(self) -> str:
        return self.kind.value if self.microbatch is None else f"{self.kind.value}{self.microbatch}"


Schedule = list[list[Action]]
"""One action list per stage, index ``s`` for stage ``s``."""


def _check_shape(stages: int, microbatches: int) -> None:
    if stages < 1:
        raise ScheduleError(f"a pipeline needs at least 1 stage, got {stages}")
    if microbatches < 1:
        raise ScheduleError(f"a step needs at least 1 micro-batch, got {microbatches}")


def _forward(stage: int, stages: int, m: int) -> list[Action]:
    actions = [] if stage == 0 else [Action(ActionKind.RECV_F, stage, m)]
    actions.append(Action(ActionKind.F, stage, m))
    if stage < stages - 1:
        actions.append(Action(ActionKind.SEND_F, stage, m))
    return actions


def _backward(stage: int, stages: int, m: int) -> list[Action]:
    actions = [] if stage == stages - 1 else [Action(ActionKind.RECV_B, stage, m)]
    actions.append(Action(ActionKind.B, stage, m))
    if stage > 0:
        actions.append(Action(ActionKind.SEND_B, stage, m))
    return actions


def gpipe(stages: int, microbatches: int) -> Schedule:
    """GPipe: every stage runs all forwards, then all backwards (in micro-batch order), then updates.

    Every stage holds the activations of all ``microbatches`` at once.
    """
    _check_shape(stages, microbatches)
    schedule: Schedule = []
    for s in range(stages):
        actions: list[Action] = []
        for m in range(microbatches):
            actions += _forward(s, stages, m)
        for m in range(microbatches):
            actions += _backward(s, stages, m)
        actions.append(Action(ActionKind.UPDATE, s))
        schedule.append(actions)
    return schedule


def one_f_one_b(stages: int, microbatches: int) -> Schedule:
    """1F1B: after a warm-up of ``stages - 1 - s`` forwards, stage ``s`` alternates one forward and
    one backward, then drains the remaining backwards and updates.

    Stage ``s`` holds at most ``min(stages - s, microbatches)`` activations at once; backwards run
    in micro-batch order, as in :func:`gpipe`, so gradients accumulate in the same order.
    """
    _check_shape(stages, microbatches)
    schedule: Schedule = []
    for s in range(stages):
        warmup = min(stages - 1 - s, microbatches)
        actions: list[Action] = []
        for m in range(warmup):
            actions += _forward(s, stages, m)
        for j in range(microbatches - warmup):
            actions += _forward(s, stages, warmup + j)
            actions += _backward(s, stages, j)
        for m in range(microbatches - warmup, microbatches):
            actions += _backward(s, stages, m)
        actions.append(Action(ActionKind.UPDATE, s))
        schedule.append(actions)
    return schedule


def _check_units(schedule: Sequence[Sequence[Action]]) -> int:
    """Check each stage's list on its own; return the number of micro-batches."""
    stages = len(schedule)
    if stages == 0:
        raise ScheduleError("the schedule has no stages")
    counts = set()
    for s, actions in enumerate(schedule):
        for position, action in enumerate(actions):
            if action.stage != s:
                raise ScheduleError(f"action {action} at position {position} of stage {s} names stage {action.stage}")
            if (action.kind is ActionKind.UPDATE) != (action.microbatch is None):
                raise ScheduleError(f"action {action} of stage {s}: only UPDATE has no micro-batch")
            peer = action.peer
            if peer is not None and not 0 <= peer < stages:
                raise ScheduleError(f"stage {s} cannot {action.kind.value}: there is no stage {peer}")
        forwards = [a.microbatch for a in actions if a.kind is ActionKind.F]
        counts.add(len(forwards))
    if len(counts) != 1:
        raise ScheduleError(f"stages run different numbers of forwards: {sorted(counts)}")
    microbatches = counts.pop()
    if microbatches == 0:
        raise ScheduleError("the schedule runs no forward")
    expected = list(range(microbatches))
    for s, actions in enumerate(schedule):
        for kind in ActionKind:
            if kind is ActionKind.UPDATE:
                updates = sum(1 for a in actions if a.kind is kind)
                if updates != 1 or actions[-1].kind is not kind:
                    raise ScheduleError(f"stage {s} must end with exactly one UPDATE, found {updates}")
                continue
            needed = kind in _COMPUTE or 0 <= s + _PEER_OFFSET[kind] < stages
            seen = sorted(a.microbatch for a in actions if a.kind is kind and a.microbatch is not None)
            if seen != (expected if needed else []):
                raise ScheduleError(
                    f"stage {s} has {kind.value} for micro-batches {seen}, expected {expected if needed else []}"
                )
        done: set[tuple[ActionKind, int]] = set()
        for action in actions:
            m = action.microbatch
            if m is None:
                continue
            before = {
                ActionKind.F: ActionKind.RECV_F if s > 0 else None,
                ActionKind.SEND_F: ActionKind.F,
                ActionKind.B: ActionKind.RECV_B if s < stages - 1 else ActionKind.F,
                ActionKind.SEND_B: ActionKind.B,
                ActionKind.RECV_B: ActionKind.SEND_F,
                ActionKind.RECV_F: None,
            }[action.kind]
            if before is not None and (before, m) not in done:
                raise ScheduleError(f"stage {s} runs {action} before {before.value}{m}")
            if action.kind is ActionKind.B and (ActionKind.F, m) not in done:
                raise ScheduleError(f"stage {s} runs B{m} before F{m}")
            done.add((action.kind, m))
    return microbatches


@dataclass(frozen=True)
class Timing:
    """When a schedule finishes and how much of that time each stage sits idle.

    Attributes:
        makespan: Time from the first action to the last.
        busy: Per stage, time spent in forwards and backwards.
        bubble: Per stage, the idle share ``1 - busy / makespan``.
        overall_bubble: Idle share of all stages together.
        starts: Per stage, the start time of each action, in list order.
    """

    makespan: float
    busy: tuple[float, ...]
    bubble: tuple[float, ...]
    overall_bubble: float
    starts: tuple[tuple[float, ...], ...]


def simulate(
    schedule: Sequence[Sequence[Action]],
    forward_time: float = 1.0,
    backward_time: float = 2.0,
    *,
    buffered_sends: bool = True,
) -> Timing:
    """Run the schedule on simulated workers with blocking point-to-point messages.

    A ``RECV`` waits for the matching ``SEND``; messages on a link (stage to stage, one
    direction) arrive in the order they were sent. Forwards take ``forward_time``, backwards
    ``backward_time``; messages and updates take no time.

    Args:
        schedule: One action list per stage.
        forward_time: Duration of one ``F``.
        backward_time: Duration of one ``B``.
        buffered_sends: If true, a ``SEND`` returns at once (``isend``); if false, it waits until
            the receiver posts the matching ``RECV`` (a rendezvous, like a synchronous ``send``).

    Returns:
        The timing of the run.

    Raises:
        ScheduleError: A stage's list is malformed (missing, duplicate or misordered units), a
            receive would get another micro-batch's message, or the workers deadlock.
    """
    _check_units(schedule)
    stages = len(schedule)
    clock = [0.0] * stages
    busy = [0.0] * stages
    position = [0] * stages
    starts: list[list[float]] = [[] for _ in range(stages)]
    links: dict[tuple[int, int, ActionKind], deque[tuple[int, float]]] = {}

    def link(action: Action) -> tuple[int, int, ActionKind]:
        peer = action.peer
        assert peer is not None
        sender, receiver = (action.stage, peer) if action.kind.value.startswith("SEND") else (peer, action.stage)
        return sender, receiver, ActionKind.F if action.kind.value.endswith("_F") else ActionKind.B

    def finish(s: int, start: float, duration: float = 0.0) -> None:
        starts[s].append(start)
        clock[s] = start + duration
        position[s] += 1

    def current(s: int) -> Action | None:
        return schedule[s][position[s]] if position[s] < len(schedule[s]) else None

    while True:
        progressed = False
        for s in range(stages):
            while (action := current(s)) is not None:
                kind = action.kind
                if kind in _COMPUTE:
                    duration = forward_time if kind is ActionKind.F else backward_time
                    busy[s] += duration
                    finish(s, clock[s], duration)
                elif kind is ActionKind.UPDATE:
                    finish(s, clock[s])
                elif kind in (ActionKind.SEND_F, ActionKind.SEND_B):
                    assert action.peer is not None and action.microbatch is not None
                    if not buffered_sends:
                        partner = current(action.peer)
                        wanted = ActionKind.RECV_F if kind is ActionKind.SEND_F else ActionKind.RECV_B
                        if partner is None or partner.kind is not wanted:
                            break
                        if partner.microbatch != action.microbatch:
                            raise ScheduleError(
                                f"stage {action.peer} posts {partner} while stage {s} sends {action}: "
                                "messages on a link must be received in the order they are sent"
                            )
                        when = max(clock[s], clock[action.peer])
                        finish(s, when)
                        finish(action.peer, when)
                    else:
                        links.setdefault(link(action), deque()).append((action.microbatch, clock[s]))
                        finish(s, clock[s])
                else:
                    if not buffered_sends:
                        break  # the sender completes the pair
                    queue = links.get(link(action))
                    if not queue:
                        break
                    m, sent = queue.popleft()
                    if m != action.microbatch:
                        raise ScheduleError(
                            f"stage {s} posts {action} but the next message from stage {action.peer} is for "
                            f"micro-batch {m}: messages on a link must be received in the order they are sent"
                        )
                    finish(s, max(clock[s], sent))
                progressed = True
        if all(current(s) is None for s in range(stages)):
            break
        if not progressed:
            waiting = ", ".join(f"stage {s} at {current(s)}" for s in range(stages) if current(s) is not None)
            raise ScheduleError(f"the schedule deadlocks: {waiting}")

    makespan = max(clock)
    bubble = tuple(1.0 - b / makespan if makespan > 0 else 0.0 for b in busy)
    overall = 1.0 - sum(busy) / (stages * makespan) if makespan > 0 else 0.0
    return Timing(makespan, tuple(busy), bubble, overall, tuple(tuple(row) for row in starts))


def check_schedule(schedule: Sequence[Sequence[Action]], *, buffered_sends: bool = True) -> int:
    """Check that a schedule runs to completion and does every unit exactly once, in a valid order.

    Args:
        schedule: One action list per stage.
        buffered_sends: Send semantics, as in :func:`simulate`.

    Returns:
        The number of micro-batches per step.

    Raises:
        ScheduleError: What is wrong, naming the stage and the action.
    """
    simulate(schedule, buffered_sends=buffered_sends)
    return _check_units(schedule)


def max_in_flight(schedule: Sequence[Sequence[Action]]) -> list[int]:
    """Per stage, the most micro-batches whose forward has run and backward has not: the number
    of activations the stage must keep at once."""
    peaks = []
    for actions in schedule:
        live = peak = 0
        for action in actions:
            if action.kind is ActionKind.F:
                live += 1
                peak = max(peak, live)
            elif action.kind is ActionKind.B:
                live -= 1
        peaks.append(peak)
    return peaks


def ideal_bubble(stages: int, microbatches: int) -> float:
    """The idle share of a synchronous pipeline step: ``(S - 1) / (M + S - 1)``."""
    _check_shape(stages, microbatches)
    return (stages - 1) / (microbatches + stages - 1)


def render(schedule: Sequence[Sequence[Action]], compute_only: bool = True) -> list[str]:
    """One line per stage, the actions separated by spaces (only ``F``/``B``/``UPDATE`` by default)."""
    lines = []
    for s, actions in enumerate(schedule):
        shown = [str(a) for a in actions if not compute_only or a.peer is None]
        lines.append(f"stage {s}: " + " ".join(shown))
    return lines
