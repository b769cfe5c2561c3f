"""Commit-then-sample spot checking, re-execution of every unit kind, and detection of each attack."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor
from stagewarden.runtime.attacks import (
    AttackPlan,
    equivocate,
    false_accuse,
    poison_data,
    tamper_tensor,
    tamper_weights,
)
from stagewarden.runtime.model import GPTConfig, build_stages
from stagewarden.runtime.spotcheck import (
    CompareMode,
    SampleSeed,
    SpotCheckError,
    calibrate_tolerance,
    check_link,
    compare,
    export_optimizer_state,
    load_stage,
    receipts_digest,
    reexecute_backward,
    reexecute_forward,
    reexecute_update,
    referee,
    sample_units,
    sampling_randomness,
    verify_reveal,
)
from stagewarden.runtime.units import (
    TrainConfig,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
)

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)
S, M = 3, 2
TRAIN = TrainConfig(lr=3e-3)


def _batch(step: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + m)
    ids = torch.randint(0, 256, (2, 17), generator=g)
    return ids[:, :-1], ids[:, 1:]


@dataclasses.dataclass
class Trace:
    """What honest workers committed in one step: per stage and micro-batch, inputs, outputs and gradients."""

    weights: list[dict[str, torch.Tensor]]
    inputs: dict[tuple[int, int], torch.Tensor]
    outputs: dict[tuple[int, int], torch.Tensor]
    grad_outputs: dict[tuple[int, int], torch.Tensor]
    grad_inputs: dict[tuple[int, int], torch.Tensor]
    param_grads: list[dict[str, torch.Tensor]]
    optimizer_before: list[dict[str, torch.Tensor]]
    weights_after: list[dict[str, torch.Tensor]]
    optimizer_after: list[dict[str, torch.Tensor]]


def _train(steps: int) -> list[Trace]:
    """Honest pipeline training (GPipe order), recording every committed tensor of every step."""
    traces = []
    with deterministic(1):
        stages = build_stages(CONFIG, S, seed=0)
        opts = [make_optimizer(s, TRAIN) for s in stages]
        for step in range(steps):
            weights = [{k: v.clone() for k, v in s.state_dict().items()} for s in stages]
            opt_before = [export_optimizer_state(s, o) for s, o in zip(stages, opts, strict=True)]
            tr = Trace(weights, {}, {}, {}, {}, [], opt_before, [], [])
            states = {}
            for m in range(M):
                x, y = _batch(step, m)
                act = x
                for s in stages:
                    tr.inputs[s.index, m] = act
                    st = stage_forward(s, act, M, targets=y if s.is_last else None)
                    states[s.index, m] = st
                    act = st.output.detach()
                    tr.outputs[s.index, m] = act
            for m in range(M):
                grad = None
                for s in reversed(stages):
                    if grad is not None:
                        tr.grad_outputs[s.index, m] = grad
                    grad = stage_backward(states[s.index, m], grad)
                    if grad is not None:
                        tr.grad_inputs[s.index, m] = grad.detach().clone()
            tr.param_grads = [{k: p.grad.clone() for k, p in s.named_parameters()} for s in stages]
            for o in opts:
                optimizer_step(o)
            tr.weights_after = [{k: v.clone() for k, v in s.state_dict().items()} for s in stages]
            tr.optimizer_after = [export_optimizer_state(s, o) for s, o in zip(stages, opts, strict=True)]
            traces.append(tr)
    return traces


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return _train(2)


# -- commit then sample ----------------------------------------------------------------------


def test_the_right_reveal_opens_the_commitment_and_a_wrong_one_is_rejected() -> None:
    """verify_reveal accepts the committed secret and rejects another secret or another step."""
    seed = SampleSeed(4, b"\x07" * 32)
    verify_reveal(seed.commitment, 4, seed.secret)
    with pytest.raises(SpotCheckError, match="does not match the published commitment"):
        verify_reveal(seed.commitment, 4, b"\x08" * 32)
    with pytest.raises(SpotCheckError):
        verify_reveal(seed.commitment, 5, seed.secret)
    with pytest.raises(SpotCheckError):
        sampling_randomness(seed.commitment, 4, b"\x00" * 32, b"r" * 32)


def test_anyone_recomputes_the_sample_after_the_reveal() -> None:
    """sampling_randomness from the public commitment and the reveal equals the coordinator's randomness."""
    seed = SampleSeed.draw(3)
    receipts = receipts_digest([bytes([i]) * 32 for i in range(6)])
    assert sampling_randomness(seed.commitment, 3, seed.secret, receipts) == seed.randomness(receipts)


