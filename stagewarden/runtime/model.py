"""A small decoder-only transformer (GPT) and its split into contiguous pipeline stages.

Every part of the model (the embeddings, each block, the head) is initialised from its own
generator, seeded by :func:`~stagewarden.runtime.seeding.derive_seed` from the run seed and the
part's name. The weights therefore do not depend on how the model is split: ``GPT(config, seed)``
and the stages of ``build_stages(config, stages, seed)`` hold bitwise the same parameters, under
the same names, for every number of stages, and one worker builds its own stage without
allocating the rest of the model.

The input and output embeddings are not tied: tying them would couple the first and the last
stage through a shared gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stagewarden.runtime.errors import PartitionError
from stagewarden.runtime.seeding import generator


@dataclass(frozen=True)
class GPTConfig:
    """The shape of the model."""

    vocab_size: int = 256
    """Number of token ids; 256 for the byte-level corpus."""
    block_size: int = 64
    """Longest sequence the position embedding covers (the context length ``T``)."""
    n_layer: int = 4
    """Number of transformer blocks; the pipeline splits these between stages."""
    n_head: int = 4
    """Number of attention heads; must divide ``n_embd``."""
    n_embd: int = 64
    """Width of the residual stream (``C``)."""
    dropout: float = 0.0
    """Dropout probability. Re-execution checks are bitwise only at 0, the default."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # noqa: N806
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))  # (B, T, C)
        return out


class MLP(nn.Module):
    """The position-wise feed-forward network, four times as wide as the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)
        return out


class Block(nn.Module):
    """A pre-LayerNorm transformer block: attention and MLP, each on a residual branch."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return out


class Embedding(nn.Module):
    """Token and position embeddings: token ids in, the residual stream out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]  # noqa: N806
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        out: torch.Tensor = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        return out


class Head(nn.Module):
    """The final LayerNorm and the language-model head: the residual stream in, logits out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm_head(self.ln_f(x))  # (B, T, V)
        return out


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy.

    Args:
        logits: Scores of shape ``(B, T, V)``.
        targets: Token ids of shape ``(B, T)``.

    Returns:
        A scalar tensor.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, V) vs (B*T,)


def _initialise(module: nn.Module, config: GPTConfig, gen: torch.Generator) -> None:
    """Fill ``module``'s parameters in place, in registration order, from ``gen`` (GPT-2 scheme).

    Linear and embedding weights are normal with standard deviation 0.02, the residual output
    projections (``c_proj``) 0.02 / sqrt(2 * n_layer); biases are zero, LayerNorms the identity.
    """
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    with torch.no_grad():
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear):
                std = proj_std if name.endswith("c_proj") else 0.02
                nn.init.normal_(sub.weight, mean=0.0, std=std, generator=gen)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            elif isinstance(sub, nn.Embedding):
                nn.init.normal_(sub.weight, mean=0.0, std=0.02, generator=gen)
            elif isinstance(sub, nn.LayerNorm):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)


def _build_part(kind: type[nn.Module], config: GPTConfig, seed: int, *name: str | int) -> nn.Module:
    """Build one part on the meta device, allocate it on the CPU and initialise it from its own seed."""
    with torch.device("meta"):
        part = kind(config)
    part.to_empty(device="cpu")
    _initialise(part, config, generator(seed, "gpt", *name))
    return part


def _build_blocks(config: GPTConfig, seed: int, layers: Iterable[int]) -> nn.ModuleDict:
    """Blocks keyed by their global layer index, so parameter names agree across partitions."""
    return nn.ModuleDict({str(i): _build_part(Block, config, seed, "block", i) for i in layers})


