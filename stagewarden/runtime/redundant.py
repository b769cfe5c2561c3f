"""The redundant-neighbour defence of Lu et al. (2024), as a baseline to compare spot checking with.

Stage ``s + 1`` keeps a replica of stage ``s`` (:class:`NeighbourReplica`), recomputes ``s``'s
forward (and backward) and compares bit for bit with what ``s`` sent. The replica starts from the
same initial weights (the run seed) and applies its own optimizer update to the gradients it
recomputes, as the paper's checker does: it never takes weights from the checked worker, so
tampered weights show up as a forward mismatch at the next step. :meth:`NeighbourReplica.resync`
loads weights from a verified checkpoint after a response (rollback, eject).

Where the recomputation's input comes from is explicit (:class:`InputVia`). With
``checked_worker`` the checked stage relays its own input, and a malicious stage that forges an
input consistent with its forged output (``y' = f(x')``) passes the check: the weakness the
prover finds. With ``coordinator`` (a trusted relay) or ``upstream`` (stage ``s - 1``, honest
unless it colludes) the checker recomputes from the genuine input and the forgery is caught.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import torch

from stagewarden.attest.tensor_digest import digest_tensor
from stagewarden.runtime.model import GPTConfig, StageModule, build_stage
from stagewarden.runtime.reexecute import export_optimizer_state, import_optimizer_state
from stagewarden.runtime.units import (
    ForwardState,
    TrainConfig,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
)


class InputVia(enum.StrEnum):
    """Where the checker gets the checked unit's input (the spec's ``input_via``)."""

    COORDINATOR = "coordinator"
    """A trusted relay forwards the genuine input."""
    UPSTREAM = "upstream"
    """Stage ``s - 1`` forwards what it sent; genuine unless ``s - 1`` colludes with ``s``."""
    CHECKED_WORKER = "checked_worker"
    """The checked stage ``s`` forwards its own input: it can forge a consistent pair."""


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """The result of one redundant-neighbour check.

    Attributes:
        passed: Whether the recomputation equals what the checked stage sent.
        checker: The checking stage (``s + 1``).
        checked: The checked stage ``s``.
        blamed: ``s`` when the check fails, otherwise ``None``.
        step: The step of the checked unit.
        microbatch: The micro-batch of the checked unit.
        unit_kind: ``forward`` or ``backward``.
        input_via: Where the forward recomputation's input came from; ``None`` for a backward
            check, whose input is the gradient the (honest) checker itself sent.
        max_abs_diff: Largest absolute difference between recomputed and sent (0 when equal).
        evidence_digest: Hex digest of the sent tensor the check is about.
    """

    passed: bool
    checker: int
    checked: int
    blamed: int | None
    step: int
    microbatch: int
    unit_kind: str
    input_via: InputVia | None
    max_abs_diff: float
    evidence_digest: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        data = dataclasses.asdict(self)
        data["input_via"] = None if self.input_via is None else self.input_via.value
        return data


def select_input(
    input_via: InputVia | str,
    *,
    genuine: torch.Tensor,
    from_checked_worker: torch.Tensor | None = None,
    from_upstream: torch.Tensor | None = None,
) -> torch.Tensor:
    """The input the checker recomputes from, given where it comes from.

    Args:
        input_via: The channel.
        genuine: The input the coordinator relays (the data for stage 0, else what ``s - 1`` sent).
        from_checked_worker: What the checked stage claims its input was.
        from_upstream: What stage ``s - 1`` forwards to the checker.

    Raises:
        ValueError: The chosen channel's tensor was not given.
    """
    via = InputVia(input_via)
    if via is InputVia.COORDINATOR:
        return genuine
    chosen = from_checked_worker if via is InputVia.CHECKED_WORKER else from_upstream
    if chosen is None:
        raise ValueError(f"input_via={via.value} needs the tensor forwarded on that channel")
    return chosen


class NeighbourReplica:
    """Stage ``s + 1``'s copy of stage ``s``: recomputes its units and tracks its weights.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        checked: The checked stage ``s``; its checker is ``s + 1`` (``s`` must not be the last stage).
        seed: The run seed (the replica starts from ``s``'s initial weights).
        train: The optimizer settings; the replica steps its own AdamW with them.
        device: Where the replica computes (the checker's device, so that its recomputation is
            bitwise comparable with the checked stage's).
    """

    def __init__(
        self,
        config: GPTConfig,
        stages: int,
        checked: int,
        seed: int,
        train: TrainConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0 <= checked < stages - 1:
            raise ValueError(f"stage {checked} has no next stage to check it in a pipeline of {stages}")
        self.config = config
        self.stages = stages
        self.checked = checked
        self.checker = checked + 1
        self.train = train
        self.module: StageModule = build_stage(config, stages, checked, seed).to(device)
        self.optimizer = make_optimizer(self.module, train)
        self._states: dict[int, ForwardState] = {}

    def _outcome(
        self, passed: bool, step: int, microbatch: int, kind: str, via: InputVia | None, sent: torch.Tensor, diff: float
    ) -> CheckOutcome:
        return CheckOutcome(
            passed=passed,
            checker=self.checker,
            checked=self.checked,
            blamed=None if passed else self.checked,
            step=step,
            microbatch=microbatch,
            unit_kind=kind,
            input_via=via,
            max_abs_diff=diff,
            evidence_digest=digest_tensor(sent).hex(),
        )

    @staticmethod
    def _diff(expected: torch.Tensor, sent: torch.Tensor) -> tuple[bool, float]:
        if expected.shape != sent.shape or expected.dtype != sent.dtype:
            return False, float("inf")
        equal = torch.equal(expected, sent)
        diff = 0.0 if equal else float((expected.double() - sent.double()).abs().nan_to_num(nan=float("inf")).max())
        return equal, diff

    def check_forward(
        self,
        step: int,
        microbatch: int,
        microbatches: int,
        recompute_input: torch.Tensor,
        sent_output: torch.Tensor,
        input_via: InputVia | str,
    ) -> CheckOutcome:
        """Recompute ``s``'s forward on ``recompute_input`` and compare bit for bit with ``sent_output``.

        Args:
            step: The step.
            microbatch: The micro-batch.
            microbatches: ``M`` of the step.
            recompute_input: The input from :func:`select_input`: token ids ``(B, T)`` or ``(B, T, C)``.
            sent_output: What ``s`` sent to ``s + 1`` ``(B, T, C)``.
            input_via: The channel ``recompute_input`` came from (recorded in the outcome).

        The replica keeps the forward state for :meth:`check_backward`.
        """
        via = InputVia(input_via)
        state = stage_forward(self.module, recompute_input, microbatches)
        self._states[microbatch] = state
        equal, diff = self._diff(state.output.detach(), sent_output)
        return self._outcome(equal, step, microbatch, "forward", via, sent_output, diff)

    def check_backward(
        self, step: int, microbatch: int, grad_output: torch.Tensor, sent_grad_input: torch.Tensor | None
    ) -> CheckOutcome:
        """Recompute ``s``'s backward and compare the input gradient with what ``s`` sent back.

        ``grad_output`` is the gradient the checker itself sent to ``s`` (the checker is
        honest, so it is genuine). The recomputed parameter gradients accumulate in the replica
        for :meth:`apply_update`. On stage 0 there is no input gradient to compare: the
        outcome passes and only the gradients accumulate.
        """
        state = self._states.pop(microbatch, None)
        if state is None:
            raise ValueError(f"check_forward of micro-batch {microbatch} must run before its check_backward")
        grad_input = stage_backward(state, grad_output)
        if grad_input is None or sent_grad_input is None:
            empty = torch.zeros(0)
            return self._outcome(True, step, microbatch, "backward", None, empty, 0.0)
        equal, diff = self._diff(grad_input.detach(), sent_grad_input)
        return self._outcome(equal, step, microbatch, "backward", None, sent_grad_input, diff)

    def apply_update(self) -> None:
        """Step the replica's own optimizer on the gradients it recomputed, as honest ``s`` does."""
        optimizer_step(self.optimizer)
        self._states.clear()

    def reset_step(self) -> None:
        """Drop the forward states and gradients of a step that is being recomputed."""
        self.module.zero_grad(set_to_none=True)
        self._states.clear()

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copies of the replica's weights and optimizer state (to :meth:`resync` to later)."""
        weights = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return weights, export_optimizer_state(self.module, self.optimizer)

    def resync(self, weights: Mapping[str, torch.Tensor], optimizer_state: Mapping[str, torch.Tensor]) -> None:
        """Replace the replica's weights and optimizer state (after a rollback or an eject).

        Args:
            weights: ``s``'s state dict from a verified checkpoint.
            optimizer_state: ``s``'s flat optimizer state from the same checkpoint.
        """
        self.module.load_state_dict(dict(weights), strict=True)
        self.optimizer = make_optimizer(self.module, self.train)
        import_optimizer_state(self.module, self.optimizer, optimizer_state)
        self.reset_step()
