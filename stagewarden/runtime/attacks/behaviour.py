"""How a stage worker behaves under an attack plan: the hooks the worker calls at each point of a
step (:class:`NoAttack`, the honest behaviour) and the plan's malicious behaviour
(:class:`PlanAttack`), chosen per stage by :func:`make_attack`."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from stagewarden.runtime.attacks.plan import TENSOR_KINDS, AttackKind, AttackPlan, Direction
from stagewarden.runtime.attacks.tamper import (
    equivocate,
    poison_data,
    tamper_gradients,
    tamper_optimizer,
    tamper_tensor,
    tamper_weights,
)
from stagewarden.runtime.redundant import CheckOutcome
from stagewarden.runtime.reexecute import optimizer_state_view


class NoAttack:
    """The honest behaviour: every hook returns its argument unchanged.

    ``received`` is the message the unit received (the input activation of a forward unit, the
    gradient of the output of a backward unit), ``None`` where there is none.
    """

    attempt = 0
    """How often the current step has been recomputed after a detection (set by the worker)."""

    def apply_input(self, stage: int, step: int, micro_batch: int, inputs: torch.Tensor) -> torch.Tensor:
        """Transform the input of a forward unit (token ids on stage 0, the received activation otherwise)."""
        return inputs

    def apply_forward(
        self, stage: int, step: int, micro_batch: int, output: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform the output activation a forward unit commits to in its receipt (or the last stage's logits)."""
        return output

    def apply_backward(
        self, stage: int, step: int, micro_batch: int, grad: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform the input gradient a backward unit commits to in its receipt."""
        return grad

    def outgoing(
        self, stage: int, step: int, micro_batch: int, direction: str, committed: torch.Tensor
    ) -> torch.Tensor:
        """What is actually sent to the neighbour, given what the receipt commits to (``direction``:
        ``forward`` or ``backward``). Honest: the committed tensor."""
        return committed

    def apply_update(self, stage: int, step: int, module: torch.nn.Module) -> None:
        """Change the stage's weights in place after the optimizer step."""

    def apply_optimizer(self, stage: int, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Change the stage's optimizer state in place at the start of ``step`` (after the state
        before the step is recorded); whether it changed."""
        return False

    def apply_accumulated(self, stage: int, step: int, micro_batch: int, module: torch.nn.Module) -> None:
        """Change the stage's accumulated parameter gradients in place right before its backward
        unit of ``micro_batch`` (after the previous unit committed to them)."""

    def swap_weights(self, stage: int, step: int, module: torch.nn.Module) -> bool:
        """Change the stage's weights in place at the start of ``step``, before the worker records
        them as the weights the step runs with; whether it changed them."""
        return False

    def withholds(self, stage: int, step: int, micro_batch: int) -> bool:
        """Whether the stage keeps back its message of ``micro_batch`` and everything after it
        (``withhold``: it stays alive and silent). Honest: never."""
        return False

    def report_checks(self, stage: int, step: int, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
        """What a checking stage (redundant neighbour) reports of its checks. Honest: the outcomes."""
        return outcomes

    def relay_copy(
        self, stage: int, step: int, micro_batch: int, sent: torch.Tensor, committed: torch.Tensor
    ) -> torch.Tensor:
        """The activation this stage relays to its next stage's checker (``input_via: upstream``),
        given what it sent and what its receipt commits to. Honest: what it sent."""
        return sent


class PlanAttack(NoAttack):
    """A malicious stage's behaviour for an :class:`~stagewarden.runtime.attacks.AttackPlan`.

    Where each kind acts:

    * tensor kinds (``reverse``, ``random``, ``scale``, ``noise``, ``bitflip``, ``lazy``,
      ``replay``): on the output activation (direction ``forward``) or the input gradient
      (``backward``) before it is committed and sent; the receipt commits to what is sent.
      ``lazy`` resends this stage's message of the same micro-batch at the previous step, else
      what it received, else zeros; ``replay`` sends the last message this stage sent before this
      one (the previous micro-batch, or the last of the previous step), and cannot fire on the
      stage's very first message;
    * ``poison_data``: on stage 0's token ids before the forward (the receipt commits to the
      poisoned ids);
    * ``weights``: on the parameters after the real optimizer step (the update receipt commits to
      the tampered weights);
    * ``optimizer``: on the optimizer state at the start of a step;
    * ``grad_drift``: on the accumulated parameter gradients right before a backward unit (its
      messages stay honest; the unit, and the gradient trace the update commits to, carry the
      drift on);
    * ``swap_weights``: on the weights at the start of a step, before the worker records them
      (its receipts commit to the swapped weights, and a restore of the step brings them back);
    * ``equivocate``: the receipt (and so FETCH, which returns the unit's inputs and weights)
      commits to the honest message, while the negated message is sent to the neighbour under a
      header signed by this stage;
    * tensor kinds with direction ``input``: on the received activation before the forward, so
      the stage sends an output consistent with the forged input (and relays the forged input
      to its checker under ``input_via: checked_worker``);
    * as a checking stage (``redundant_neighbour``): a malicious checker never reports a failed
      check of a stage it colludes with (one named in the same plan), and ``false_accuse``
      reports a mismatch in every checked forward unit the attack fires on; a stage named only
      in the plan's ``covers`` does nothing else;
    * as a relay (``input_via: upstream``): a forward ``equivocate`` stage sends its next stage
      the honest activation its receipt commits to and that stage's checker the negated one
      under a second signed header (the prover's framing strategy).
    """

    def __init__(self, plan: AttackPlan, vocab_size: int) -> None:
        self.plan = plan
        self.vocab_size = vocab_size
        self.attempt = 0
        self.relay_equivocation = False
        """Set by the worker when it relays its activations to a checker (``input_via: upstream``)."""
        self._last_sent: dict[tuple[str, int], torch.Tensor] = {}
        self._previous: dict[str, torch.Tensor] = {}

    def _fires(self, stage: int, step: int, micro_batch: int) -> bool:
        return self.plan.active(stage, step, micro_batch, self.attempt)

    def apply_input(self, stage: int, step: int, micro_batch: int, inputs: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if plan.kind is AttackKind.POISON_DATA and stage == 0 and self._fires(stage, step, micro_batch):
            return poison_data(inputs, plan, step, micro_batch, self.vocab_size)
        if plan.direction is Direction.INPUT and stage > 0 and plan.kind in TENSOR_KINDS:
            return self._message(Direction.INPUT, stage, step, micro_batch, inputs, None)
        return inputs

    def relay_copy(
        self, stage: int, step: int, micro_batch: int, sent: torch.Tensor, committed: torch.Tensor
    ) -> torch.Tensor:
        if (
            self.relay_equivocation
            and self.plan.kind is AttackKind.EQUIVOCATE
            and self.plan.direction is Direction.FORWARD
            and self._fires(stage, step, micro_batch)
        ):
            return equivocate(committed).sent  # the next stage got the honest activation
        return sent

    def _message(
        self, direction: Direction, stage: int, step: int, mb: int, tensor: torch.Tensor, received: torch.Tensor | None
    ) -> torch.Tensor:
        plan = self.plan
        out = tensor
        if plan.kind in TENSOR_KINDS and plan.direction is direction and self._fires(stage, step, mb):
            out = tamper_tensor(
                plan,
                tensor,
                stage=stage,
                step=step,
                microbatch=mb,
                stale=self._last_sent.get((direction.value, mb)),
                stage_input=received,
                earlier=self._previous.get(direction.value),
            )
        return out

    def apply_forward(
        self, stage: int, step: int, micro_batch: int, output: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._message(Direction.FORWARD, stage, step, micro_batch, output, received)

    def apply_backward(
        self, stage: int, step: int, micro_batch: int, grad: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._message(Direction.BACKWARD, stage, step, micro_batch, grad, received)

    def outgoing(
        self, stage: int, step: int, micro_batch: int, direction: str, committed: torch.Tensor
    ) -> torch.Tensor:
        sent = committed
        if (
            self.plan.kind is AttackKind.EQUIVOCATE
            and self.plan.direction.value == direction
            and not (self.relay_equivocation and direction == "forward")
            and self._fires(stage, step, micro_batch)
        ):
            sent = equivocate(committed).sent
        self._last_sent[(direction, micro_batch)] = sent.detach()
        self._previous[direction] = sent.detach()
        return sent

    def report_checks(self, stage: int, step: int, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
        plan, reported = self.plan, []
        for o in outcomes:
            if not o.passed and o.checked in plan.stages:  # hide a colluder's tampering
                o = dataclasses.replace(o, passed=True, blamed=None, max_abs_diff=0.0)
            if (
                plan.kind is AttackKind.FALSE_ACCUSE
                and o.passed
                and o.unit_kind == "forward"
                and o.checked not in plan.stages
                and self._fires(stage, step, o.microbatch)
            ):
                o = dataclasses.replace(o, passed=False, blamed=o.checked, max_abs_diff=float("inf"))
            reported.append(o)
        return reported

    def withholds(self, stage: int, step: int, micro_batch: int) -> bool:
        return self.plan.kind is AttackKind.WITHHOLD and self._fires(stage, step, micro_batch)

    def apply_optimizer(self, stage: int, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        if self.plan.kind is not AttackKind.OPTIMIZER or not self._fires(stage, step, 0):
            return False
        state = optimizer_state_view(module, optimizer)
        tampered = tamper_optimizer(self.plan, stage, state)
        with torch.no_grad():
            for key, value in tampered.items():
                state[key].copy_(value)
        return bool(tampered)

    def apply_accumulated(self, stage: int, step: int, micro_batch: int, module: torch.nn.Module) -> None:
        if self.plan.kind is not AttackKind.GRAD_DRIFT or not self._fires(stage, step, micro_batch):
            return
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach() for n, p in params}
        tampered = tamper_gradients(self.plan, stage, grads)
        with torch.no_grad():
            for name, p in params:
                p.grad = tampered[name]

    def swap_weights(self, stage: int, step: int, module: torch.nn.Module) -> bool:
        if self.plan.kind is not AttackKind.SWAP_WEIGHTS or not self._fires(stage, step, 0):
            return False
        self._drift_weights(stage, module)
        return True

    def apply_update(self, stage: int, step: int, module: torch.nn.Module) -> None:
        if self.plan.kind is AttackKind.WEIGHTS and self._fires(stage, step, 0):
            self._drift_weights(stage, module)

    def _drift_weights(self, stage: int, module: torch.nn.Module) -> None:
        """Move the stage's parameters in place along the plan's drift direction (:func:`tamper_weights`)."""
        params = dict(module.named_parameters())
        tampered = tamper_weights(self.plan, stage, {k: v.detach() for k, v in params.items()})
        with torch.no_grad():
            for name, value in tampered.items():
                params[name].copy_(value)


def make_attack(plan: Any, stage: int, vocab_size: int = 256) -> NoAttack | None:
    """The attack object a worker of ``stage`` applies for the run's attack plan; ``None`` for no plan.

    The plan is JSON data from :attr:`RunConfig.attack <stagewarden.runtime.config.RunConfig.attack>`
    (:meth:`AttackPlan.to_json <stagewarden.runtime.attacks.AttackPlan.to_json>`). A stage the
    plan does not name gets :class:`NoAttack`; a malicious stage gets :class:`PlanAttack`.

    Raises:
        ValueError: The plan is malformed.
    """
    if plan is None:
        return None
    parsed = AttackPlan.from_json(plan)
    return PlanAttack(parsed, vocab_size) if stage in parsed.stages | parsed.covers else NoAttack()
