"""The run a conformance check reads, beside its spec, and the findings the checks add to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stagewarden.attest.audit import AuditReport, Severity
from stagewarden.attest.rundir import RunDir
from stagewarden.conformance.findings import ConformanceCode, ConformanceError, ConformanceFinding
from stagewarden.run_history import EVENTS_FILE, RunHistory, read_events, reconstruct
from stagewarden.spec import LoadedSpec


class RunUnderCheck:
    """A run directory read for a conformance check, beside the spec it is checked against: the
    run's configuration, summary and event history (when it has ``events.jsonl``), and the findings
    the checks add (the event log's own problems among them, as warnings).

    Raises:
        ConformanceError: The run's configuration or event log cannot be read.
        stagewarden.attest.run_record.RunDirError: The run directory or its summary cannot be read.
    """

    def __init__(self, run_dir: Path, loaded: LoadedSpec, audit: AuditReport | None, confidence: float) -> None:
        self.run_dir = run_dir
        self.loaded = loaded
        self.spec = loaded.spec
        self.audit = audit
        self.confidence = confidence
        self.findings: list[ConformanceFinding] = []
        self.summary = RunDir(run_dir).summary
        if self.summary.training is None:
            raise ConformanceError(f"{run_dir}/summary.json records no training run (no runtime_version, no config)")
        self.training = self.summary.training
        config = self.training.config
        from stagewarden.runtime.config import ConfigError, RunConfig

        try:
            self.config = RunConfig.from_json(config)
        except ConfigError as exc:
            raise ConformanceError(f"{run_dir}/summary.json: {exc}") from None
        self.history: RunHistory | None = None
        events = run_dir / EVENTS_FILE
        if os.path.lexists(events):  # a dangling link is refused when read, not taken for no events
            try:
                parsed, problems = read_events(events)
            except OSError as exc:
                raise ConformanceError(f"cannot read {events}: {exc.strerror or exc}") from None
            self.history = reconstruct(parsed)
            for problem in problems + self.history.problems:
                self.add(ConformanceCode.EVENTS_UNREADABLE, problem, severity=Severity.WARNING, file=EVENTS_FILE)

    def at(self, *path: str | int) -> str:
        """The ``file:line:column`` of a spec setting (of the nearest enclosing value if defaulted)."""
        return str(self.loaded.source.value(tuple(path)))

    def add(self, code: ConformanceCode, message: str, *, severity: Severity = Severity.ERROR, **where: Any) -> None:
        """Record a finding; ``where`` are the :class:`ConformanceFinding` location fields."""
        self.findings.append(ConformanceFinding(code, severity, message, **where))
