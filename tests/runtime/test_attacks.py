"""Attack plans and the tensor transformations of every attack kind."""

from __future__ import annotations

import json

import pytest
import torch

from stagewarden.runtime.attacks import (
    ATTACK_KINDS,
    TENSOR_KINDS,
    AttackKind,
    AttackPlan,
    Direction,
    bitflip,
    bitflip_position,
    describe_kinds,
    drift_direction,
    equivocate,
    false_accuse,
    lazy,
    poison_data,
    replay,
    tamper_gradients,
    tamper_optimizer,
    tamper_tensor,
    tamper_weights,
)


def _tensor(seed: int = 0, shape: tuple[int, ...] = (2, 16, 32)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _plan(kind: str, **kw: object) -> AttackPlan:
    return AttackPlan.from_cli(kind, "1", **kw)  # type: ignore[arg-type]


def test_every_kind_has_a_description() -> None:
    """ATTACK_KINDS and describe_kinds cover every AttackKind, in enum order, with one-line text."""
    assert list(ATTACK_KINDS) == list(AttackKind)
    assert [name for name, _ in describe_kinds()] == [k.value for k in AttackKind]
    assert all(text and "\n" not in text for _, text in describe_kinds())


def test_from_cli_parses_strings() -> None:
    """from_cli turns command-line strings into a typed plan."""
    plan = AttackPlan.from_cli(
        "noise", "1, 2", "0.5", "3", num_stages=4, direction="backward", noise="1e-4", bit="5", seed="7"
    )
    assert plan.kind is AttackKind.NOISE and plan.stages == frozenset({1, 2}) and plan.rate == 0.5
    assert plan.start == 3 and plan.direction is Direction.BACKWARD and plan.noise == 1e-4 and plan.bit == 5
    assert json.loads(json.dumps(plan.to_json()))["stages"] == [1, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("flip", "1"), {}, "unknown attack kind 'flip'"),
        (("reverse", ""), {}, "comma-separated"),
        (("reverse", "a"), {}, "must be integers"),
        (("reverse", "5"), {"num_stages": 4}, "do not exist in a pipeline of 4"),
        (("reverse", "-1"), {}, ">= 0"),
        (("reverse", "1", "0"), {}, "rate must be in (0, 1]"),
        (("reverse", "1", "1.5"), {}, "rate must be in (0, 1]"),
        (("reverse", "1", "x"), {}, "rate must be a number"),
        (("reverse", "1", 1.0, "-2"), {}, "start step must be >= 0"),
        (("reverse", "1", 1.0, "1.5"), {}, "start step must be an integer"),
        (("scale", "1"), {"scale": "1"}, "not 1"),
        (("noise", "1"), {"noise": "0"}, "positive"),
        (("bitflip", "1"), {"bit": "64"}, "between 0 and 63"),
        (("reverse", "1"), {"direction": "sideways"}, "forward, backward, input"),
        (("poison_data", "1"), {}, "stage 0"),
        (("reverse", "1"), {"per": "batch"}, "firing unit must be one of unit, step"),
    ],
)
def test_from_cli_rejects_bad_input_with_clear_messages(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    """Every bad command-line value raises a ValueError whose message names the problem."""
    with pytest.raises(ValueError) as info:
        AttackPlan.from_cli(*args, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_active_never_before_start_nor_on_honest_stages() -> None:
    """A plan never fires before its start step or on a stage outside its set; at rate 1 it always fires after."""
    plan = AttackPlan.from_cli("reverse", "1,2", 1.0, 3)
    assert not any(plan.active(1, step, m) for step in range(3) for m in range(4))
    assert not any(plan.active(s, step, m) for s in (0, 3) for step in range(10) for m in range(4))
    assert all(plan.active(s, step, m) for s in (1, 2) for step in range(3, 10) for m in range(4))


def test_active_draws_at_the_rate_deterministically() -> None:
    """At rate 0.25 about a quarter of units fire, the same ones every time, and other seeds choose others."""
    plan = AttackPlan.from_cli("reverse", "1", 0.25, seed=1)
    draws = [plan.active(1, step, m) for step in range(200) for m in range(4)]
    assert draws == [plan.active(1, step, m) for step in range(200) for m in range(4)]
    assert 0.2 < sum(draws) / len(draws) < 0.3
    other = AttackPlan.from_cli("reverse", "1", 0.25, seed=2)
    assert draws != [other.active(1, step, m) for step in range(200) for m in range(4)]


def test_a_per_step_plan_fires_on_every_unit_of_a_computation_or_on_none() -> None:
    """With per=step one draw decides for all of a step's units; a recomputation draws again;
    about the rate's share of steps fire."""
    plan = AttackPlan.from_cli("reverse", "1", 0.5, seed=4, per="step")
    for step in range(200):
        for attempt in range(3):
            fired = {plan.active(1, step, m, attempt) for m in range(8)}
            assert len(fired) == 1, (step, attempt)
    first = [plan.active(1, step, 0) for step in range(400)]
    assert 0.4 < sum(first) / len(first) < 0.6
    again = [plan.active(1, step, 0, attempt=1) for step in range(400)]
    assert first != again and 0.4 < sum(again) / len(again) < 0.6
    per_unit = AttackPlan.from_cli("reverse", "1", 0.5, seed=4)
    assert any(len({per_unit.active(1, step, m) for m in range(8)}) == 2 for step in range(20))


def test_the_firing_unit_round_trips_and_the_default_is_left_out() -> None:
    """to_json writes ``per`` only when it is not the default, and from_json reads both forms back;
    a bad value is refused with a message naming it."""
    unit = AttackPlan.from_cli("reverse", "1", 0.5)
    step = AttackPlan.from_cli("reverse", "1", 0.5, per="step")
    assert "per" not in unit.to_json() and step.to_json()["per"] == "step"
    assert AttackPlan.from_json(unit.to_json()) == unit and AttackPlan.from_json(step.to_json()) == step
    with pytest.raises(ValueError, match="firing unit must be one of unit, step, got 'epoch'"):
        AttackPlan.from_json({**step.to_json(), "per": "epoch"})


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("kind", sorted(TENSOR_KINDS))
def test_every_tensor_kind_changes_the_tensor(kind: str, direction: str) -> None:
    """Each tensor attack, either direction, changes the tensor (same shape and dtype), input untouched."""
    plan = _plan(kind, direction=direction)
    x = _tensor(0)
    before = x.clone()
    out = tamper_tensor(
        plan, x, stage=1, step=2, microbatch=1, stale=_tensor(1), stage_input=_tensor(2), earlier=_tensor(3)
    )
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("kind", ["random", "noise", "bitflip"])
def test_random_choices_are_deterministic_and_leave_global_rng_alone(kind: str) -> None:
    """Random transforms are deterministic per unit, differ across units, and leave the global RNG alone."""
    plan = _plan(kind)
    x = _tensor(0)
    state = torch.random.get_rng_state()
    a = tamper_tensor(plan, x, stage=1, step=2, microbatch=1)
    b = tamper_tensor(plan, x, stage=1, step=2, microbatch=1)
    c = tamper_tensor(plan, x, stage=1, step=3, microbatch=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_matches_the_tensor_scale() -> None:
    """random draws noise with about the tensor's mean and standard deviation."""
    x = _tensor(0) * 3.0 + 1.0
    out = tamper_tensor(_plan("random"), x, stage=1, step=0, microbatch=0)
    assert abs(float(out.mean()) - float(x.mean())) < 0.4 and abs(float(out.std()) / float(x.std()) - 1.0) < 0.1


def test_noise_is_relative_to_the_tensor_rms() -> None:
    """noise at magnitude 1e-3 moves the tensor by about 1e-3 of its RMS."""
    x = _tensor(0) * 5.0
    out = tamper_tensor(_plan("noise", noise=1e-3), x, stage=1, step=0, microbatch=0)
    ratio = float((out - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert 0.8e-3 < ratio < 1.2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bit", [0, 9, 15])
def test_bitflip_flips_exactly_one_bit_of_one_element(dtype: torch.dtype, bit: int) -> None:
    """bitflip changes one element, at the deterministic position, by exactly the chosen bit of its integer view."""
    plan = _plan("bitflip", bit=bit)
    x = _tensor(0).to(dtype)
    out = bitflip(x, plan, 1, 4, 2)
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(dtype, torch.int16)
    xor = (x.view(view) ^ out.view(view)).reshape(-1)
    changed = torch.nonzero(xor).reshape(-1).tolist()
    assert changed == [bitflip_position(x, plan, 1, 4, 2)]
    width = torch.iinfo(view).bits
    assert int(xor[changed[0]]) & ((1 << width) - 1) == 1 << bit


@pytest.mark.parametrize(("dtype", "bit"), [(torch.float32, 31), (torch.float64, 63)])
def test_bitflip_of_the_sign_bit_negates_one_element(dtype: torch.dtype, bit: int) -> None:
    """Flipping the top bit flips the sign of exactly one element."""
    x = _tensor(0).to(dtype)
    out = bitflip(x, _plan("bitflip", bit=bit), 1, 0, 0)
    diff = torch.nonzero((out != x).reshape(-1)).reshape(-1)
    assert diff.numel() == 1
    assert torch.equal(out.reshape(-1)[diff], -x.reshape(-1)[diff])


def test_bitflip_rejects_what_it_cannot_flip() -> None:
    """A bit beyond the element width, or an integer tensor, raises a ValueError."""
    with pytest.raises(ValueError, match="does not exist in a 16-bit"):
        bitflip(_tensor().half(), _plan("bitflip", bit=20), 1, 0, 0)
    with pytest.raises(ValueError, match="float16, bfloat16"):
        bitflip(torch.arange(4), _plan("bitflip"), 1, 0, 0)


def test_lazy_prefers_stale_then_input_then_zeros() -> None:
    """lazy returns the stale output if usable, else the stage input, else zeros (mismatched shapes are unusable)."""
    x, stale, inp = _tensor(0), _tensor(1), _tensor(2)
    assert torch.equal(lazy(x, stale=stale, stage_input=inp), stale)
    assert torch.equal(lazy(x, stage_input=inp), inp)
    assert torch.equal(
        lazy(x, stale=_tensor(1, (2, 16, 8)), stage_input=torch.zeros(2, 16, dtype=torch.long)), torch.zeros_like(x)
    )


def test_replay_without_an_earlier_tensor_cannot_fire() -> None:
    """replay with nothing kept returns the honest tensor (documented), and refuses a tensor of another shape."""
    x = _tensor(0)
    assert replay(x, None) is x
    with pytest.raises(ValueError, match="cannot replay"):
        replay(x, _tensor(1, (2, 16, 8)))


def test_weights_attack_moves_every_parameter_along_a_fixed_direction() -> None:
    """tamper_weights adds drift x the same direction at every step and changes every float parameter."""
    plan = _plan("weights", drift=1e-3, drift_seed=4)
    w0 = {"a": _tensor(0, (8, 8)), "b": _tensor(1, (8,)), "n": torch.arange(3)}
    w1 = tamper_weights(plan, 1, w0)
    w2 = tamper_weights(plan, 1, w1)
    for name in ("a", "b"):
        assert not torch.equal(w1[name], w0[name])
        assert torch.allclose(w2[name] - w1[name], w1[name] - w0[name], atol=1e-6)
        assert torch.allclose(w1[name] - w0[name], 1e-3 * drift_direction(plan, 1, name, w0[name]), atol=1e-7)
    assert torch.equal(w1["n"], w0["n"])


def test_optimizer_attack_moves_the_first_moments_only() -> None:
    """tamper_optimizer returns every exp_avg moved drift x the weights attack's direction for that
    parameter, leaves the second moments and step counts out, and modifies nothing in place."""
    plan = _plan("optimizer", drift=1e-3, drift_seed=4)
    state = {
        "a/exp_avg": _tensor(0, (8, 8)),
        "a/exp_avg_sq": _tensor(1, (8, 8)).abs(),
        "a/step": torch.tensor(3.0),
        "b.c/exp_avg": _tensor(2, (8,)),
    }
    before = {k: v.clone() for k, v in state.items()}
    tampered = tamper_optimizer(plan, 2, state)
    assert set(tampered) == {"a/exp_avg", "b.c/exp_avg"}
    for key, name in (("a/exp_avg", "a"), ("b.c/exp_avg", "b.c")):
        moved = tampered[key] - state[key]
        assert torch.allclose(moved, 1e-3 * drift_direction(plan, 2, name, state[key]), atol=1e-7)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert tamper_optimizer(plan, 2, {}) == {}  # before the first update there is nothing to tamper with


def test_grad_drift_moves_every_float_gradient_along_the_weights_direction() -> None:
    """tamper_gradients adds drift x the weights attack's direction to every float gradient
    (zeros before the first backward unit included) and modifies nothing in place."""
    plan = _plan("grad_drift", drift=1e-3, drift_seed=4)
    grads = {"a": _tensor(0, (8, 8)), "b": torch.zeros(8), "n": torch.arange(3)}
    before = {k: v.clone() for k, v in grads.items()}
    tampered = tamper_gradients(plan, 1, grads)
    assert set(tampered) == set(grads)
    for name in ("a", "b"):
        moved = tampered[name] - grads[name]
        assert torch.allclose(moved, 1e-3 * drift_direction(plan, 1, name, grads[name]), atol=1e-7)
        assert moved.abs().min() > 0
    assert torch.equal(tampered["n"], grads["n"])
    assert all(torch.equal(grads[k], before[k]) for k in grads)


def test_equivocate_sends_one_tensor_and_shows_another() -> None:
    """equivocate's sent tensor differs from the honest one; the shown tensor equals it."""
    x = _tensor(0)
    pair = equivocate(x)
    assert torch.equal(pair.shown, x) and not torch.equal(pair.sent, x)


def test_poison_data_changes_every_token_and_stays_in_the_vocabulary() -> None:
    """poison_data changes every id of the micro-batch, keeps ids in range, and is deterministic per unit."""
    plan = AttackPlan.from_cli("poison_data", "0")
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    out = poison_data(ids, plan, 3, 1, 256)
    assert bool((out != ids).all()) and int(out.min()) >= 0 and int(out.max()) < 256
    assert torch.equal(out, poison_data(ids, plan, 3, 1, 256))
    with pytest.raises(ValueError, match="integer token ids"):
        poison_data(ids.float(), plan, 3, 1, 256)


def test_false_accusation_claims_a_mismatch_and_serialises() -> None:
    """false_accuse forges a digest unlike the observed one, serialises to JSON, and refuses self-accusation."""
    plan = _plan("false_accuse")
    claim = false_accuse(plan, accuser=2, accused=1, step=5, microbatch=0, observed_digest=b"\x01" * 32)
    assert claim.claimed_digest != claim.observed_digest and claim.accused == 1
    assert json.loads(json.dumps(claim.to_json()))["accuser"] == 2
    with pytest.raises(ValueError, match="itself"):
        false_accuse(plan, 1, 1, 0, 0, b"\x00" * 32)


def test_tamper_tensor_refuses_non_tensor_kinds() -> None:
    """tamper_tensor raises a ValueError for kinds that do not act on a message."""
    with pytest.raises(ValueError, match="not an attack on an inter-stage tensor"):
        tamper_tensor(_plan("weights"), _tensor(), stage=1, step=0, microbatch=0)
