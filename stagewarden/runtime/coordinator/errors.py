"""How a run ends other than by completing: the exceptions the coordinator raises."""

from __future__ import annotations

from stagewarden.runtime.errors import RuntimeSetupError


class AdmissionRefused(RuntimeSetupError):
    """A worker's attestation failed; the run does not start."""


class RunFailed(RuntimeSetupError):
    """The run stopped: a peer died, timed out or broke the protocol."""


class RunInterrupted(RuntimeSetupError):
    """The run stopped on a worker fault; its directory is resumable (``stagewarden train --resume``).

    ``replaced`` says whether a standby is to take the failed worker's stage on resume (then a
    launcher resumes at once); otherwise an operator must resume the run.
    """

    def __init__(self, message: str, replaced: bool) -> None:
        super().__init__(message)
        self.replaced = replaced


class ResumeError(RuntimeSetupError):
    """A run directory cannot be resumed (the message says why)."""


class TrainingStopped(Exception):
    """Training stops cleanly: the workers are released and the run directory says why."""
