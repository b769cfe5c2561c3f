"""Shared settings and the single-process expectation for the multi-process runtime tests."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from stagewarden.attest.headers import SignedHeader, TransferKind
from stagewarden.attest.tensor_digest import TensorDigest, digest_state_dict, update_output_digest
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches, load_corpus
from stagewarden.runtime.model import GPTConfig, build_stages
from stagewarden.runtime.reference import reference_step
from stagewarden.runtime.spotcheck import optimizer_state_digest
from stagewarden.runtime.units import deterministic, make_optimizer

DATA = str(Path(__file__).resolve().parents[2] / "stagewarden" / "runtime" / "model.py")
TINY = GPTConfig(n_layer=4, n_embd=32, block_size=16, n_head=4)


def tiny_config(**overrides: object) -> RunConfig:
    """A tiny run (4 layers, width 32, block 16, batch 4, 2 micro-batches, 2 steps) on a small corpus."""
    # a checkpoint after every step: the tests check what a response or a resume goes back to
    base = dict(
        stages=2, microbatches=2, steps=2, schedule="gpipe", model=TINY, batch_size=4, data=(DATA,), checkpoint_every=1
    )
    base.update(overrides)
    return RunConfig(**base)  # type: ignore[arg-type]


def _trained(config: RunConfig) -> tuple[list[float], list[Any], list[Any]]:
    """One process trains ``config``'s stages on every replica's micro-batches of each step,
    replica after replica, as one batch; the losses, the stages and their optimizers."""
    batches = Batches(
        load_corpus([Path(p) for p in config.data]),
        config.model.block_size,
        config.batch_size,
        config.microbatches,
        config.seed,
    )
    with deterministic(config.train.threads):
        stages = build_stages(config.model, config.stages, config.seed)
        optimizers = [make_optimizer(s, dataclasses.replace(config.train)) for s in stages]
        losses = [
            reference_step(stages, optimizers, [mb for r in range(config.replicas) for mb in batches.batch(t, shard=r)])
            for t in range(config.steps)
        ]
    return losses, stages, optimizers


def reference_with_updates(config: RunConfig) -> tuple[list[float], list[str], list[str]]:
    """The reference losses, each stage's final weights digest (hex) and each stage's honest
    output digest (hex) of its last update receipt, which also commits to the final optimizer
    state (:func:`~stagewarden.attest.tensor_digest.update_output_digest`), for ``config``."""
    losses, stages, optimizers = _trained(config)
    weights = [digest_state_dict(s.state_dict()) for s in stages]
    states = [optimizer_state_digest(s, o) for s, o in zip(stages, optimizers, strict=True)]
    outputs = [update_output_digest(w, o).hex() for w, o in zip(weights, states, strict=True)]
    return losses, [w.hex() for w in weights], outputs


def concatenated_reference(config: RunConfig) -> list[float]:
    """The losses of one process training on every replica's micro-batches of each step, replica
    after replica, as one batch (the gradient is the mean over all of them)."""
    return _trained(config)[0]


def reference(config: RunConfig) -> tuple[list[float], list[str]]:
    """The reference losses and each stage's final weights digest (hex) for ``config``."""
    losses, weights, _ = reference_with_updates(config)
    return losses, weights


def fires_once(stage: int, step: int, quiet_steps: tuple[int, ...] = ()) -> dict[str, Any]:
    """A ``reverse`` plan at rate 0.5 on ``stage`` from ``step`` whose draws fire on micro-batch 0
    of ``step``, not on its first recomputation and not at ``quiet_steps`` (its JSON form)."""

    def plan(seed: int) -> AttackPlan:
        return AttackPlan.from_cli("reverse", str(stage), 0.5, step, seed=seed)

    seed = next(
        x
        for x in range(1000)
        if plan(x).active(stage, step, 0)
        and not plan(x).active(stage, step, 0, attempt=1)
        and not any(plan(x).active(stage, t, 0) for t in quiet_steps)
    )
    return plan(seed).to_json()


def activation_header(run_id: str = "r", **changes: Any) -> SignedHeader:
    """An unsigned header of stage 0's (worker ``s0r0``) activation of micro-batch 1 of step 0
    to stage 1, with ``changes`` (its tensor digest is a placeholder until set)."""
    header = SignedHeader(
        run_id=run_id,
        sender="s0r0",
        sender_stage=0,
        sender_replica=0,
        receiver_stage=1,
        step=0,
        micro_batch=1,
        kind=TransferKind.ACTIVATION,
        tensor=TensorDigest("float32", (), bytes(32)),
        signed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    return dataclasses.replace(header, **changes)
