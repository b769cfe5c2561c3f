"""The fault-injection hooks tests set through environment variables, read once when a worker
starts (:class:`TestHooks`), and what they make a worker do: crash, send the coordinator a
crafted message, perturb its measured weights or skew its numerics.

None of them is a feature of a real run: they let the tests play a failing or hostile worker
from the outside. A worker's attack plan (:mod:`stagewarden.runtime.attacks`) is separate.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import torch
from nacl.signing import SigningKey

from stagewarden.attest.step_roots import parse_root, sign_root
from stagewarden.runtime.protocol import Commit, SnapshotRequest, send_message
from stagewarden.runtime.protocol.ids import COORDINATOR, worker_id_for
from stagewarden.runtime.transport import Transport

#: A test-only hook, a stage index whose worker perturbs its initial weights before measuring them.
TAMPER_MEASUREMENT_ENV = "STAGEWARDEN_TEST_TAMPER_MEASUREMENT"
#: A test-only hook, ``STAGE:STEP``, whose worker exits abruptly when step STEP starts.
CRASH_ENV = "STAGEWARDEN_TEST_CRASH"
#: A test hook, ``<stage>:<step>:<kind>``, that makes the first worker of ``stage`` compute ``step`` and then
#: send the coordinator a crafted message of ``kind`` (see :data:`HOSTILE_MESSAGES`) instead of its
#: commitment, and then stay alive and silent.
HOSTILE_ENV = "STAGEWARDEN_TEST_HOSTILE"
#: The crafted messages :data:`HOSTILE_ENV` can send.
HOSTILE_MESSAGES = (
    "garbage",
    "oversize",
    "negative",
    "wrong_type",
    "bad_receipt",
    "forged_receipt",
    "deep_json",
    "forged_root",
    "root_mismatch",
)
#: The crafted messages of :data:`HOSTILE_MESSAGES` that are the worker's real commitment with its
#: step root altered: signed under a key the coordinator never attested (``forged_root``), or
#: signed under the worker's own key over a leaf list whose first receipt leaf is not the first
#: receipt's (``root_mismatch``). The worker sends them and computes on.
ROOT_ATTACKS = ("forged_root", "root_mismatch")
#: A test hook, ``<stage>:<e>``, that makes the first worker of ``stage`` multiply every output it commits
#: (activations or logits, input gradients, stage 0's accumulated gradients, its weights after an
#: update, its calibration outputs) by ``1 + e`` before committing: an honest worker whose
#: hardware or kernels differ from the verifier's by a relative ``e``.
NUMERICS_ENV = "STAGEWARDEN_TEST_NUMERICS"
#: A test hook, ``<stage>:<pipeline>``, that makes the first worker of that slot send the other
#: replicas of its stage twice the gradients it committed to as its contribution (and aggregate its
#: own honest ones): a replica that equivocates between its receipts and its peers.
FORGE_CONTRIBUTION_ENV = "STAGEWARDEN_TEST_FORGE_CONTRIBUTION"
#: A test hook, the seconds every worker waits before it computes a step, so that a run is as slow
#: as a test needs (one that outlives an attestation result's lifetime) whatever the machine's speed.
STEP_DELAY_ENV = "STAGEWARDEN_TEST_STEP_DELAY"
#: The exit status of a worker the :data:`CRASH_ENV` hook stops.
CRASH_EXIT = 17


@dataclasses.dataclass(frozen=True)
class TestHooks:
    """The test hooks in effect for a worker process (none by default).

    Attributes:
        tamper_measurement: The stage whose worker perturbs its weights before measuring them.
        crash: ``(stage, step)``: that stage's worker exits when the step's first attempt starts.
        hostile: ``(stage, step, kind)``: the first worker of the stage sends a crafted message.
        numerics: ``(stage, e)``: the first worker of the stage skews its outputs by ``1 + e``.
        step_delay: Seconds every worker waits before it computes a step.
        forge_contribution: ``(stage, pipeline)``: the first worker of that slot sends its peers
            another contribution than the one it committed to.
    """

    __test__ = False  # not a test class, whatever its name says to pytest

    tamper_measurement: int | None = None
    crash: tuple[int, int] | None = None
    hostile: tuple[int, int, str] | None = None
    numerics: tuple[int, float] | None = None
    step_delay: float = 0.0
    forge_contribution: tuple[int, int] | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TestHooks:
        """The hooks the environment (``os.environ`` by default) sets.

        Raises:
            ValueError: A hook's value is malformed (one line naming the variable).
        """
        env = os.environ if environ is None else environ

        def fields(name: str, types: tuple[type, ...]) -> list[Any] | None:
            value = env.get(name)
            if not value:
                return None
            split = value.split(":")
            try:
                if len(split) != len(types):
                    raise ValueError(f"{len(types)} parts separated by ':'")
                return [kind(part) for kind, part in zip(types, split, strict=True)]
            except ValueError as exc:
                raise ValueError(f"the test hook {name}={value[:64]!r} is malformed ({exc})") from None

        tamper = fields(TAMPER_MEASUREMENT_ENV, (int,))
        crash = fields(CRASH_ENV, (int, int))
        hostile = fields(HOSTILE_ENV, (int, int, str))
        numerics = fields(NUMERICS_ENV, (int, float))
        delay = fields(STEP_DELAY_ENV, (float,))
        forge = fields(FORGE_CONTRIBUTION_ENV, (int, int))
        return cls(
            tamper[0] if tamper else None,
            (crash[0], crash[1]) if crash else None,
            (hostile[0], hostile[1], hostile[2]) if hostile else None,
            (numerics[0], numerics[1]) if numerics else None,
            delay[0] if delay else 0.0,
            (forge[0], forge[1]) if forge else None,
        )

    def tampers_measurement(self, stage: int) -> bool:
        """Whether the worker of ``stage`` perturbs its initial weights before measuring them."""
        return self.tamper_measurement == stage

    def crashes(self, stage: int, step: int, attempt: int) -> bool:
        """Whether the worker of ``stage`` exits now, as ``step``'s ``attempt`` starts."""
        return self.crash == (stage, step) and attempt == 0

    def hostile_kind(self, stage: int, step: int, worker_id: str) -> str | None:
        """The crafted message the worker ``worker_id`` of ``stage`` sends after computing
        ``step``, if any (a standby that took the stage sends none)."""
        if self.hostile is None or self.hostile[:2] != (stage, step) or worker_id != worker_id_for(stage):
            return None
        return self.hostile[2]

    def skew(self, stage: int) -> float | None:
        """The relative skew of the outputs of the first worker of ``stage``, if any."""
        return self.numerics[1] if self.numerics is not None and self.numerics[0] == stage else None


