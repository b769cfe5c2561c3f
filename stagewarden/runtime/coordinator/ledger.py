"""What each stage must hold: the weights and optimizer-state digests its next step and update
must start from, what a restore takes back, and the gradient traces its update receipts commit to."""

from __future__ import annotations

from stagewarden.attest.receipts import Receipt, UnitKind
from stagewarden.attest.tensor_digest import (
    digest_state_dict,
)
from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import EMPTY_OPTIMIZER, RunContext
from stagewarden.runtime.model import build_stage


class Ledger:
    """The expected state of every slot, from the update receipts the coordinator accepted (the
    maps below are keyed by slot, which with one pipeline is the stage).

    Attributes:
        final_weights: The weights digest (hex) each stage last reported (update, restore or load).
        optimizer: Per stage, the digest (hex) of the optimizer state its next update must start
            from: the state its last update receipt committed to, or that of the checkpoint it loaded.
        weights: Per stage, the digest (hex) of the weights its next step must compute with: the
            weights its last update receipt committed to, those of the checkpoint it loaded, or
            (until then) its initial weights, derived from the seed or resumed from a checkpoint.
        undo: Per stage, the step of its last accepted update and the optimizer state and weights
            expected before it (what a restore of that step goes back to).
        last_updates: Per stage, its last accepted update receipt and the weights digest it commits to.
        traces: Per step of the last few whose update ran, and per stage that updated: the
            gradient trace its update receipt commits to.
        updated_commits: The commitments of the last few steps whose update ran, by step (the
            referee checks the backward units behind an update with them).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.final_weights: dict[int, str] = {}
        self._initial: dict[int, bytes] = {}
        self.layout = ctx.config.layout
        self.optimizer: dict[int, str] = {q: EMPTY_OPTIMIZER for q in range(self.layout.slots)}
        self.weights: dict[int, str] = {}
        self.undo: dict[int, tuple[int, str, str]] = {}
        self.last_updates: dict[int, tuple[Receipt, bytes]] = {}
        self.traces: dict[int, dict[int, list[bytes]]] = {}
        self.updated_commits: dict[int, StepCommit] = {}

    def stage_weights_digest(self, s: int) -> bytes:
        """The digest of the weights stage ``s`` holds now: those its last update, restore or load
        reported, else the initial weights derived from the seed."""
        known = self.final_weights.get(s)
        return bytes.fromhex(known) if known else self.initial_weights_digest(s)

    def initial_weights_digest(self, s: int) -> bytes:
        """The digest of stage ``s``'s initial weights, derived from the seed (the stage is built
        once: admission measures it, and the weights chain starts from it)."""
        stage = self.layout.stage(s)
        if stage not in self._initial:
            c = self.ctx.config
            self._initial[stage] = digest_state_dict(build_stage(c.model, c.stages, stage, c.seed).state_dict())
        return self._initial[stage]

    def expected_weights(self, s: int) -> str:
        """The weights digest (hex) stage ``s``'s next step must compute with (see :attr:`weights`)."""
        expected = self.weights.get(s)
        if expected is None:  # no update or load yet: the initial weights
            expected = self.weights[s] = self.stage_weights_digest(s).hex()
        return expected

    def gradient_trace(self, commit: StepCommit, stage: int) -> list[bytes] | None:
        """The gradient trace stage ``stage``'s update receipt of ``commit``'s step commits to; for
        stage 0 its backward receipts are the trace. ``None`` when the stage made no update that
        step (a stage frozen by ``skip_stage``: its gradients of the step are never used)."""
        trace = self.traces.get(commit.step, {}).get(stage)
        if trace is None and self.layout.stage(stage) == 0:
            trace = self.backward_outputs(commit, stage)
        return trace

    def backward_outputs(self, commit: StepCommit, stage: int) -> list[bytes] | None:
        """The output digests of ``stage``'s backward receipts in ``commit``, in micro-batch order
        (stage 0's gradient trace); ``None`` when one is missing."""
        receipts = [commit.receipt(stage, m, UnitKind.BACKWARD) for m in range(self.ctx.config.microbatches)]
        return None if any(r is None for r in receipts) else [r.output_digest for r in receipts if r is not None]
