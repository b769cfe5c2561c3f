"""What the offline audit reports: findings (what is wrong, where, and who is implicated) and
the report that gathers them, with its JSON form."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable
from typing import Any

from .errors import AttestError, ErrorCode
from .headers import SignedHeader
from .receipt_log import LogRecord
from .receipts import Receipt
from .run_limits import MAX_FINDINGS_PER_CODE
from .rundir import LOG_FILE

#: The ``format`` of the JSON audit report.
AUDIT_FORMAT = "stagewarden.audit"
#: Its version.
AUDIT_VERSION = 1
#: How far in the future (by the auditor's clock) a signing time may lie before it is a finding.
CLOCK_SKEW = dt.timedelta(minutes=5)


class Severity(enum.StrEnum):
    """How bad a finding is: errors fail the audit (exit code 1), warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing the audit found.

    Attributes:
        code: what kind of problem (an :class:`~stagewarden.attest.errors.ErrorCode`).
        severity: error or warning.
        message: what is wrong, in words.
        workers: the workers the finding implicates (empty when none can be named).
        file: the file, relative to the run directory.
        record: the log record index, when the finding is about a record.
        offset: the byte offset in the file.
        step: the step of the unit concerned.
        micro_batch: its micro-batch.
        unit: its unit or transfer kind (``forward``, ``backward``, ``update``, ``activation``,
            ``gradient``).
        stage: its stage.
    """

    code: ErrorCode
    severity: Severity
    message: str
    workers: tuple[str, ...] = ()
    file: str | None = None
    record: int | None = None
    offset: int | None = None
    step: int | None = None
    micro_batch: int | None = None
    unit: str | None = None
    stage: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object (every key present; ``null`` where unknown)."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "message": self.message,
            "workers": list(self.workers),
            "file": self.file,
            "record": self.record,
            "offset": self.offset,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "unit": self.unit,
            "stage": self.stage,
        }

    @property
    def where(self) -> str:
        """A short location, as ``file#record@offset stage=.. step=.. mb=.. unit``."""
        parts = []
        if self.file:
            loc = self.file
            if self.record is not None:
                loc += f"#{self.record}"
            if self.offset is not None:
                loc += f"@{self.offset}"
            parts.append(loc)
        if self.stage is not None:
            parts.append(f"stage={self.stage}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.micro_batch is not None:
            parts.append(f"mb={self.micro_batch}")
        if self.unit:
            parts.append(self.unit)
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The outcome of an audit.

    Attributes:
        run_dir: the audited directory.
        run_id: the run id from the summary.
        verifier_key: hex of the verifier key results were checked against.
        verifier_key_pinned: whether that key was given by the caller (else read from the run).
        records: intact log records.
        receipts: receipt records.
        headers: signed-header records.
        findings: everything found, errors and warnings.
        seconds: how long the audit took.
        coordinator_key: hex of the coordinator key the step heads were checked against ("" for none).
        coordinator_key_pinned: whether that key was given by the caller (else read from the run).
        step_heads: step heads in the log that verified.
        sealed: whether the log ends in a final step head that verified.
        witness_heads: witness-file heads compared with the log.
    """

    run_dir: str
    run_id: str
    verifier_key: str
    verifier_key_pinned: bool
    records: int
    receipts: int
    headers: int
    findings: tuple[Finding, ...]
    seconds: float
    coordinator_key: str = ""
    coordinator_key_pinned: bool = False
    step_heads: int = 0
    sealed: bool = False
    witness_heads: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The error findings."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def clean(self) -> bool:
        """True when there is no error finding (warnings allowed)."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON report (``format``, ``version``, counts and findings)."""
        return {
            "format": AUDIT_FORMAT,
            "version": AUDIT_VERSION,
            "run_dir": self.run_dir,
            "run_id": self.run_id,
            "clean": self.clean,
            "verifier_key": self.verifier_key,
            "verifier_key_pinned": self.verifier_key_pinned,
            "coordinator_key": self.coordinator_key,
            "coordinator_key_pinned": self.coordinator_key_pinned,
            "sealed": self.sealed,
            "counts": {
                "records": self.records,
                "receipts": self.receipts,
                "headers": self.headers,
                "step_heads": self.step_heads,
                "witness_heads": self.witness_heads,
                "errors": len(self.errors),
                "warnings": len(self.findings) - len(self.errors),
            },
            "findings": [f.to_json() for f in self.findings],
        }


@dataclasses.dataclass
class LogItem:
    """A parsed, signature-checked log record."""

    record: LogRecord
    obj: Receipt | SignedHeader | None
    body_digest: bytes
    error: AttestError | None

    @property
    def receipt(self) -> Receipt:
        assert isinstance(self.obj, Receipt)
        return self.obj

    @property
    def header(self) -> SignedHeader:
        assert isinstance(self.obj, SignedHeader)
        return self.obj


class FindingLog:
    """The findings of one audit, in the order they were made, each placed in the run directory.

    At most :data:`~stagewarden.attest.run_limits.MAX_FINDINGS_PER_CODE` findings of one code are
    kept (a hostile log can make one finding per record); :meth:`omitted` counts the rest.

    Attributes:
        findings: The findings so far.
        log_name: The receipt log's file name, where a finding about a record points.
    """

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.log_name = LOG_FILE
        self._kept: dict[ErrorCode, int] = {}
        self._left_out: dict[ErrorCode, tuple[int, Severity]] = {}

    def omitted(self) -> list[Finding]:
        """One finding per code whose findings beyond the limit were left out, saying how many."""
        return [
            Finding(
                code,
                severity,
                f"{count} more finding(s) of {code} left out (only the first {MAX_FINDINGS_PER_CODE} of a code are "
                "listed)",
            )
            for code, (count, severity) in self._left_out.items()
        ]

    def add(
        self,
        code: ErrorCode,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
        workers: Iterable[str] = (),
        item: LogItem | None = None,
        **where: Any,
    ) -> None:
        kept = self._kept.get(code, 0)
        if kept >= MAX_FINDINGS_PER_CODE:
            count, worst = self._left_out.get(code, (0, severity))
            self._left_out[code] = (count + 1, Severity.ERROR if Severity.ERROR in (worst, severity) else worst)
            return
        self._kept[code] = kept + 1
        if item is not None:
            where.setdefault("file", self.log_name)
            where.setdefault("record", item.record.index)
            where.setdefault("offset", item.record.offset)
            obj = item.obj
            if isinstance(obj, Receipt):
                where.setdefault("step", obj.step)
                where.setdefault("micro_batch", obj.micro_batch)
                where.setdefault("unit", str(obj.kind))
                where.setdefault("stage", obj.stage)
            elif isinstance(obj, SignedHeader):
                where.setdefault("step", obj.step)
                where.setdefault("micro_batch", obj.micro_batch)
                where.setdefault("unit", str(obj.kind))
                where.setdefault("stage", obj.sender_stage)
        self.findings.append(Finding(code, severity, message, tuple(dict.fromkeys(workers)), **where))