def perturb_measured_weights(module: torch.nn.Module) -> None:
    """The :data:`TAMPER_MEASUREMENT_ENV` hook: move the first parameter by ``1e-3``."""
    with torch.no_grad():
        next(iter(module.parameters())).add_(1e-3)


def crash() -> NoReturn:
    """The :data:`CRASH_ENV` hook: exit at once, as a process that dies does."""
    os._exit(CRASH_EXIT)


def altered_root(commit: Commit, kind: str, key: SigningKey) -> Commit:
    """``commit`` with its step root altered as the :data:`ROOT_ATTACKS` kind ``kind`` says,
    ``key`` being the worker's own receipt key."""
    assert commit.root is not None
    root = parse_root(commit.root)
    if kind == "forged_root":
        return dataclasses.replace(commit, root=sign_root(root, SigningKey.generate()).encode())
    leaves = (bytes(32), *root.leaves[1:])
    return dataclasses.replace(commit, root=sign_root(dataclasses.replace(root, leaves=leaves), key).encode())


def send_hostile(transport: Transport, step: int, kind: str, forged_receipt: Callable[[], bytes]) -> NoReturn:
    """The :data:`HOSTILE_ENV` hook: send the coordinator a crafted message of ``kind`` instead of
    the commitment of ``step``, then stay alive and silent. ``forged_receipt`` signs a receipt
    under a key the coordinator never attested."""
    if kind == "garbage":
        transport.send_bytes(COORDINATOR, b"\xff\xfe{not json at all")
    elif kind in ("oversize", "negative"):
        length = torch.tensor([1 << 40 if kind == "oversize" else -5], dtype=torch.int64)
        transport._send(COORDINATOR, [length], True)  # noqa: SLF001 - a frame no honest sender makes
    elif kind == "wrong_type":
        send_message(transport, COORDINATOR, SnapshotRequest(step))
    elif kind == "bad_receipt":  # off the protocol: a receipt that is not hex
        transport.send_json(
            COORDINATOR, {"type": "commit", "step": step, "receipts": ["zz"], "headers": [], "busy_ns": 0}
        )
    elif kind == "forged_receipt":
        send_message(transport, COORDINATOR, Commit(step, (forged_receipt(),), (), 0))
    elif kind == "deep_json":
        transport.send_bytes(COORDINATOR, b"[" * 100_000 + b"]" * 100_000)
    else:
        raise ValueError(f"unknown hostile message kind {kind!r} (one of {', '.join(HOSTILE_MESSAGES)})")
    threading.Event().wait()
    raise AssertionError("unreachable: the wait has no timeout")


def skew_backward(module: torch.nn.Module, grad: torch.Tensor | None, e: float) -> torch.Tensor | None:
    """The :data:`NUMERICS_ENV` skew of a backward unit: its input gradient, or on stage 0 (no
    input gradient) the accumulated parameter gradients, in place."""
    if grad is not None:
        return grad * (1.0 + e)
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 + e)
    return None


def skew_weights(module: torch.nn.Module, e: float) -> None:
    """The :data:`NUMERICS_ENV` skew of an update: the weights after it, in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.0 + e)