def test_changing_one_receipt_changes_the_sample() -> None:
    """The sample depends on the committed receipts: altering one receipt digest changes the sampled units."""
    seed = SampleSeed(0, b"\x01" * 32)
    units = list(range(64))
    digests = [bytes([i]) * 32 for i in range(64)]
    base = sample_units(units, 0.5, seed.randomness(receipts_digest(digests)))
    digests[10] = b"\xff" * 32
    assert sample_units(units, 0.5, seed.randomness(receipts_digest(digests))) != base


def test_receipts_digest_ignores_arrival_order() -> None:
    """The receipts digest is the same whatever order the receipts arrived in."""
    digests = [bytes([i]) * 32 for i in range(5)]
    assert receipts_digest(digests) == receipts_digest(list(reversed(digests)))


def test_sample_units_is_deterministic_bernoulli() -> None:
    """sample_units picks about rate x n units, the same ones for the same randomness; rate 1 picks all."""
    units = list(range(2000))
    picked = sample_units(units, 0.1, b"\x02" * 32)
    assert picked == sample_units(units, 0.1, b"\x02" * 32)
    assert 150 < len(picked) < 250
    assert sample_units(units, 1.0, b"\x02" * 32) == units
    with pytest.raises(SpotCheckError, match=r"\(0, 1\]"):
        sample_units(units, 0.0, b"")


def test_a_secret_of_the_wrong_size_is_refused() -> None:
    """A SampleSeed needs a 32-byte secret."""
    with pytest.raises(SpotCheckError, match="32 bytes"):
        SampleSeed(0, b"short")


# -- honest re-execution ---------------------------------------------------------------------


def test_honest_forward_reexecution_is_bitwise_equal(traces: list[Trace]) -> None:
    """Re-executing every forward unit from its committed input and weights gives bitwise the sent output."""
    with deterministic(1):
        for step, tr in enumerate(traces):
            for (s, m), out in tr.outputs.items():
                _, y = _batch(step, m)
                again = reexecute_forward(CONFIG, S, s, tr.weights[s], tr.inputs[s, m], y if s == S - 1 else None)
                assert compare(again, out).equal, (s, m)


def test_honest_backward_reexecution_is_bitwise_equal(traces: list[Trace]) -> None:
    """Re-executed backwards give bitwise the sent input gradients; their parameter gradients sum to the worker's."""
    tr = traces[1]
    with deterministic(1):
        for s in range(S):
            total: dict[str, torch.Tensor] = {}
            for m in range(M):
                _, y = _batch(1, m)
                res = reexecute_backward(
                    CONFIG, S, s, tr.weights[s], tr.inputs[s, m], tr.grad_outputs.get((s, m)), y, microbatches=M
                )
                if s > 0:
                    assert res.grad_input is not None and compare(res.grad_input, tr.grad_inputs[s, m]).equal
                else:
                    assert res.grad_input is None
                assert res.param_grads_digest == digest_state_dict(res.param_grads)
                total = {k: total.get(k, 0) + v for k, v in res.param_grads.items()}
            for k, v in tr.param_grads[s].items():
                assert torch.allclose(total[k], v, rtol=1e-5, atol=1e-8)
            if M == 1:
                assert digest_state_dict(total) == digest_state_dict(tr.param_grads[s])


@pytest.mark.parametrize("step", [0, 1])
def test_honest_update_reexecution_is_bitwise_equal(traces: list[Trace], step: int) -> None:
    """Re-executing the update from committed tensors gives bitwise the new weights and optimizer state."""
    tr = traces[step]
    with deterministic(1):
        for s in range(S):
            res = reexecute_update(CONFIG, S, s, tr.weights[s], tr.param_grads[s], tr.optimizer_before[s], TRAIN, step)
            assert res.weights_digest == digest_state_dict(tr.weights_after[s])
            assert digest_state_dict(res.optimizer_state) == digest_state_dict(tr.optimizer_after[s])


