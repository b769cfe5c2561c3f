"""Security reports: a Sphinx site that puts the prover's verdicts for a spec beside what
training runs observed (attestation, receipt audit, detections, loss, throughput), replayed
counterexamples and the detection-calibration benchmark."""

from stagewarden.report.build import FORMATS, build_report, write_project
from stagewarden.report.calibration import Calibration, read_calibration
from stagewarden.report.errors import ReportError
from stagewarden.report.replays import ReplayData, read_replay
from stagewarden.report.runs import RunData, read_run

__all__ = [
    "FORMATS",
    "Calibration",
    "ReplayData",
    "ReportError",
    "RunData",
    "build_report",
    "read_calibration",
    "read_replay",
    "read_run",
    "write_project",
]