class GPT(nn.Module):
    """The whole model in one module; the single-process baseline the stages are checked against.

    Args:
        config: The model shape.
        seed: The run seed; the weights depend on it and on nothing else.
    """

    def __init__(self, config: GPTConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.embed = _build_part(Embedding, config, seed, "embed")
        self.blocks = _build_blocks(config, seed, range(config.n_layer))
        self.head = _build_part(Head, config, seed, "head")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` in, logits ``(B, T, V)`` out."""
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks.values():
            x = block(x)  # (B, T, C)
        logits: torch.Tensor = self.head(x)  # (B, T, V)
        return logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``."""
        return lm_loss(logits, targets)


def partition_layers(n_layer: int, stages: int) -> list[range]:
    """Split ``n_layer`` blocks into ``stages`` contiguous, balanced ranges.

    The sizes differ by at most one; the first ``n_layer % stages`` stages get the extra block
    (the last stage already carries the head and the loss).

    Args:
        n_layer: Number of transformer blocks.
        stages: Number of pipeline stages, between 1 and ``n_layer``.

    Returns:
        One ``range`` of global block indices per stage, in order, covering ``range(n_layer)``.

    Raises:
        PartitionError: ``stages`` is below 1 or above ``n_layer``.
    """
    if stages < 1:
        raise PartitionError(f"the number of stages must be at least 1, got {stages}")
    if stages > n_layer:
        raise PartitionError(
            f"cannot split {n_layer} transformer blocks into {stages} stages: every stage needs at "
            f"least one block; use at most {n_layer} stages or a deeper model"
        )
    base, extra = divmod(n_layer, stages)
    ranges: list[range] = []
    start = 0
    for index in range(stages):
        size = base + (1 if index < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


class StageModule(nn.Module):
    """One pipeline stage: a contiguous run of blocks, with the embeddings on the first stage and
    the final LayerNorm and head on the last.

    Parameter names are those of :class:`GPT` (``embed.*``, ``blocks.<global index>.*``,
    ``head.*``), so the stages' state dicts together are the full model's state dict.

    Build stages with :func:`build_stage` or :func:`build_stages`.

    Attributes:
        config: The model shape.
        index: This stage's position in the pipeline, from 0.
        num_stages: Number of stages in the pipeline.
        layers: Global indices of the blocks this stage holds.
    """

    def __init__(
        self,
        config: GPTConfig,
        index: int,
        num_stages: int,
        layers: range,
        embed: nn.Module | None,
        blocks: nn.ModuleDict,
        head: nn.Module | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.index = index
        self.num_stages = num_stages
        self.layers = layers
        self.embed = embed
        self.blocks = blocks
        self.head = head

    @property
    def is_first(self) -> bool:
        """Whether this stage takes token ids."""
        return self.index == 0

    @property
    def is_last(self) -> bool:
        """Whether this stage returns logits."""
        return self.index == self.num_stages - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run this stage.

        Args:
            x: Token ids ``(B, T)`` int64 on the first stage, activations ``(B, T, C)`` otherwise.

        Returns:
            Logits ``(B, T, V)`` on the last stage, activations ``(B, T, C)`` otherwise.
        """
        if self.embed is not None:
            if x.dim() != 2 or x.dtype.is_floating_point:
                raise ValueError(f"stage 0 takes integer token ids of shape (B, T), got {x.dtype} {tuple(x.shape)}")
            x = self.embed(x)  # (B, T, C)
        elif x.dim() != 3 or x.shape[-1] != self.config.n_embd:
            raise ValueError(
                f"stage {self.index} takes activations of shape (B, T, {self.config.n_embd}), got {tuple(x.shape)}"
            )
        for block in self.blocks.values():
            x = block(x)  # (B, T, C)
        if self.head is not None:
            x = self.head(x)  # (B, T, V)
        return x

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``."""
        return lm_loss(logits, targets)


def build_stage(config: GPTConfig, stages: int, index: int, seed: int) -> StageModule:
    """Build stage ``index`` of ``stages``, allocating only that stage's parameters.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: Which stage to build, from 0.
        seed: The run seed.

    Returns:
        The stage, with bitwise the parameters :class:`GPT` built from ``seed`` has under the same names.

    Raises:
        PartitionError: The stage count does not fit the model, or ``index`` is out of range.
    """
    ranges = partition_layers(config.n_layer, stages)
    if not 0 <= index < stages:
        raise PartitionError(f"stage index {index} is out of range for {stages} stages")
    layers = ranges[index]
    embed = _build_part(Embedding, config, seed, "embed") if index == 0 else None
    blocks = _build_blocks(config, seed, layers)
    head = _build_part(Head, config, seed, "head") if index == stages - 1 else None
    return StageModule(config, index, stages, layers, embed, blocks, head)


def build_stages(config: GPTConfig, stages: int, seed: int) -> list[StageModule]:
    """Build every stage of the pipeline; see :func:`build_stage`."""
    return [build_stage(config, stages, index, seed) for index in range(stages)]
