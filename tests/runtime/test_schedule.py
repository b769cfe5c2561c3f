"""Pipeline schedules as data: validity, timing, bubble and memory, checked without processes."""

from __future__ import annotations

import pytest

from stagewarden.runtime.errors import ScheduleError
from stagewarden.runtime.schedule import (
    Action,
    ActionKind,
    check_schedule,
    gpipe,
    ideal_bubble,
    max_in_flight,
    one_f_one_b,
    render,
    simulate,
)

SHAPES = [(s, m) for s in range(1, 7) for m in range(1, 9)]
BUILDERS = [gpipe, one_f_one_b]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(("stages", "microbatches"), SHAPES)
def test_schedules_are_valid(build, stages: int, microbatches: int) -> None:  # type: ignore[no-untyped-def]
    """GPipe and 1F1B run to completion with buffered sends, each unit exactly once, for S in 1..6 and M in 1..8."""
    schedule = build(stages, microbatches)
    assert len(schedule) == stages
    assert check_schedule(schedule) == microbatches


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize(("stages", "microbatches"), SHAPES)
def test_bubble_matches_formula(build, stages: int, microbatches: int) -> None:  # type: ignore[no-untyped-def]
    """With backward = 2 x forward, every stage of GPipe and 1F1B idles (S-1)/(M+S-1) of the step."""
    timing = simulate(build(stages, microbatches), forward_time=1.0, backward_time=2.0)
    expected = ideal_bubble(stages, microbatches)
    assert timing.makespan == pytest.approx(3.0 * (microbatches + stages - 1))
    assert timing.overall_bubble == pytest.approx(expected)
    assert all(b == pytest.approx(expected) for b in timing.bubble)


@pytest.mark.parametrize(("stages", "microbatches"), SHAPES)
def test_one_f_one_b_bounds_in_flight_microbatches(stages: int, microbatches: int) -> None:
    """1F1B keeps at most min(S - s, M) <= S activations on stage s; GPipe keeps all M."""
    one = max_in_flight(one_f_one_b(stages, microbatches))
    assert one == [min(stages - s, microbatches) for s in range(stages)]
    assert max(one) <= stages
    assert max_in_flight(gpipe(stages, microbatches)) == [microbatches] * stages


@pytest.mark.parametrize("build", BUILDERS)
def test_backwards_run_in_microbatch_order(build) -> None:  # type: ignore[no-untyped-def]
    """Both schedules run backwards in micro-batch order, so gradients accumulate in the reference's order."""
    for actions in build(4, 6):
        assert [a.microbatch for a in actions if a.kind is ActionKind.B] == list(range(6))


def test_rendering_of_the_documented_example() -> None:
    """The S=3, M=4 tables in the documentation are what the builders produce."""
    assert render(gpipe(3, 4)) == [
        "stage 0: F0 F1 F2 F3 B0 B1 B2 B3 UPDATE",
        "stage 1: F0 F1 F2 F3 B0 B1 B2 B3 UPDATE",
        "stage 2: F0 F1 F2 F3 B0 B1 B2 B3 UPDATE",
    ]
    assert render(one_f_one_b(3, 4)) == [
        "stage 0: F0 F1 F2 B0 F3 B1 B2 B3 UPDATE",
        "stage 1: F0 F1 B0 F2 B1 F3 B2 B3 UPDATE",
        "stage 2: F0 B0 F1 B1 F2 B2 F3 B3 UPDATE",
    ]
    assert render(gpipe(2, 1), compute_only=False) == [
        "stage 0: F0 SEND_F0 RECV_B0 B0 UPDATE",
        "stage 1: RECV_F0 F0 B0 SEND_B0 UPDATE",
    ]


def test_rendezvous_sends() -> None:
    """With synchronous sends GPipe still completes, but 1F1B deadlocks: workers must post sends non-blocking."""
    assert check_schedule(gpipe(4, 4), buffered_sends=False) == 4
    assert check_schedule(one_f_one_b(1, 3), buffered_sends=False) == 3
    with pytest.raises(ScheduleError, match="deadlock"):
        check_schedule(one_f_one_b(3, 4), buffered_sends=False)


def _parse(stage: int, text: str) -> Action:
    if text == "UPDATE":
        return Action(ActionKind.UPDATE, stage)
    kind = text.rstrip("0123456789")
    return Action(ActionKind(kind), stage, int(text[len(kind) :]))


