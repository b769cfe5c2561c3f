"""A worker's stage state: loading a checkpoint only as announced, restoring, discarding."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from distributed_helpers import tiny_config

from stagewarden.attest.tensor_digest import digest_state_dict
from stagewarden.runtime.protocol import Load, TensorMeta
from stagewarden.runtime.transport import TransportError
from stagewarden.runtime.worker.state import StageState, receive_checkpoint


class _Wire:
    """A transport stand-in that hands out queued tensors, checking what the receiver asks for."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.taken = 0

    def recv_tensor(self, src: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = self.tensors.pop(0)
        assert src == 0 and tensor.dtype == dtype and tuple(tensor.shape) == shape
        self.taken += 1
        return tensor


def _stage(verification: str = "none") -> StageState:
    return StageState(tiny_config(verification=verification), 0, torch.device("cpu"), "s0r0")


def _announce(tensors: list[tuple[str, torch.Tensor]], sent: list[torch.Tensor] | None = None) -> tuple[Load, Any]:
    message = Load(3, tuple(TensorMeta.of(name, t) for name, t in tensors))
    return message, _Wire(sent if sent is not None else [t for _, t in tensors])


def test_a_checkpoint_as_announced_is_loaded() -> None:
    """Weights sent as announced load into the stage, whose reported digest is theirs."""
    source, target = _stage(), _stage()
    with torch.no_grad():
        for p in source.module.parameters():
            p.add_(0.5)
    tensors = source.state_tensors("weights", "optimizer")
    message, wire = _announce(tensors)
    received = receive_checkpoint(wire, message, {"": target.module}, 0)
    digest = target.load(received.get("weights", {}), received.get("optimizer", {}))
    assert digest == digest_state_dict(source.module.state_dict())
    assert digest == digest_state_dict(target.module.state_dict()) == target.current_digest


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("bytes", "does not match its announced digest"),
        ("shape", "does not fit stage 0"),
        ("unknown_group", "is not acceptable"),
        ("replica_without_replica", "is not acceptable"),
        ("missing_weight", "does not hold every weight"),
        ("optimizer_dtype", "is not acceptable"),
    ],
)
def test_a_checkpoint_not_as_announced_is_refused(change: str, needle: str) -> None:
    """A load whose tensors differ from their announcement, do not fit the stage, name a group the
    worker does not hold or leave a weight out is refused, and nothing is received past the
    first bad announcement."""
    stage = _stage()
    tensors = stage.state_tensors("weights", "optimizer")
    sent = [t.clone() for _, t in tensors]
    name, first = tensors[0]
    if change == "bytes":
        sent[0] = first + 1.0  # the announcement is of the honest tensor
    elif change == "shape":
        tensors[0] = (name, torch.zeros(*first.shape, 2))
    elif change == "unknown_group":
        tensors[0] = ("gradients" + name[len("weights") :], first)
    elif change == "replica_without_replica":
        tensors[0] = ("replica_" + name, first)
    elif change == "missing_weight":
        del tensors[0], sent[0]
    else:
        param = next(n for n, _ in stage.module.named_parameters())
        tensors[0] = (f"optimizer.{param}/exp_avg", first.to(torch.float64))
    message, wire = _announce(tensors, sent)
    with pytest.raises(TransportError, match=needle):
        receive_checkpoint(wire, message, {"": stage.module}, 0)
    assert wire.taken <= (1 if change == "bytes" else 0 if change != "missing_weight" else len(sent))


def test_restore_returns_to_the_state_before_the_step() -> None:
    """After a step's record is taken, a restore brings back its weights; a restore or discard
    of a step the worker did not compute last is refused."""
    stage = _stage("spot_check")
    before = digest_state_dict(stage.module.state_dict())
    stage.record = stage.fresh_record(4)
    with torch.no_grad():
        for p in stage.module.parameters():
            p.mul_(2.0)
    assert stage.restore(4) == before == digest_state_dict(stage.module.state_dict())
    with pytest.raises(TransportError, match="cannot restore step 5"):
        stage.restore(5)
    with pytest.raises(TransportError, match="malformed discard"):
        stage.discard(5)
    stage.discard(4)
    assert stage.record is None
