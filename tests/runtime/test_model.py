"""The GPT, its partition into stages and the stages' deterministic construction."""

from __future__ import annotations

import pytest
import torch

from stagewarden.runtime.errors import PartitionError
from stagewarden.runtime.model import GPT, GPTConfig, build_stage, build_stages, partition_layers

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (3, CONFIG.block_size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_layer", range(1, 9))
def test_partition_is_contiguous_balanced_and_complete(n_layer: int) -> None:
    """Every stage count from 1 to n_layer splits the blocks into contiguous ranges differing by at most one."""
    for stages in range(1, n_layer + 1):
        ranges = partition_layers(n_layer, stages)
        assert len(ranges) == stages
        assert [i for r in ranges for i in r] == list(range(n_layer))
        sizes = [len(r) for r in ranges]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("n_layer", "stages"), [(4, 5), (1, 2), (4, 0), (4, -1)])
def test_partition_rejects_impossible_stage_counts(n_layer: int, stages: int) -> None:
    """Zero, negative or more stages than blocks raise a PartitionError (a ValueError) that says why."""
    with pytest.raises(PartitionError, match="stages"):
        partition_layers(n_layer, stages)
    assert issubclass(PartitionError, ValueError)


def test_full_model_shapes() -> None:
    """The full model maps ids (B, T) to logits (B, T, V)."""
    logits = GPT(CONFIG, seed=0)(_tokens())
    assert logits.shape == (3, CONFIG.block_size, CONFIG.vocab_size)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_stages_in_sequence_equal_full_model_bitwise(stages: int) -> None:
    """Running the stages one after another gives bitwise the full model's logits and loss."""
    full = GPT(CONFIG, seed=7)
    parts = build_stages(CONFIG, stages, seed=7)
    x, y = _tokens(1), _tokens(2)
    activation = x
    for stage in parts:
        activation = stage(activation)
    expected = full(x)
    assert torch.equal(activation, expected)
    assert torch.equal(parts[-1].loss(activation, y), full.loss(expected, y))


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_stage_parameters_are_the_full_models_under_the_same_names(stages: int) -> None:
    """The stages' state dicts are disjoint and together equal the full model's, bitwise."""
    full = GPT(CONFIG, seed=3).state_dict()
    merged: dict[str, torch.Tensor] = {}
    for stage in build_stages(CONFIG, stages, seed=3):
        state = stage.state_dict()
        assert merged.keys().isdisjoint(state)
        merged.update(state)
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[name], full[name]) for name in full)


def test_single_stage_build_matches_build_stages() -> None:
    """build_stage builds one stage with the parameters build_stages gives it, whatever ran before."""
    parts = build_stages(CONFIG, 3, seed=11)
    torch.manual_seed(12345)  # the global random state must not matter
    torch.rand(10)
    for index in range(3):
        alone = build_stage(CONFIG, 3, index, seed=11).state_dict()
        together = parts[index].state_dict()
        assert alone.keys() == together.keys()
        assert all(torch.equal(alone[name], together[name]) for name in alone)


def test_weights_depend_on_the_seed_and_leave_global_rng_alone() -> None:
    """Different seeds give different weights, and building does not consume the global random state."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    a, b = GPT(CONFIG, seed=1), GPT(CONFIG, seed=2)
    assert torch.equal(torch.rand(4), expected)
    assert not torch.equal(a.embed.wte.weight, b.embed.wte.weight)


def test_stage_roles_and_layers() -> None:
    """The first stage owns the embeddings, the last the head, and each stage its partition's blocks."""
    parts = build_stages(CONFIG, 3, seed=0)
    assert [p.is_first for p in parts] == [True, False, False]
    assert [p.is_last for p in parts] == [False, False, True]
    assert [list(p.layers) for p in parts] == [[0, 1], [2], [3]]
    assert parts[0].embed is not None and parts[1].embed is None and parts[2].head is not None
    assert parts[1](torch.zeros(2, 5, CONFIG.n_embd)).shape == (2, 5, CONFIG.n_embd)


def test_stage_inputs_are_checked() -> None:
    """A stage fed the wrong kind of input, or a too-long sequence, raises a clear ValueError."""
    first, middle = build_stages(CONFIG, 2, seed=0)
    with pytest.raises(ValueError, match="token ids"):
        first(torch.zeros(2, 4, CONFIG.n_embd))
    with pytest.raises(ValueError, match="activations"):
        middle(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        first(torch.zeros(1, CONFIG.block_size + 1, dtype=torch.long))


def test_build_stage_rejects_bad_index() -> None:
    """A stage index outside the pipeline raises a PartitionError."""
    with pytest.raises(PartitionError, match="out of range"):
        build_stage(CONFIG, 2, 2, seed=0)


@pytest.mark.parametrize("kwargs", [{"n_layer": 0}, {"n_embd": 30, "n_head": 4}, {"dropout": 1.0}, {"block_size": 0}])
def test_config_rejects_bad_shapes(kwargs: dict[str, float]) -> None:
    """Impossible model shapes fail at construction with a message naming the field."""
    with pytest.raises(ValueError, match="GPTConfig"):
        GPTConfig(**kwargs)