def test_update_reexecution_refuses_inconsistent_state(traces: list[Trace]) -> None:
    """An optimizer state from another step, missing gradients or foreign keys raise SpotCheckError."""
    tr = traces[1]
    with pytest.raises(SpotCheckError, match="needs 0"):
        reexecute_update(CONFIG, S, 1, tr.weights[1], tr.param_grads[1], tr.optimizer_before[1], TRAIN, 0)
    with pytest.raises(SpotCheckError, match="lack"):
        reexecute_update(CONFIG, S, 1, tr.weights[1], {}, tr.optimizer_before[1], TRAIN, 1)
    with pytest.raises(SpotCheckError, match="names no parameter"):
        reexecute_update(CONFIG, S, 1, tr.weights[1], tr.param_grads[1], {"x/step": torch.tensor(1.0)}, TRAIN, 1)


def test_weights_that_do_not_fit_the_stage_are_refused(traces: list[Trace]) -> None:
    """Loading stage 0's weights into stage 1 raises a SpotCheckError naming the stage."""
    with pytest.raises(SpotCheckError, match="do not fit stage 1"):
        load_stage(CONFIG, S, 1, traces[0].weights[0])


# -- detection of attacks --------------------------------------------------------------------


def _split_forward(tr: Trace, s: int, m: int) -> torch.Tensor:
    """An honest forward computed differently (row by row), standing in for other hardware or kernels."""
    rows = [reexecute_forward(CONFIG, S, s, tr.weights[s], tr.inputs[s, m][i : i + 1]) for i in range(2)]
    return torch.cat(rows)


@pytest.fixture(scope="module")
def tolerance(traces: list[Trace]) -> float:
    pairs = []
    with deterministic(1):
        for tr in traces:
            for s in range(S):
                for m in range(M):
                    pairs.append((tr.outputs[s, m], _split_forward(tr, s, m)))
    return calibrate_tolerance(pairs).value


STEALTHY = {("noise", "1e-8"), ("bitflip_low", "0")}
CASES = [
    ("reverse", {}),
    ("random", {}),
    ("scale", {"scale": "1.5"}),
    ("noise", {"noise": "1e-2"}),
    ("noise", {"noise": "1e-8"}),
    ("bitflip", {"bit": "30"}),
    ("bitflip", {"bit": "22"}),
    ("bitflip_low", {"bit": "0"}),
    ("lazy", {}),
    ("replay", {}),
]


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize(("kind", "params"), CASES, ids=[f"{k}-{'-'.join(p.values())}" for k, p in CASES])
def test_each_tensor_attack_is_detected(
    traces: list[Trace], tolerance: float, kind: str, params: dict[str, str], direction: str
) -> None:
    """Bitwise mode catches every tensor attack; tolerance mode misses only noise 1e-8 and a mantissa-bit-0 flip."""
    tr = traces[1]
    plan = AttackPlan.from_cli(kind.removesuffix("_low"), "1", direction=direction, **params)  # type: ignore[arg-type]
    if direction == "forward":
        honest, stage_input, earlier = tr.outputs[1, 1], tr.inputs[1, 1], tr.outputs[1, 0]
        stale = traces[0].outputs[1, 1]
        with deterministic(1):
            expected = reexecute_forward(CONFIG, S, 1, tr.weights[1], tr.inputs[1, 1])
    else:
        honest, stage_input, earlier = tr.grad_inputs[1, 1], tr.grad_outputs[1, 1], tr.grad_inputs[1, 0]
        stale = traces[0].grad_inputs[1, 1]
        with deterministic(1):
            res = reexecute_backward(
                CONFIG, S, 1, tr.weights[1], tr.inputs[1, 1], tr.grad_outputs[1, 1], microbatches=M
            )
        assert res.grad_input is not None
        expected = res.grad_input
    sent = tamper_tensor(
        plan, honest, stage=1, step=1, microbatch=1, stale=stale, stage_input=stage_input, earlier=earlier
    )
    assert not compare(expected, sent, CompareMode.BITWISE).equal
    caught = not compare(expected, sent, CompareMode.TOLERANCE, tolerance).equal
    stealthy = (kind, next(iter(params.values()), "")) in STEALTHY
    assert caught != stealthy


