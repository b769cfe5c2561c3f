"""Single-process reference training: staged training equals full-model training, bitwise."""

from __future__ import annotations

import pytest
import torch

from stagewarden.runtime.data import Batches, default_corpus
from stagewarden.runtime.model import GPT, GPTConfig, build_stages
from stagewarden.runtime.reference import reference_step, train_reference
from stagewarden.runtime.units import (
    TrainConfig,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
    step_loss,
)

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)
TRAIN = TrainConfig(lr=3e-3)
STEPS = 6


@pytest.fixture(scope="module")
def batches() -> Batches:
    return Batches(default_corpus(max_bytes=128 * 1024), block_size=16, batch_size=4, microbatches=3, seed=5)


def _train_full(batches: Batches, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain gradient accumulation on the unsplit model, written independently of the stage units."""
    with deterministic(TRAIN.threads):
        model = GPT(CONFIG, seed=0)
        optimizer = make_optimizer(model, TRAIN)
        losses = []
        for step in range(steps):
            step_losses = []
            for x, y in batches.batch(step):
                loss = model.loss(model(x), y)
                (loss / batches.microbatches).backward()
                step_losses.append(loss.detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(torch.stack(step_losses).mean()))
        return losses, model.state_dict()


@pytest.fixture(scope="module")
def full_run(batches: Batches) -> tuple[list[float], dict[str, torch.Tensor]]:
    return _train_full(batches, STEPS)


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_reference_losses_equal_full_model_training_bitwise(
    batches: Batches, full_run: tuple[list[float], dict[str, torch.Tensor]], stages: int
) -> None:
    """train_reference with 1, 2 or 4 stages reports bitwise the losses of training the whole GPT."""
    losses = train_reference(CONFIG, stages, 3, STEPS, TRAIN.lr, seed=0, batches=batches, train=TRAIN)
    assert losses == full_run[0]


def test_reference_weights_equal_full_model_training_bitwise(
    batches: Batches, full_run: tuple[list[float], dict[str, torch.Tensor]]
) -> None:
    """After the same steps, the stages' weights are bitwise the full model's weights."""
    with deterministic(TRAIN.threads):
        stages = build_stages(CONFIG, 3, seed=0)
        optimizers: list[torch.optim.Optimizer] = [make_optimizer(stage, TRAIN) for stage in stages]
        for step in range(STEPS):
            reference_step(stages, optimizers, batches.batch(step))
    merged = {name: tensor for stage in stages for name, tensor in stage.state_dict().items()}
    expected = full_run[1]
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[name], expected[name]) for name in expected)


def test_units_pass_activation_gradients_between_stages(batches: Batches) -> None:
    """The backward unit returns the gradient of the stage input, and it equals autograd through the full model."""
    with deterministic(1):
        first, last = build_stages(CONFIG, 2, seed=0)
        x, y = batches.microbatch(0, 0)
        s0 = stage_forward(first, x, microbatches=3)
        s1 = stage_forward(last, s0.output.detach(), microbatches=3, targets=y)
        assert s1.loss is not None and s1.scaled_loss is not None
        assert torch.equal(s1.scaled_loss, s1.loss / 3)
        grad = stage_backward(s1)
        assert grad is not None and grad.shape == (4, 16, CONFIG.n_embd)
        assert stage_backward(s0, grad) is None

        full = GPT(CONFIG, seed=0)
        h = full.embed(x)  # (B, T, C)
        for i in first.layers:
            h = full.blocks[str(i)](h)
        boundary = h
        boundary.retain_grad()
        for i in last.layers:
            h = full.blocks[str(i)](h)
        (full.loss(full.head(h), y) / 3).backward()
        assert boundary.grad is not None and torch.equal(grad, boundary.grad)


def test_units_reject_missing_inputs(batches: Batches) -> None:
    """The last stage needs targets and the other stages need the output gradient: both are ValueErrors."""
    first, last = build_stages(CONFIG, 2, seed=0)
    x, _ = batches.microbatch(0, 0)
    state = stage_forward(first, x, microbatches=1)
    with pytest.raises(ValueError, match="gradient"):
        stage_backward(state)
    with pytest.raises(ValueError, match="targets"):
        stage_forward(last, state.output.detach(), microbatches=1)


def test_training_reduces_loss(batches: Batches) -> None:
    """A few dozen reference steps lower the loss well below the uniform-byte loss ln(256)."""
    losses = train_reference(CONFIG, 2, 3, 30, 3e-3, seed=0, batches=batches)
    assert losses[0] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.2)
    assert losses[-1] < losses[0] - 1.0


def test_deterministic_restores_settings() -> None:
    """The deterministic() block restores the thread count and the deterministic-algorithms flag."""
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with deterministic(1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, flag)


def test_reference_rejects_mismatched_settings(batches: Batches) -> None:
    """Micro-batch counts or block sizes that disagree between the data and the call are ValueErrors."""
    with pytest.raises(ValueError, match="microbatches"):
        train_reference(CONFIG, 2, 2, 1, 1e-3, seed=0, batches=batches)
    small = GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="block_size"):
        train_reference(small, 2, 3, 1, 1e-3, seed=0, batches=batches)


def test_step_loss_is_the_mean() -> None:
    """The reported step loss is the mean of the micro-batch losses."""
    assert step_loss([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)]) == pytest.approx(3.0)


def test_optimizer_groups_and_clearing() -> None:
    """Weight decay applies to matrices only, and an update clears the gradients."""
    model = GPT(CONFIG, seed=0)
    optimizer = make_optimizer(model, TRAIN)
    decayed, plain = optimizer.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] == TRAIN.weight_decay
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0
    x = torch.zeros(1, 4, dtype=torch.long)
    model.loss(model(x), x).backward()
    optimizer_step(optimizer)
    assert all(p.grad is None for p in model.parameters())
