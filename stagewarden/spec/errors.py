"""Errors and warnings raised while loading a threat-model spec, each tied to a source location."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """A 1-based line and column in a spec file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SpecDiagnostic:
    """One problem found in a spec: where it is and what is wrong."""

    location: SourceLocation
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class SpecError(Exception):
    """A spec that cannot be loaded. Carries every diagnostic found, the first one first.

    ``str(error)`` is the list of diagnostics, one ``file:line:column: message`` per line.
    """

    def __init__(self, diagnostics: list[SpecDiagnostic]) -> None:
        if not diagnostics:
            raise ValueError("SpecError needs at least one diagnostic")
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))

    @property
    def first(self) -> SpecDiagnostic:
        """The first diagnostic, in source order."""
        return self.diagnostics[0]