def test_tolerance_is_calibrated_from_honest_pairs(tolerance: float) -> None:
    """The tolerance calibrated from honest row-split re-executions is positive and small."""
    assert 0 < tolerance < 1e-3


def test_weights_tampering_is_detected_by_update_reexecution(traces: list[Trace]) -> None:
    """Weights moved after the real step differ from the re-executed update, bitwise and in tolerance."""
    tr = traces[1]
    plan = AttackPlan.from_cli("weights", "1", drift="1e-3")
    committed = tamper_weights(plan, 1, tr.weights_after[1])
    with deterministic(1):
        res = reexecute_update(CONFIG, S, 1, tr.weights[1], tr.param_grads[1], tr.optimizer_before[1], TRAIN, 1)
    assert res.weights_digest != digest_state_dict(committed)
    assert any(not compare(res.weights[k], committed[k], "tolerance", 1e-5).equal for k in committed)


def test_poisoned_data_is_detected_by_reexecuting_stage_0_on_the_committed_batch(traces: list[Trace]) -> None:
    """Stage 0's output on poisoned ids differs from re-execution on the regenerated data batch."""
    tr = traces[1]
    plan = AttackPlan.from_cli("poison_data", "0")
    x, _ = _batch(1, 0)
    with deterministic(1):
        sent = reexecute_forward(CONFIG, S, 0, tr.weights[0], poison_data(x, plan, 1, 0, 256))
        expected = reexecute_forward(CONFIG, S, 0, tr.weights[0], x)
    assert not compare(expected, sent).equal


def test_equivocation_passes_reexecution_but_breaks_the_digest_link(traces: list[Trace]) -> None:
    """An equivocating stage's receipt re-executes correctly; only the sender/receiver digest link exposes it."""
    tr = traces[1]
    pair = equivocate(tr.outputs[1, 0])
    with deterministic(1):
        expected = reexecute_forward(CONFIG, S, 1, tr.weights[1], tr.inputs[1, 0])
    assert compare(expected, pair.shown).equal
    assert not check_link(digest_tensor(pair.shown), digest_tensor(pair.sent))
    assert check_link(digest_tensor(pair.shown), digest_tensor(pair.shown.clone()))


def test_a_false_accusation_blames_the_accuser(traces: list[Trace]) -> None:
    """The referee's re-execution clears an honest accused and blames the accuser; a true claim blames the accused."""
    tr = traces[1]
    observed = digest_tensor(tr.outputs[1, 0])
    claim = false_accuse(AttackPlan.from_cli("false_accuse", "2"), 2, 1, 1, 0, observed)
    with deterministic(1):
        redo = digest_tensor(reexecute_forward(CONFIG, S, 1, tr.weights[1], tr.inputs[1, 0]))
    verdict = referee(claim.accuser, claim.accused, bytes.fromhex(claim.observed_digest), redo)
    assert verdict.blamed == 2 and verdict.accused_honest
    assert referee(2, 1, digest_tensor(-tr.outputs[1, 0]), redo).blamed == 1


def test_compare_handles_shape_and_non_finite_mismatch() -> None:
    """compare fails on another shape, on a NaN where there was none, and passes equal NaNs in tolerance mode."""
    a = torch.ones(3)
    assert not compare(a, torch.ones(4), "tolerance", 1.0).equal
    assert not compare(a, torch.tensor([1.0, float("nan"), 1.0]), "tolerance", 1.0).equal
    nan = torch.tensor([1.0, float("nan")])
    assert compare(nan, nan.clone(), "tolerance", 0.0).equal


def test_calibration_rejects_bad_input() -> None:
    """calibrate_tolerance needs samples and safety >= 1; bitwise-equal honest pairs give the floor."""
    with pytest.raises(SpotCheckError, match="at least one pair"):
        calibrate_tolerance([])
    with pytest.raises(SpotCheckError, match="safety factor"):
        calibrate_tolerance([(torch.ones(2), torch.ones(2))], safety=0.5)
    tol = calibrate_tolerance([(torch.ones(2), torch.ones(2))])
    assert tol.value == tol.floor and tol.max_observed == 0.0
