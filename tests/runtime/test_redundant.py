"""The redundant-neighbour baseline: honest runs pass, tampering fails, and the input_via weakness."""

from __future__ import annotations

import json

import pytest
import torch

from stagewarden.runtime.attacks import AttackPlan, tamper_tensor, tamper_weights
from stagewarden.runtime.model import GPTConfig, build_stages
from stagewarden.runtime.redundant import InputVia, NeighbourReplica, select_input
from stagewarden.runtime.units import (
    TrainConfig,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
)

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)
S, M, CHECKED = 3, 2, 1
TRAIN = TrainConfig(lr=3e-3)


def _batch(step: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1000 * step + m))
    return ids[:, :-1], ids[:, 1:]


def _run(steps: int, attack: AttackPlan | None = None, input_via: str = "coordinator") -> list:
    """Train S stages; stage 2 checks stage 1 with a replica every unit. Returns every CheckOutcome.

    Under attack, stage 1's forward output (or backward gradient, or weights) is tampered; for a
    ``forge`` run, stage 1 forges an input x' = -x, computes y' = f(x') honestly, sends y' and
    forwards x' to the checker as its input.
    """
    outcomes = []
    with deterministic(1):
        stages = build_stages(CONFIG, S, seed=0)
        opts = [make_optimizer(s, TRAIN) for s in stages]
        replica = NeighbourReplica(CONFIG, S, CHECKED, seed=0, train=TRAIN)
        for step in range(steps):
            states: dict[tuple[int, int], object] = {}
            for m in range(M):
                x, y = _batch(step, m)
                act = x
                for s in stages:
                    inp = act
                    claimed_input = inp
                    if s.index == CHECKED and attack is not None and attack.kind == "reverse" and input_via == "forge":
                        claimed_input = -inp  # the forged input, consistent with the forged output below
                        st = stage_forward(s, claimed_input, M)
                    else:
                        st = stage_forward(s, inp, M, targets=y if s.is_last else None)
                    states[s.index, m] = st
                    out = st.output.detach()
                    if (
                        s.index == CHECKED
                        and attack is not None
                        and input_via != "forge"
                        and attack.direction == "forward"
                        and attack.kind != "weights"
                    ):
                        out = tamper_tensor(attack, out, stage=1, step=step, microbatch=m)
                    if s.index == CHECKED:
                        via = (
                            InputVia.CHECKED_WORKER if input_via in ("forge", "checked_worker") else InputVia(input_via)
                        )
                        rin = select_input(via, genuine=inp, from_checked_worker=claimed_input)
                        outcomes.append(replica.check_forward(step, m, M, rin, out, via))
                    act = out
            for m in range(M):
                grad = None
                for s in reversed(stages):
                    g_out = grad
                    grad = stage_backward(states[s.index, m], grad)  # type: ignore[arg-type]
                    if s.index == CHECKED:
                        assert grad is not None and g_out is not None
                        if attack is not None and attack.direction == "backward":
                            grad = tamper_tensor(attack, grad, stage=1, step=step, microbatch=m)
                        outcomes.append(replica.check_backward(step, m, g_out, grad))
            for o in opts:
                optimizer_step(o)
            replica.apply_update()
            if attack is not None and attack.kind == "weights":
                stages[CHECKED].load_state_dict(tamper_weights(attack, CHECKED, stages[CHECKED].state_dict()))
    return outcomes


def test_honest_training_passes_every_check() -> None:
    """Over three steps of honest training, every forward and backward check of the replica passes bitwise."""
    outcomes = _run(3)
    assert len(outcomes) == 3 * M * 2
    assert all(o.passed and o.blamed is None and o.max_abs_diff == 0.0 for o in outcomes)


@pytest.mark.parametrize(("kind", "direction"), [("reverse", "forward"), ("random", "forward"), ("noise", "backward")])
def test_tampered_messages_fail_the_check_and_blame_the_sender(kind: str, direction: str) -> None:
    """A tampered activation or gradient from stage 1 fails the replica's check, which blames stage 1."""
    outcomes = _run(1, AttackPlan.from_cli(kind, "1", direction=direction))
    failed = [o for o in outcomes if not o.passed]
    assert failed and all(o.blamed == CHECKED and o.checker == CHECKED + 1 for o in failed)
    assert all(o.unit_kind == direction for o in failed) and all(o.max_abs_diff > 0 for o in failed)
    assert json.loads(json.dumps(failed[0].to_json()))["blamed"] == CHECKED


def test_tampered_weights_show_up_at_the_next_forward() -> None:
    """The replica updates its own copy, so weights moved by a weights attack fail the next step's forward check."""
    outcomes = _run(2, AttackPlan.from_cli("weights", "1"))
    assert all(o.passed for o in outcomes if o.step == 0)
    assert any(not o.passed and o.unit_kind == "forward" for o in outcomes if o.step == 1)


def test_a_consistent_forgery_evades_the_check_when_the_checked_worker_relays_its_input() -> None:
    """With input_via=checked_worker a forged pair (x', f(x')) passes every forward check: the weakness."""
    outcomes = _run(1, AttackPlan.from_cli("reverse", "1"), input_via="forge")
    forward = [o for o in outcomes if o.unit_kind == "forward"]
    assert forward and all(o.passed and o.input_via is InputVia.CHECKED_WORKER for o in forward)


def test_the_same_forgery_is_caught_with_input_via_the_coordinator() -> None:
    """The forged output f(x') differs from the replica's f(x) on the genuine input relayed by the coordinator."""
    with deterministic(1):
        stages = build_stages(CONFIG, S, seed=0)
        replica = NeighbourReplica(CONFIG, S, CHECKED, seed=0, train=TRAIN)
        x, _ = _batch(0, 0)
        genuine = stage_forward(stages[0], x, 1).output.detach()
        forged_input = -genuine
        forged_output = stage_forward(stages[1], forged_input, 1).output.detach()
        via_worker = replica.check_forward(
            0,
            0,
            1,
            select_input("checked_worker", genuine=genuine, from_checked_worker=forged_input),
            forged_output,
            "checked_worker",
        )
        via_coordinator = replica.check_forward(
            0,
            0,
            1,
            select_input("coordinator", genuine=genuine, from_checked_worker=forged_input),
            forged_output,
            "coordinator",
        )
    assert via_worker.passed
    assert not via_coordinator.passed and via_coordinator.blamed == CHECKED


def test_select_input_needs_the_channel_tensor() -> None:
    """select_input refuses a channel whose tensor was not given, and the last stage has no checker."""
    with pytest.raises(ValueError, match="input_via=upstream"):
        select_input("upstream", genuine=torch.zeros(1))
    with pytest.raises(ValueError, match="no next stage"):
        NeighbourReplica(CONFIG, S, S - 1, seed=0, train=TRAIN)


def test_resync_loads_checkpointed_weights() -> None:
    """resync replaces the replica's weights and optimizer state with a verified copy."""
    with deterministic(1):
        replica = NeighbourReplica(CONFIG, S, CHECKED, seed=0, train=TRAIN)
        other = build_stages(CONFIG, S, seed=9)[CHECKED]
        replica.resync(other.state_dict(), {})
    for k, v in other.state_dict().items():
        assert torch.equal(replica.module.state_dict()[k], v)