def _without(schedule: list[list[Action]], stage: int, text: str) -> list[list[Action]]:
    copy = [list(actions) for actions in schedule]
    copy[stage] = [a for a in copy[stage] if str(a) != text]
    return copy


def test_missing_duplicate_and_misordered_units_are_reported() -> None:
    """A dropped or duplicated unit, a backward before its forward and a wrong stage tag raise ScheduleError."""
    good = gpipe(2, 2)
    with pytest.raises(ScheduleError, match="B for micro-batches"):
        check_schedule(_without(good, 0, "B1"))
    with pytest.raises(ScheduleError, match="different numbers of forwards"):
        check_schedule(_without(good, 1, "F1"))
    doubled = [list(a) for a in good]
    doubled[0].insert(1, Action(ActionKind.B, 0, 0))
    with pytest.raises(ScheduleError):
        check_schedule(doubled)
    early = [list(a) for a in good]
    early[1] = [_parse(1, text) for text in "RECV_F0 B0 F0 SEND_B0 RECV_F1 F1 B1 SEND_B1 UPDATE".split()]
    with pytest.raises(ScheduleError, match="before F0"):
        check_schedule(early)
    wrong = [list(a) for a in good]
    wrong[0][0] = Action(ActionKind.F, 1, 0)
    with pytest.raises(ScheduleError, match="names stage 1"):
        check_schedule(wrong)
    no_update = [actions[:-1] for actions in good]
    with pytest.raises(ScheduleError, match="UPDATE"):
        check_schedule(no_update)


def test_deadlock_and_out_of_order_messages_are_reported() -> None:
    """A receive whose send never comes deadlocks; a receive for another micro-batch than the next message fails."""
    stuck = gpipe(2, 1)
    stuck[0] = [Action(ActionKind.RECV_B, 0, 0), Action(ActionKind.F, 0, 0), Action(ActionKind.SEND_F, 0, 0)] + [
        Action(ActionKind.B, 0, 0),
        Action(ActionKind.UPDATE, 0),
    ]
    with pytest.raises(ScheduleError):
        check_schedule(stuck)
    crossed = gpipe(2, 2)
    stage1 = crossed[1]
    recv0, recv1 = stage1.index(Action(ActionKind.RECV_F, 1, 0)), stage1.index(Action(ActionKind.RECV_F, 1, 1))
    f0, f1 = stage1.index(Action(ActionKind.F, 1, 0)), stage1.index(Action(ActionKind.F, 1, 1))
    stage1[recv0], stage1[recv1] = stage1[recv1], stage1[recv0]
    stage1[f0], stage1[f1] = stage1[f1], stage1[f0]
    with pytest.raises(ScheduleError, match="order they are sent"):
        check_schedule(crossed)


def test_deadlock_cycle_is_reported() -> None:
    """Two stages that each wait for the other's message first are reported as a deadlock, naming where they wait."""
    cycle = gpipe(2, 2)
    cycle[0] = [_parse(0, text) for text in "F0 SEND_F0 F1 RECV_B0 SEND_F1 B0 RECV_B1 B1 UPDATE".split()]
    with pytest.raises(ScheduleError, match="deadlocks: stage 0 at RECV_B0, stage 1 at RECV_F1"):
        check_schedule(cycle)


def test_bad_shapes_and_ideal_bubble() -> None:
    """Zero stages or micro-batches are rejected; the ideal bubble is 0 for one stage and shrinks with M."""
    with pytest.raises(ScheduleError):
        gpipe(0, 1)
    with pytest.raises(ScheduleError):
        one_f_one_b(2, 0)
    with pytest.raises(ScheduleError, match="no stages"):
        check_schedule([])
    assert ideal_bubble(1, 5) == 0.0
    assert ideal_bubble(4, 4) == pytest.approx(3 / 7)
    assert ideal_bubble(4, 32) < ideal_bubble(4, 8)


def test_action_text_and_peers() -> None:
    """Actions print compactly and name the stage on the other end of a message."""
    assert str(Action(ActionKind.SEND_F, 2, 3)) == "SEND_F3"
    assert str(Action(ActionKind.UPDATE, 0)) == "UPDATE"
    assert Action(ActionKind.SEND_F, 2, 3).peer == 3
    assert Action(ActionKind.RECV_F, 2, 3).peer == 1
    assert Action(ActionKind.SEND_B, 2, 3).peer == 1
    assert Action(ActionKind.RECV_B, 2, 3).peer == 3
    assert Action(ActionKind.F, 2, 3).peer is None
