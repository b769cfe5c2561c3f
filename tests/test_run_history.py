"""Which units a recorded attack tampered with, counted from what the malicious worker computed:
nothing after its ejection, nothing in a computation that bypassed it, nothing a rollback undid."""

from __future__ import annotations

from typing import Any

from stagewarden.run_history import reconstruct, tampered_units
from stagewarden.runtime.attacks import AttackPlan

ATTACK = AttackPlan.from_cli("reverse", "1", 1.0, 0).to_json()


def _in_model(events: list[dict[str, Any]]) -> list[tuple[int, int, int, str]]:
    history = reconstruct(events)
    return [u for c in history.computations if c.kept for u in tampered_units(ATTACK, c, 4, 2)]


def _step(step: int) -> dict[str, Any]:
    return {"event": "step", "step": step}


def _detection(step: int, attempt: int = 0) -> dict[str, Any]:
    return {"event": "detection", "step": step, "attempt": attempt, "stage": 1, "microbatch": 0, "unit_kind": "forward"}


def test_every_computation_of_the_malicious_worker_counts() -> None:
    """Without a response, the attack fires on every micro-batch of every kept step."""
    assert _in_model([_step(0), _step(1)]) == [(1, t, m, "forward") for t in (0, 1) for m in (0, 1)]


def test_nothing_counts_once_a_standby_took_the_stage() -> None:
    """An eject to a checkpoint of step 1: step 0 stays in the model (tampered), the standby
    recomputes from step 1 on and tampers with nothing."""
    events = [
        _step(0),
        _detection(1),
        {"event": "response", "step": 1, "attempt": 0, "plan": {"checkpoint_step": 1, "bypass_stage": None}},
        {"event": "restored_checkpoint", "step": 1},
        {"event": "ejected", "worker": "s1r0", "stage": 1, "standby": "standby0", "from_step": 1},
        _step(1),
        _step(2),
    ]
    assert _in_model(events) == [(1, 0, 0, "forward"), (1, 0, 1, "forward")]


def test_a_bypassed_computation_has_no_tampered_unit() -> None:
    """skip_stage: the detected computation is discarded and the recomputation that bypasses the
    attacker holds nothing of it; the next step's computation by the attacker counts again."""
    events = [
        _detection(0),
        {"event": "response", "step": 0, "attempt": 0, "plan": {"checkpoint_step": None, "bypass_stage": 1}},
        _step(0),
        _step(1),
    ]
    history = reconstruct(events)
    assert [(c.step, c.attempt, c.bypass, c.kept) for c in history.computations] == [
        (0, 0, None, False),
        (0, 1, 1, True),
        (1, 0, None, True),
    ]
    assert _in_model(events) == [(1, 1, 0, "forward"), (1, 1, 1, "forward")]


def test_a_rollback_undoes_the_computations_after_its_checkpoint() -> None:
    """Steps 1 and 2 computed by the attacker are undone by a rollback to step 1's checkpoint."""
    events = [
        _step(0),
        _step(1),
        _detection(2),
        {"event": "response", "step": 2, "attempt": 0, "plan": {"checkpoint_step": 1, "bypass_stage": 1}},
        {"event": "restored_checkpoint", "step": 1},
        _step(1),
    ]
    assert _in_model(events) == [(1, 0, 0, "forward"), (1, 0, 1, "forward")]
