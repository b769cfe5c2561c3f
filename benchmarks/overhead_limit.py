"""The CPU a step's security must cost at least: the operations the protocol performs per step,
each priced by an idle micro-benchmark on this machine, summed (the *limit* the measured added CPU
is compared with).

What a step of ``S`` stages and ``M`` micro-batches of ``B x T`` tokens must do with receipts
(:mod:`stagewarden.attest.receipts`, :mod:`stagewarden.runtime.units`):

* every activation and every gradient that crosses a stage boundary (``2 (S - 1) M`` tensors of
  ``B x T x C`` float32) is digested by its sender and by its receiver, travels behind a header
  its sender signs and its receiver verifies, and the coordinator verifies the header again when
  it is committed;
* the last stage's forward receipts commit to its logits (``M`` digests of ``B x T x V``);
* every stage digests its accumulated gradients after each of its ``M`` backward units (the
  gradient trace), and its weights and AdamW state (three times its parameters) after its update;
* every stage signs a receipt per unit (``2 M + 1``), and the coordinator verifies each.

With spot checks at rate ``p`` each unit is re-executed with probability ``p``: ``p M`` forward,
``p M`` backward (a forward then a backward) and ``p`` update units per stage on average, each fed
the stage's weights, which the coordinator digests. Attestation happens once, at admission: it
costs nothing per step.

Digests are priced with :func:`stagewarden.attest.tensor_digest.digest_tensor` (BLAKE3) on a
float32 tensor of the size, signatures with Ed25519 (PyNaCl) on a 256-byte message, and
re-executions with :mod:`stagewarden.runtime.reexecute`'s functions on a stage pool, all at the
workers' thread count, the median CPU time of repeated calls (the process's, so that a digest's
helper threads count and a busy machine's waiting does not).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

VOCAB_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the protocol's per-step work depends on."""

    stages: int
    microbatches: int
    batch_size: int
    block_size: int
    n_embd: int
    stage_parameters: tuple[int, ...]
    """Parameters (float32 elements) of each stage."""
    vocab_size: int = VOCAB_SIZE


@dataclasses.dataclass(frozen=True)
class Operation:
    """One kind of operation of a step: how many a step performs and of what size."""

    name: str
    count: float
    nbytes: int = 0
    stage: int | None = None


def receipt_operations(shape: Shape) -> list[Operation]:
    """The operations receipts add to one step (see the module docstring)."""
    s, m = shape.stages, shape.microbatches
    activation = shape.batch_size * shape.block_size * shape.n_embd * 4
    logits = shape.batch_size * shape.block_size * shape.vocab_size * 4
    transfers = 2 * (s - 1) * m
    receipts = s * (2 * m + 1)
    ops = [
        Operation("digest: transfers (sender and receiver)", 2 * transfers, activation),
        Operation("digest: last stage's logits", m, logits),
    ]
    for index, params in enumerate(shape.stage_parameters):
        ops.append(Operation("digest: gradient trace", m, params * 4, index))
        ops.append(Operation("digest: weights and AdamW state after the update", 1, 3 * params * 4, index))
    ops += [
        Operation("Ed25519 sign: transfer headers and receipts", transfers + receipts),
        Operation("Ed25519 verify: headers (receiver, coordinator) and receipts", 2 * transfers + receipts),
    ]
    return ops


def spot_check_operations(shape: Shape, rate: float) -> list[Operation]:
    """The operations spot checks at ``rate`` add to one step on average, beyond receipts'."""
    m = shape.microbatches
    ops = []
    for index, params in enumerate(shape.stage_parameters):
        ops.append(Operation("re-execute: forward unit", rate * m, stage=index))
        ops.append(Operation("re-execute: backward unit", rate * m, stage=index))
        ops.append(Operation("re-execute: update unit", rate, stage=index))
        ops.append(Operation("digest: a sampled unit's weights", rate * (2 * m + 1), params * 4, index))
    return ops


