"""What the offline audit can check in a run directory: a run trained without attestation (no
verifier key, no results) or without receipts (no receipt log) is audited for what it has, and
the audit says, as a warning finding, what it lacks and so cannot vouch for.

A run counts as trained without attestation only where its own ``summary.json`` says so
(``config.attestation`` false) and it holds no verifier key, and only when the auditor pinned
no verifier key: pinning a key says attestation is expected, so then every worker's key must be
attested as usual. A directory whose summary claims attestation but lacks the key or the log
still fails to read (a missing file is an error, never a silent pass).
"""

from __future__ import annotations

import dataclasses

from .errors import ErrorCode
from .rundir import ATTESTATION_DIR, VERIFIER_KEY_FILE, RunDir


@dataclasses.dataclass(frozen=True)
class AuditScope:
    """Which parts of a run directory the audit checks.

    Attributes:
        attestation: check the attestation results and that every signing key was attested.
        receipts: check the receipt log.
    """

    attestation: bool = True
    receipts: bool = True

    def lacks(self) -> list[tuple[ErrorCode, str]]:
        """A warning (code, message) for each part the run does not have."""
        out = []
        if not self.attestation:
            out.append(
                (
                    ErrorCode.ATTESTATION_ABSENT,
                    "the run was trained without attestation (summary.json: attestation off; no "
                    f"{ATTESTATION_DIR}/{VERIFIER_KEY_FILE}): no signing key is bound to an attested worker, so "
                    "the audit checks that the records are signed, complete, chained and linked, not who signed them",
                )
            )
        if not self.receipts:
            out.append(
                (
                    ErrorCode.RECEIPTS_ABSENT,
                    "the run kept no receipts (summary.json: receipts off; no receipt log): none of its "
                    "computation can be checked offline",
                )
            )
        return out


def audit_scope(run: RunDir, pinned: bool) -> AuditScope:
    """What the audit of ``run`` checks, given whether the auditor pinned a verifier key."""
    training = run.summary.training
    no_key = not run.has_file(run.attestation_file(VERIFIER_KEY_FILE))
    unattested = not pinned and training is not None and not training.attestation_configured and no_key
    unlogged = training is not None and not training.receipts_logged and not run.has_file(run.log_path)
    return AuditScope(attestation=not unattested, receipts=not unlogged)
