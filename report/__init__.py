"""Security reports: a Sphinx site that puts the prover's verdicts for a spec beside what
training runs observed (attestation, receipt audit, detections, loss, throughput)."""

from stagewarden.report.build import FORMATS, build_report, write_project
from stagewarden.report.errors import ReportError
from stagewarden.report.runs import RunData, read_run

__all__ = ["FORMATS", "ReportError", "RunData", "build_report", "read_run", "write_project"]