def limit_seconds(ops: list[Operation], price: Callable[[Operation], float]) -> dict[str, float]:
    """Seconds a step per operation name, ``count x price``, and their ``total``."""
    out: dict[str, float] = {}
    for op in ops:
        out[op.name] = out.get(op.name, 0.0) + op.count * price(op)
    out["total"] = sum(out.values())
    return out


def _median_seconds(call: Callable[[], Any], repeat: int) -> float:
    """The median CPU time of ``call`` (every thread of this process: a large digest uses several),
    after one call to warm up; CPU rather than wall time, so that other work on the machine does not
    count as the operation's."""
    call()
    times = []
    for _ in range(repeat):
        began = time.process_time()
        call()
        times.append(time.process_time() - began)
    return statistics.median(times)


class IdlePrices:
    """Micro-benchmarked prices of the operations, for one job (measured on first use, cached)."""

    def __init__(self, job: Any, repeat: int = 7) -> None:
        from stagewarden.runtime.model import build_stages

        self.job = job
        self.config = job.run_config().model
        self.repeat = repeat
        self.stages = build_stages(self.config, job.stages, job.seed)
        self._cache: dict[tuple[str, int | None, int], float] = {}

    def shape(self) -> Shape:
        """The job's :class:`Shape`."""
        j = self.job
        params = tuple(sum(p.numel() for p in stage.parameters()) for stage in self.stages)
        return Shape(j.stages, j.microbatches, j.batch_size, j.block_size, j.n_embd, params)

    def __call__(self, op: Operation) -> float:
        kind = op.name.split(":")[0]
        key = (kind if kind != "re-execute" else op.name, op.stage if kind == "re-execute" else None, op.nbytes)
        if key not in self._cache:
            from stagewarden.runtime.units import deterministic

            with deterministic(1):
                self._cache[key] = self._measure(kind, op)
        return self._cache[key]

    def _measure(self, kind: str, op: Operation) -> float:
        import torch

        if kind == "digest":
            from stagewarden.attest.tensor_digest import digest_tensor

            tensor = torch.rand(op.nbytes // 4)
            return _median_seconds(lambda: digest_tensor(tensor), self.repeat)
        if kind.startswith("Ed25519"):
            from nacl.signing import SigningKey

            key, message = SigningKey.generate(), bytes(range(256))
            signed = key.sign(message)
            if "sign" in kind:
                return _median_seconds(lambda: key.sign(message), self.repeat * 20)
            return _median_seconds(lambda: key.verify_key.verify(signed), self.repeat * 20)
        assert op.stage is not None
        return self._reexecute(op.name, op.stage)

    def _reexecute(self, name: str, index: int) -> float:
        import torch

        from stagewarden.runtime import reexecute
        from stagewarden.runtime.units import TrainConfig

        j, c = self.job, self.config
        pool = reexecute.StagePool(c, j.stages, j.seed)
        stage = self.stages[index]
        weights = {k: v.detach().clone() for k, v in stage.state_dict().items()}
        if index == 0:
            inputs = torch.randint(0, VOCAB_SIZE, (j.batch_size, j.block_size))
        else:
            inputs = torch.randn(j.batch_size, j.block_size, j.n_embd)
        last = index == j.stages - 1
        targets = torch.randint(0, VOCAB_SIZE, (j.batch_size, j.block_size)) if last else None
        grad_output = None if last else torch.randn(j.batch_size, j.block_size, j.n_embd)
        if "forward" in name:
            return _median_seconds(
                lambda: reexecute.reexecute_forward_outputs(
                    c, j.stages, index, weights, inputs, targets, microbatches=j.microbatches, pool=pool
                ),
                self.repeat,
            )
        if "backward" in name:
            return _median_seconds(
                lambda: reexecute.reexecute_backward(
                    c, j.stages, index, weights, inputs, grad_output, targets, microbatches=j.microbatches, pool=pool
                ),
                self.repeat,
            )
        grads = {n: torch.randn_like(p) for n, p in stage.named_parameters()}
        return _median_seconds(
            lambda: reexecute.reexecute_update(c, j.stages, index, weights, grads, {}, TrainConfig(), 0, pool=pool),
            self.repeat,
        )
