"""Which stage talks to which in one computation of a step: the pipeline, or the pipeline with
one middle stage bypassed (the ``skip_stage`` response, and ``rollback`` or ``eject`` without a
standby).

In a bypassed computation the stage before the bypassed one sends its activations straight to
the stage after it and receives that stage's gradients: the signed headers of those transfers
name that adjacency, and the coordinator and the offline audit accept it only for a computation
the run's response record declares bypassed. The bypassed worker computes, signs and relays
nothing. Its checker (the stage after it) has nothing to check, and the stage before it has no
checker for that computation (its checker is the bypassed worker).
"""

from __future__ import annotations

import dataclasses

from stagewarden.attest.headers import TransferKind


@dataclasses.dataclass(frozen=True)
class Route:
    """The stages of one computation and their adjacency.

    Attributes:
        stages: Pipeline stages ``S``.
        bypass: The bypassed stage, if any (a middle stage: ``0 < bypass < S - 1``).
    """

    stages: int
    bypass: int | None = None

    def __post_init__(self) -> None:
        if self.bypass is not None and not 0 < self.bypass < self.stages - 1:
            raise ValueError(f"only a middle stage can be bypassed, not stage {self.bypass} of {self.stages}")

    def active(self, stage: int) -> bool:
        """Whether ``stage`` computes in this computation."""
        return 0 <= stage < self.stages and stage != self.bypass

    @property
    def active_stages(self) -> list[int]:
        """The computing stages, in pipeline order."""
        return [s for s in range(self.stages) if s != self.bypass]

    def after(self, stage: int) -> int:
        """The stage ``stage`` sends its activations to (``S`` past the last stage)."""
        nxt = stage + 1
        return nxt + 1 if nxt == self.bypass else nxt

    def before(self, stage: int) -> int:
        """The stage ``stage`` receives its activations from (``-1`` before the first stage)."""
        prev = stage - 1
        return prev - 1 if prev == self.bypass else prev

    def neighbour(self, stage: int, kind: TransferKind, incoming: bool) -> int:
        """The stage ``stage`` receives a ``kind`` transfer from (``incoming``) or sends one to."""
        downstream = (kind is TransferKind.ACTIVATION) != incoming
        return self.after(stage) if downstream else self.before(stage)

    def checked(self, stage: int) -> bool:
        """Whether ``stage`` has a working redundant-neighbour checker (``stage + 1``) in this
        computation: both compute."""
        return self.active(stage) and self.active(stage + 1)
