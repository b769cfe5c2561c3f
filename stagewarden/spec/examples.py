"""The packaged example specs: the worked examples of the spec language reference and the demo."""

from __future__ import annotations

from importlib import resources

from stagewarden.spec.errors import SourceLocation, SpecDiagnostic, SpecError
from stagewarden.spec.loader import LoadedSpec, load_bytes

_PACKAGE = "stagewarden.spec"


def example_names() -> list[str]:
    """Names of every packaged example, sorted."""
    folder = resources.files(_PACKAGE).joinpath("examples")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The YAML source of the packaged example ``name``."""
    if name not in example_names():
        import difflib

        close = difflib.get_close_matches(name, example_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(
            [
                SpecDiagnostic(
                    SourceLocation(f"example:{name}", 1, 1),
                    f"no packaged example named '{name}'{hint}; see `stagewarden examples list`",
                )
            ]
        )
    return resources.files(_PACKAGE).joinpath("examples", f"{name}.yaml").read_text("utf-8")


def load_example(name: str) -> LoadedSpec:
    """Load the packaged example ``name``; diagnostics name it ``example:NAME``."""
    return load_bytes(example_text(name).encode("utf-8"), f"example:{name}")
