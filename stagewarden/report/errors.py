"""The report's domain exception: input the report cannot be built from, or a build that failed."""

from __future__ import annotations


class ReportError(Exception):
    """A report that cannot be built; the message says why and what to do (the CLI exits with 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
