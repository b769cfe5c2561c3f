"""Reading a run directory for the report: its summary and configuration, metrics, events,
attestation results and the offline receipt audit, as plain data.

Attestation results are parsed for display and checked against the verifier key the run ships
(``attestation/verifier.pub``); the audit (:func:`stagewarden.attest.audit_run_dir`) is what
judges them at each receipt's signing time.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from stagewarden.attest import AttestError, AuditReport, FixedClock, audit_run_dir, parse_evidence
from stagewarden.attest.ear import EarResult, is_ear_token, parse_ear_unverified, verify_ear
from stagewarden.attest.result import AttestationResult, parse_result_unverified, verify_result
from stagewarden.attest.run_limits import MAX_METRICS_BYTES
from stagewarden.attest.run_lines import read_event_lines
from stagewarden.attest.run_record import RunRecord, TrainingRecord, read_bounded
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.attest.rundir import ATTESTATION_DIR, RunDir, RunDirError
from stagewarden.report.errors import ReportError

METRICS_FILE = "metrics.csv"
EVENTS_FILE = "events.jsonl"


@dataclasses.dataclass(frozen=True)
class AttestationRow:
    """One worker's attestation as the run directory records it.

    Attributes:
        worker: the worker id.
        device_id: the device identifier (from the result, else from the evidence).
        measurement: the launch measurement (hex).
        tcb_status: the TCB level status of the result (empty without a result).
        status: the EAR status of the latest result, or why there is none.
        signature: whether the result's signature verifies against the run's verifier key.
        issued_at: when the latest result was issued.
        expires_at: when it expires.
        results: how many result tokens the worker holds.
        kind: the evidence kind of the latest result: ``simulated`` or ``dcap`` (an Intel quote, EAR result).
    """

    worker: str
    device_id: str
    measurement: str
    tcb_status: str
    status: str
    signature: str
    issued_at: dt.datetime | None
    expires_at: dt.datetime | None
    results: int
    kind: str = "simulated"


@dataclasses.dataclass(frozen=True)
class AuditOutcome:
    """The receipt audit of a run, or why it could not run."""

    report: AuditReport | None
    error: str | None = None


@dataclasses.dataclass
class RunData:
    """Everything the report shows about one run directory.

    Attributes:
        path: the run directory.
        name: a short name (the directory's name).
        record: ``summary.json``, the run record.
        training: what the training runtime recorded (the record's training part).
        config: the run configuration (``training.config``), a JSON object in the format that
            :meth:`stagewarden.runtime.config.RunConfig.from_json` reads.
        metrics: the rows of ``metrics.csv`` (``step``, ``loss``, ``tokens_per_second``, ...).
        events: the records of ``events.jsonl`` in order.
        attestations: one row per worker.
        audit: the receipt audit.
        title: what the run is for, when another input gives it a role (a replay's attack run,
            for instance); it leads the label.
    """

    path: Path
    name: str
    record: RunRecord
    training: TrainingRecord
    config: dict[str, Any]
    metrics: list[dict[str, float]]
    events: list[dict[str, Any]]
    attestations: list[AttestationRow]
    audit: AuditOutcome
    title: str | None = None

    @property
    def attack(self) -> dict[str, Any] | None:
        """The attack plan the run was configured with, if any."""
        attack = self.config.get("attack")
        return attack if isinstance(attack, dict) else None

    @property
    def secured(self) -> bool:
        """Whether any security mechanism was on (receipts, attestation or verification)."""
        return bool(self.config.get("receipts") or self.config.get("attestation")) or (
            self.config.get("verification", "none") != "none"
        )

    @property
    def detections(self) -> list[SignedDetection]:
        """The run's detections (from its record)."""
        return self.training.detections

    @property
    def short_name(self) -> str:
        """The run's name (its directory's), after its title where it has one."""
        return f"{self.title}: {self.name}" if self.title else self.name

    @property
    def attack_text(self) -> str:
        """``reverse on stage 1 from step 2``, or ``no attack``."""
        attack = self.attack
        if attack is None:
            return "no attack"
        stages = attack.get("stages", [])
        stages = ",".join(str(s) for s in stages) if isinstance(stages, list) else str(stages)
        return f"{attack.get('kind', '?')} on stage {stages} from step {attack.get('start', 0)}"

    @property
    def defence_text(self) -> str:
        """``receipts, attestation, spot check 0.05, response eject``, or ``no security``."""
        if not self.secured:
            return "no security"
        parts = [p for p in ("receipts", "attestation") if self.config.get(p)]
        if self.config.get("verification") == "spot_check":
            parts.append(f"spot check {self.config.get('spot_check_rate')}")
        elif self.config.get("verification") == "redundant_neighbour":
            parts.append(f"redundant neighbour via {self.config.get('input_via', 'coordinator')}")
        parts.append(f"response {self.config.get('response', '?')}")
        return ", ".join(parts)

    @property
    def legend_label(self) -> str:
        """The run's name and attack, for a plot's legend (the defence is in the tables)."""
        return f"{self.short_name}: {self.attack_text}"

    @property
    def label(self) -> str:
        """The run's name, attack and defence, in one line."""
        return f"{self.short_name}: {self.attack_text}; {self.defence_text}"


def _metrics(path: Path) -> list[dict[str, float]]:
    if not os.path.lexists(path):
        return []
    try:
        text = read_bounded(path, "metrics table", MAX_METRICS_BYTES).decode("utf-8")
        rows = []
        for row in csv.DictReader(io.StringIO(text, newline="")):
            rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
        return rows
    except RunDirError as exc:
        raise ReportError(exc.message) from None
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path} is not a readable metrics table: {exc}") from None


def _events(path: Path) -> list[dict[str, Any]]:
    if not os.path.lexists(path):
        return []
    events = []
    number = 0
    lines = read_event_lines(path)
    try:
        for number, raw in lines:  # noqa: B007 (named in the error)
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            record = json.loads(line)
            if isinstance(record, dict):
                events.append(record)
    except RunDirError as exc:
        raise ReportError(exc.message) from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the JSON decoder goes
        raise ReportError(f"{path}:{number}: not a JSON record: {exc}") from None
    return events


def _attestations(run: RunDir, training: TrainingRecord) -> list[AttestationRow]:
    names = [w.id for w in run.summary.workers]
    names += [s for s in training.standby if s not in names]
    folder = run.path / ATTESTATION_DIR
    names += sorted(p.stem for p in folder.glob("*.evidence") if p.stem not in names) if folder.is_dir() else []
    try:
        key: VerifyKey | None = VerifyKey(run.verifier_key())
    except RunDirError:
        key = None
    rows = []
    for name in names:
        try:
            tokens = run.results(name)
        except RunDirError:
            tokens = []
        device, measurement = "", ""
        try:
            stored = run.evidence(name)
            if stored is not None:
                evidence = parse_evidence(stored)
                device, measurement = evidence.device_id, evidence.measurement.hex()
        except AttestError:  # RunDirError too: a link, FIFO, device or oversized file
            device = "(evidence unreadable)"
        if not tokens:
            rows.append(AttestationRow(name, device, measurement, "", "no attestation result", "-", None, None, 0))
            continue
        dcap = is_ear_token(tokens[-1])
        try:
            result: AttestationResult | EarResult = (
                parse_ear_unverified(tokens[-1]) if dcap else parse_result_unverified(tokens[-1])
            )
        except AttestError as exc:
            rows.append(
                AttestationRow(name, device, measurement, "", f"malformed result: {exc}", "-", None, None, len(tokens))
            )
            continue
        signature = "no verifier key"
        if key is not None:
            try:
                check = verify_ear if dcap else verify_result
                check(tokens[-1], key, FixedClock(result.issued_at), at=result.issued_at)
                signature = "valid"
            except AttestError as exc:
                signature = f"invalid: {exc}"
        rows.append(
            AttestationRow(
                name,
                result.device_id,
                result.measurement,
                result.tcb_status,
                str(result.status),
                signature,
                result.issued_at,
                result.expires_at,
                len(tokens),
                "dcap" if dcap else "simulated",
            )
        )
    return rows


def _audit(path: Path) -> AuditOutcome:
    try:
        return AuditOutcome(audit_run_dir(path))
    except (AttestError, OSError, ValueError) as exc:
        return AuditOutcome(None, str(exc))


def read_run(path: str | Path) -> RunData:
    """Read and audit one run directory.

    Raises:
        ReportError: the directory does not exist, or its summary, metrics or events cannot be read.
    """
    folder = Path(path)
    try:
        run = RunDir(folder)
    except RunDirError as exc:
        raise ReportError(f"--run {folder}: {exc}") from None
    try:
        training = run.summary.require_training()
    except RunDirError as exc:
        raise ReportError(f"--run {folder}: {exc.message}") from None
    return RunData(
        path=folder.resolve(),
        name=folder.resolve().name,
        record=run.summary,
        training=training,
        config=training.config,
        metrics=_metrics(folder / METRICS_FILE),
        events=_events(folder / EVENTS_FILE),
        attestations=_attestations(run, training),
        audit=_audit(folder),
    )
