"""How a worker keeps a stage's accumulated gradients: in one flat buffer, bitwise what autograd's
in-place accumulation gives, with the gradients before each backward unit left untouched."""

from __future__ import annotations

import torch

from stagewarden.attest.tensor_digest import gradients_digest
from stagewarden.runtime.model import GPTConfig, build_stage
from stagewarden.runtime.units import stage_backward, stage_forward
from stagewarden.runtime.worker.grads import GradBuffers, gather_grads, grads_digest

CONFIG = GPTConfig(n_layer=4, n_embd=32, n_head=4, block_size=16)
MICROBATCHES = 3


def _inputs(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(2, CONFIG.block_size, CONFIG.n_embd, generator=gen)
    g = torch.randn(2, CONFIG.block_size, CONFIG.n_embd, generator=gen)
    return x, g


def _grads(stage: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in stage.parameters() if p.grad is not None]


def _views_of(flat: torch.Tensor, stage: torch.nn.Module) -> bool:
    start, end = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    return all(start <= p.grad.data_ptr() < end for p in stage.parameters() if p.grad is not None)


def test_flat_gradients_equal_autograd_accumulation_with_and_without_kept_starts() -> None:
    """Accumulating a middle stage's micro-batches the way a worker does, with receipts only (in
    place into one buffer) and with kept starts (each unit from fresh tensors, added to the kept
    ones), gives bitwise the gradients of plain autograd accumulation after every unit; the kept
    starts are never modified, and the gradients digest is the same in one pass or one by one."""
    reference = build_stage(CONFIG, 3, 1, seed=0)
    in_place = build_stage(CONFIG, 3, 1, seed=0)
    kept = build_stage(CONFIG, 3, 1, seed=0)
    flat_in_place: torch.Tensor | None = None
    flat_kept: torch.Tensor | None = None
    starts: list[tuple[dict[str, torch.Tensor], list[torch.Tensor]]] = []
    for m in range(MICROBATCHES):
        x, g = _inputs(m)
        stage_backward(stage_forward(reference, x, MICROBATCHES), g)
        stage_backward(stage_forward(in_place, x, MICROBATCHES), g)
        flat_in_place = gather_grads(in_place, {}, flat_in_place)
        before = {n: p.grad.detach() for n, p in kept.named_parameters() if p.grad is not None}
        starts.append((before, [t.clone() for t in before.values()]))
        for p in kept.parameters():
            p.grad = None
        stage_backward(stage_forward(kept, x, MICROBATCHES), g)
        flat_kept = gather_grads(kept, before, flat_kept)
        expected = _grads(reference)
        for stage, flat in ((in_place, flat_in_place), (kept, flat_kept)):
            assert flat is not None and _views_of(flat, stage)
            assert all(torch.equal(a, b) for a, b in zip(_grads(stage), expected, strict=True))
            assert grads_digest(stage, flat) == gradients_digest(expected)
    assert flat_in_place is not None
    for before, copies in starts:
        assert all(torch.equal(t, c) for t, c in zip(before.values(), copies, strict=True))


def test_the_buffer_pool_hands_out_only_buffers_of_released_steps() -> None:
    """A buffer taken for a step is handed out again only after the steps before a later one
    are released (and only for the same size, dtype and device); releasing everything frees all."""
    pool, cpu = GradBuffers(), torch.device("cpu")
    first = [pool.taker(3)(10, torch.float32, cpu) for _ in range(2)]
    taken = {t.data_ptr() for t in first}
    pool.release_before(3)  # step 3 is not before 3: still in use
    assert pool.taker(4)(10, torch.float32, cpu).data_ptr() not in taken
    pool.release_before(4)
    assert pool.taker(5)(12, torch.float32, cpu).data_ptr() not in taken  # another size
    assert pool.taker(5)(10, torch.float64, cpu).data_ptr() not in taken  # another dtype
    again = {pool.taker(5)(10, torch.float32, cpu).data_ptr() for _ in range(2)}
    assert again == taken
    pool.release_before(None)
    assert not pool.used and len(pool.free) == 5  # 2 for step 3, 1 for step 4, 2 new for step 5
