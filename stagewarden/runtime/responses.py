"""Responses to a detection, as data: what the coordinator does, planned by pure functions.

A :class:`~stagewarden.attest.run_record_parts.Detection` (the typed part of the run record,
re-exported here) records one failed check. :func:`plan_response` turns it, the chosen
:class:`Response` and a snapshot of the run (:class:`RunState`) into a :class:`ResponsePlan`
that the engine carries out:

``eject``
   A standby worker takes the convict's stage; every stage restores the latest verified
   checkpoint at or before the detected step and training resumes from there.
``rollback``
   Every stage restores the latest verified checkpoint at or before the first tampered step
   known, and the convict's receipts from before that checkpoint are listed for audit: an
   undetected earlier tamper may already be inside the checkpoint. An audit that finds one
   plans again with ``first_tampered_step`` set to go back further.
``skip_stage``
   As in the paper: the detected step is recomputed with the convict's stage bypassed (the
   previous stage sends straight to the next, :class:`~stagewarden.runtime.route.Route`; the
   convict computes and relays nothing) and its update frozen for that step; the next step uses
   it again. Valid because every block is residual. The first stage (embeddings)
   and the last (head and loss) cannot be bypassed: skipping them falls back to ``restart``.
``restart``
   The detected step is recomputed from the weights before it (the paper's baseline).

Fallbacks are part of the plan (:attr:`ResponsePlan.fallback_from`): ``eject`` without a
standby falls back to ``skip_stage``, which on the first or last stage falls back to
``restart``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stagewarden.attest.run_record_parts import Detection, ReceiptRef
from stagewarden.runtime.model import StageModule
from stagewarden.runtime.units import ForwardState, optimizer_step, stage_backward, stage_forward, step_loss

__all__ = [
    "Detection",
    "ReceiptRef",
    "Response",
    "ResponseError",
    "ResponsePlan",
    "RunState",
    "can_skip",
    "plan_response",
    "train_step_skipping",
]


class Response(enum.StrEnum):
    """What the coordinator does on a detection (the spec's ``defense.response``)."""

    EJECT = "eject"
    ROLLBACK = "rollback"
    SKIP_STAGE = "skip_stage"
    RESTART = "restart"


class ResponseError(ValueError):
    """A response that cannot be planned from the given detection and run state."""


@dataclasses.dataclass(frozen=True)
class RunState:
    """The coordinator's view of the run that a response is planned from.

    Attributes:
        num_stages: Number of pipeline stages.
        step: The current step (the one being trained or just finished).
        workers: Stage to the worker id serving it.
        standbys: Spare worker ids, in the order they are used.
        checkpoints: Steps with a verified checkpoint; step 0 (the initial weights, rebuilt from
            the seed) is always available even if absent.
        receipts: The committed receipts (at least the convict's).
    """

    num_stages: int
    step: int
    workers: Mapping[int, str]
    standbys: Sequence[str] = ()
    checkpoints: Sequence[int] = ()
    receipts: Sequence[ReceiptRef] = ()


@dataclasses.dataclass(frozen=True)
class ResponsePlan:
    """What the engine does about a detection.

    Attributes:
        response: The response carried out (after any fallback).
        stage: The convict's stage.
        convict: The convict's worker id.
        redo_from_step: The first step to (re)compute after the response.
        checkpoint_step: Every stage restores this verified checkpoint (eject, rollback);
            ``None`` when no weights are restored (skip_stage, restart).
        standby: The worker that takes the convict's stage (eject).
        ejected: The worker removed from the run (eject).
        audit: The convict's receipts to re-execute (rollback), newest first.
        bypass_stage: The stage left out of the redone step, its neighbours talking directly (skip_stage).
        frozen_stages: Stages whose update is skipped for the redone step (skip_stage).
        fallback_from: The response asked for when it could not be carried out, else ``None``.
        reason: One sentence on why the plan is what it is.
        retired_pipeline: With several pipelines and no standby left: the convict's pipeline,
            taken out of the run (eject, rollback); its workers are sent home and the others go on.
    """

    response: Response
    stage: int
    convict: str
    redo_from_step: int
    checkpoint_step: int | None = None
    standby: str | None = None
    ejected: str | None = None
    audit: tuple[ReceiptRef, ...] = ()
    bypass_stage: int | None = None
    frozen_stages: tuple[int, ...] = ()
    fallback_from: Response | None = None
    reason: str = ""
    retired_pipeline: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (``retired_pipeline`` only when a pipeline was retired)."""
        data = dataclasses.asdict(self)
        data["response"] = self.response.value
        data["fallback_from"] = None if self.fallback_from is None else self.fallback_from.value
        data["audit"] = [dataclasses.asdict(r) for r in self.audit]
        data["frozen_stages"] = list(self.frozen_stages)
        if self.retired_pipeline is None:
            del data["retired_pipeline"]
        return data


def can_skip(stage: int, num_stages: int) -> bool:
    """Whether ``stage`` can be bypassed: only a middle stage (not the embeddings, not the head)."""
    return 0 < stage < num_stages - 1


def _checkpoint_at_or_before(state: RunState, step: int) -> int:
    candidates = [c for c in state.checkpoints if 0 <= c <= step]
    return max(candidates, default=0)


def plan_response(
    response: Response | str, detection: Detection, state: RunState, first_tampered_step: int | None = None
) -> ResponsePlan:
    """Plan ``response`` to ``detection`` (see the module docstring for each response).

    Args:
        response: The response the spec asks for.
        detection: The detection.
        state: The run as the coordinator sees it.
        first_tampered_step: For rollback: the earliest step at which the convict is known to
            have tampered (from an audit); defaults to the detected step.

    Raises:
        ResponseError: The detection's stage is not in the pipeline or its worker does not
            serve that stage.
    """
    wanted = Response(response)
    s, n = detection.stage, state.num_stages
    if not 0 <= s < n:
        raise ResponseError(f"the detection names stage {s}, which is not in a pipeline of {n} stages")
    if state.workers.get(s) != detection.worker:
        raise ResponseError(f"the detection names worker {detection.worker!r}, which does not serve stage {s}")
    fallback: Response | None = None
    chosen = wanted
    if chosen is Response.EJECT and not state.standbys:
        chosen, fallback = Response.SKIP_STAGE, Response.EJECT
    if chosen is Response.SKIP_STAGE and not can_skip(s, n):
        chosen, fallback = Response.RESTART, fallback or Response.SKIP_STAGE

    if chosen is Response.EJECT:
        checkpoint = _checkpoint_at_or_before(state, detection.step)
        return ResponsePlan(
            Response.EJECT,
            stage=s,
            convict=detection.worker,
            redo_from_step=checkpoint,
            checkpoint_step=checkpoint,
            standby=state.standbys[0],
            ejected=detection.worker,
            reason=f"standby {state.standbys[0]} takes stage {s}; every stage restores step {checkpoint}",
        )
    if chosen is Response.ROLLBACK:
        first = detection.step if first_tampered_step is None else min(first_tampered_step, detection.step)
        checkpoint = _checkpoint_at_or_before(state, first)
        audit = sorted(
            (r for r in state.receipts if r.worker == detection.worker and r.step < checkpoint),
            key=lambda r: (r.step, r.microbatch, r.unit_kind),
            reverse=True,
        )
        return ResponsePlan(
            Response.ROLLBACK,
            stage=s,
            convict=detection.worker,
            redo_from_step=checkpoint,
            checkpoint_step=checkpoint,
            audit=tuple(audit),
            reason=f"restore step {checkpoint}, at or before the first tampered step {first}; "
            f"audit the convict's {len(audit)} receipts from before it",
        )
    if chosen is Response.SKIP_STAGE:
        why = "no standby to eject to; " if fallback is Response.EJECT else ""
        return ResponsePlan(
            Response.SKIP_STAGE,
            stage=s,
            convict=detection.worker,
            redo_from_step=detection.step,
            bypass_stage=s,
            frozen_stages=(s,),
            fallback_from=fallback,
            reason=f"{why}redo step {detection.step} with stage {s} bypassed and its update frozen",
        )
    why = ""
    if fallback is not None:
        why = f"stage {s} holds the {'embeddings' if s == 0 else 'head'} and cannot be bypassed; "
        if fallback is Response.EJECT:
            why = "no standby to eject to; " + why
    return ResponsePlan(
        Response.RESTART,
        stage=s,
        convict=detection.worker,
        redo_from_step=detection.step,
        fallback_from=fallback,
        reason=f"{why}redo step {detection.step} from the weights before it",
    )


def train_step_skipping(
    stages: Sequence[StageModule],
    optimizers: Sequence[torch.optim.Optimizer],
    microbatches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    skip: int,
) -> float:
    """One training step of the pipeline's math with stage ``skip`` bypassed.

    The skipped stage's forward is the identity on the activation ``(B, T, C)`` (its blocks are
    residual, so removing them leaves a valid residual stream), its backward passes the gradient
    through unchanged, and its optimizer does not step (its weights and optimizer state are
    frozen for the step). The other stages run the units of :mod:`stagewarden.runtime.units`.

    Args:
        stages: The stages, in pipeline order.
        optimizers: One optimizer per stage.
        microbatches: The step's ``M`` pairs ``(x, y)``, each ``(B, T)``.
        skip: The stage to bypass; must be a middle stage (:func:`can_skip`).

    Returns:
        The step's loss.

    Raises:
        ResponseError: ``skip`` is the first or the last stage, or not a stage at all.
    """
    if not can_skip(skip, len(stages)):
        raise ResponseError(
            f"stage {skip} cannot be bypassed in a pipeline of {len(stages)} stages: only a middle stage "
            "can (the first holds the embeddings, the last the head); restart the step instead"
        )
    M = len(microbatches)  # noqa: N806
    active = [stage for stage in stages if stage.index != skip]
    states: dict[int, list[ForwardState]] = {stage.index: [] for stage in active}
    losses = []
    for x, y in microbatches:
        activation = x  # (B, T) ids, then (B, T, C)
        for stage in active:
            fwd = stage_forward(stage, activation, M, targets=y if stage.is_last else None)
            states[stage.index].append(fwd)
            activation = fwd.output.detach()  # the skipped stage passes it on unchanged
        assert fwd.loss is not None
        losses.append(fwd.loss)
    for m in range(M):
        grad: torch.Tensor | None = None
        for stage in reversed(active):
            grad = stage_backward(states[stage.index][m], grad)  # (B, T, C); identity through the skipped stage
    for stage, optimizer in zip(stages, optimizers, strict=True):
        if stage.index != skip:
            optimizer_step(optimizer)
    loss: float = step_loss(losses)
    return loss
